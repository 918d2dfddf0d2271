//! Warm pools: keeping `replicas` ready members, and a claim adopting one.

use super::*;

impl Shared {
    pub(super) async fn run_pools(self: Arc<Self>) {
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

    /// Adopts a ready pool member: the claim becomes its controller owner and the pool label
    /// goes, as in upstream's warm adoption.
    pub(super) async fn adopt(
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

    /// Keeps `replicas` non-deleting members for a pool (upstream's pool controller,
    /// simplified:
    /// members turn Ready as soon as their pod starts).
    pub(super) async fn ensure_pool(&self, pool_name: &str) -> Result<(), kube::Error> {
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
                    self.record_pod(&name, &p).await;
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
}
