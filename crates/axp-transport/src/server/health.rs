//! The server's readiness switch, reported on `grpc.health.v1` and AXP `HealthCheck`.

use std::sync::{Arc, atomic::Ordering};

use tonic_health::{ServingStatus, server::HealthReporter};

use super::{AGENT_SERVICE_NAME, HARNESS_SERVICE_NAME, execution::Shared};

/// Turns the server's readiness on and off, for `grpc.health.v1` (services
/// `""`, `ax.AgentService` and `ax.HarnessService`) and AXP `HealthCheck`.
///
/// Set SERVING exactly when the agent can run work: AX's harness client waits
/// (up to 60 s) for `""` to say SERVING before its first call.
#[derive(Clone)]
pub struct HealthControl {
    pub(super) reporter: HealthReporter,
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for HealthControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthControl")
            .field("serving", &self.shared.serving.load(Ordering::Relaxed))
            .finish()
    }
}

impl HealthControl {
    /// Reports SERVING: the agent is ready to run work.
    pub async fn set_serving(&self) {
        self.set(true).await;
    }

    /// Reports NOT_SERVING: probes fail, so Kubernetes stops sending traffic.
    pub async fn set_not_serving(&self) {
        self.set(false).await;
    }

    /// Whether SERVING is being reported.
    pub fn is_serving(&self) -> bool {
        self.shared.serving.load(Ordering::SeqCst)
    }

    async fn set(&self, serving: bool) {
        self.shared.serving.store(serving, Ordering::SeqCst);
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in ["", AGENT_SERVICE_NAME, HARNESS_SERVICE_NAME] {
            self.reporter.set_service_status(service, status).await;
        }
    }
}
