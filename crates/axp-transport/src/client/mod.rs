//! Calls AXP agents: [`AxpClient`] speaks `ax.AgentService` (the AX fork with
//! `subagent_prompt`), [`HarnessClient`] speaks `ax.HarnessService` (upstream
//! google/ax since June 2026). Both take the same [`ClientOptions`] and
//! report the same [`ClientError`].
//!
//! Unlike AX's Go client, which dials a new connection per call, one client
//! keeps one HTTP/2 channel and multiplexes every call over it; clone it
//! freely (clones share the channel).
//!
//! # Guarantees
//!
//! - Every frame is checked: a frame whose ids differ from the request's is
//!   [`ClientError::MismatchedIds`] (AgentService) or
//!   [`ClientError::MismatchedConversation`] (HarnessService), a frame with no
//!   oneof set is [`ClientError::EmptyFrame`]; either ends the stream.
//! - [`Outputs`] ends after `end` (the rest of the stream is not read, as in
//!   AX) or on a clean close without `end` (older agents).
//! - [`HarnessOutputs`] ends cleanly only after `end{COMPLETED}`; FAILED,
//!   CANCELED and a stream without `end` are typed errors
//!   ([`ClientError::HarnessFailed`], [`ClientError::Canceled`],
//!   [`ClientError::MissingEnd`]).
//! - The call's deadline covers the whole stream, not just its start: a
//!   server that stalls mid-stream yields [`ClientError::DeadlineExceeded`].
//! - Dropping the outputs cancels the call; the server sees the cancel.

mod agent_service;
mod connection;
mod error;
mod harness_service;
mod options;

pub use agent_service::{AxpClient, Outputs};
pub use error::ClientError;
pub use harness_service::{Canceller, HarnessClient, HarnessOutputs};
pub use options::{ClientOptions, TlsOptions, WaitOptions};
