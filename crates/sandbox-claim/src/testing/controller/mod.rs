//! A simulated agent-sandbox controller that drives the fake cluster through a real
//! `kube::Client`, i.e. over the same HTTP path as the upstream controller, and writes what
//! the upstream controllers write (the conformance suite checks it against their CRDs).
//!
//! # How it runs (as a controller-runtime controller does)
//! - Three [`kube::runtime::Controller`]s: claims (which also watch the Sandboxes they own),
//!   Sandboxes, and warm pools (which also watch the Sandboxes they own or that were adopted
//!   from them). Each keeps a reflector store fed by a watch, and a keyed work queue: an object
//!   changed many times while it waits is reconciled once, and one object is never reconciled
//!   by two workers at once, while different objects are reconciled concurrently
//!   ([`CLAIM_WORKERS`], [`SANDBOX_WORKERS`]; pools by one worker, as upstream).
//! - Level-triggered: a reconcile reads the object's current state (and its Sandbox's, from the
//!   store) and does what is missing, so a reconcile that is repeated, or that follows one that
//!   failed half-way, finishes the job instead of doing it twice. Writes happen only when the
//!   state differs from what it should be.
//! - Errors requeue the object with per-object exponential backoff ([`backon`], reset by a
//!   success); a 429 with `Retry-After` requeues after the server's delay instead.
//! - Watch errors (a 5xx, a reset, a dropped watch, `410 Gone`) re-watch or re-list after a
//!   short backoff (10 ms doubling to 2 s, reset by any event); the store is rebuilt from the list, so nothing deleted meanwhile
//!   is remembered.
//! - A restart ([`SimulatedController::restart`], or a new controller over the same server)
//!   resumes from the store: claims without status are provisioned, Sandboxes not yet Ready get
//!   their pod, Ready ones are taken over as they are.
//! - Pods follow the Sandboxes: a pod whose Sandbox is gone from the store (deleted directly,
//!   through its claim's cascade, or by expiry) is stopped by a sweep of the controller's own
//!   pods every [`POD_SWEEP_INTERVAL`].
//! - It plays Kubernetes' garbage collector for Sandboxes whose owner is gone: a reconcile
//!   that started just before its claim (or pool) was deleted may still create or adopt a
//!   Sandbox for it, after the API server's cascade ran; the Sandbox reconciler deletes such
//!   a Sandbox (uid precondition) once the API server confirms the owner no longer exists.
//!
//! # What it implements
//! Cold path (Sandbox named after the claim, owned by it), warm pools (keep `replicas`
//! members owned by the pool; a claim adopts a Ready one, moving the ownerReference and
//! stripping the pool label; the pool replenishes; a claim younger than 2 s waits for a
//! member whose pod is still starting with `Ready=False AdoptionPending` rather than start
//! cold, as upstream's `warmCandidateGracePeriod`), `Ready` forwarding with pod IPs,
//! `PodFailed` when the pod runtime cannot start a pod,
//! `WarmPoolNotFound` / `TemplateNotFound` (retried), forced failure reasons
//! ([`SimulatedController::fail_next`]), claim lifecycle expiry (`Delete`,
//! `DeleteForeground`, `Retain`), pod loss and recreation
//! ([`SimulatedController::replace_pod`]: node failure, eviction), and a core `v1` Pod
//! object per running pod (named as the runtime reported, `Running`, `Ready`,
//! `status.podIP`/`podIPs`; rewritten on replacement, deleted when the pod stops), so that
//! `pods/{name}/portforward` of the fake API server reaches the pod.
//! Not implemented: env / volume claim template merging, additionalPodMetadata validation,
//! Services, suspend/resume, sandbox-level lifecycle.
//!
//! Parts: [`claims`] (claim reconciling: where a claim's sandbox comes from, `Ready`
//! forwarding), [`warm_pools`] (keeping pools full, adoption), [`sandboxes`] (Sandbox objects
//! and their pods: bring-up, the pod sweep, pod replacement), [`expiry`] (claim lifecycle).

