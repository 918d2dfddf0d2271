//! Sandboxes and their pods: the Sandbox object, cold starts, bring-up to `Ready`, stopping
//! pods, and pod replacement (node failure, eviction).

use super::*;

impl Shared {
    /// Remembers the pod that runs for `sandbox` now, and writes it as a core `v1` Pod
    /// (`Running`, `Ready`, `status.podIP`), as kubelet would: clients that reach a sandbox
    /// through `pods/{name}/portforward` look the pod up by name.
    pub(super) async fn record_pod(&self, sandbox: &str, pod: &PodStarted) {
        lock(&self.pods).insert(sandbox.to_owned(), pod.clone());
        if let Err(error) = self.publish_pod(sandbox, pod).await {
            tracing::warn!(sandbox, pod = %pod.pod_name, error = ?error, "simulated controller: Pod object not written");
        }
    }

    /// Stops the current pod of `sandbox` (by the name the runtime reported; the sandbox
    /// name when none is recorded, e.g. while it is still starting), deletes its Pod
    /// object and forgets it.
    pub(super) async fn stop_pod(&self, sandbox: &str) {
        let pod = lock(&self.pods)
            .remove(sandbox)
            .map_or_else(|| sandbox.to_owned(), |p| p.pod_name);
        self.runtime.stop(&self.namespace, &pod).await;
        match self.pods_api().delete(&pod, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => {
                tracing::warn!(sandbox, pod, error = ?error, "simulated controller: Pod object not deleted");
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
        Api::namespaced_with(self.client.clone(), &self.namespace, &ar)
    }

    /// Writes (or overwrites, after a replacement) the Pod object of `pod`.
    async fn publish_pod(&self, sandbox: &str, pod: &PodStarted) -> Result<(), kube::Error> {
        let api = self.pods_api();
        let ip = pod.ip.to_string();
        let body = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod.pod_name,
                "namespace": self.namespace,
                "labels": { "agents.x-k8s.io/sandbox-name-hash": name_hash(sandbox) },
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

    pub(super) async fn create_sandbox(&self, body: Value) -> Result<DynamicObject, kube::Error> {
        let obj: DynamicObject = serde_json::from_value(body).map_err(kube::Error::SerdeError)?;
        self.sandboxes_api()
            .create(&PostParams::default(), &obj)
            .await
    }

    /// Cold path: Sandbox named after the claim, owned by it; Ready later.
    pub(super) async fn cold_start(
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
            self.record_pod(&name, p).await;
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

    /// See [`SimulatedController::replace_pod`].
    pub(super) async fn replace_pod(&self, sandbox_name: &str) -> Result<PodStarted, ReplaceError> {
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
        self.record_pod(sandbox_name, &started).await;

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
