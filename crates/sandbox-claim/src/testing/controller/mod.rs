//! A simulated agent-sandbox controller that drives the fake cluster through a real
//! `kube::Client`, i.e. over the same HTTP path as the upstream controller, and writes what
//! the upstream controllers write (the conformance suite checks it against their CRDs).
//!
//! Implemented: cold path (Sandbox named after the claim, owned by it), warm pools (keep
//! `replicas` ready members owned by the pool; a claim adopts a ready one, moving the
//! ownerReference and stripping the pool label; the pool replenishes), `Ready` forwarding
//! with pod IPs, `WarmPoolNotFound` / `TemplateNotFound`, forced failure reasons, claim
//! lifecycle expiry (`Delete`, `DeleteForeground`, `Retain`), pod stop on claim delete,
//! pod loss and recreation ([`SimulatedController::replace_pod`]: node failure, eviction),
//! and a core `v1` Pod object per running pod (named as the runtime reported, `Running`,
//! `Ready`, `status.podIP`/`podIPs`; rewritten on replacement, deleted when the pod stops), so
//! that `pods/{name}/portforward` of the fake API server reaches the pod.
//! Not implemented: env / volume claim template merging, additionalPodMetadata validation,
//! Services, suspend/resume, sandbox-level lifecycle.
//!
//! Parts: [`claims`] (claim reconciling: where a claim's sandbox comes from, `Ready`
//! forwarding), [`warm_pools`] (keeping pools full, adoption), [`sandboxes`] (Sandbox objects
//! and their pods: cold starts, bring-up, pod replacement), [`expiry`] (claim lifecycle).

mod claims;
mod expiry;
mod sandboxes;
mod warm_pools;

use super::runtime::{PodRequest, PodRuntime, PodRuntimeError, PodStarted};
use crate::api_version::{ApiVersion, EXTENSIONS_GROUP, SANDBOX_GROUP};
use crate::labels;
use futures::StreamExt;
use futures::future::BoxFuture;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// When a cold sandbox turns Ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadyMode {
    /// After this delay from pod start.
    After(Duration),
    /// Only when [`SimulatedController::make_ready`] hands out a permit.
    Manual,
}

/// A failure the controller will report for upcoming claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForcedReason {
    /// `Ready` reason (e.g. `PodFailed`, `InvalidMetadata`).
    pub reason: String,
    /// `Ready` message.
    pub message: String,
}

struct Shared {
    client: Client,
    namespace: String,
    version: ApiVersion,
    runtime: Arc<dyn PodRuntime>,
    ready_mode: Mutex<ReadyMode>,
    permits: Arc<Semaphore>,
    forced: Mutex<VecDeque<ForcedReason>>,
    /// Claim uid → what we did for it.
    claims: Mutex<HashMap<String, ClaimState>>,
    /// Sandbox name → its current pod (as the runtime reported it), so a stop always
    /// reaches the pod that runs now, also after [`SimulatedController::replace_pod`].
    pods: Mutex<HashMap<String, PodStarted>>,
    pool_lock: tokio::sync::Mutex<()>,
    /// Serializes pod replacements.
    replace_lock: tokio::sync::Mutex<()>,
    counter: std::sync::atomic::AtomicU64,
}

#[derive(Clone, Debug, Default)]
struct ClaimState {
    sandbox: Option<String>,
    shutdown_time: Option<String>,
    provisioned: bool,
}

/// The simulated controller; stops when dropped.
pub struct SimulatedController {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for SimulatedController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedController")
            .field("namespace", &self.shared.namespace)
            .field("version", &self.shared.version)
            .finish_non_exhaustive()
    }
}

