//! Options: the agent's (from flags and env, see [`Cli`]) and each execution's (from AgentService's
//! `AgentStart.agent_config` or HarnessService's `HarnessStart.harness_config`: the same JSON options).

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use axp_transport::{DEFAULT_PORT, ServerOptions};
use serde::Deserialize;

use crate::{metrics::AgentMetrics, worker::WorkerOptions};

/// How the agent runs code.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The worker processes' binary and limits.
    pub worker: WorkerOptions,
    /// Serve only the first conversation seen; refuse others with PERMISSION_DENIED.
    pub pin_conversation: bool,
    /// Conversations with a live worker at once when not pinned; the least recently used idle one is evicted.
    pub max_conversations: usize,
    /// Timeout of an execution that does not set `timeout_secs`.
    pub default_timeout: Duration,
    /// Largest `timeout_secs` an execution may ask for.
    pub max_timeout: Duration,
    /// Output kept and sent per stream (stdout, stderr) of an execution that does not set `output_limit_bytes`.
    pub default_output_limit: u64,
    /// Largest `output_limit_bytes` an execution may ask for.
    pub max_output_limit: u64,
    /// How long a timed-out cell may take to stop after SIGINT before its worker is killed.
    pub interrupt_grace: Duration,
    /// How often complete lines of output are sent, at most.
    pub flush_interval: Duration,
    /// Where executions, restarts, timeouts and truncations are counted.
    pub metrics: AgentMetrics,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            worker: WorkerOptions::default(),
            // One pod per conversation: a sandbox reused by mistake must not leak state.
            pin_conversation: true,
            max_conversations: 16,
            // Below the planner's 30–60 s sub-agent deadline, so the model gets a result, not an error.
            default_timeout: Duration::from_secs(25),
            max_timeout: Duration::from_secs(3600),
            default_output_limit: 1 << 20,
            // Two capped streams plus the structured copy must fit the 16 MiB gRPC message limit.
            max_output_limit: 4 << 20,
            // Long enough for Python to reach a bytecode boundary; short enough for "timeout + about a second".
            interrupt_grace: Duration::from_millis(500),
            // A print loop gives ~40 frames a second instead of one per line.
            flush_interval: Duration::from_millis(25),
            // Counted always (a few atomics); served only with --metrics-listen.
            metrics: AgentMetrics::default(),
        }
    }
}

/// Per-execution options, from `agent_config` / `harness_config` (JSON object; empty means defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct ExecOptions {
    /// Wall-clock timeout of this execution.
    pub timeout: Duration,
    /// Output kept per stream.
    pub output_limit: u64,
    /// Start from an empty namespace.
    pub reset: bool,
}

