//! What an agent implements to be served over AXP: one [`AgentStart`] in, a
//! stream of output batches out.
//!
//! The agent never sees frames, ids or `end`: [`AgentServer`](crate::server::AgentServer)
//! adds those, so an agent cannot break the wire contract the AX controller relies on.
//! The same agent answers both protocols the server speaks ([`Protocol`]): a
//! HarnessService `start` reaches it as an [`AgentStart`] too.

use std::{future::Future, pin::Pin};

use futures::Stream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, metadata::MetadataMap};

use crate::pb::{AgentStart, HealthCheckResponse, Message};

/// Which wire protocol an execution arrived on.
///
/// Both carry the same work; they differ in framing and in how failures are
/// reported, which the server handles. An agent needs this only to name the
/// caller's fields in its error messages ([`Protocol::config_field`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Protocol {
    /// `ax.AgentService`: the protocol of the AX fork with `subagent_prompt`.
    AgentService,
    /// `ax.HarnessService`: the protocol of upstream google/ax since June 2026.
    HarnessService,
}

impl Protocol {
    /// The gRPC service name (`ax.AgentService`, `ax.HarnessService`).
    pub fn service_name(self) -> &'static str {
        match self {
            Self::AgentService => crate::server::AGENT_SERVICE_NAME,
            Self::HarnessService => crate::server::HARNESS_SERVICE_NAME,
        }
    }

    /// The caller's name for [`AgentStart::agent_config`]: `agent_config`
    /// on AgentService, `harness_config` on HarnessService.
    pub fn config_field(self) -> &'static str {
        match self {
            Self::AgentService => "agent_config",
            Self::HarnessService => "harness_config",
        }
    }

    /// The caller's name for the request message (`AgentRequest`, `HarnessRequest`).
    pub fn request_message(self) -> &'static str {
        match self {
            Self::AgentService => "AgentRequest",
            Self::HarnessService => "HarnessRequest",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.service_name())
    }
}

/// One execution (a `Connect` call on either protocol), as the agent sees it.
#[derive(Debug)]
pub struct Execution {
    /// Which protocol the call arrived on.
    pub protocol: Protocol,
    /// The request's `conversation_id`, echoed on every frame by the server.
    pub conversation_id: String,
    /// AgentService: the request's `exec_id`, echoed on every frame.
    /// HarnessService has no exec id on the wire: the server makes a unique
    /// one per `start`, for logs, spans and the agent's own bookkeeping.
    pub exec_id: String,
    /// What to do. The server has already rejected requests without one.
    ///
    /// On HarnessService it is the `HarnessStart` in AgentStart's shape:
    /// `agent_id` = `harness_id`, `agent_config` = `harness_config`,
    /// `messages` as sent, and `subagent_prompt` / `subagent_history` empty
    /// (that lineage has no structured args), so an agent that prefers
    /// `subagent_prompt` and falls back to the last user text reads both alike.
    pub start: AgentStart,
    /// The request's gRPC metadata (`execution-id`, tracing headers, …).
    pub metadata: MetadataMap,
    /// Fired when the client cancels (a HarnessService `cancel` frame or a
    /// cancelled stream), the call's deadline passes, or the server's shutdown
    /// grace period ends. Long-running work should watch it. The output stream
    /// is dropped at that moment, except after a `cancel` frame, when the
    /// server reads it for up to [`ServerOptions::cancel_grace`](crate::ServerOptions::cancel_grace)
    /// so that `end{CANCELED}` follows the agent's actual stop.
    pub cancelled: CancellationToken,
    /// The client's deadline (from `grpc-timeout`), if it sent one.
    pub deadline: Option<Instant>,
}

/// The outputs of one execution: batches of messages, each sent as one
/// `outputs` frame. An `Err` item ends the call with that error's gRPC status.
pub type OutputStream = Pin<Box<dyn Stream<Item = Result<Vec<Message>, AgentError>> + Send>>;