mod claims;
mod expiry;
mod replace;
mod sandboxes;
mod warm_pools;

use super::runtime::{PodRequest, PodRuntime, PodRuntimeError, PodStarted};
use crate::api_version::{ApiVersion, EXTENSIONS_GROUP, SANDBOX_GROUP};
use crate::labels;
use crate::types::{SandboxClaimStatus, v1beta1};
use backon::BackoffBuilder as _;
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Claims reconciled at once (upstream's `--sandbox-claim-concurrent-workers` is 50).
pub const CLAIM_WORKERS: u16 = 64;
/// Sandboxes (pod bring-ups) reconciled at once (upstream's default is 100).
pub const SANDBOX_WORKERS: u16 = 64;
/// How often the controller stops the pods whose Sandbox is gone.
pub const POD_SWEEP_INTERVAL: Duration = Duration::from_millis(100);
/// How often a warm pool is re-checked without any event (a resync period).
const POOL_RESYNC: Duration = Duration::from_secs(1);
/// How soon a claim whose pool or template is missing is tried again (upstream: on the
/// pool's or template's creation, and every minute).
const NOT_FOUND_RETRY: Duration = Duration::from_millis(500);
/// First and largest requeue delay after a failed reconcile (controller-runtime's per-item
/// limiter starts at 5 ms; the cap is kept short so that a test ends soon after faults stop).
const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

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

/// A reconcile that failed, named after the step; the object is requeued with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// An API request failed.
    #[error("simulated controller: {step} failed")]
    Api {
        /// What the controller was doing.
        step: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A Sandbox named like the claim exists but is not controlled by it.
    #[error("simulated controller: sandbox {sandbox} is not controlled by its claim")]
    NotControlled {
        /// Sandbox name.
        sandbox: String,
    },
    /// An object the controller built did not serialize.
    #[error("simulated controller: building {what} failed")]
    Build {
        /// What was being built.
        what: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

impl ReconcileError {
    /// The server's `Retry-After` of a 429, if this is one.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Api {
                source: kube::Error::Api(s),
                ..
            } if s.code == 429 => s
                .details
                .as_ref()
                .map(|d| d.retry_after_seconds)
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(u64::from(s))),
            _ => None,
        }
    }
}

/// `Result::map_err` to [`ReconcileError::Api`] for one step.
fn step(step: &'static str) -> impl FnOnce(kube::Error) -> ReconcileError {
    move |source| ReconcileError::Api { step, source }
}

/// The resources the controller speaks, for one namespace and API version.
#[derive(Clone)]
struct Resources {
    client: Client,
    namespace: String,
    version: ApiVersion,
    claim: ApiResource,
    sandbox: ApiResource,
    pool: ApiResource,
    template: ApiResource,
}

impl Resources {
    fn new(client: Client, namespace: &str, version: ApiVersion) -> Self {
        Self {
            claim: resource(EXTENSIONS_GROUP, version, "SandboxClaim", "sandboxclaims"),
            sandbox: resource(SANDBOX_GROUP, version, "Sandbox", "sandboxes"),
            pool: resource(
                EXTENSIONS_GROUP,
                version,
                "SandboxWarmPool",
                "sandboxwarmpools",
            ),
            template: resource(
                EXTENSIONS_GROUP,
                version,
                "SandboxTemplate",
                "sandboxtemplates",
            ),
            client,
            namespace: namespace.to_owned(),
            version,
        }
    }

    fn api(&self, ar: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, ar)
    }
}

/// A Sandbox's pod as the controller knows it: which Sandbox object (uid) it belongs to.
#[derive(Clone, Debug)]
struct PodEntry {
    sandbox_uid: String,
    pod: PodStarted,
}

