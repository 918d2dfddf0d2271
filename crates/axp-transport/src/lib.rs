//! AXP transport: the gRPC protocol the AX controller uses to drive remote agents.
//!
//! - [`client::AxpClient`] calls an agent (`ax.AgentService/Connect`, `HealthCheck`),
//!   over one reused HTTP/2 channel, with deadlines, TLS and typed errors.
//! - [`server::AgentServer`] serves any [`Agent`] with the wire contract enforced
//!   (ids echoed, exactly one `end`), plus `grpc.health.v1` and reflection.
//! - [`content`] builds and reads AXP messages.
//! - [`conventions`]: the AXP port and the line an agent binary prints once it listens.
//! - [`remote::RemoteAgent`]: the one trait a controller holds every kind of
//!   remote agent by; [`remote::EndpointAgent`] is the plain `host:port` kind.
//! - [`pb`] holds the generated protobuf types (package `ax`).
//!
//! The wire contract is the protos (the repository's `proto/`, compiled into [`pb`])
//! plus the rules [`server`] enforces and [`client`] checks, listed in their Guarantees.

pub mod agent;
pub mod client;
pub mod content;
pub mod conventions;
pub mod remote;
pub mod server;

pub use agent::{Agent, AgentError, Execution, OutputStream};
pub use client::{AxpClient, ClientError, ClientOptions};
pub use conventions::DEFAULT_PORT;
pub use remote::{EndpointAgent, RemoteAgent, RemoteAgentError};
pub use server::{AgentServer, ServerOptions, ServerTls};

/// Generated protobuf types and gRPC stubs for package `ax`.
///
/// Generated from the workspace's `proto/` by `cargo xtask codegen` and
/// committed in `src/generated/`, so building this crate needs no protos and no
/// `protoc`; a test in `xtask` fails when the committed files are stale.
pub mod pb {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    include!("generated/ax.rs");

    /// Encoded `FileDescriptorSet` of the AXP protos, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("generated/ax_descriptor.bin");
}
