//! Pod loss and recreation ([`SimulatedController::replace_pod`]): what a node failure or an
//! eviction does to a Sandbox and its claim.

use super::*;

impl Shared {
    /// See [`SimulatedController::replace_pod`].
    pub(super) async fn replace_pod(&self, sandbox_name: &str) -> Result<PodStarted, ReplaceError> {
        let _serial = self.replace_lock.lock().await;
        // The Sandbox reconciler leaves the pod alone meanwhile.
        lock(&self.replacing).insert(sandbox_name.to_owned());
        let result = self.replace_pod_serialized(sandbox_name).await;
        lock(&self.replacing).remove(sandbox_name);
        result
    }

    async fn replace_pod_serialized(&self, sandbox_name: &str) -> Result<PodStarted, ReplaceError> {
        // Held while the sandbox may be an unclaimed pool member, so that `adopt` cannot
        // hand it out between "not Ready" and "Ready again".
        let mut pool_guard = Some(self.pool_lock.write().await);
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
        let owner = controller_of(&sandbox).cloned();
        let sandbox_uid = sandbox.uid().unwrap_or_default();
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
            namespace: self.namespace().to_owned(),
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
        self.record_pod(sandbox_name, &sandbox_uid, &started).await;

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
        ready: &Condition,
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
        let fwd = Condition {
            observed_generation: Some(claim_generation),
            ..ready.clone()
        };
        let name = claim.name_any();
        // Written here, not through `set_claim_ready`: what it remembers no longer holds.
        lock(&self.written_claims).remove(&claim.uid().unwrap_or_default());
        match self
            .patch_claim_status(
                &name,
                json!({ "conditions": [fwd], "sandbox": { "name": sandbox_name, "podIPs": pod_ips } }),
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
