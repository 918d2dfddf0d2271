//! The agent-sandbox backend: runs AXP agents in sandboxes checked out per conversation.
//!
//! - [`registry`] reads the `agent_sandbox_agents` section of AX's `ax.yaml`.
//! - [`backend`] claims a sandbox per conversation (crate `sandbox-claim`) and
//!   speaks AXP to it (crate `axp-transport`).

pub mod backend;
pub mod registry;

pub use backend::{AgentSandboxAgent, ExecutionReport, SandboxAgentError, SandboxAgentOptions};
pub use registry::{
    AgentSandboxAgentConfig, ConnectionMode, Registry, RegistryError, ReleasePolicy,
};
