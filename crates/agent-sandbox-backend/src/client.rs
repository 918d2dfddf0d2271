//! The call to a sandbox's agent, in the protocol its registry entry names:
//! `ax.AgentService` (the AX fork) or `ax.HarnessService` (upstream AX).
//!
//! Both carry the same work, so the rest of the backend (claims, re-resolve,
//! retry) is written once against [`AgentClient`] and [`AgentOutputs`].

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use axp_transport::{
    AxpClient, ClientError, ClientOptions, HarnessClient, Protocol,
    client::{HarnessOutputs, Outputs},
    pb::{AgentStart, HarnessStart, Message},
};
use futures::Stream;

/// A client of one agent, in one protocol.
#[derive(Debug, Clone)]
pub(crate) enum AgentClient {
    /// `ax.AgentService/Connect`.
    AgentService(AxpClient),
    /// `ax.HarnessService/Connect`.
    Harness(HarnessClient),
}

impl AgentClient {
    /// A client for `address` (nothing is dialled yet).
    pub(crate) fn new(
        protocol: Protocol,
        address: &str,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        Ok(match protocol {
            Protocol::HarnessService => Self::Harness(HarnessClient::new(address, options)?),
            _ => Self::AgentService(AxpClient::new(address, options)?),
        })
    }

    /// Starts one execution. On HarnessService, which has no exec id and no
    /// structured sub-agent arguments, the start travels as `harness_config`
    /// (the same JSON options) and the messages, whose last user text holds
    /// the planner's prompt; `harness_id` is the agent id.
    pub(crate) async fn connect(
        &self,
        conversation_id: &str,
        exec_id: &str,
        start: AgentStart,
    ) -> Result<AgentOutputs, ClientError> {
        match self {
            Self::AgentService(client) => client
                .connect(conversation_id, exec_id, start)
                .await
                .map(AgentOutputs::AgentService),
            Self::Harness(client) => {
                let harness_start = HarnessStart {
                    harness_config: start.agent_config,
                    messages: start.messages,
                };
                client
                    .connect(conversation_id, &start.agent_id, harness_start)
                    .await
                    .map(AgentOutputs::Harness)
            }
        }
    }
}

/// The outputs of one execution, in either protocol; dropping them cancels the call.
#[must_use = "dropping the outputs cancels the call"]
#[derive(Debug)]
pub(crate) enum AgentOutputs {
    AgentService(Outputs),
    Harness(HarnessOutputs),
}

impl AgentOutputs {
    /// Whether the agent closed the execution with `end` (HarnessService
    /// streams without one are errors, so there it is whether one arrived).
    pub(crate) fn ended(&self) -> bool {
        match self {
            Self::AgentService(outputs) => outputs.ended(),
            Self::Harness(outputs) => outputs.end_state().is_some(),
        }
    }
}

impl Stream for AgentOutputs {
    type Item = Result<Vec<Message>, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut() {
            Self::AgentService(outputs) => Pin::new(outputs).poll_next(cx),
            Self::Harness(outputs) => Pin::new(outputs).poll_next(cx),
        }
    }
}