/// Why the per-execution options were refused. `field` is the caller's name for them (`agent_config` or
/// `harness_config`), so the message names what to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Not a JSON object with the known keys.
    #[error(
        "{field} is not valid: {reason} (expected a JSON object with optional keys timeout_secs, output_limit_bytes, reset)"
    )]
    Parse {
        /// The caller's name for the options.
        field: &'static str,
        /// What the JSON parser said.
        reason: String,
    },
    /// `timeout_secs` is not a positive number within the maximum.
    #[error("{field}.timeout_secs must be > 0 and <= {max}, got {got}")]
    Timeout {
        /// The caller's name for the options.
        field: &'static str,
        /// The value sent.
        got: f64,
        /// The maximum.
        max: f64,
    },
    /// `output_limit_bytes` is above the maximum.
    #[error("{field}.output_limit_bytes must be <= {max}, got {got}")]
    OutputLimit {
        /// The caller's name for the options.
        field: &'static str,
        /// The value sent.
        got: u64,
        /// The maximum.
        max: u64,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExecOptions {
    timeout_secs: Option<f64>,
    output_limit_bytes: Option<u64>,
    reset: Option<bool>,
}

impl AgentOptions {
    /// Parses and validates the per-execution options; `field` names them in errors (see
    /// [`Protocol::config_field`](axp_transport::Protocol::config_field)).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] (sent as INVALID_ARGUMENT).
    pub fn exec_options(
        &self,
        config: &[u8],
        field: &'static str,
    ) -> Result<ExecOptions, ConfigError> {
        let raw: RawExecOptions = if config.iter().all(u8::is_ascii_whitespace) {
            RawExecOptions::default()
        } else {
            serde_json::from_slice::<Option<RawExecOptions>>(config)
                .map_err(|e| ConfigError::Parse {
                    field,
                    reason: e.to_string(),
                })?
                .unwrap_or_default()
        };
        let timeout = match raw.timeout_secs {
            None => self.default_timeout,
            Some(secs) => {
                let max = self.max_timeout.as_secs_f64();
                if !(secs.is_finite() && secs > 0.0 && secs <= max) {
                    return Err(ConfigError::Timeout {
                        field,
                        got: secs,
                        max,
                    });
                }
                Duration::from_secs_f64(secs)
            }
        };
        let output_limit = raw.output_limit_bytes.unwrap_or(self.default_output_limit);
        if output_limit > self.max_output_limit {
            return Err(ConfigError::OutputLimit {
                field,
                got: output_limit,
                max: self.max_output_limit,
            });
        }
        Ok(ExecOptions {
            timeout,
            output_limit,
            reset: raw.reset.unwrap_or(false),
        })
    }
}

/// The command line. Every flag has an environment variable fallback.
#[derive(Debug, clap::Parser)]
#[command(
    name = "python-sandbox-agent",
    version,
    about = "AXP agent that runs Python in a supervised, embedded interpreter (one sandbox pod per conversation)",
    long_about = "AXP agent that runs Python in a supervised, embedded interpreter (one sandbox pod per conversation).\n\n\
        Serves ax.AgentService (the AX fork) and ax.HarnessService (upstream AX) on one port, grpc.health.v1 \
        (SERVING once the Python worker is up) and reflection. The code to run is AgentStart.subagent_prompt, or the \
        last user text message (legacy `History Summary:/Prompt:` envelope stripped); fenced ```python blocks are \
        run in order. Per-execution options go in agent_config (AgentService) or harness_config (HarnessService) \
        JSON: {\"timeout_secs\": 10, \"output_limit_bytes\": 65536, \"reset\": false}.\n\n\
        On start it prints `listening on <addr>` on stdout (logs go to stderr)."
)]
pub struct Cli {
    /// Worker mode (internal).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Address to serve AXP (both services) on (use port 0 to pick a free port; the chosen address is printed on stdout).
    #[arg(long, env = "LISTEN_ADDR", default_value_t = flag_defaults::listen())]
    pub listen: SocketAddr,
    /// Default execution timeout in seconds (`timeout_secs` in agent_config / harness_config overrides it).
    #[arg(long, env = "PYTHON_TIMEOUT_SECS", default_value_t = flag_defaults::agent().default_timeout.as_secs_f64())]
    pub timeout_secs: f64,
    /// Largest timeout an execution may ask for, in seconds.
    #[arg(long, env = "PYTHON_MAX_TIMEOUT_SECS", default_value_t = flag_defaults::agent().max_timeout.as_secs_f64())]
    pub max_timeout_secs: f64,
    /// Default output kept per stream (stdout, stderr) per execution, in bytes; the rest is dropped with a marker.
    #[arg(long, env = "PYTHON_OUTPUT_LIMIT_BYTES", default_value_t = flag_defaults::agent().default_output_limit)]
    pub output_limit_bytes: u64,
    /// Largest output limit an execution may ask for, in bytes.
    #[arg(long, env = "PYTHON_MAX_OUTPUT_LIMIT_BYTES", default_value_t = flag_defaults::agent().max_output_limit)]
    pub max_output_limit_bytes: u64,
    /// Address-space limit of the Python worker in MiB (RLIMIT_AS; 0 = unlimited).
    #[arg(long, env = "PYTHON_MEMORY_LIMIT_MB", default_value_t = flag_defaults::mib(flag_defaults::limits().memory_bytes))]
    pub memory_limit_mb: u64,
    /// Largest file the Python code may write, in MiB (RLIMIT_FSIZE; 0 = unlimited).
    #[arg(long, env = "PYTHON_FILE_SIZE_LIMIT_MB", default_value_t = flag_defaults::mib(flag_defaults::limits().file_size_bytes))]
    pub file_size_limit_mb: u64,
    /// Open files the Python worker may have (RLIMIT_NOFILE).
    #[arg(long, env = "PYTHON_OPEN_FILES", default_value_t = flag_defaults::limits().open_files)]
    pub open_files: u64,
    /// Refuse subprocess, os.system, os.exec* and os.posix_spawn in Python code (os.fork is always refused).
    #[arg(long, env = "PYTHON_BLOCK_SUBPROCESS")]
    pub block_subprocess: bool,
    /// Run the Python code in this virtual environment (made with `python3 -m venv` from the Python the agent
    /// embeds): its site-packages on sys.path and sys.executable its `bin/python`, as if run by that interpreter.
    #[arg(long, env = "PYTHON_VENV", value_name = "DIR")]
    pub python_venv: Option<PathBuf>,
    /// Also pass this environment variable to the Python worker (repeat, or separate with commas). The worker
    /// otherwise gets only PATH, HOME, TMPDIR, LANG, LC_*, TZ, CPython's PYTHON* and a few more (see the README);
    /// AXP_TOKEN and AXP_TOKEN_FILE are never passed.
    #[arg(
        long = "worker-env",
        env = "PYTHON_WORKER_ENV",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub worker_env: Vec<String>,
    /// Serve any number of conversations (one worker each) instead of pinning to the first one; for local use.
    #[arg(long, env = "PYTHON_AGENT_UNPINNED")]
    pub unpinned: bool,
    /// With --unpinned: conversations with a live worker at once (the least recently used idle one is evicted).
    #[arg(long, env = "PYTHON_MAX_CONVERSATIONS", default_value_t = flag_defaults::agent().max_conversations)]
    pub max_conversations: usize,
    /// File holding the bearer token AXP callers must send (`authorization: Bearer <token>`).
    #[arg(long, env = "AXP_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The bearer token itself (prefer --token-file; the value is never logged).
    #[arg(long = "token", env = "AXP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Seconds running executions get to finish after SIGTERM before they are cancelled.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = ServerOptions::default().grace_period.as_secs_f64())]
    pub grace_period_secs: f64,
    /// Largest gRPC message, in bytes.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = ServerOptions::default().max_message_size)]
    pub max_message_bytes: usize,
    /// Executions running at once across all conversations; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "MAX_CONCURRENT_EXECUTIONS", default_value_t = ServerOptions::default().max_concurrent_executions)]
    pub max_concurrent_executions: usize,
    /// Testing aid: wait this long before starting the Python worker (health stays NOT_SERVING meanwhile).
    #[arg(long, hide = true, default_value_t = 0)]
    pub startup_delay_ms: u64,
    /// Testing aid: the output coalescing interval ([`AgentOptions::flush_interval`]), in milliseconds.
    #[arg(long, hide = true, default_value_t = flag_defaults::agent().flush_interval.as_millis() as u64)]
    pub flush_interval_ms: u64,
    /// Serve Prometheus metrics (OpenMetrics text at /metrics) on this address, e.g. 0.0.0.0:9464; off when
    /// unset. With port 0 the chosen address is printed on stdout as `metrics on <addr>`, before the listening line.
    #[arg(long, env = "METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log format: `text` (colours only when stderr is a terminal) or `json` (one object per line, with the
    /// execution's span fields: conversation_id, exec_id). Verbosity: RUST_LOG (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The flags' defaults, read from the options' `Default` impls so that each
/// default is defined once, there.
mod flag_defaults {
    use super::*;

