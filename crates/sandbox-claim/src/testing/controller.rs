//! A simulated agent-sandbox controller (REFERENCE.md §2) that drives the fake cluster
//! through a real `kube::Client`, i.e. over the same HTTP path as the upstream controller.
//!
//! Implemented: cold path (Sandbox named after the claim, owned by it), warm pools (keep
//! `replicas` ready members owned by the pool; a claim adopts a ready one, moving the
//! ownerReference and stripping the pool label; the pool replenishes), `Ready` forwarding
//! with pod IPs, `WarmPoolNotFound` / `TemplateNotFound`, forced failure reasons, claim
//! lifecycle expiry (`Delete`, `DeleteForeground`, `Retain`), pod stop on claim delete,
//! pod loss and recreation ([`SimulatedController::replace_pod`]: node failure, eviction).
//! Not implemented: env / volume claim template merging, additionalPodMetadata validation,
//! Services, suspend/resume, sandbox-level lifecycle.

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

/// Reasons the upstream claim controller sets on the claim itself, before any sandbox.
const CLAIM_SIDE_REASONS: &[&str] = &[
    "InvalidMetadata",
    "EnvVarsInjectionRejected",
    "VolumeClaimTemplatesError",
    "ClaimExpired",
];

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

    /// Replaces the pod of `sandbox_name` as a node failure or eviction would (REFERENCE.md
    /// §2.4: "a deleted Pod is recreated", with the sandbox name and a new IP): stops the
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

    async fn run_claims(self: Arc<Self>) {
        let stream = watcher(self.claims_api(), watcher::Config::default());
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(claim) | watcher::Event::InitApply(claim)) => {
                    if let Err(e) = Arc::clone(&self).reconcile_claim(claim).await {
                        tracing::warn!(error = %e, "simulated controller: claim reconcile failed");
                    }
                }
                Ok(watcher::Event::Delete(claim)) => self.claim_deleted(&claim).await,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "simulated controller: claim watch error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn run_pools(self: Arc<Self>) {
        let stream = watcher(self.pools_api(), watcher::Config::default());
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(pool) | watcher::Event::InitApply(pool)) => {
                    if let Err(e) = self.ensure_pool(&pool.name_any()).await {
                        tracing::warn!(error = %e, "simulated controller: pool reconcile failed");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "simulated controller: pool watch error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn claim_deleted(&self, claim: &DynamicObject) {
        let uid = claim.uid().unwrap_or_default();
        let state = lock(&self.claims).remove(&uid);
        if let Some(sandbox) = state.and_then(|s| s.sandbox) {
            // Kubernetes GC (the fake's owner cascade) deletes the Sandbox; the pod is ours.
            let _ = self
                .sandboxes_api()
                .delete(&sandbox, &DeleteParams::background())
                .await;
            self.stop_pod(&sandbox).await;
        }
    }

    /// Remembers the pod that runs for `sandbox` now.
    fn record_pod(&self, sandbox: &str, pod: &PodStarted) {
        lock(&self.pods).insert(sandbox.to_owned(), pod.clone());
    }

    /// Stops the current pod of `sandbox` (by the name the runtime reported; the sandbox
    /// name when none is recorded, e.g. while it is still starting) and forgets it.
    async fn stop_pod(&self, sandbox: &str) {
        let pod = lock(&self.pods)
            .remove(sandbox)
            .map_or_else(|| sandbox.to_owned(), |p| p.pod_name);
        self.runtime.stop(&self.namespace, &pod).await;
    }

    async fn patch_claim_status(&self, name: &str, status: Value) -> Result<(), kube::Error> {
        self.claims_api()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .map(drop)
    }

    async fn set_claim_ready(
        &self,
        claim: &DynamicObject,
        ready: Value,
        sandbox: Value,
    ) -> Result<(), kube::Error> {
        self.patch_claim_status(
            &claim.name_any(),
            json!({ "conditions": [ready], "sandbox": sandbox }),
        )
        .await
    }

    /// Boxed (with an explicit `Send`) because the not-found requeue recurses into it.
    fn reconcile_claim(
        self: Arc<Self>,
        claim: DynamicObject,
    ) -> BoxFuture<'static, Result<(), kube::Error>> {
        Box::pin(self.reconcile_claim_inner(claim))
    }

    async fn reconcile_claim_inner(
        self: Arc<Self>,
        claim: DynamicObject,
    ) -> Result<(), kube::Error> {
        if claim.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let uid = claim.uid().unwrap_or_default();
        let name = claim.name_any();
        let generation = claim.metadata.generation;
        let shutdown_time = claim.data["spec"]["lifecycle"]["shutdownTime"]
            .as_str()
            .map(str::to_owned);
        let (first_time, reschedule) = {
            let mut claims = lock(&self.claims);
            let state = claims.entry(uid.clone()).or_default();
            let first = !state.provisioned;
            state.provisioned = true;
            let reschedule = state.shutdown_time != shutdown_time;
            state.shutdown_time.clone_from(&shutdown_time);
            (first, reschedule)
        };
        if let Some(t) = shutdown_time
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        {
            if t <= jiff::Timestamp::now() {
                return self.expire(&claim).await;
            }
            if reschedule {
                let me = Arc::clone(&self);
                let (uid, name, at) = (uid.clone(), name.clone(), t);
                tokio::spawn(async move {
                    let wait = at.duration_since(jiff::Timestamp::now());
                    tokio::time::sleep(Duration::try_from(wait).unwrap_or_default()).await;
                    me.check_expiry(&uid, &name).await;
                });
            }
        }
        if !first_time {
            return Ok(());
        }
        let forced = lock(&self.forced).pop_front();
        if let Some(f) = &forced
            && CLAIM_SIDE_REASONS.contains(&f.reason.as_str())
        {
            let ready = condition("Ready", false, &f.reason, &f.message, generation);
            return self.set_claim_ready(&claim, ready, json!(null)).await;
        }
        self.provision(claim, forced).await
    }

    async fn check_expiry(&self, uid: &str, name: &str) {
        let Ok(Some(claim)) = self.claims_api().get_opt(name).await else {
            return;
        };
        if claim.uid().as_deref() != Some(uid) {
            return;
        }
        let due = claim.data["spec"]["lifecycle"]["shutdownTime"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .is_some_and(|t| t <= jiff::Timestamp::now());
        if due && let Err(e) = self.expire(&claim).await {
            tracing::warn!(error = %e, "simulated controller: expiry failed");
        }
    }

    /// REFERENCE.md §2.5: set `ClaimExpired`, then delete per `shutdownPolicy`.
    async fn expire(&self, claim: &DynamicObject) -> Result<(), kube::Error> {
        let name = claim.name_any();
        let ready = condition(
            "Ready",
            false,
            "ClaimExpired",
            "Claim expired. Sandbox cleanup initiated.",
            claim.metadata.generation,
        );
        let policy = claim.data["spec"]["lifecycle"]["shutdownPolicy"]
            .as_str()
            .unwrap_or("Retain");
        let sandbox = lock(&self.claims)
            .get(&claim.uid().unwrap_or_default())
            .and_then(|s| s.sandbox.clone());
        match policy {
            "Delete" | "DeleteForeground" => {
                self.patch_claim_status(&name, json!({ "conditions": [ready] }))
                    .await?;
                let dp = if policy == "Delete" {
                    DeleteParams::background()
                } else {
                    DeleteParams::foreground()
                };
                match self.claims_api().delete(&name, &dp).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
                    Err(e) => Err(e),
                }
            }
            _ => {
                if let Some(sb) = sandbox {
                    let _ = self
                        .sandboxes_api()
                        .delete(&sb, &DeleteParams::background())
                        .await;
                    self.stop_pod(&sb).await;
                }
                self.patch_claim_status(&name, json!({ "conditions": [ready], "sandbox": null }))
                    .await
            }
        }
    }

    /// Finds the pool to adopt from and the template to cold-start from.
    async fn resolve_sources(
        &self,
        claim: &DynamicObject,
    ) -> Result<Result<(Option<String>, String), (String, String)>, kube::Error> {
        let spec = &claim.data["spec"];
        match self.version {
            ApiVersion::V1beta1 => {
                let pool = spec["warmPoolRef"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                match self.pools_api().get_opt(&pool).await? {
                    None => Ok(Err((
                        "WarmPoolNotFound".into(),
                        format!("SandboxWarmPool \"{pool}\" not found"),
                    ))),
                    Some(p) => {
                        let template = p.data["spec"]["sandboxTemplateRef"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned();
                        Ok(Ok((Some(pool), template)))
                    }
                }
            }
            ApiVersion::V1alpha1 => {
                let template = spec["sandboxTemplateRef"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let policy = spec["warmpool"].as_str().unwrap_or("default");
                let pool = match policy {
                    "none" => None,
                    "default" | "" => self
                        .pools_api()
                        .list(&ListParams::default())
                        .await?
                        .items
                        .into_iter()
                        .find(|p| p.data["spec"]["sandboxTemplateRef"]["name"] == template.as_str())
                        .map(|p| p.name_any()),
                    named => Some(named.to_owned()),
                };
                Ok(Ok((pool, template)))
            }
        }
    }

    async fn provision(
        self: Arc<Self>,
        claim: DynamicObject,
        forced: Option<ForcedReason>,
    ) -> Result<(), kube::Error> {
        let generation = claim.metadata.generation;
        let (pool, template) = match self.resolve_sources(&claim).await? {
            Ok(found) => found,
            Err((reason, message)) => return self.not_found(claim, &reason, &message).await,
        };
        if forced.is_none()
            && let Some(pool) = &pool
            && let Some(sandbox) = self.adopt(&claim, pool).await?
        {
            let ips = sandbox.data["status"]["podIPs"].clone();
            let name = sandbox.name_any();
            self.remember_sandbox(&claim, &name);
            let ready = condition(
                "Ready",
                true,
                "DependenciesReady",
                "Pod is Ready; Service Exists",
                generation,
            );
            self.set_claim_ready(&claim, ready, json!({ "name": name, "podIPs": ips }))
                .await?;
            let me = Arc::clone(&self);
            let pool = pool.clone();
            tokio::spawn(async move {
                if let Err(e) = me.ensure_pool(&pool).await {
                    tracing::warn!(error = %e, "simulated controller: replenish failed");
                }
            });
            return Ok(());
        }
        let Some(tpl) = self.templates_api().get_opt(&template).await? else {
            return self
                .not_found(
                    claim,
                    "TemplateNotFound",
                    &format!("SandboxTemplate \"{template}\" not found"),
                )
                .await;
        };
        self.cold_start(claim, &tpl, forced).await
    }

    /// Reports a missing pool/template and retries like the controller does (it
    /// re-reconciles on pool/template creation; here a 500 ms requeue).
    async fn not_found(
        self: Arc<Self>,
        claim: DynamicObject,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        let ready = condition("Ready", false, reason, message, claim.metadata.generation);
        self.set_claim_ready(&claim, ready, json!(null)).await?;
        let uid = claim.uid().unwrap_or_default();
        let me = Arc::clone(&self);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let Ok(Some(fresh)) = me.claims_api().get_opt(&claim.name_any()).await else {
                return;
            };
            if fresh.uid().as_deref() != Some(uid.as_str()) {
                return;
            }
            if let Some(state) = lock(&me.claims).get_mut(&uid) {
                state.provisioned = false;
            }
            if let Err(e) = Arc::clone(&me).reconcile_claim(fresh).await {
                tracing::warn!(error = %e, "simulated controller: requeue failed");
            }
        });
        Ok(())
    }

    fn remember_sandbox(&self, claim: &DynamicObject, sandbox: &str) {
        lock(&self.claims)
            .entry(claim.uid().unwrap_or_default())
            .or_default()
            .sandbox = Some(sandbox.to_owned());
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

    /// Adopts a ready pool member (REFERENCE.md §2.1 "Warm adoption").
    async fn adopt(
        &self,
        claim: &DynamicObject,
        pool: &str,
    ) -> Result<Option<DynamicObject>, kube::Error> {
        let _guard = self.pool_lock.lock().await;
        let lp = ListParams::default().labels(&format!(
            "{}={}",
            labels::WARM_POOL_SANDBOX,
            name_hash(pool)
        ));
        let members = self.sandboxes_api().list(&lp).await?;
        let Some(candidate) = members
            .items
            .into_iter()
            .find(|s| s.metadata.deletion_timestamp.is_none() && is_ready(s))
        else {
            return Ok(None);
        };
        let name = candidate.name_any();
        let patch = json!({
            "metadata": {
                "ownerReferences": self.owner_ref(EXTENSIONS_GROUP, "SandboxClaim", claim),
                "labels": {
                    labels::WARM_POOL_SANDBOX: null,
                    labels::LAUNCH_TYPE: "warm",
                    labels::CLAIM_UID: claim.uid().unwrap_or_default(),
                },
                "annotations": { labels::POD_NAME: name },
            }
        });
        let adopted = self
            .sandboxes_api()
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        Ok(Some(adopted))
    }

    fn sandbox_body(
        &self,
        name: Option<&str>,
        generate: Option<&str>,
        template: &DynamicObject,
    ) -> Value {
        let tspec = &template.data["spec"];
        let mut spec = json!({ "podTemplate": tspec["podTemplate"] });
        if !tspec["volumeClaimTemplates"].is_null() {
            spec["volumeClaimTemplates"] = tspec["volumeClaimTemplates"].clone();
        }
        if !tspec["service"].is_null() {
            spec["service"] = tspec["service"].clone();
        }
        let mut metadata = json!({
            "namespace": self.namespace,
            "annotations": { labels::SANDBOX_TEMPLATE_REF: template.name_any() },
            "labels": { labels::SANDBOX_TEMPLATE_REF_HASH: name_hash(&template.name_any()) },
        });
        if let Some(n) = name {
            metadata["name"] = json!(n);
        }
        if let Some(g) = generate {
            // Upstream uses generateName `<pool>-`; we pick the suffix ourselves so the
            // name is known before the create returns.
            let n = self
                .counter
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let suffix = &name_hash(&format!("{g}{n}{}", template.name_any()))[..5];
            metadata["name"] = json!(format!("{g}-{suffix}"));
        }
        json!({
            "apiVersion": self.api_version_of(SANDBOX_GROUP),
            "kind": "Sandbox",
            "metadata": metadata,
            "spec": spec,
        })
    }

    async fn create_sandbox(&self, body: Value) -> Result<DynamicObject, kube::Error> {
        let obj: DynamicObject = serde_json::from_value(body).map_err(kube::Error::SerdeError)?;
        self.sandboxes_api()
            .create(&PostParams::default(), &obj)
            .await
    }

    /// Cold path: Sandbox named after the claim, owned by it; Ready later.
    async fn cold_start(
        self: Arc<Self>,
        claim: DynamicObject,
        template: &DynamicObject,
        forced: Option<ForcedReason>,
    ) -> Result<(), kube::Error> {
        let name = claim.name_any();
        let mut body = self.sandbox_body(Some(&name), None, template);
        body["metadata"]["ownerReferences"] =
            self.owner_ref(EXTENSIONS_GROUP, "SandboxClaim", &claim);
        body["metadata"]["labels"][labels::CLAIM_UID] = json!(claim.uid().unwrap_or_default());
        body["metadata"]["labels"][labels::LAUNCH_TYPE] = json!("cold");
        let sandbox = match self.create_sandbox(body).await {
            Ok(s) => s,
            Err(kube::Error::Api(s)) if s.is_already_exists() => {
                self.sandboxes_api().get(&name).await?
            }
            Err(e) => return Err(e),
        };
        self.remember_sandbox(&claim, &name);
        let not_ready = condition(
            "Ready",
            false,
            "SandboxNotReady",
            "Sandbox is not ready",
            claim.metadata.generation,
        );
        self.set_claim_ready(&claim, not_ready, json!({ "name": name }))
            .await?;
        let me = Arc::clone(&self);
        let template_name = template.name_any();
        tokio::spawn(async move {
            if let Err(e) = me
                .bring_up(&claim, &sandbox, Some(template_name), forced)
                .await
            {
                tracing::warn!(error = %e, "simulated controller: bring-up failed");
            }
        });
        Ok(())
    }

    /// Starts the pod, waits for the ready gate, then flips the Sandbox and claim.
    async fn bring_up(
        &self,
        claim: &DynamicObject,
        sandbox: &DynamicObject,
        template: Option<String>,
        forced: Option<ForcedReason>,
    ) -> Result<(), kube::Error> {
        let name = sandbox.name_any();
        let generation = claim.metadata.generation;
        let sandboxes = self.sandboxes_api();
        let pending = condition(
            "Ready",
            false,
            "DependenciesNotReady",
            "Pod exists with phase: Pending",
            sandbox.metadata.generation,
        );
        sandboxes
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": { "conditions": [pending.clone()] } })),
            )
            .await?;
        let mut fwd = pending;
        fwd["observedGeneration"] = json!(generation);
        self.set_claim_ready(claim, fwd, json!({ "name": name }))
            .await?;

        let request = PodRequest {
            namespace: self.namespace.clone(),
            sandbox_name: name.clone(),
            pod_name: name.clone(),
            template,
            warm_pool: None,
            pod_template: sandbox.data["spec"]["podTemplate"].clone(),
        };
        let started = self.runtime.start(&request).await;
        if let Ok(p) = &started {
            self.record_pod(&name, p);
        }
        let mode = *lock(&self.ready_mode);
        match mode {
            ReadyMode::After(d) => tokio::time::sleep(d).await,
            ReadyMode::Manual => {
                if let Ok(p) = self.permits.acquire().await {
                    p.forget();
                }
            }
        }
        let (ready, ips) = match (started, forced) {
            (_, Some(f)) => (
                condition("Ready", false, &f.reason, &f.message, None),
                json!([]),
            ),
            (Err(e), None) => (
                condition("Ready", false, "PodFailed", &e.message, None),
                json!([]),
            ),
            (Ok(p), None) => (
                condition(
                    "Ready",
                    true,
                    "DependenciesReady",
                    "Pod is Ready; Service Exists",
                    None,
                ),
                json!([p.ip.to_string()]),
            ),
        };
        let mut sb_ready = ready.clone();
        sb_ready["observedGeneration"] = json!(sandbox.metadata.generation.unwrap_or(1));
        let mut status = json!({ "conditions": [sb_ready] });
        if ips.as_array().is_some_and(|a| !a.is_empty()) {
            status["podIPs"] = ips.clone();
        }
        sandboxes
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await?;
        let mut fwd = ready;
        fwd["observedGeneration"] = json!(generation.unwrap_or(1));
        let mut sb = json!({ "name": name });
        if ips.as_array().is_some_and(|a| !a.is_empty()) {
            sb["podIPs"] = ips;
        }
        match self.set_claim_ready(claim, fwd, sb).await {
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            r => r,
        }
    }

    /// Keeps `replicas` non-deleting members for a pool (REFERENCE.md §2.7, simplified:
    /// members turn Ready as soon as their pod starts).
    async fn ensure_pool(&self, pool_name: &str) -> Result<(), kube::Error> {
        let _guard = self.pool_lock.lock().await;
        let Some(pool) = self.pools_api().get_opt(pool_name).await? else {
            return Ok(());
        };
        let replicas = pool.data["spec"]["replicas"].as_i64().unwrap_or(1);
        let template_name = pool.data["spec"]["sandboxTemplateRef"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let Some(template) = self.templates_api().get_opt(&template_name).await? else {
            return Ok(());
        };
        let hash = name_hash(pool_name);
        let lp = ListParams::default().labels(&format!("{}={hash}", labels::WARM_POOL_SANDBOX));
        let have = self
            .sandboxes_api()
            .list(&lp)
            .await?
            .items
            .iter()
            .filter(|s| s.metadata.deletion_timestamp.is_none())
            .count();
        let have = i64::try_from(have).unwrap_or(i64::MAX);
        for _ in have..replicas {
            let mut body = self.sandbox_body(None, Some(pool_name), &template);
            body["metadata"]["ownerReferences"] =
                self.owner_ref(EXTENSIONS_GROUP, "SandboxWarmPool", &pool);
            body["metadata"]["labels"][labels::WARM_POOL_SANDBOX] = json!(hash);
            body["metadata"]["labels"]["agents.x-k8s.io/created-by"] = json!("controller");
            let sandbox = self.create_sandbox(body).await?;
            let name = sandbox.name_any();
            let request = PodRequest {
                namespace: self.namespace.clone(),
                sandbox_name: name.clone(),
                pod_name: name.clone(),
                template: Some(template_name.clone()),
                warm_pool: Some(pool_name.to_owned()),
                pod_template: sandbox.data["spec"]["podTemplate"].clone(),
            };
            let status = match self.runtime.start(&request).await {
                Ok(p) => {
                    self.record_pod(&name, &p);
                    json!({
                    "conditions": [condition("Ready", true, "DependenciesReady", "Pod is Ready", sandbox.metadata.generation)],
                    "podIPs": [p.ip.to_string()],
                    })
                }
                Err(e) => json!({
                    "conditions": [condition("Ready", false, "PodFailed", &e.message, sandbox.metadata.generation)],
                }),
            };
            self.sandboxes_api()
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "status": status })),
                )
                .await?;
        }
        Ok(())
    }

    /// See [`SimulatedController::replace_pod`].
    async fn replace_pod(&self, sandbox_name: &str) -> Result<PodStarted, ReplaceError> {
        let _serial = self.replace_lock.lock().await;
        // Held while the sandbox may be an unclaimed pool member, so that `adopt` cannot
        // hand it out between "not Ready" and "Ready again".
        let mut pool_guard = Some(self.pool_lock.lock().await);
        let sandbox_gone = || ReplaceError::SandboxNotFound {
            sandbox: sandbox_name.to_owned(),
        };
        let sandboxes = self.sandboxes_api();
        let sandbox = sandboxes
            .get_opt(sandbox_name)
            .await
            .map_err(|source| ReplaceError::Get {
                kind: "Sandbox",
                name: sandbox_name.to_owned(),
                source,
            })?
            .filter(|s| s.metadata.deletion_timestamp.is_none())
            .ok_or_else(sandbox_gone)?;
        if sandbox.data["status"]["podIPs"]
            .as_array()
            .is_none_or(Vec::is_empty)
        {
            return Err(ReplaceError::NoPod {
                sandbox: sandbox_name.to_owned(),
            });
        }
        let owner = sandbox
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
            .cloned();
        let warm_pool = owner
            .as_ref()
            .filter(|o| o.kind == "SandboxWarmPool")
            .map(|o| o.name.clone());
        if warm_pool.is_none() {
            // A claimed sandbox never goes back to a pool.
            pool_guard = None;
        }
        let claim = match owner.as_ref().filter(|o| o.kind == "SandboxClaim") {
            Some(o) => self
                .claims_api()
                .get_opt(&o.name)
                .await
                .map_err(|source| ReplaceError::Get {
                    kind: "SandboxClaim",
                    name: o.name.clone(),
                    source,
                })?
                .filter(|c| c.uid().as_deref() == Some(o.uid.as_str())),
            None => None,
        };
        let sandbox_generation = sandbox.metadata.generation.unwrap_or(1);
        let claim_generation = claim
            .as_ref()
            .and_then(|c| c.metadata.generation)
            .unwrap_or(1);

        // 1. The pod is lost.
        self.stop_pod(sandbox_name).await;

        // 2. The Sandbox controller notices: Ready=False, no pod IPs; the claim forwards it.
        let gone = condition(
            "Ready",
            false,
            "DependenciesNotReady",
            "Pod does not exist",
            Some(sandbox_generation),
        );
        self.write_replace_status(
            sandbox_name,
            claim.as_ref(),
            &gone,
            json!(null),
            claim_generation,
        )
        .await
        .map_err(|e| e.into_error(sandbox_name, ReplaceError::mark_not_ready))?;

        // 3. It recreates the pod (same name, new IP).
        let request = PodRequest {
            namespace: self.namespace.clone(),
            sandbox_name: sandbox_name.to_owned(),
            pod_name: sandbox_name.to_owned(),
            template: sandbox
                .annotations()
                .get(labels::SANDBOX_TEMPLATE_REF)
                .cloned(),
            warm_pool,
            pod_template: sandbox.data["spec"]["podTemplate"].clone(),
        };
        let started = match self.runtime.start(&request).await {
            Ok(p) => p,
            Err(source) => {
                let failed = condition(
                    "Ready",
                    false,
                    "PodFailed",
                    &source.message,
                    Some(sandbox_generation),
                );
                if let Err(e) = self
                    .write_replace_status(
                        sandbox_name,
                        claim.as_ref(),
                        &failed,
                        json!(null),
                        claim_generation,
                    )
                    .await
                {
                    tracing::warn!(error = ?e, "simulated controller: PodFailed after replace not written");
                }
                return Err(ReplaceError::Start {
                    sandbox: sandbox_name.to_owned(),
                    source,
                });
            }
        };
        self.record_pod(sandbox_name, &started);

        // 4. The new pod is Ready.
        let ready = condition(
            "Ready",
            true,
            "DependenciesReady",
            "Pod is Ready; Service Exists",
            Some(sandbox_generation),
        );
        let written = self
            .write_replace_status(
                sandbox_name,
                claim.as_ref(),
                &ready,
                json!([started.ip.to_string()]),
                claim_generation,
            )
            .await;
        drop(pool_guard);
        match written {
            Ok(()) => Ok(started),
            Err(StatusWriteError::SandboxGone) => {
                // Deleted mid-way: nobody else will stop the pod we just started.
                self.stop_pod(sandbox_name).await;
                Err(sandbox_gone())
            }
            Err(e) => Err(e.into_error(sandbox_name, ReplaceError::mark_ready)),
        }
    }

    /// Writes `ready` and `pod_ips` (`null` clears them) to the Sandbox, then forwards them
    /// to its claim (if any; a claim deleted meanwhile is skipped).
    async fn write_replace_status(
        &self,
        sandbox_name: &str,
        claim: Option<&DynamicObject>,
        ready: &Value,
        pod_ips: Value,
        claim_generation: i64,
    ) -> Result<(), StatusWriteError> {
        self.sandboxes_api()
            .patch_status(
                sandbox_name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({ "status": { "conditions": [ready], "podIPs": pod_ips.clone() } }),
                ),
            )
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) if s.is_not_found() => StatusWriteError::SandboxGone,
                e => StatusWriteError::Api("Sandbox", sandbox_name.to_owned(), e),
            })?;
        let Some(claim) = claim else {
            return Ok(());
        };
        let mut fwd = ready.clone();
        fwd["observedGeneration"] = json!(claim_generation);
        let name = claim.name_any();
        match self
            .set_claim_ready(
                claim,
                fwd,
                json!({ "name": sandbox_name, "podIPs": pod_ips }),
            )
            .await
        {
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            Err(e) => Err(StatusWriteError::Api("SandboxClaim", name, e)),
            Ok(()) => Ok(()),
        }
    }
}

/// A failed status write during [`Shared::replace_pod`].
#[derive(Debug)]
enum StatusWriteError {
    SandboxGone,
    Api(&'static str, String, kube::Error),
}

impl StatusWriteError {
    fn into_error(
        self,
        sandbox: &str,
        step: fn(&'static str, String, kube::Error) -> ReplaceError,
    ) -> ReplaceError {
        match self {
            Self::SandboxGone => ReplaceError::SandboxNotFound {
                sandbox: sandbox.to_owned(),
            },
            Self::Api(kind, name, source) => step(kind, name, source),
        }
    }
}

impl ReplaceError {
    fn mark_not_ready(kind: &'static str, name: String, source: kube::Error) -> Self {
        Self::MarkNotReady { kind, name, source }
    }

    fn mark_ready(kind: &'static str, name: String, source: kube::Error) -> Self {
        Self::MarkReady { kind, name, source }
    }
}
