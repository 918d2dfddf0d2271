//! Sandboxes and their pods: the Sandbox object, cold starts, bring-up to `Ready`, the
//! sweep that stops pods whose Sandbox is gone, and the core `v1` Pod objects.

use super::*;
use crate::reason::{ReasonClass, classify};

/// What a Sandbox's reconcile has to do, judged from its state and the pod this controller
/// knows for it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Bring {
    /// Nothing: its pod runs and its status says so, or it failed for good.
    Nothing,
    /// Ready with pod IPs, but started by another controller (before a restart): take the
    /// pod over as it is.
    TakeOver(IpAddr),
    /// Start its pod (unless one is known), pass the ready gate, then write `Ready`.
    Up,
}

/// Judges a (non-deleting) Sandbox: `known` is whether this controller runs its pod.
pub(super) fn judge(status: &v1beta1::SandboxStatus, known: bool) -> Bring {
    let ready = ready_condition(&status.conditions);
    let ip = status
        .pod_ips
        .iter()
        .find_map(|ip| ip.parse::<IpAddr>().ok());
    match (ready, ip) {
        (Some(c), Some(_)) if c.status == "True" && known => Bring::Nothing,
        (Some(c), Some(ip)) if c.status == "True" => Bring::TakeOver(ip),
        (Some(c), _) if c.status == "False" && classify(&c.reason) == ReasonClass::Terminal => {
            Bring::Nothing
        }
        _ => Bring::Up,
    }
}

use std::net::IpAddr;

impl Shared {
    pub(super) async fn reconcile_sandbox(
        self: &Arc<Self>,
        sandbox: &DynamicObject,
    ) -> Result<Action, ReconcileError> {
        let name = sandbox.name_any();
        let uid = sandbox.uid().unwrap_or_default();
        if sandbox.metadata.deletion_timestamp.is_some() {
            self.stop_pod(&name).await;
            return Ok(Action::await_change());
        }
        if lock(&self.replacing).contains(&name) {
            return Ok(Action::requeue(Duration::from_millis(50)));
        }
        if !self.owner_exists(sandbox).await? {
            return self.collect_orphan(sandbox).await;
        }
        let known = lock(&self.pods)
            .get(&name)
            .filter(|e| e.sandbox_uid == uid)
            .map(|e| e.pod.clone());
        let status = sandbox_status(sandbox);
        // Our own Ready write that the store has not caught up with is no reason to write again.
        let written = known.is_some() && lock(&self.written_ready).contains(&uid);
        match judge(&status, known.is_some()) {
            Bring::Nothing => Ok(Action::await_change()),
            Bring::Up if written => Ok(Action::await_change()),
            Bring::TakeOver(ip) => {
                let pod = PodStarted {
                    ip,
                    pod_name: name.clone(),
                };
                lock(&self.pods).insert(
                    name,
                    PodEntry {
                        sandbox_uid: uid,
                        pod,
                    },
                );
                Ok(Action::await_change())
            }
            Bring::Up => self.bring_up(sandbox, known).await,
        }
    }

    /// Whether the Sandbox's controller owner (claim or pool) still exists, by uid: from the
    /// store when it shows the owner, else from the API server (the store may lag).
    async fn owner_exists(&self, sandbox: &DynamicObject) -> Result<bool, ReconcileError> {
        let Some(owner) = controller_of(sandbox) else {
            return Ok(true);
        };
        let (store, ar) = match owner.kind.as_str() {
            "SandboxClaim" => (&self.claims, &self.res.claim),
            "SandboxWarmPool" => (&self.pools, &self.res.pool),
            _ => return Ok(true),
        };
        let key = ObjectRef::new_with(&owner.name, ar.clone()).within(self.namespace());
        if store
            .get(&key)
            .is_some_and(|o| o.uid().as_deref() == Some(owner.uid.as_str()))
        {
            return Ok(true);
        }
        let found = self
            .res
            .api(ar)
            .get_opt(&owner.name)
            .await
            .map_err(step("read the sandbox's owner"))?;
        Ok(found.is_some_and(|o| o.uid().as_deref() == Some(owner.uid.as_str())))
    }

