//! The agent's Prometheus metrics, served as text on `--metrics-listen` (off by default).
//!
//! | Name (prefix `python_sandbox_agent_`) | Type | Labels |
//! |---|---|---|
//! | `executions_total` | counter | `protocol` (`ax.AgentService`, `ax.HarnessService`), `outcome` (`completed`, `exception`, `timeout`, `worker_died`, `cancelled`, `refused`) |
//! | `execution_duration_seconds` | histogram | |
//! | `first_output_seconds` | histogram | (from the call's arrival to its first output frame) |
//! | `worker_restarts_total` | counter | `cause` (`killed`, `died_running`, `died_idle`) |
//! | `timeouts_total` | counter | `action` (`interrupted`, `killed`) |
//! | `output_truncations_total` | counter | `stream` (`stdout`, `stderr`) |
//! | `live_conversations` | gauge | |
//! | `worker_resident_memory_bytes` | gauge | (all live workers, read from `/proc` at each scrape) |

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{
        MetricType,
        counter::Counter,
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

/// The prefix of every metric name.
pub const PREFIX: &str = "python_sandbox_agent";

/// The start of the stdout line the agent binary prints when it serves metrics:
/// `metrics on <addr>`, before its listening line.
pub const METRICS_LINE_PREFIX: &str = "metrics on ";

/// The line the agent prints once it serves metrics on `addr` (without the newline).
pub fn metrics_line(addr: std::net::SocketAddr) -> String {
    format!("{METRICS_LINE_PREFIX}{addr}")
}

/// The address in a line printed by [`metrics_line`]; `None` for any other line.
pub fn parse_metrics_line(line: &str) -> Option<std::net::SocketAddr> {
    line.strip_prefix(METRICS_LINE_PREFIX)?.trim().parse().ok()
}

/// How an execution ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecOutcome {
    /// The code ran to its end.
    Completed,
    /// The code raised (the traceback is in the result).
    Exception,
    /// The code ran past its timeout (interrupted, or its worker killed).
    Timeout,
    /// The interpreter died while running it (a crash, the memory limit).
    WorkerDied,
    /// The caller cancelled it.
    Cancelled,
    /// Refused before running (bad arguments, pinned elsewhere, busy, starting).
    Refused,
}

impl ExecOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Exception => "exception",
            Self::Timeout => "timeout",
            Self::WorkerDied => "worker_died",
            Self::Cancelled => "cancelled",
            Self::Refused => "refused",
        }
    }
}

/// Why a worker was replaced, as the `cause` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartCause {
    /// Killed because its cell did not stop when interrupted (after its timeout, or a cancel).
    Killed,
    /// Died while running a cell.
    DiedRunning,
    /// Found dead between executions.
    DiedIdle,
}

impl RestartCause {
    fn as_str(self) -> &'static str {
        match self {
            Self::Killed => "killed",
            Self::DiedRunning => "died_running",
            Self::DiedIdle => "died_idle",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExecLabels {
    protocol: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    stream: &'static str,
}

/// The agent's metrics. Cheap to clone; clones update the same series.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    executions: Family<ExecLabels, Counter>,
    duration: Histogram,
    first_output: Histogram,
    restarts: Family<CauseLabels, Counter>,
    timeouts: Family<ActionLabels, Counter>,
    truncations: Family<StreamLabels, Counter>,
    live_conversations: Gauge,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self {
            executions: Family::default(),
            // A print takes a millisecond; the longest timeout is an hour: 1 ms doubling to ~1 h.
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 22)),
            // First output of a quick cell arrives within a millisecond or two: 0.1 ms doubling to ~100 s.
            first_output: Histogram::new(exponential_buckets(0.0001, 2.0, 21)),
            restarts: Family::default(),
            timeouts: Family::default(),
            truncations: Family::default(),
            live_conversations: Gauge::default(),
        }
    }
}

impl AgentMetrics {
    /// Registers every metric (and the worker memory collector) in `registry`, under [`PREFIX`].
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix(PREFIX);
        registry.register(
            "executions",
            "Executions by protocol and outcome",
            self.executions.clone(),
        );
        registry.register_with_unit(
            "execution_duration",
            "Time the code ran, as the agent saw it",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register_with_unit(
            "first_output",
            "Time from a call's arrival to its first output frame",
            Unit::Seconds,
            self.first_output.clone(),
        );
        registry.register(
            "worker_restarts",
            "Python workers replaced, by cause",
            self.restarts.clone(),
        );
        registry.register(
            "timeouts",
            "Executions past their timeout, by what stopped them",
            self.timeouts.clone(),
        );
        registry.register(
            "output_truncations",
            "Executions whose output passed the limit, by stream",
            self.truncations.clone(),
        );
        registry.register(
            "live_conversations",
            "Conversations with a Python worker now",
            self.live_conversations.clone(),
        );
        registry.register_collector(Box::new(WorkerMemory));
    }

    pub(crate) fn executed(&self, protocol: &'static str, outcome: ExecOutcome) {
        self.executions
            .get_or_create(&ExecLabels {
                protocol,
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub(crate) fn ran_for(&self, seconds: f64) {
        self.duration.observe(seconds);
    }

    pub(crate) fn first_output(&self, seconds: f64) {
        self.first_output.observe(seconds);
    }

    pub(crate) fn restarted(&self, cause: RestartCause) {
        self.restarts
            .get_or_create(&CauseLabels {
                cause: cause.as_str(),
            })
            .inc();
    }

    pub(crate) fn timed_out(&self, killed: bool) {
        let action = if killed { "killed" } else { "interrupted" };
        self.timeouts.get_or_create(&ActionLabels { action }).inc();
    }

    pub(crate) fn truncated(&self, stream: &'static str) {
        self.truncations
            .get_or_create(&StreamLabels { stream })
            .inc();
    }

    pub(crate) fn set_live_conversations(&self, count: usize) {
        self.live_conversations
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}

/// `worker_resident_memory_bytes`: the resident memory of every live worker (the spare
/// included), read from `/proc/<pid>/statm` at each scrape.
#[derive(Debug)]
struct WorkerMemory;

impl Collector for WorkerMemory {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let pids: Vec<i32> = crate::init::reaper::live_workers().pids().collect();
        let bytes: u64 = pids.into_iter().filter_map(resident_bytes).sum();
        let gauge = ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX));
        let metric = encoder.encode_descriptor(
            "worker_resident_memory",
            "Resident memory of the live Python workers",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        gauge.encode(metric)
    }
}

/// Resident memory of process `pid`, or `None` when it is gone or `/proc` is unreadable.
fn resident_bytes(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_printed_metrics_line_reads_back_as_its_address() {
        let addr = "127.0.0.1:9464".parse().unwrap();
        assert_eq!(parse_metrics_line(&metrics_line(addr)), Some(addr));
        assert_eq!(parse_metrics_line("listening on 127.0.0.1:9464"), None);
    }

    #[test]
    fn this_process_has_resident_memory() {
        let bytes = resident_bytes(std::process::id() as i32).unwrap();
        assert!(bytes > 1 << 20, "{bytes}");
        assert_eq!(resident_bytes(i32::MAX), None);
    }
}
