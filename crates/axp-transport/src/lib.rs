//! AXP transport: the gRPC protocols the AX controller uses to drive remote agents.
//!
//! Two lineages of AX speak two protocols; this crate serves and calls both,
//! with the same messages (`proto/ax.proto`) and the same agent code:
//!
//! | Protocol | AX lineage | Client | Server |
//! |---|---|---|---|
//! | `ax.AgentService` (`Connect`, `HealthCheck`) | the fork with the structured-args extension (`subagent_prompt`) | [`AxpClient`] | [`AgentServer`] |
//! | `ax.HarnessService` (bidirectional `Connect`) | upstream google/ax since June 2026, which removed AgentService | [`HarnessClient`] | [`AgentServer`] |
//!
//! Both field-number sets are frozen: they are pinned dialects, checked byte
//! for byte by the wire tests.
//!
//! - [`client`]: [`AxpClient`] and [`HarnessClient`] call an agent over one
//!   reused HTTP/2 channel, with deadlines, TLS and typed errors
//!   ([`ClientError`]).
//! - [`server`]: [`AgentServer`] serves any [`Agent`] on both protocols at
//!   once, with the wire contract enforced (ids echoed, exactly one `end`),
//!   plus `grpc.health.v1` and reflection.
//! - [`agent`]: the [`Agent`] trait an agent implements once; [`Protocol`]
//!   says which wire an [`Execution`] came on.
//! - [`content`] builds and reads AXP messages.
//! - [`conventions`]: the AXP port and the line an agent binary prints once it listens.
//! - [`remote::RemoteAgent`]: the one trait a controller holds every kind of
//!   remote agent by; [`remote::EndpointAgent`] is the plain `host:port` kind.
//! - [`trace_context`]: W3C trace context in call metadata; clients send the
//!   current span's, the server continues the caller's trace on both protocols.
//! - [`telemetry`] (feature `otlp`): OTLP span export set up from `OTEL_*`.
//! - [`metrics_http`] (feature `metrics-http`): a Prometheus registry served over HTTP.
//! - [`pb`] holds the generated protobuf types (package `ax`).
//!
//! The wire contract is the protos (the repository's `proto/`, compiled into [`pb`])
//! plus the rules [`server`] enforces and [`client`] checks, listed in their Guarantees.

pub mod agent;
pub mod client;
pub mod content;
pub mod conventions;
#[cfg(feature = "metrics-http")]
pub mod metrics_http;
pub mod remote;
pub mod server;
#[cfg(feature = "otlp")]
pub mod telemetry;
pub mod trace_context;

pub use agent::{Agent, AgentError, Execution, OutputStream, Protocol};
pub use client::{AxpClient, ClientError, ClientOptions, HarnessClient};
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