struct Shared {
    res: Resources,
    /// Started by [`SimulatedController::restart`]: pods may exist that it does not know.
    resumed: bool,
    runtime: Arc<dyn PodRuntime>,
    ready_mode: Mutex<ReadyMode>,
    permits: Arc<Semaphore>,
    forced: Mutex<VecDeque<ForcedReason>>,
    /// Sandbox-side forced reasons, by the Sandbox they were given to.
    forced_sandboxes: Mutex<HashMap<String, ForcedReason>>,
    /// Claim uids whose first reconcile happened (a forced reason is taken once per claim).
    seen_claims: Mutex<HashSet<String>>,
    /// Claim uid → the Sandbox it got, until the store shows it.
    bound: Mutex<HashMap<String, (String, std::time::Instant)>>,
    /// Claim uid → the status this controller last wrote, so that a reconcile that reads a
    /// claim from a store that has not caught up with that write does not write it again.
    written_claims: Mutex<HashMap<String, SandboxClaimStatus>>,
    /// Sandbox uids whose `Ready=True` this controller wrote (same reason).
    written_ready: Mutex<HashSet<String>>,
    /// Sandbox uids handed to a claim, so that a store that lags never hands one out twice.
    adopted: Mutex<HashSet<String>>,
    /// Pool → names of members created but not yet seen in the store ("expectations").
    expected: Mutex<HashMap<String, HashSet<String>>>,
    /// Sandbox uids whose ready gate ([`ReadyMode`]) was passed.
    gated: Mutex<HashSet<String>>,
    /// Sandbox name → its current pod (as the runtime reported it), so a stop always
    /// reaches the pod that runs now, also after [`SimulatedController::replace_pod`].
    pods: Mutex<HashMap<String, PodEntry>>,
    /// Sandboxes whose pod [`SimulatedController::replace_pod`] is replacing now.
    replacing: Mutex<HashSet<String>>,
    /// Per-object backoff of failed reconciles.
    backoffs: Mutex<HashMap<String, backon::ExponentialBackoff>>,
    claims: Store<DynamicObject>,
    sandboxes: Store<DynamicObject>,
    pools: Store<DynamicObject>,
    /// Shared by adoptions, taken exclusively by a pod replacement (see [`Shared::adopt`]).
    pool_lock: tokio::sync::RwLock<()>,
    /// Serializes pod replacements.
    replace_lock: tokio::sync::Mutex<()>,
    counter: std::sync::atomic::AtomicU64,
}

/// What survives [`SimulatedController::restart`]: what the controller was started with.
#[derive(Clone)]
struct Setup {
    res: Resources,
    runtime: Arc<dyn PodRuntime>,
}

/// The simulated controller; stops when dropped.
pub struct SimulatedController {
    setup: Setup,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for SimulatedController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedController")
            .field("namespace", &self.setup.res.namespace)
            .field("version", &self.setup.res.version)
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

/// A condition as upstream writes it (`lastTransitionTime` to the second).
fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    let now = jiff::Timestamp::now();
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time: Time(now.round(jiff::Unit::Second).unwrap_or(now)),
        observed_generation: generation,
    }
}

/// Whether two conditions say the same (time and generation aside).
fn same_condition(a: &Condition, b: &Condition) -> bool {
    a.type_ == b.type_ && a.status == b.status && a.reason == b.reason && a.message == b.message
}

/// `status` of a claim, typed (empty when absent or malformed).
fn claim_status(claim: &DynamicObject) -> SandboxClaimStatus {
    serde_json::from_value(claim.data["status"].clone()).unwrap_or_default()
}

/// `status` of a Sandbox, typed (the shape is the same in both versions).
fn sandbox_status(sandbox: &DynamicObject) -> v1beta1::SandboxStatus {
    serde_json::from_value(sandbox.data["status"].clone()).unwrap_or_default()
}

fn ready_condition(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == "Ready")
}

fn is_ready(sandbox: &DynamicObject) -> bool {
    let status = sandbox_status(sandbox);
    ready_condition(&status.conditions).is_some_and(|c| c.status == "True")
        && !status.pod_ips.is_empty()
}

