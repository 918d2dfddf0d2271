//! The backend's Prometheus metrics: how claims are acquired and how long that takes, the
//! readiness wait, re-resolves, API retries by error kind, active conversations, claims given
//! back, and executions by outcome.
//!
//! The host controller owns the registry and serves it (with
//! `axp_transport::metrics_http::serve`, feature `metrics-http`, or its own endpoint):
//!
//! ```no_run
//! use agent_sandbox_backend::{AgentSandboxAgent, BackendMetrics, Registry};
//!
//! # async fn run(kube: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
//! let metrics = BackendMetrics::default();
//! let mut registry = prometheus_client::registry::Registry::default();
//! metrics.register(&mut registry);
//! let ax = Registry::from_file("config/ax.yaml")?;
//! let entry = ax.get("py").ok_or("no agent `py`")?;
//! let agent = AgentSandboxAgent::from_config_with_metrics(kube, entry, metrics.clone()).await?;
//! # Ok(()) }
//! ```
//!
//! Several backends (one per `ax.yaml` entry) may share one [`BackendMetrics`]: the series
//! then count them together.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};
use sandbox_claim::{AcquirePath, RetryObserver};

/// Labels of `claim_acquire_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AcquireLabels {
    /// `warm`, `cold`, `adopt`; `none` when no sandbox was bound.
    path: &'static str,
    /// `ok`, `timeout` (not Ready by the deadline), `failed` (any other failure).
    outcome: &'static str,
}

/// A label set of one `outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// A label set of one `kind`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// A label set of one `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Why a claim stopped being used: the `reason` of `claims_released_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClaimEnd {
    /// Given back by `release`, `close` or the per-execution policy.
    Released,
    /// Found gone under a live conversation (its TTL passed, or someone deleted it).
    Expired,
    /// Deleted by [`AgentSandboxAgent::sweep_expired`](crate::AgentSandboxAgent::sweep_expired).
    Swept,
}

impl ClaimEnd {
    fn as_str(self) -> &'static str {
        match self {
            Self::Released => "released",
            Self::Expired => "expired",
            Self::Swept => "swept",
        }
    }
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Claim waits run from milliseconds (a warm pool member) to minutes (a cold image pull):
/// 5 ms doubling to about 5.5 min.
fn claim_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 17))
}

/// The backend's metrics. Cheap to clone; clones update the same series.
///
/// Metric names (after [`BackendMetrics::register`], prefix `agent_sandbox_backend_`):
///
/// | Name | Type | Labels |
/// |---|---|---|
/// | `claim_acquire_seconds` | histogram | `path` (`warm`, `cold`, `adopt`, `none`), `outcome` (`ok`, `timeout`, `failed`) |
/// | `ready_wait_seconds` | histogram | |
/// | `re_resolves_total` | counter | `outcome` (`ok`, `failed`) |
/// | `api_retries_total` | counter | `kind` (`throttled`, `server_error`, `transport`) |
/// | `active_conversations` | gauge | |
/// | `claims_released_total` | counter | `reason` (`released`, `expired`, `swept`) |
/// | `executions_total` | counter | `outcome` (`ok`, or the failed step: `claim`, `wait`, `connect`, `port_forward`, `stream`, `release`, …) |
/// | `execution_duration_seconds` | histogram | |
#[derive(Clone, Debug)]
pub struct BackendMetrics {
    claim_acquire: Histograms<AcquireLabels>,
    ready_wait: Histogram,
    re_resolves: Family<OutcomeLabels, Counter>,
    api_retries: Family<KindLabels, Counter>,
    active_conversations: Gauge,
    claims_released: Family<ReasonLabels, Counter>,
    executions: Family<OutcomeLabels, Counter>,
    execution_duration: Histogram,
}

impl Default for BackendMetrics {
    fn default() -> Self {
        Self {
            claim_acquire: Family::new_with_constructor(claim_histogram),
            ready_wait: claim_histogram(),
            re_resolves: Family::default(),
            api_retries: Family::default(),
            active_conversations: Gauge::default(),
            claims_released: Family::default(),
            executions: Family::default(),
            // Executions run from a millisecond (a print) to the agent's timeout.
            execution_duration: Histogram::new(exponential_buckets(0.001, 2.0, 20)),
        }
    }
}

/// The prefix of every metric name.
pub const PREFIX: &str = "agent_sandbox_backend";

impl BackendMetrics {
    /// Registers every metric in `registry`, under [`PREFIX`].
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix(PREFIX);
        registry.register_with_unit(
            "claim_acquire",
            "Time to create or adopt a claim and see it Ready, by path and outcome",
            Unit::Seconds,
            self.claim_acquire.clone(),
        );
        registry.register_with_unit(
            "ready_wait",
            "Time from a claim's creation or adoption until it was Ready",
            Unit::Seconds,
            self.ready_wait.clone(),
        );
        registry.register(
            "re_resolves",
            "Claims re-read after a call failed before any output",
            self.re_resolves.clone(),
        );
        registry.register(
            "api_retries",
            "Kubernetes API requests retried, by error kind",
            self.api_retries.clone(),
        );
        registry.register(
            "active_conversations",
            "Conversations the backend holds now",
            self.active_conversations.clone(),
        );
        registry.register(
            "claims_released",
            "Claims given back, found expired, or swept",
            self.claims_released.clone(),
        );
        registry.register(
            "executions",
            "Executions, by outcome (ok or the step that failed)",
            self.executions.clone(),
        );
        registry.register_with_unit(
            "execution_duration",
            "Executions from the call to the end of the agent's outputs, claim included",
            Unit::Seconds,
            self.execution_duration.clone(),
        );
    }

    /// The observer that counts `api_retries_total`; the backend puts it in the claims'
    /// retry policy.
    pub fn retry_observer(&self) -> RetryObserver {
        let retries = self.api_retries.clone();
        RetryObserver::new(move |event| {
            retries
                .get_or_create(&KindLabels {
                    kind: event.kind.as_str(),
                })
                .inc();
        })
    }

    pub(crate) fn acquired(&self, path: AcquirePath, took: f64, ready_wait: f64) {
        self.claim_acquire
            .get_or_create(&AcquireLabels {
                path: path.as_str(),
                outcome: "ok",
            })
            .observe(took);
        self.ready_wait.observe(ready_wait);
    }

    pub(crate) fn acquire_failed(&self, timed_out: bool, took: f64) {
        let outcome = if timed_out { "timeout" } else { "failed" };
        self.claim_acquire
            .get_or_create(&AcquireLabels {
                path: "none",
                outcome,
            })
            .observe(took);
    }

    pub(crate) fn re_resolved(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.re_resolves
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub(crate) fn conversation_opened(&self) {
        self.active_conversations.inc();
    }

    pub(crate) fn conversation_closed(&self) {
        self.active_conversations.dec();
    }

    pub(crate) fn released(&self, why: ClaimEnd, claims: u64) {
        self.claims_released
            .get_or_create(&ReasonLabels {
                reason: why.as_str(),
            })
            .inc_by(claims);
    }

    pub(crate) fn executed(&self, outcome: &'static str, took: f64) {
        self.executions
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.execution_duration.observe(took);
    }
}
