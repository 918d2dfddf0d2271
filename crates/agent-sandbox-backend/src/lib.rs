//! Runs AXP agents in [agent-sandbox](https://github.com/kubernetes-sigs/agent-sandbox)
//! sandboxes, one per conversation: the backend that joins `sandbox-claim` (the
//! `SandboxClaim` lifecycle) and `axp-transport` (the AXP client), configured by
//! the `agent_sandbox_agents` section of AX's `ax.yaml`.
//!
//! # Expected flow
//!
//! 1. Load the registry ([`Registry::from_file`]) and build a backend for an
//!    entry ([`AgentSandboxAgent::from_config`]), or build one from
//!    [`SandboxAgentOptions`] ([`AgentSandboxAgent::new`]).
//! 2. [`AgentSandboxAgent::connect`] for a conversation's first execution
//!    claims a sandbox (or adopts the claim this controller made before a
//!    restart), waits until it is Ready, and calls the agent at `podIP:port`
//!    (connection `direct`, from inside the cluster) or through a port-forward to
//!    its pod (connection `port-forward`, from outside the cluster); the
//!    agent-sandbox router cannot carry gRPC, so there is no router mode.
//! 3. Later executions of the conversation reuse the endpoint without waiting
//!    again; the claim's lifetime is renewed while the conversation is active.
//! 4. [`AgentSandboxAgent::release`] gives the sandbox back when the
//!    conversation ends; [`AgentSandboxAgent::close`] gives back all of them.
//!
//! The backend is also an [`axp_transport::remote::RemoteAgent`], so a
//! controller can hold it beside plain AXP endpoints as `Box<dyn RemoteAgent>`.
//!
//! # Modules
//!
//! - [`registry`]: the `ax.yaml` section, parsed and validated.
//! - [`options`]: how the backend claims and connects, and how an entry becomes that.
//! - [`error`]: which step of an execution failed.
//! - [`metrics`]: the backend's Prometheus metrics, registered in the host's registry.
//! - [`portforward`]: the port-forward connection mode's tunnels and their errors.
//! - The backend itself: the handle ([`AgentSandboxAgent`]), the per-conversation
//!   state, one execution with its re-resolve and retry, claim renewal, and release.
//!
//! # Tracing
//!
//! Each execution is a span `execution` (fields `conversation_id`, `exec_id`, `outcome`)
//! under the caller's current span, with children `acquire` (sandbox-claim's: `create_claim`,
//! `wait_ready`), `connect` (the call, up to the agent's response headers) and `stream` (its
//! outputs). The call carries the span's W3C trace context to the agent, and a claim the
//! execution creates records it in the annotation `opentelemetry.io/trace-context`, as the
//! agent-sandbox SDKs do.
//! - [`testing`] (feature `testing`): loopback addresses for "pods" on one machine.
//!
//! # Example
//!
//! ```no_run
//! use agent_sandbox_backend::{AgentSandboxAgent, Registry};
//! use axp_transport::content;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = Registry::from_file("config/ax.yaml")?;
//! let entry = registry.get("py").ok_or("ax.yaml registers no agent `py`")?;
//! let agent = AgentSandboxAgent::from_config(kube::Client::try_default().await?, entry).await?;
//!
//! let start = content::planner_start("print(6 * 7)", "");
//! let report = agent
//!     .connect("conversation-1", "exec-1", start, |batch| {
//!         println!("{}", content::planner_view(&batch));
//!     })
//!     .await?;
//! println!("ran in {} ({} frames)", report.sandbox.sandbox_name, report.frames);
//! agent.release("conversation-1").await?;
//! # Ok(()) }
//! ```
//!
//! `examples/run_a_conversation.rs` is the same as a program.

mod agent;
mod client;
mod conversations;
pub mod error;
mod execution;
pub mod metrics;
pub mod options;
pub mod portforward;
pub mod registry;
mod release;
mod remote;
mod renewal;
#[cfg(feature = "testing")]
pub mod testing;

pub use agent::AgentSandboxAgent;
pub use error::SandboxAgentError;
pub use execution::{ExecutionReport, Reached, TRACE_CONTEXT_ANNOTATION};
pub use metrics::BackendMetrics;
pub use options::{ConfigError, ConnectionMode, ReleasePolicy, SandboxAgentOptions};
pub use registry::{AgentSandboxAgentConfig, Registry, RegistryError};