/// The controller owner of `obj`, if any.
fn controller_of(
    obj: &DynamicObject,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    obj.owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
}

fn watch_config() -> watcher::Config {
    watcher::Config::default()
}

/// The backoff of a controller's watches after an error: kube's default waits up to 30 s,
/// which a test of a few seconds cannot sit out; this one starts at 10 ms and stops growing
/// at [`BACKOFF_MAX`], and any event resets it.
fn watch_backoff() -> kube::runtime::watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(10))
        .with_max_delay(BACKOFF_MAX)
        .with_jitter()
        .without_max_times()
        .into()
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
        let setup = Setup {
            res: Resources::new(client, namespace, version),
            runtime,
        };
        let (shared, tasks) = Self::run(&setup, ready_mode, false);
        Self {
            setup,
            shared,
            tasks,
        }
    }

    /// Stops this controller and starts a new one over the same cluster and pod runtime, with
    /// nothing remembered but the [`ReadyMode`] (pending [`Self::fail_next`] reasons and
    /// [`Self::make_ready`] permits are dropped), as a controller pod that restarts: the new
    /// one rebuilds its view from the API server and finishes what was left half-done.
    pub fn restart(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let mode = *lock(&self.shared.ready_mode);
        let (shared, tasks) = Self::run(&self.setup, mode, true);
        self.shared = shared;
        self.tasks = tasks;
    }

    fn run(
        setup: &Setup,
        ready_mode: ReadyMode,
        resumed: bool,
    ) -> (Arc<Shared>, Vec<JoinHandle<()>>) {
        let res = &setup.res;
        let sandbox_ctl =
            Controller::new_with(res.api(&res.sandbox), watch_config(), res.sandbox.clone())
                .trigger_backoff(watch_backoff())
                .with_config(Config::default().concurrency(SANDBOX_WORKERS));
        let pool_ctl = Controller::new_with(res.api(&res.pool), watch_config(), res.pool.clone());
        let pools = pool_ctl.store();
        let pools_for_mapper = pool_ctl.store();
        let pool_resource = res.pool.clone();
        let pool_ctl = pool_ctl
            .watches_with(
                res.api(&res.sandbox),
                res.sandbox.clone(),
                watch_config(),
                move |sandbox| warm_pools::pools_of(&sandbox, &pools_for_mapper, &pool_resource),
            )
            .trigger_backoff(watch_backoff())
            .with_config(Config::default().concurrency(1));
        let claim_ctl =
            Controller::new_with(res.api(&res.claim), watch_config(), res.claim.clone())
                .owns_with(res.api(&res.sandbox), res.sandbox.clone(), watch_config())
                .trigger_backoff(watch_backoff())
                .with_config(Config::default().concurrency(CLAIM_WORKERS));
        let shared = Arc::new(Shared {
            res: res.clone(),
            resumed,
            runtime: Arc::clone(&setup.runtime),
            ready_mode: Mutex::new(ready_mode),
            permits: Arc::new(Semaphore::new(0)),
            forced: Mutex::new(VecDeque::new()),
            forced_sandboxes: Mutex::new(HashMap::new()),
            seen_claims: Mutex::new(HashSet::new()),
            bound: Mutex::new(HashMap::new()),
            written_claims: Mutex::new(HashMap::new()),
            written_ready: Mutex::new(HashSet::new()),
            adopted: Mutex::new(HashSet::new()),
            expected: Mutex::new(HashMap::new()),
            gated: Mutex::new(HashSet::new()),
            pods: Mutex::new(HashMap::new()),
            replacing: Mutex::new(HashSet::new()),
            backoffs: Mutex::new(HashMap::new()),
            claims: claim_ctl.store(),
            sandboxes: sandbox_ctl.store(),
            pools,
            pool_lock: tokio::sync::RwLock::new(()),
            replace_lock: tokio::sync::Mutex::new(()),
            counter: std::sync::atomic::AtomicU64::new(0),
        });
        let claims_task = drive(claim_ctl, "claim", &shared, |ctx, claim| async move {
            ctx.reconcile_claim(&claim).await
        });
        let sandboxes_task = drive(sandbox_ctl, "sandbox", &shared, |ctx, sandbox| async move {
            ctx.reconcile_sandbox(&sandbox).await
        });
        let pools_task = drive(pool_ctl, "pool", &shared, |ctx, pool| async move {
            ctx.reconcile_pool(&pool).await
        });
        let sweep_task = tokio::spawn(Arc::clone(&shared).sweep_pods());
        (
            shared,
            vec![claims_task, sandboxes_task, pools_task, sweep_task],
        )
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
        self.setup.res.version
    }

    /// The pod the controller believes runs for `sandbox_name` now (`None` before its pod
    /// started, after it failed to start, and once it was stopped).
    pub fn pod(&self, sandbox_name: &str) -> Option<PodStarted> {
        lock(&self.shared.pods)
            .get(sandbox_name)
            .map(|e| e.pod.clone())
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
        self.res.api(&self.res.claim)
    }

    fn sandboxes_api(&self) -> Api<DynamicObject> {
        self.res.api(&self.res.sandbox)
    }

    fn pools_api(&self) -> Api<DynamicObject> {
        self.res.api(&self.res.pool)
    }

    fn templates_api(&self) -> Api<DynamicObject> {
        self.res.api(&self.res.template)
    }

    fn namespace(&self) -> &str {
        &self.res.namespace
    }

    /// The Sandbox of that name in the store.
    fn stored_sandbox(&self, name: &str) -> Option<Arc<DynamicObject>> {
        self.sandboxes
            .get(&ObjectRef::new_with(name, self.res.sandbox.clone()).within(&self.res.namespace))
    }

    /// The pool of that name in the store.
    fn stored_pool(&self, name: &str) -> Option<Arc<DynamicObject>> {
        self.pools
            .get(&ObjectRef::new_with(name, self.res.pool.clone()).within(&self.res.namespace))
    }

    fn api_version_of(&self, group: &str) -> String {
        format!("{group}/{}", self.res.version.as_str())
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

    /// After a reconcile: a success forgets the object's backoff.
    fn settle(
        &self,
        key: &str,
        result: Result<Action, ReconcileError>,
    ) -> Result<Action, ReconcileError> {
        if result.is_ok() {
            lock(&self.backoffs).remove(key);
        }
        result
    }

    /// After a failed reconcile: when to try the object again.
    fn requeue(&self, key: &str, error: &ReconcileError) -> Action {
        let delay = error.retry_after().unwrap_or_else(|| {
            lock(&self.backoffs)
                .entry(key.to_owned())
                .or_insert_with(|| {
                    backon::ExponentialBuilder::default()
                        .with_min_delay(BACKOFF_MIN)
                        .with_max_delay(BACKOFF_MAX)
                        .with_jitter()
                        .without_max_times()
                        .build()
                })
                .next()
                .unwrap_or(BACKOFF_MAX)
        });
        tracing::debug!(key, ?delay, error = %error, source = ?std::error::Error::source(error), "simulated controller: reconcile failed, requeued");
        Action::requeue(delay)
    }

    /// Merge-patches `status` of a claim.
    async fn patch_claim_status(&self, name: &str, status: Value) -> Result<(), kube::Error> {
        merge_patch_status(&self.claims_api(), name, status).await
    }

    /// Writes a claim's `Ready` condition and `status.sandbox` (`None` clears it).
    async fn set_claim_ready(
        &self,
        claim: &DynamicObject,
        ready: &Condition,
        sandbox: Option<crate::types::ClaimSandboxStatus>,
    ) -> Result<(), ReconcileError> {
        let status = SandboxClaimStatus {
            conditions: vec![ready.clone()],
            sandbox,
        };
        let uid = claim.uid().unwrap_or_default();
        let same = |a: &SandboxClaimStatus| {
            a.sandbox == status.sandbox
                && a.conditions
                    .first()
                    .is_some_and(|c| same_condition(c, ready))
        };
        if lock(&self.written_claims).get(&uid).is_some_and(same) {
            return Ok(());
        }
        let mut value = serde_json::to_value(&status).map_err(|source| ReconcileError::Build {
            what: "claim status",
            source,
        })?;
        // A merge patch keeps what it leaves out: absent parts are cleared explicitly.
        match &status.sandbox {
            None => value["sandbox"] = Value::Null,
            Some(s) if s.pod_ips.is_empty() => value["sandbox"]["podIPs"] = Value::Null,
            Some(_) => {}
        }
        match self.patch_claim_status(&claim.name_any(), value).await {
            // The claim went away meanwhile: nothing left to report to.
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            Ok(()) => {
                lock(&self.written_claims).insert(uid, status);
                Ok(())
            }
            Err(e) => Err(step("write claim status")(e)),
        }
    }

    /// Merge-patches `status` of a Sandbox.
    async fn patch_sandbox_status(&self, name: &str, status: Value) -> Result<(), kube::Error> {
        merge_patch_status(&self.sandboxes_api(), name, status).await
    }
}

