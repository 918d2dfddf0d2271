//! The calls the whole-pipeline tests and the demo make, as AX makes them.

use agent_sandbox_backend::{AgentSandboxAgent, ExecutionReport, SandboxAgentError};
use axp_transport::{
    content,
    pb::{AgentStart, Message},
};

/// A planner dispatch to the `py` entry: structured prompt plus the legacy envelope, as AX
/// sends both.
pub fn planner_call(prompt: &str) -> AgentStart {
    AgentStart {
        agent_id: "py".into(),
        ..content::planner_start(prompt, "user: earlier turn")
    }
}

/// An older controller's dispatch: only the legacy envelope.
pub fn legacy_call(prompt: &str) -> AgentStart {
    AgentStart {
        agent_id: "py".into(),
        messages: vec![content::user_text(content::planner_envelope("", prompt))],
        ..AgentStart::default()
    }
}

/// Runs one execution and returns what the planner sees, with the backend's report.
///
/// # Errors
///
/// The backend's error.
pub async fn run(
    agent: &AgentSandboxAgent,
    conversation: &str,
    exec: &str,
    start: AgentStart,
) -> Result<(String, ExecutionReport), SandboxAgentError> {
    let mut seen: Vec<Message> = Vec::new();
    let report = agent
        .connect(conversation, exec, start, |batch| seen.extend(batch))
        .await?;
    Ok((content::planner_view(&seen), report))
}
