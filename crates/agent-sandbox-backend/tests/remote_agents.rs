//! A controller that hosts several kinds of agents holds them all as
//! `Box<dyn RemoteAgent>`: here a plain AXP endpoint and the agent-sandbox
//! backend on the fake cluster, driven through the same calls.

mod support;

use std::{collections::HashMap, time::Duration};

use agent_sandbox_backend::{AgentSandboxAgent, SandboxAgentError};
use axp_transport::{
    Agent, AgentError, AgentServer, Execution, OutputStream, ServerOptions, content,
    remote::{EndpointAgent, RemoteAgent, RemoteAgentError},
};
use support::{Behaviour, backend, claims_left, setup, start};
use tonic::Code;

/// The plain endpoint's agent: echoes the prompt in upper case.
struct Upper;

impl Agent for Upper {
    async fn execute(&self, execution: Execution) -> Result<OutputStream, AgentError> {
        let reply = content::model_text(execution.start.subagent_prompt.to_uppercase());
        Ok(Box::pin(futures::stream::iter([Ok(vec![reply])])))
    }
}

/// Serves [`Upper`] on a free port of 127.0.0.1 until the test ends.
async fn serve_upper() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = AgentServer::new(Upper, ServerOptions::default());
    server.health().set_serving().await;
    tokio::spawn(server.serve(listener, std::future::pending()));
    format!("http://{addr}")
}

#[tokio::test]
async fn a_controller_runs_executions_through_an_endpoint_and_a_sandbox_backend_alike() {
    let cluster = setup(Behaviour::Count, 0).await;
    let sandbox: AgentSandboxAgent = backend(&cluster).await;
    let endpoint = EndpointAgent::new(&serve_upper().await, Default::default()).unwrap();
    let agents: Vec<(&str, Box<dyn RemoteAgent>)> = vec![
        ("upper", Box::new(endpoint)),
        ("py", Box::new(sandbox.clone())),
    ];

    let mut said = HashMap::new();
    for (id, agent) in &agents {
        let mut seen = Vec::new();
        let summary = agent
            .execute("conv", "e1", start(), &mut |batch| seen.extend(batch))
            .await
            .unwrap_or_else(|error| panic!("{id}: {error:?}"));
        assert_eq!(summary.frames, 1, "{id}");
        assert!(summary.ended, "{id}");
        said.insert(*id, content::planner_view(&seen));
    }
    assert_eq!(said["upper"], "PRINT(1)");
    assert!(said["py"].starts_with("turn 1 at 127."), "{}", said["py"]);
    assert_eq!(claims_left(&cluster), 1, "the backend claimed one sandbox");

    for (id, agent) in &agents {
        agent
            .release("conv")
            .await
            .unwrap_or_else(|error| panic!("{id}: {error:?}"));
    }
    assert_eq!(claims_left(&cluster), 0, "release gave the sandbox back");
    assert!(sandbox.active_conversations().is_empty());
    for (_, agent) in &agents {
        agent.close().await.unwrap();
    }
}

#[tokio::test]
async fn the_backends_failures_keep_their_step_and_code_through_the_trait() {
    let cluster = setup(Behaviour::FailAfterOutput, 0).await;
    let agent: Box<dyn RemoteAgent> = Box::new(backend(&cluster).await);
    let mut delivered = 0;
    let error = agent
        .execute("conv", "e1", start(), &mut |_| delivered += 1)
        .await
        .unwrap_err();
    assert_eq!(delivered, 1);
    assert!(
        matches!(error, RemoteAgentError::Stream { outputs: 1, .. }),
        "{error:?}"
    );
    assert_eq!(error.code(), Some(Code::Unavailable));
    let source = std::error::Error::source(&error)
        .and_then(|source| source.downcast_ref::<SandboxAgentError>())
        .expect("the backend's error is the source");
    assert!(
        matches!(source, SandboxAgentError::Stream { .. }),
        "{source:?}"
    );
    agent.close().await.unwrap();

    let refusing = setup(Behaviour::Refuse, 0).await;
    let agent: Box<dyn RemoteAgent> = Box::new(backend(&refusing).await);
    let error = tokio::time::timeout(
        Duration::from_secs(30),
        agent.execute("conv", "e1", start(), &mut |_| {}),
    )
    .await
    .expect("a refusal is final, not retried forever")
    .unwrap_err();
    assert!(matches!(error, RemoteAgentError::Start { .. }), "{error:?}");
    assert_eq!(error.code(), Some(Code::PermissionDenied));
    assert_eq!(error.outputs_delivered(), 0);
    agent.close().await.unwrap();
}
