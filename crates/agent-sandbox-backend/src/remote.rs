//! The backend as a [`RemoteAgent`], so a controller holds it beside other
//! kinds of agents.

use async_trait::async_trait;
use axp_transport::{
    pb::{AgentStart, Message},
    remote::{ExecutionSummary, RemoteAgent, RemoteAgentError},
};

use crate::{AgentSandboxAgent, error::SandboxAgentError};

/// A backend failure as the step of the execution it happened in.
fn remote_error(error: SandboxAgentError) -> RemoteAgentError {
    let code = error.agent_code();
    match error {
        SandboxAgentError::Stream { outputs, .. } => RemoteAgentError::Stream {
            outputs,
            code,
            source: Box::new(error),
        },
        SandboxAgentError::Release {
            ref conversation, ..
        } => RemoteAgentError::Release {
            conversation: conversation.clone(),
            source: Box::new(error),
        },
        _ => RemoteAgentError::Start {
            code,
            source: Box::new(error),
        },
    }
}

#[async_trait]
impl RemoteAgent for AgentSandboxAgent {
    async fn execute(
        &self,
        conversation_id: &str,
        exec_id: &str,
        start: AgentStart,
        on_output: &mut (dyn FnMut(Vec<Message>) + Send),
    ) -> Result<ExecutionSummary, RemoteAgentError> {
        self.connect(conversation_id, exec_id, start, on_output)
            .await
            .map(|report| report.summary())
            .map_err(remote_error)
    }

    async fn release(&self, conversation_id: &str) -> Result<(), RemoteAgentError> {
        AgentSandboxAgent::release(self, conversation_id)
            .await
            .map_err(remote_error)
    }

    async fn close(&self) -> Result<(), RemoteAgentError> {
        AgentSandboxAgent::close(self).await.map_err(remote_error)
    }
}