    /// Every interface, on the AXP port.
    pub(super) fn listen() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_PORT))
    }

    pub(super) fn agent() -> AgentOptions {
        AgentOptions::default()
    }

    pub(super) fn limits() -> crate::worker::child::Limits {
        WorkerOptions::default().limits
    }

    /// A byte limit in MiB, as the flags take it; 0 means unlimited.
    pub(super) fn mib(bytes: Option<u64>) -> u64 {
        bytes.map_or(0, |bytes| bytes >> 20)
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run as the Python worker of an agent (speaks the pipe protocol on stdin/stdout).
    #[command(hide = true)]
    Worker(WorkerArgs),
}

/// Flags of the worker mode, set by the agent.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// RLIMIT_AS in bytes.
    #[arg(long)]
    pub memory_limit_bytes: Option<u64>,
    /// RLIMIT_FSIZE in bytes.
    #[arg(long)]
    pub file_size_limit_bytes: Option<u64>,
    /// RLIMIT_NOFILE.
    #[arg(long, default_value_t = flag_defaults::limits().open_files)]
    pub open_files: u64,
    /// Refuse subprocesses.
    #[arg(long)]
    pub block_subprocess: bool,
    /// The capture pipes are fds 3–6 (set by the agent).
    #[arg(long)]
    pub inherited_pipes: bool,
    /// Start the interpreter in this virtual environment.
    #[arg(long)]
    pub venv: Option<PathBuf>,
}

/// Environment variables the worker must not see (user code could read them).
pub use crate::worker::env::SECRET_ENV;

impl Cli {
    /// The agent options these flags describe.
    pub fn agent_options(&self) -> AgentOptions {
        let defaults = AgentOptions::default();
        let mb = |v: u64| (v > 0).then_some(v << 20);
        AgentOptions {
            worker: WorkerOptions {
                limits: crate::worker::child::Limits {
                    memory_bytes: mb(self.memory_limit_mb),
                    open_files: self.open_files,
                    file_size_bytes: mb(self.file_size_limit_mb),
                    block_subprocess: self.block_subprocess,
                    venv: self.python_venv.clone(),
                },
                pass_env: self.worker_env.clone(),
                ..defaults.worker.clone()
            },
            pin_conversation: !self.unpinned,
            max_conversations: self.max_conversations.max(1),
            default_timeout: Duration::from_secs_f64(self.timeout_secs.max(0.001)),
            max_timeout: Duration::from_secs_f64(
                self.max_timeout_secs.max(self.timeout_secs).max(0.001),
            ),
            default_output_limit: self.output_limit_bytes,
            max_output_limit: self.max_output_limit_bytes.max(self.output_limit_bytes),
            flush_interval: Duration::from_millis(self.flush_interval_ms),
            ..defaults
        }
    }

