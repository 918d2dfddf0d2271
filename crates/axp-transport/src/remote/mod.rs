//! One shape for every kind of remote agent a controller hosts: a plain agent
//! at `host:port` ([`EndpointAgent`]), an agent in a sandbox claimed per
//! conversation (crate `agent-sandbox-backend`), or any other. The controller
//! holds them all as `Box<dyn RemoteAgent>` and dispatches by id.
//!
//! # Guarantees
//!
//! Every implementation reports *when* a failure happened: a
//! [`RemoteAgentError::Start`] means no output reached the callback (the
//! controller may try again or elsewhere); a [`RemoteAgentError::Stream`]
//! means some did, and the agent may have had side effects.
//!
//! # Example
//!
//! ```no_run
//! use axp_transport::{
//!     ClientOptions, content,
//!     remote::{EndpointAgent, RemoteAgent},
//! };
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let agents: Vec<(&str, Box<dyn RemoteAgent>)> = vec![(
//!     "upper",
//!     Box::new(EndpointAgent::new("127.0.0.1:8494", ClientOptions::default())?),
//! )];
//! for (id, agent) in &agents {
//!     let start = content::planner_start("hello", "");
//!     let summary = agent
//!         .execute("conversation-1", "exec-1", start, &mut |batch| {
//!             println!("{id}: {}", content::planner_view(&batch));
//!         })
//!         .await?;
//!     println!("{id}: {} frame(s) in {:?}", summary.frames, summary.total);
//!     agent.release("conversation-1").await?;
//! }
//! # Ok(()) }
//! ```

use std::time::Duration;

use async_trait::async_trait;
use tonic::Code;

use crate::pb::{AgentStart, Message};

mod endpoint;

pub use endpoint::EndpointAgent;

/// The cause of a [`RemoteAgentError`]: the implementation's own error type,
/// which callers can downcast to (e.g. [`ClientError`](crate::ClientError)).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A remote agent, whatever runs it and however it is reached.
///
/// Dyn-compatible: a controller keeps agents of different kinds in one
/// `Vec<Box<dyn RemoteAgent>>` or map.
#[async_trait]
pub trait RemoteAgent: Send + Sync + std::fmt::Debug {
    /// Runs one execution of `conversation_id`, handing each output batch to
    /// `on_output` as it arrives, and summarizes it once it ended.
    ///
    /// # Errors
    ///
    /// [`RemoteAgentError::Start`] when no output was delivered (the agent
    /// could not be provisioned or reached, or refused the call);
    /// [`RemoteAgentError::Stream`] when it failed after output started.
    async fn execute(
        &self,
        conversation_id: &str,
        exec_id: &str,
        start: AgentStart,
        on_output: &mut (dyn FnMut(Vec<Message>) + Send),
    ) -> Result<ExecutionSummary, RemoteAgentError>;

    /// The conversation ended: give back what the agent holds for it.
    ///
    /// # Errors
    ///
    /// [`RemoteAgentError::Release`].
    async fn release(&self, conversation_id: &str) -> Result<(), RemoteAgentError>;

    /// The controller is shutting down: give back what the agent holds for
    /// every conversation.
    ///
    /// # Errors
    ///
    /// [`RemoteAgentError::Release`] for the first conversation that could
    /// not be given back.
    async fn close(&self) -> Result<(), RemoteAgentError>;
}

/// What one execution did, whatever kind of agent ran it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecutionSummary {
    /// Output batches delivered to the callback.
    pub frames: usize,
    /// Whether the agent said the execution ended (AXP `end`), rather than
    /// closing without a word.
    pub ended: bool,
    /// From the start of the execution to the first output, if any arrived.
    pub first_output: Option<Duration>,
    /// The whole execution, provisioning included.
    pub total: Duration,
}

/// Why a remote agent could not run an execution or give a conversation back.
///
/// This layer says *which step* failed; the implementation's error is the
/// [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteAgentError {
    /// The execution did not start, or failed before any output.
    #[error("the remote agent did not start the execution")]
    Start {
        /// The gRPC code the agent (or the connection) ended the call with, if any.
        code: Option<Code>,
        /// What failed.
        #[source]
        source: BoxError,
    },
    /// The execution failed after output had been delivered; it was not retried.
    #[error("the remote agent failed after {outputs} output frame(s)")]
    Stream {
        /// Output batches delivered before the failure.
        outputs: usize,
        /// The gRPC code the call ended with, if any.
        code: Option<Code>,
        /// What failed.
        #[source]
        source: BoxError,
    },
    /// What the agent holds for a conversation could not be given back.
    #[error("the remote agent could not release conversation {conversation}")]
    Release {
        /// The conversation.
        conversation: String,
        /// What failed.
        #[source]
        source: BoxError,
    },
}

impl RemoteAgentError {
    /// The gRPC code of the failed call, when there was one.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Start { code, .. } | Self::Stream { code, .. } => *code,
            Self::Release { .. } => None,
        }
    }

    /// Output batches delivered to the callback before the failure.
    pub fn outputs_delivered(&self) -> usize {
        match self {
            Self::Stream { outputs, .. } => *outputs,
            Self::Start { .. } | Self::Release { .. } => 0,
        }
    }
}