/// Merge-patches the `status` subresource of object `name` of `api`.
async fn merge_patch_status(
    api: &Api<DynamicObject>,
    name: &str,
    status: Value,
) -> Result<(), kube::Error> {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map(drop)
}

/// Runs `controller` on a task of its own: every object it hands out is reconciled by
/// `reconcile`, with its backoff kept under the key `{kind}/{name}` (cleared by a success,
/// grown by each error, or replaced by the server's `Retry-After`).
fn drive<F, Fut>(
    controller: Controller<DynamicObject>,
    kind: &'static str,
    shared: &Arc<Shared>,
    reconcile: F,
) -> JoinHandle<()>
where
    F: Fn(Arc<Shared>, Arc<DynamicObject>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, ReconcileError>> + Send + 'static,
{
    let reconcile = Arc::new(reconcile);
    let stream = controller.run(
        move |object, ctx: Arc<Shared>| {
            let reconcile = Arc::clone(&reconcile);
            async move {
                let key = format!("{kind}/{}", object.name_any());
                let result = reconcile(Arc::clone(&ctx), object).await;
                ctx.settle(&key, result)
            }
        },
        move |object, error, ctx| ctx.requeue(&format!("{kind}/{}", object.name_any()), error),
        Arc::clone(shared),
    );
    tokio::spawn(stream.for_each(|_| async {}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, retry_after: u32) -> ReconcileError {
        let mut status = kube::core::Status::failure("x", "y").with_code(code);
        if retry_after > 0 {
            status.details =
                serde_json::from_value(json!({ "retryAfterSeconds": retry_after })).ok();
        }
        ReconcileError::Api {
            step: "test",
            source: kube::Error::Api(Box::new(status)),
        }
    }

    #[test]
    fn a_429_requeues_after_the_servers_retry_after() {
        assert_eq!(
            api_error(429, 3).retry_after(),
            Some(Duration::from_secs(3))
        );
        assert_eq!(api_error(503, 3).retry_after(), None);
        assert_eq!(api_error(429, 0).retry_after(), None);
    }

    #[test]
    fn name_hash_is_upstreams_fnv1a() {
        assert_eq!(name_hash(""), "811c9dc5");
        assert_eq!(name_hash("a"), "e40c292c");
    }

    #[test]
    fn conditions_compare_by_meaning_not_by_time() {
        let a = condition("Ready", true, "DependenciesReady", "m", Some(1));
        let mut b = condition("Ready", true, "DependenciesReady", "m", Some(2));
        b.last_transition_time = Time(jiff::Timestamp::UNIX_EPOCH);
        assert!(same_condition(&a, &b));
        let c = condition("Ready", false, "DependenciesReady", "m", Some(1));
        assert!(!same_condition(&a, &c));
    }
}
