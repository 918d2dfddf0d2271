//! AXP transport: the gRPC protocol the AX controller uses to drive remote agents.
//!
//! - [`client::AxpClient`] calls an agent (`ax.AgentService/Connect`, `HealthCheck`),
//!   over one reused HTTP/2 channel, with deadlines, TLS and typed errors.
//! - [`server::AgentServer`] serves any [`Agent`] with the wire contract enforced
//!   (ids echoed, exactly one `end`), plus `grpc.health.v1` and reflection.
//! - [`content`] builds and reads AXP messages.
//! - [`registry`] reads the `agent_sandbox_agents` section of AX's `ax.yaml`.
//! - `sandbox_agent` (feature `agent-sandbox`): the backend that claims a sandbox per
//!   conversation (crate `sandbox-claim`) and speaks AXP to it.
//! - [`pb`] holds the generated protobuf types (package `ax`).
//!
//! The wire contract is in `proto/` and `../shared/axp-wire-contract.md`.

pub mod agent;
pub mod client;
pub mod content;
pub mod registry;
#[cfg(feature = "agent-sandbox")]
pub mod sandbox_agent;
pub mod server;

pub use agent::{Agent, AgentError, Execution, OutputStream, Protocol};
pub use client::{AxpClient, ClientError, ClientOptions, HarnessClient};
pub use server::{AgentServer, ServerOptions, ServerTls};

/// Generated protobuf types and gRPC stubs for package `ax`.
pub mod pb {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    tonic::include_proto!("ax");

    /// Encoded `FileDescriptorSet` of the AXP protos, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ax_descriptor");
}
