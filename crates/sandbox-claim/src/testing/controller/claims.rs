//! Claim reconciling: where a claim's sandbox comes from (a warm pool's member or a cold
//! start from the template), the reasons a claim fails before any sandbox exists, and
//! forwarding `Ready` to the claim.

use super::*;

/// Reasons the upstream claim controller sets on the claim itself, before any sandbox.
const CLAIM_SIDE_REASONS: &[&str] = &[
    "InvalidMetadata",
    "EnvVarsInjectionRejected",
    "VolumeClaimTemplatesError",
    "ClaimExpired",
];

impl Shared {
    pub(super) async fn run_claims(self: Arc<Self>) {
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

    pub(super) async fn claim_deleted(&self, claim: &DynamicObject) {
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

    pub(super) async fn patch_claim_status(
        &self,
        name: &str,
        status: Value,
    ) -> Result<(), kube::Error> {
        self.claims_api()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .map(drop)
    }

    pub(super) async fn set_claim_ready(
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
    pub(super) fn reconcile_claim(
        self: Arc<Self>,
        claim: DynamicObject,
    ) -> BoxFuture<'static, Result<(), kube::Error>> {
        Box::pin(self.reconcile_claim_inner(claim))
    }

    pub(super) async fn reconcile_claim_inner(
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

    /// Finds the pool to adopt from and the template to cold-start from.
    pub(super) async fn resolve_sources(
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

    pub(super) async fn provision(
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
    pub(super) async fn not_found(
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

    pub(super) fn remember_sandbox(&self, claim: &DynamicObject, sandbox: &str) {
        lock(&self.claims)
            .entry(claim.uid().unwrap_or_default())
            .or_default()
            .sandbox = Some(sandbox.to_owned());
    }
}
