//! The reference AXP agent that runs Python: an `ax.AgentService` and `ax.HarnessService` server (one port, same
//! agent) whose executions run in an embedded CPython (pyo3), made to live in an agent-sandbox pod, one pod per
//! conversation.
//!
//! - [`agent::PythonAgent`] is the [`Agent`](axp_transport::Agent): pinning, one execution at a time per
//!   conversation, timeouts, dispatch to the conversation's worker.
//! - [`worker`] is the supervised Python worker process (this binary in `worker` mode): [`worker::protocol`] on the
//!   pipe, [`worker::child`] in the worker, [`worker::supervisor`] in the agent.
//! - [`metrics`] are the agent's Prometheus metrics (served on `--metrics-listen`).
//! - [`prompt`] finds the code in an `AgentStart`; [`output`] turns output into AXP messages; [`config`] holds the
//!   flags and per-execution `agent_config` / `harness_config` options.
//! - [`init`] is what the agent binary does as PID 1 of its container (or a subreaper outside one): reaping
//!   orphans, killing what user code leaves behind, taking SIGTERM only from the runtime.
//! - [`local::LocalAgent`] spawns the real binary on a free loopback port, for tests and local runtimes.
//!
//! Run `python-sandbox-agent --help` for the flags.

pub mod agent;
pub mod config;
pub mod init;
pub mod local;
pub mod metrics;
pub mod output;
pub mod prompt;
pub mod worker;

pub use agent::PythonAgent;
pub use config::{AgentOptions, Cli, ExecOptions};
pub use local::LocalAgent;
