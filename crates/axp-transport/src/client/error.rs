//! Why a call to an agent failed, for every protocol the clients speak.

use std::time::Duration;

use tonic::{Code, Status};

/// Why a call to an agent failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The endpoint is not a valid URI.
    #[error("invalid agent endpoint {endpoint:?}")]
    InvalidEndpoint {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The TLS settings were rejected.
    #[error("invalid TLS settings for {endpoint}")]
    Tls {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The agent could not be reached.
    #[error("could not connect to agent at {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// A request id, the token or an extra header cannot be sent as gRPC metadata.
    #[error("{what} cannot be sent as gRPC metadata (it must be visible ASCII)")]
    InvalidMetadata { what: String },
    /// The connection for the call could not be made (refused, unreachable,
    /// TLS handshake failed): the agent never saw the request. Sent as
    /// `UNAVAILABLE` by gRPC.
    #[error("could not reach the agent: {message}")]
    Unreachable { message: String },
    /// The agent (or the connection) ended the call with a gRPC status.
    #[error("agent returned {code:?}: {message}")]
    Status { code: Code, message: String },
    /// A frame carried ids other than the request's.
    #[error(
        "agent sent a frame for conversation {got_conversation:?} / exec {got_exec:?}, \
         expected {expected_conversation:?} / {expected_exec:?}"
    )]
    MismatchedIds {
        expected_conversation: String,
        expected_exec: String,
        got_conversation: String,
        got_exec: String,
    },
    /// A HarnessService frame carried another conversation id than the request's.
    #[error("agent sent a frame for conversation {got:?}, expected {expected:?}")]
    MismatchedConversation { expected: String, got: String },
    /// A frame had neither `outputs` nor `end` set.
    #[error("agent sent a frame with neither outputs nor end set")]
    EmptyFrame,
    /// The agent ended a HarnessService execution with `end{FAILED}`: `code`
    /// is the gRPC code it reported, `description` what it said.
    #[error("agent ended the execution FAILED with {code:?}: {description}")]
    HarnessFailed { code: Code, description: String },
    /// The agent ended a HarnessService execution with `end{CANCELED}`
    /// (after a `cancel` frame, or on its own).
    #[error("agent ended the execution CANCELED")]
    Canceled,
    /// A HarnessService stream closed without `end`: the execution's outcome
    /// is unknown (AX treats this as an error too).
    #[error("agent closed the HarnessService stream without an `end` frame")]
    MissingEnd,
    /// The call's deadline passed before `end`.
    #[error("agent call exceeded its deadline of {timeout:?}")]
    DeadlineExceeded { timeout: Duration },
    /// The agent did not report SERVING in time.
    #[error("agent at {endpoint} was not serving after {waited:?} (last: {last})")]
    NotServing {
        endpoint: String,
        waited: Duration,
        last: String,
    },
}

impl ClientError {
    /// The gRPC code, when the agent answered with one: a status, or the code
    /// of a HarnessService `end{FAILED}` (`CANCELLED` for `end{CANCELED}`).
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Status { code, .. } | Self::HarnessFailed { code, .. } => Some(*code),
            Self::Canceled => Some(Code::Cancelled),
            Self::Unreachable { .. } => Some(Code::Unavailable),
            Self::DeadlineExceeded { .. } => Some(Code::DeadlineExceeded),
            _ => None,
        }
    }

    /// Whether the failure happened before the agent could have done anything:
    /// the connection was never made or was refused. Safe to retry elsewhere.
    pub fn is_connect_failure(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Unreachable { .. })
    }
}

/// Whether tonic built `status` from a failure to connect: its source chain
/// holds the connector's [`tonic::ConnectError`] (the type, not the wording,
/// says so).
fn is_connect_error(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        if cause.is::<tonic::ConnectError>() {
            return true;
        }
        source = cause.source();
    }
    false
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        let unreachable = is_connect_error(&status);
        // Transport failures arrive as a terse status ("tcp connect error") with the
        // reason ("Connection refused") only in the source chain: keep both.
        let mut message = status.message().to_owned();
        let mut source = std::error::Error::source(&status);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !message.contains(&cause_text) {
                message = format!("{message}: {cause_text}");
            }
            source = cause.source();
        }
        if unreachable {
            Self::Unreachable { message }
        } else {
            Self::Status {
                code: status.code(),
                message,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_connection_counts_as_a_connect_failure_but_an_agent_status_does_not() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let refused = ClientError::from(Status::from_error(Box::new(tonic::ConnectError(
            Box::new(io),
        ))));
        assert!(refused.is_connect_failure(), "{refused:?}");
        assert_eq!(refused.code(), Some(Code::Unavailable));
        // Whatever an agent's status says, it came from the agent.
        let agent_says = ClientError::from(Status::unavailable(
            "tcp connect error: Connection refused (os error 111)",
        ));
        assert!(!agent_says.is_connect_failure(), "{agent_says:?}");
        assert_eq!(agent_says.code(), Some(Code::Unavailable));
    }
}