/// An AXP agent, served on both `ax.AgentService` and `ax.HarnessService`.
///
/// # Example
///
/// ```
/// use axp_transport::{Agent, AgentError, Execution, OutputStream, content};
///
/// struct Upper;
///
/// impl Agent for Upper {
///     async fn execute(&self, execution: Execution) -> Result<OutputStream, AgentError> {
///         let text = content::last_user_text(&execution.start.messages)
///             .ok_or_else(|| AgentError::InvalidArgument("no user text to answer".into()))?;
///         let reply = content::model_text(text.to_uppercase());
///         Ok(Box::pin(futures::stream::iter([Ok(vec![reply])])))
///     }
/// }
/// ```
pub trait Agent: Send + Sync + 'static {
    /// Starts one execution and returns its outputs.
    ///
    /// # Errors
    ///
    /// A returned (or yielded) [`AgentError`] ends the call with the matching
    /// gRPC code: as the call's status on AgentService, as `end{FAILED}`
    /// carrying that code and the message on HarnessService. Failures of the
    /// *user's task* (an exception in the code it ran, say) are not errors:
    /// report them as outputs so the model reads them.
    fn execute(
        &self,
        execution: Execution,
    ) -> impl Future<Output = Result<OutputStream, AgentError>> + Send;

    /// Answers AXP `HealthCheck`. The default says healthy; the server also
    /// reports unhealthy while it is not serving (see
    /// [`HealthControl`](crate::server::HealthControl)).
    fn health(&self) -> impl Future<Output = HealthCheckResponse> + Send {
        async {
            HealthCheckResponse {
                healthy: true,
                message: "ok".into(),
            }
        }
    }
}

/// Why an agent refused or failed an execution; each variant is one gRPC code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The request cannot be run as it is (no code in it, bad options).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No or wrong credentials.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller may not use this agent (e.g. it is pinned to another conversation).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The agent is in a state that does not allow this call now
    /// (e.g. the conversation already has an execution running).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The agent is at capacity.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// The agent cannot serve now (starting, shutting down).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The call ran past its deadline.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// The call was cancelled.
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// A bug or an unexpected failure inside the agent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AgentError {
    /// The gRPC status code this error is sent as.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::Unavailable(_) => Code::Unavailable,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::Cancelled(_) => Code::Cancelled,
            Self::Internal(_) => Code::Internal,
        }
    }

    /// The human-readable part, without the code prefix.
    pub fn message(&self) -> &str {
        match self {
            Self::InvalidArgument(m)
            | Self::Unauthenticated(m)
            | Self::PermissionDenied(m)
            | Self::FailedPrecondition(m)
            | Self::ResourceExhausted(m)
            | Self::Unavailable(m)
            | Self::DeadlineExceeded(m)
            | Self::Cancelled(m)
            | Self::Internal(m) => m,
        }
    }
}

impl From<AgentError> for Status {
    fn from(error: AgentError) -> Self {
        Status::new(error.code(), error.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_agent_error_maps_to_its_own_grpc_code() {
        let cases = [
            (
                AgentError::InvalidArgument("x".into()),
                Code::InvalidArgument,
            ),
            (
                AgentError::Unauthenticated("x".into()),
                Code::Unauthenticated,
            ),
            (
                AgentError::PermissionDenied("x".into()),
                Code::PermissionDenied,
            ),
            (
                AgentError::FailedPrecondition("x".into()),
                Code::FailedPrecondition,
            ),
            (
                AgentError::ResourceExhausted("x".into()),
                Code::ResourceExhausted,
            ),
            (AgentError::Unavailable("x".into()), Code::Unavailable),
            (
                AgentError::DeadlineExceeded("x".into()),
                Code::DeadlineExceeded,
            ),
            (AgentError::Cancelled("x".into()), Code::Cancelled),
            (AgentError::Internal("x".into()), Code::Internal),
        ];
        for (error, code) in cases {
            let status = Status::from(error.clone());
            assert_eq!(status.code(), code, "{error}");
            assert_eq!(status.message(), "x");
        }
    }
}