    /// The bearer token from `--token-file` or `--token`/`AXP_TOKEN`, trimmed.
    ///
    /// # Errors
    ///
    /// When the file cannot be read or the token is empty.
    pub fn bearer_token(&self) -> anyhow::Result<Option<String>> {
        use anyhow::Context as _;
        let token = match (&self.token_file, &self.token) {
            (Some(path), _) => std::fs::read_to_string(path)
                .with_context(|| format!("could not read the token file {}", path.display()))?,
            (None, Some(token)) => token.clone(),
            (None, None) => return Ok(None),
        };
        let token = token.trim().to_owned();
        anyhow::ensure!(!token.is_empty(), "the bearer token is empty");
        Ok(Some(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_flags_the_agent_runs_with_the_options_defaults() {
        use clap::Parser as _;
        let cli = Cli::try_parse_from(["python-sandbox-agent"]).unwrap();
        assert_eq!(cli.listen.port(), DEFAULT_PORT);
        assert!(cli.listen.ip().is_unspecified());
        let from_flags = cli.agent_options();
        let defaults = AgentOptions::default();
        assert_eq!(from_flags.default_timeout, defaults.default_timeout);
        assert_eq!(from_flags.max_timeout, defaults.max_timeout);
        assert_eq!(
            from_flags.default_output_limit,
            defaults.default_output_limit
        );
        assert_eq!(from_flags.max_output_limit, defaults.max_output_limit);
        assert_eq!(from_flags.max_conversations, defaults.max_conversations);
        assert_eq!(
            from_flags.worker.limits.memory_bytes,
            defaults.worker.limits.memory_bytes
        );
        assert_eq!(
            from_flags.worker.limits.file_size_bytes,
            defaults.worker.limits.file_size_bytes
        );
        assert_eq!(
            from_flags.worker.limits.open_files,
            defaults.worker.limits.open_files
        );
        let server = ServerOptions::default();
        assert_eq!(
            Duration::from_secs_f64(cli.grace_period_secs),
            server.grace_period
        );
        assert_eq!(cli.max_message_bytes, server.max_message_size);
        assert_eq!(
            cli.max_concurrent_executions,
            server.max_concurrent_executions
        );
    }

    #[test]
    fn empty_agent_config_means_defaults() {
        let options = AgentOptions::default();
        for config in [&b""[..], b"  ", b"{}", b"null"] {
            let exec = options.exec_options(config, "agent_config").unwrap();
            assert_eq!(exec.timeout, options.default_timeout);
            assert_eq!(exec.output_limit, options.default_output_limit);
            assert!(!exec.reset);
        }
    }

    #[test]
    fn agent_config_overrides_are_validated() {
        let options = AgentOptions::default();
        let exec = options
            .exec_options(
                br#"{"timeout_secs": 1.5, "output_limit_bytes": 100, "reset": true}"#,
                "agent_config",
            )
            .unwrap();
        assert_eq!(exec.timeout, Duration::from_millis(1500));
        assert_eq!(exec.output_limit, 100);
        assert!(exec.reset);
        assert!(matches!(
            options.exec_options(br#"{"timeout_secs": 0}"#, "agent_config"),
            Err(ConfigError::Timeout { .. })
        ));
        assert!(matches!(
            options.exec_options(br#"{"timeout_secs": 1e9}"#, "agent_config"),
            Err(ConfigError::Timeout { .. })
        ));
        assert!(matches!(
            options.exec_options(br#"{"output_limit_bytes": 999999999999}"#, "agent_config"),
            Err(ConfigError::OutputLimit { .. })
        ));
        assert!(matches!(
            options.exec_options(br#"{"timeout": 1}"#, "agent_config"),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            options.exec_options(b"not json", "agent_config"),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            options.exec_options(b"[1]", "agent_config"),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn errors_name_the_field_the_caller_sent() {
        let options = AgentOptions::default();
        let error = options
            .exec_options(br#"{"timeout_secs": -1}"#, "harness_config")
            .unwrap_err();
        assert!(
            error.to_string().starts_with("harness_config.timeout_secs"),
            "{error}"
        );
        let error = options
            .exec_options(b"{nope", "harness_config")
            .unwrap_err();
        assert!(
            error.to_string().starts_with("harness_config is not valid"),
            "{error}"
        );
    }
}
