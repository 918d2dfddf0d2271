//! Shared helpers: spawn the real binary, call it over real gRPC, read its outputs.
#![allow(dead_code)]

use std::{path::Path, time::Duration};

use axp_transport::{
    content,
    pb::{
        AgentRequest, AgentResponse, AgentStart, Message, agent_response,
        agent_service_client::AgentServiceClient,
    },
};
use futures::StreamExt as _;
use prost_types::{Struct, value::Kind};
use python_sandbox_agent::{LocalAgent, output};
use tonic::{Status, transport::Channel};

pub const BINARY: &str = env!("CARGO_BIN_EXE_python-sandbox-agent");

/// Spawns the agent with test-friendly limits plus `args`.
pub async fn agent(args: &[&str]) -> LocalAgent {
    agent_with_env(args, &[]).await
}

/// Spawns the agent with extra environment variables.
pub async fn agent_with_env(args: &[&str], env: &[(&str, &str)]) -> LocalAgent {
    let mut command = tokio::process::Command::new(Path::new(BINARY));
    command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--memory-limit-mb",
            "512",
            "--timeout-secs",
            "10",
        ])
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
    for (k, v) in env {
        command.env(k, v);
    }
    LocalAgent::from_command(command)
        .await
        .expect("agent starts")
}

pub async fn client(agent: &LocalAgent) -> AgentServiceClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(agent.url())
        .unwrap()
        .connect()
        .await
        .expect("connects");
    AgentServiceClient::new(channel)
}

pub fn prompt(code: &str) -> AgentStart {
    AgentStart {
        agent_id: "python".into(),
        subagent_prompt: code.into(),
        ..AgentStart::default()
    }
}

pub fn prompt_with(code: &str, config: &str) -> AgentStart {
    AgentStart {
        agent_config: config.as_bytes().to_vec(),
        ..prompt(code)
    }
}

pub fn request(conversation: &str, exec: &str, start: AgentStart) -> AgentRequest {
    AgentRequest {
        conversation_id: conversation.into(),
        exec_id: exec.into(),
        start: Some(start),
    }
}

/// The frames of one call, and whether it ended with `end`.
#[derive(Debug)]
pub struct Run {
    pub frames: Vec<AgentResponse>,
}

impl Run {
    pub fn messages(&self) -> Vec<Message> {
        self.frames
            .iter()
            .filter_map(|f| match &f.r#type {
                Some(agent_response::Type::Outputs(o)) => Some(o.messages.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// What the planner sees: text outputs joined with "\n".
    pub fn text(&self) -> String {
        content::planner_view(&self.messages())
    }

    /// Text frames' texts in order.
    pub fn texts(&self) -> Vec<String> {
        self.messages()
            .iter()
            .filter_map(|m| content::text_of(m).map(str::to_owned))
            .collect()
    }

    pub fn result(&self) -> Struct {
        output::structured_result(&self.messages())
            .expect("a structured result")
            .clone()
    }

    pub fn field(&self, name: &str) -> Kind {
        self.result()
            .fields
            .get(name)
            .and_then(|v| v.kind.clone())
            .unwrap_or(Kind::NullValue(0))
    }

    pub fn str_field(&self, name: &str) -> Option<String> {
        match self.field(name) {
            Kind::StringValue(s) => Some(s),
            _ => None,
        }
    }

    pub fn bool_field(&self, name: &str) -> bool {
        matches!(self.field(name), Kind::BoolValue(true))
    }

    pub fn ends_once(&self) -> bool {
        let ends = self
            .frames
            .iter()
            .filter(|f| matches!(f.r#type, Some(agent_response::Type::End(_))))
            .count();
        ends == 1
            && matches!(
                self.frames.last().and_then(|f| f.r#type.as_ref()),
                Some(agent_response::Type::End(_))
            )
    }
}

/// Runs one call to the end.
pub async fn call(
    client: &mut AgentServiceClient<Channel>,
    req: AgentRequest,
) -> Result<Run, Status> {
    let (conversation, exec) = (req.conversation_id.clone(), req.exec_id.clone());
    let mut stream = client.connect(req).await?.into_inner();
    let mut frames = Vec::new();
    while let Some(frame) = stream.next().await {
        let frame = frame?;
        assert_eq!(
            frame.conversation_id, conversation,
            "conversation id echoed"
        );
        assert_eq!(frame.exec_id, exec, "exec id echoed");
        assert!(frame.r#type.is_some(), "oneof set");
        frames.push(frame);
    }
    Ok(Run { frames })
}

/// Runs `code` as the conversation's next turn.
pub async fn run(client: &mut AgentServiceClient<Channel>, conversation: &str, code: &str) -> Run {
    let run = call(client, request(conversation, "e", prompt(code)))
        .await
        .expect("call succeeds");
    assert!(run.ends_once(), "exactly one end, last: {:?}", run.frames);
    run
}

pub async fn within<T>(limit: Duration, what: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, what)
        .await
        .expect("finished in time")
}
