//! Calls an AXP agent: `Connect` streams its outputs, `HealthCheck` asks if it
//! is up.
//!
//! Unlike AX's Go client, which dials a new connection per call, one
//! [`AxpClient`] keeps one HTTP/2 channel and multiplexes every call over it;
//! clone it freely (clones share the channel).
//!
//! # Guarantees
//!
//! - Every frame is checked: a frame whose ids differ from the request's is
//!   [`ClientError::MismatchedIds`], a frame with no oneof set is
//!   [`ClientError::EmptyFrame`]; either ends the stream.
//! - [`Outputs`] ends after `end` (the rest of the stream is not read, as in
//!   AX) or on a clean close without `end` (older agents).
//! - The call's deadline covers the whole stream, not just its start: a
//!   server that stalls mid-stream yields [`ClientError::DeadlineExceeded`].
//! - Dropping [`Outputs`] cancels the call; the server sees the cancel.

mod agent_service;
mod connection;
mod error;
mod options;

pub use agent_service::{AxpClient, Outputs};
pub use error::ClientError;
pub use options::{ClientOptions, TlsOptions, WaitOptions};