impl Drop for SimulatedController {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// FNV-1a 32-bit as 8 hex chars: upstream's `NameHash`.
pub fn name_hash(name: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

fn resource(group: &str, version: ApiVersion, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.as_str().into(),
        api_version: format!("{group}/{}", version.as_str()),
        kind: kind.into(),
        plural: plural.into(),
    }
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Value {
    let mut c = json!({
        "type": type_,
        "status": if status { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "lastTransitionTime": jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or(jiff::Timestamp::now()).to_string(),
    });
    if let Some(g) = generation {
        c["observedGeneration"] = json!(g);
    }
    c
}

fn is_ready(sandbox: &DynamicObject) -> bool {
    sandbox.data["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

impl SimulatedController {
    /// Starts the controller for one namespace and API version.
    pub fn start(
        client: Client,
        namespace: &str,
        version: ApiVersion,
        runtime: Arc<dyn PodRuntime>,
        ready_mode: ReadyMode,
    ) -> Self {
        let shared = Arc::new(Shared {
            client,
            namespace: namespace.to_owned(),
            version,
            runtime,
            ready_mode: Mutex::new(ready_mode),
            permits: Arc::new(Semaphore::new(0)),
            forced: Mutex::new(VecDeque::new()),
            claims: Mutex::new(HashMap::new()),
            pods: Mutex::new(HashMap::new()),
            pool_lock: tokio::sync::Mutex::new(()),
            replace_lock: tokio::sync::Mutex::new(()),
            counter: std::sync::atomic::AtomicU64::new(0),
        });
        let claims_task = tokio::spawn(Arc::clone(&shared).run_claims());
        let pools_task = tokio::spawn(Arc::clone(&shared).run_pools());
        Self {
            shared,
            tasks: vec![claims_task, pools_task],
        }
    }

    /// Changes when cold sandboxes turn Ready (applies to sandboxes started afterwards).
    pub fn set_ready_mode(&self, mode: ReadyMode) {
        *lock(&self.shared.ready_mode) = mode;
    }

    /// In [`ReadyMode::Manual`], lets `n` waiting sandboxes turn Ready.
    pub fn make_ready(&self, n: usize) {
        self.shared.permits.add_permits(n);
    }

    /// The next claim the controller provisions fails with `reason` instead of becoming
    /// ready. Claim-side reasons (`InvalidMetadata`, …) are set before any sandbox exists;
    /// sandbox-side ones (`PodFailed`, `SandboxExpired`, …) are forwarded from the Sandbox.
    pub fn fail_next(&self, reason: &str, message: &str) {
        lock(&self.shared.forced).push_back(ForcedReason {
            reason: reason.into(),
            message: message.into(),
        });
    }

    /// The API version the controller speaks.
    pub fn api_version(&self) -> ApiVersion {
        self.shared.version
    }

    /// The pod the controller believes runs for `sandbox_name` now (`None` before its pod
    /// started, after it failed to start, and once it was stopped).
    pub fn pod(&self, sandbox_name: &str) -> Option<PodStarted> {
        lock(&self.shared.pods).get(sandbox_name).cloned()
    }

    /// Replaces the pod of `sandbox_name` as a node failure or eviction would (upstream
    /// recreates a deleted Pod, with the sandbox name and a new IP): stops the
    /// old pod ([`PodRuntime::stop`]), marks the Sandbox `Ready=False` reason
    /// `DependenciesNotReady` ("Pod does not exist") with `status.podIPs` cleared and
    /// forwards that to its claim (`Ready` and `status.sandbox.podIPs` cleared, as the
    /// upstream claim controller forwards the Sandbox's `Ready`), starts a new pod
    /// ([`PodRuntime::start`]), and marks both `Ready=True` (`DependenciesReady`) with the
    /// new IP. Returns the new pod.
    ///
    /// Works on claimed sandboxes and on unclaimed warm-pool members (those are not
    /// adoptable while their pod is replaced). Later claim deletes and expiry stop the new
    /// pod; pool membership is unchanged.
    ///
    /// # Ready mode
    /// [`ReadyMode`] is **not** honoured: the sandbox is Ready again as soon as the runtime
    /// reports the new pod started (like warm-pool members), and no [`Self::make_ready`]
    /// permit is consumed. To hold the not-Ready gap open, use a runtime whose `start`
    /// waits for the test.
    ///
    /// # Errors
    /// [`ReplaceError::SandboxNotFound`] when there is no such (non-deleting) Sandbox, or it
    /// disappeared mid-way (a new pod started by then is stopped again);
    /// [`ReplaceError::NoPod`] when the Sandbox has no pod IPs (its pod is still starting,
    /// or failed); [`ReplaceError::Get`] / [`ReplaceError::MarkNotReady`] /
    /// [`ReplaceError::MarkReady`] on API errors; [`ReplaceError::Start`] when the runtime
    /// fails to start the new pod (the Sandbox and claim then report `PodFailed`, as
    /// upstream does for a failed pod).
    ///
    /// # Caveats
    /// Replacements are serialized. A claim deleted during the replacement is not an error
    /// (the new pod is stopped by the delete, or by this call when it finds the Sandbox gone).
    pub async fn replace_pod(&self, sandbox_name: &str) -> Result<PodStarted, ReplaceError> {
        self.shared.replace_pod(sandbox_name).await
    }
}

/// Why [`SimulatedController::replace_pod`] failed, named after the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceError {
    /// There is no Sandbox of that name (or it is being deleted, or went away mid-way).
    #[error("sandbox {sandbox} not found")]
    SandboxNotFound {
        /// Sandbox name.
        sandbox: String,
    },
    /// Reading the Sandbox or its claim failed.
    #[error("failed to read {kind} {name}")]
    Get {
        /// `Sandbox` or `SandboxClaim`.
        kind: &'static str,
        /// Object name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The Sandbox has no pod to lose: no `status.podIPs` (still starting, or failed).
    #[error("sandbox {sandbox} has no running pod to replace")]
    NoPod {
        /// Sandbox name.
        sandbox: String,
    },
    /// Writing the not-Ready status (no pod IPs) failed.
    #[error("failed to mark {kind} {name} not ready")]
    MarkNotReady {
        /// `Sandbox` or `SandboxClaim`.
        kind: &'static str,
        /// Object name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The runtime did not start the new pod.
    #[error("pod runtime failed to start the new pod of sandbox {sandbox}")]
    Start {
        /// Sandbox name.
        sandbox: String,
        /// The runtime's error.
        #[source]
        source: PodRuntimeError,
    },
    /// Writing the Ready status with the new IP failed.
    #[error("failed to mark {kind} {name} ready")]
    MarkReady {
        /// `Sandbox` or `SandboxClaim`.
        kind: &'static str,
        /// Object name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn claims_api(&self) -> Api<DynamicObject> {
        let ar = resource(
            EXTENSIONS_GROUP,
            self.version,
            "SandboxClaim",
            "sandboxclaims",
        );
        Api::namespaced_with(self.client.clone(), &self.namespace, &ar)
    }

    fn sandboxes_api(&self) -> Api<DynamicObject> {
        let ar = resource(SANDBOX_GROUP, self.version, "Sandbox", "sandboxes");
        Api::namespaced_with(self.client.clone(), &self.namespace, &ar)
    }

    fn pools_api(&self) -> Api<DynamicObject> {
        let ar = resource(
            EXTENSIONS_GROUP,
            self.version,
            "SandboxWarmPool",
            "sandboxwarmpools",
        );
        Api::namespaced_with(self.client.clone(), &self.namespace, &ar)
    }

    fn templates_api(&self) -> Api<DynamicObject> {
        let ar = resource(
            EXTENSIONS_GROUP,
            self.version,
            "SandboxTemplate",
            "sandboxtemplates",
        );
        Api::namespaced_with(self.client.clone(), &self.namespace, &ar)
    }

    fn api_version_of(&self, group: &str) -> String {
        format!("{group}/{}", self.version.as_str())
    }

    fn owner_ref(&self, group: &str, kind: &str, owner: &DynamicObject) -> Value {
        json!([{
            "apiVersion": self.api_version_of(group),
            "kind": kind,
            "name": owner.name_any(),
            "uid": owner.uid().unwrap_or_default(),
            "controller": true,
            "blockOwnerDeletion": true,
        }])
    }
}