    /// Deletes a Sandbox whose owner is gone (the garbage collector's job); the sweep then
    /// stops its pod (by uid, so a new Sandbox of the same name keeps its own).
    async fn collect_orphan(&self, sandbox: &DynamicObject) -> Result<Action, ReconcileError> {
        let name = sandbox.name_any();
        tracing::debug!(sandbox = %name, "simulated controller: deleting a sandbox whose owner is gone");
        let dp = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: sandbox.uid(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match self.sandboxes_api().delete(&name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => {}
            Err(e) => return Err(step("delete orphaned sandbox")(e)),
        }
        Ok(Action::await_change())
    }

    /// Starts the pod (when none is known), waits for the ready gate, then writes `Ready`
    /// (or `PodFailed`, or a forced reason) on the Sandbox; its claim forwards it.
    async fn bring_up(
        &self,
        sandbox: &DynamicObject,
        known: Option<PodStarted>,
    ) -> Result<Action, ReconcileError> {
        let name = sandbox.name_any();
        let uid = sandbox.uid().unwrap_or_default();
        let generation = sandbox.metadata.generation;
        let warm_member = controller_of(sandbox).is_some_and(|o| o.kind == "SandboxWarmPool");
        let pod = match known {
            Some(pod) => pod,
            None => {
                let status = sandbox_status(sandbox);
                if ready_condition(&status.conditions).is_none() {
                    let pending = condition(
                        "Ready",
                        false,
                        "DependenciesNotReady",
                        "Pod exists with phase: Pending",
                        generation,
                    );
                    self.patch_sandbox_status(&name, json!({ "conditions": [pending] }))
                        .await
                        .map_err(step("write sandbox status"))?;
                }
                let request = PodRequest {
                    namespace: self.namespace().to_owned(),
                    sandbox_name: name.clone(),
                    pod_name: name.clone(),
                    template: sandbox
                        .annotations()
                        .get(labels::SANDBOX_TEMPLATE_REF)
                        .cloned(),
                    warm_pool: controller_of(sandbox)
                        .filter(|o| o.kind == "SandboxWarmPool")
                        .map(|o| o.name.clone()),
                    pod_template: sandbox.data["spec"]["podTemplate"].clone(),
                };
                // After a restart, a pod of that name that the previous controller started
                // but never reported goes first.
                if self.resumed {
                    self.runtime.stop(self.namespace(), &name).await;
                }
                match self.runtime.start(&request).await {
                    Ok(pod) => {
                        self.record_pod(&name, &uid, &pod).await;
                        pod
                    }
                    Err(e) => {
                        let failed = condition("Ready", false, "PodFailed", &e.message, generation);
                        self.patch_sandbox_status(&name, json!({ "conditions": [failed] }))
                            .await
                            .map_err(step("write sandbox status"))?;
                        return Ok(Action::await_change());
                    }
                }
            }
        };
        // Pool members are Ready as soon as their pod runs; cold sandboxes wait for the gate.
        if !warm_member && !lock(&self.gated).contains(&uid) {
            let mode = *lock(&self.ready_mode);
            match mode {
                ReadyMode::After(d) => tokio::time::sleep(d).await,
                ReadyMode::Manual => {
                    if let Ok(p) = self.permits.acquire().await {
                        p.forget();
                    }
                }
            }
            lock(&self.gated).insert(uid.clone());
        }
        let forced = lock(&self.forced_sandboxes).get(&name).cloned();
        let status = match &forced {
            Some(f) => {
                json!({ "conditions": [condition("Ready", false, &f.reason, &f.message, generation)] })
            }
            None => json!({
                "conditions": [condition("Ready", true, "DependenciesReady", "Pod is Ready; Service Exists", generation)],
                "podIPs": [pod.ip.to_string()],
            }),
        };
        match self.patch_sandbox_status(&name, status).await {
            Ok(()) => {}
            // Deleted meanwhile: the sweep stops the pod.
            Err(kube::Error::Api(s)) if s.is_not_found() => return Ok(Action::await_change()),
            Err(e) => return Err(step("write sandbox status")(e)),
        }
        if forced.is_some() {
            lock(&self.forced_sandboxes).remove(&name);
        } else {
            lock(&self.written_ready).insert(uid);
        }
        Ok(Action::await_change())
    }

    /// Stops every pod of this controller whose Sandbox (by uid) is gone from the store:
    /// deleted directly, by its claim's cascade, or by expiry, also while a watch was down.
    ///
    /// Pods are recorded only for Sandboxes reconciled from the store, so an empty store at
    /// start needs no waiting for.
    pub(super) async fn sweep_pods(self: Arc<Self>) {
        loop {
            tokio::time::sleep(POD_SWEEP_INTERVAL).await;
            let orphans: Vec<String> = lock(&self.pods)
                .iter()
                .filter(|(name, entry)| {
                    !lock(&self.replacing).contains(*name)
                        && self
                            .stored_sandbox(name)
                            .is_none_or(|s| s.uid().as_deref() != Some(entry.sandbox_uid.as_str()))
                })
                .map(|(name, _)| name.clone())
                .collect();
            for name in orphans {
                self.stop_pod(&name).await;
            }
        }
    }

    /// Remembers the pod that runs for `sandbox` now, and writes it as a core `v1` Pod
    /// (`Running`, `Ready`, `status.podIP`), as kubelet would: clients that reach a sandbox
    /// through `pods/{name}/portforward` look the pod up by name.
    pub(super) async fn record_pod(&self, sandbox: &str, sandbox_uid: &str, pod: &PodStarted) {
        lock(&self.pods).insert(
            sandbox.to_owned(),
            PodEntry {
                sandbox_uid: sandbox_uid.to_owned(),
                pod: pod.clone(),
            },
        );
        if let Err(error) = self.publish_pod(sandbox, sandbox_uid, pod).await {
            tracing::warn!(sandbox, pod = %pod.pod_name, error = ?error, "simulated controller: Pod object not written");
        }
    }

    /// Stops the current pod of `sandbox` (by the name the runtime reported; the sandbox
    /// name when none is recorded, e.g. while it is still starting), deletes its Pod
    /// object and forgets it.
    pub(super) async fn stop_pod(&self, sandbox: &str) {
        let pod = lock(&self.pods)
            .remove(sandbox)
            .map_or_else(|| sandbox.to_owned(), |p| p.pod.pod_name);
        self.runtime.stop(self.namespace(), &pod).await;
        match self.pods_api().delete(&pod, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => {
                // Owned by its Sandbox, so the cascade removes it in the end.
                tracing::debug!(sandbox, pod, error = ?error, "simulated controller: Pod object not deleted");
            }
        }
    }

    /// Core `v1` pods of the namespace.
    fn pods_api(&self) -> Api<DynamicObject> {
        let ar = ApiResource {
            group: String::new(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: "Pod".into(),
            plural: "pods".into(),
        };
        Api::namespaced_with(self.res.client.clone(), self.namespace(), &ar)
    }

    /// Writes (or overwrites, after a replacement) the Pod object of `pod`, owned by its
    /// Sandbox.
    async fn publish_pod(
        &self,
        sandbox: &str,
        sandbox_uid: &str,
        pod: &PodStarted,
    ) -> Result<(), kube::Error> {
        let api = self.pods_api();
        let ip = pod.ip.to_string();
        let body = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod.pod_name,
                "namespace": self.namespace(),
                "labels": { "agents.x-k8s.io/sandbox-name-hash": name_hash(sandbox) },
                "ownerReferences": [{
                    "apiVersion": self.api_version_of(SANDBOX_GROUP),
                    "kind": "Sandbox",
                    "name": sandbox,
                    "uid": sandbox_uid,
                    "controller": true,
                    "blockOwnerDeletion": true,
                }],
            },
            "spec": { "containers": [{ "name": "agent", "image": "example.com/agent:latest" }] },
        });
        api.patch(
            &pod.pod_name,
            &PatchParams::apply("simulated-agent-sandbox-controller").force(),
            &Patch::Apply(body),
        )
        .await?;
        let now = jiff::Timestamp::now().to_string();
        let status = json!({ "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{ "ip": ip }],
            "conditions": [{ "type": "Ready", "status": "True", "lastTransitionTime": now }],
        }});
        api.patch_status(
            &pod.pod_name,
            &PatchParams::default(),
            &Patch::Merge(status),
        )
        .await?;
        Ok(())
    }

    /// A Sandbox stamped from `template`: named `name`, or `<generate>-<suffix>`.
    pub(super) fn sandbox_body(
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
            "namespace": self.namespace(),
            "annotations": { labels::SANDBOX_TEMPLATE_REF: template.name_any() },
            "labels": { labels::SANDBOX_TEMPLATE_REF_HASH: name_hash(&template.name_any()) },
        });
        if let Some(n) = name {
            metadata["name"] = json!(n);
        }
        if let Some(g) = generate {
            // Upstream uses generateName `<pool>-`; we pick the suffix ourselves so the
            // name is known before the create returns (and a retried create cannot make two).
            let n = self
                .counter
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let suffix = &name_hash(&format!(
                "{g}{n}{}{}",
                template.name_any(),
                jiff::Timestamp::now()
            ))[..5];
            metadata["name"] = json!(format!("{g}-{suffix}"));
        }
        json!({
            "apiVersion": self.api_version_of(SANDBOX_GROUP),
            "kind": "Sandbox",
            "metadata": metadata,
            "spec": spec,
        })
    }

    /// Creates a Sandbox; one that exists already (a create whose answer was lost) is read.
    pub(super) async fn create_sandbox(
        &self,
        body: Value,
    ) -> Result<DynamicObject, ReconcileError> {
        let obj: DynamicObject =
            serde_json::from_value(body).map_err(|source| ReconcileError::Build {
                what: "Sandbox",
                source,
            })?;
        match self
            .sandboxes_api()
            .create(&PostParams::default(), &obj)
            .await
        {
            Ok(s) => Ok(s),
            Err(kube::Error::Api(s)) if s.is_already_exists() => self
                .sandboxes_api()
                .get(&obj.name_any())
                .await
                .map_err(step("read existing sandbox")),
            Err(e) => Err(step("create sandbox")(e)),
        }
    }

    /// Cold path: a Sandbox named after the claim, owned by it; the Sandbox reconciler
    /// starts its pod.
    pub(super) async fn cold_start(
        &self,
        claim: &DynamicObject,
        template: &DynamicObject,
        forced: Option<ForcedReason>,
    ) -> Result<DynamicObject, ReconcileError> {
        let name = claim.name_any();
        let mut body = self.sandbox_body(Some(&name), None, template);
        body["metadata"]["ownerReferences"] =
            self.owner_ref(EXTENSIONS_GROUP, "SandboxClaim", claim);
        body["metadata"]["labels"][labels::CLAIM_UID] = json!(claim.uid().unwrap_or_default());
        body["metadata"]["labels"][labels::LAUNCH_TYPE] = json!("cold");
        if let Some(f) = forced {
            lock(&self.forced_sandboxes).insert(name.clone(), f);
        }
        let sandbox = self.create_sandbox(body).await?;
        if controller_of(&sandbox).is_none_or(|o| Some(o.uid.as_str()) != claim.uid().as_deref()) {
            // Upstream reports this as ReconcilerError; an orphan of an earlier claim of the
            // same name goes once the garbage collector (the Sandbox reconciler) removes it.
            return Err(ReconcileError::NotControlled { sandbox: name });
        }
        Ok(sandbox)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(ready: Option<(&str, &str)>, ips: &[&str]) -> v1beta1::SandboxStatus {
        v1beta1::SandboxStatus {
            conditions: ready
                .map(|(s, r)| condition("Ready", s == "True", r, "m", None))
                .into_iter()
                .collect(),
            pod_ips: ips.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_new_sandbox_is_brought_up() {
        assert_eq!(judge(&status(None, &[]), false), Bring::Up);
        let pending = status(Some(("False", "DependenciesNotReady")), &[]);
        assert_eq!(judge(&pending, false), Bring::Up);
        assert_eq!(
            judge(&pending, true),
            Bring::Up,
            "a started pod still needs Ready"
        );
    }

    #[test]
    fn a_ready_sandbox_is_left_alone_or_taken_over_after_a_restart() {
        let ready = status(Some(("True", "DependenciesReady")), &["10.0.0.3"]);
        assert_eq!(judge(&ready, true), Bring::Nothing);
        assert_eq!(
            judge(&ready, false),
            Bring::TakeOver("10.0.0.3".parse().unwrap())
        );
    }

    #[test]
    fn a_sandbox_that_failed_for_good_is_not_started_again() {
        for reason in [
            "PodFailed",
            "PodSucceeded",
            "InvalidConfiguration",
            "SandboxExpired",
        ] {
            let failed = status(Some(("False", reason)), &[]);
            assert_eq!(judge(&failed, false), Bring::Nothing, "{reason}");
        }
    }
}
