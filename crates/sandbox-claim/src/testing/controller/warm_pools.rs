//! Warm pools: keeping `replicas` members, and a claim adopting a Ready one.

use super::*;

/// `spec.sandboxTemplateRef.name` of a pool.
pub(super) fn template_of(pool: &DynamicObject) -> String {
    pool.data["spec"]["sandboxTemplateRef"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// `spec.replicas` of a pool (1 when unset, as the CRD defaults it).
fn replicas_of(pool: &DynamicObject) -> usize {
    pool.data["spec"]["replicas"]
        .as_i64()
        .map_or(1, |r| usize::try_from(r).unwrap_or(0))
}

/// Whether `sandbox` is a (non-deleting) member of the pool whose name hashes to `hash`.
fn is_member(sandbox: &DynamicObject, hash: &str) -> bool {
    sandbox.metadata.deletion_timestamp.is_none()
        && sandbox
            .labels()
            .get(labels::WARM_POOL_SANDBOX)
            .map(String::as_str)
            == Some(hash)
}

/// The pools a Sandbox event concerns: the pool that owns it, or, for a sandbox adopted from
/// a pool (it no longer names one), every pool of its template.
pub(super) fn pools_of(
    sandbox: &DynamicObject,
    pools: &Store<DynamicObject>,
    pool_resource: &ApiResource,
) -> Vec<ObjectRef<DynamicObject>> {
    let namespace = sandbox.namespace().unwrap_or_default();
    if let Some(owner) = controller_of(sandbox).filter(|o| o.kind == "SandboxWarmPool") {
        return pools
            .find(|p| p.name_any() == owner.name)
            .map(|p| ObjectRef::from_obj_with(&*p, pool_resource.clone()))
            .into_iter()
            .collect();
    }
    if sandbox
        .labels()
        .get(labels::LAUNCH_TYPE)
        .map(String::as_str)
        != Some("warm")
    {
        return Vec::new();
    }
    let hash = sandbox
        .labels()
        .get(labels::SANDBOX_TEMPLATE_REF_HASH)
        .cloned();
    pools
        .state()
        .into_iter()
        .filter(|p| p.namespace().unwrap_or_default() == namespace)
        .filter(|p| hash.as_deref() == Some(name_hash(&template_of(p)).as_str()))
        .map(|p| ObjectRef::from_obj_with(&*p, pool_resource.clone()))
        .collect()
}

impl Shared {
    /// Keeps `replicas` non-deleting members (upstream's pool controller, simplified: no
    /// scale-down, no staleness). Members this controller created but the store does not
    /// show yet count as members, so a lagging store never makes it create twice.
    pub(super) async fn reconcile_pool(
        self: &Arc<Self>,
        pool: &DynamicObject,
    ) -> Result<Action, ReconcileError> {
        if pool.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let pool_name = pool.name_any();
        let hash = name_hash(&pool_name);
        let members: HashSet<String> = self
            .sandboxes
            .state()
            .iter()
            .filter(|s| is_member(s, &hash))
            .map(|s| s.name_any())
            .collect();
        let have = {
            let mut expected = lock(&self.expected);
            let pending = expected.entry(pool_name.clone()).or_default();
            // Seen in the store (or already adopted out of it): no longer merely expected.
            let all: HashSet<String> = self
                .sandboxes
                .state()
                .iter()
                .map(|s| s.name_any())
                .collect();
            pending.retain(|n| !all.contains(n));
            members.len() + pending.len()
        };
        let want = replicas_of(pool);
        if have >= want {
            return Ok(Action::requeue(POOL_RESYNC));
        }
        let template_name = template_of(pool);
        let Some(template) = self
            .templates_api()
            .get_opt(&template_name)
            .await
            .map_err(step("read template"))?
        else {
            // Upstream creates nothing while the template is missing, and watches for it.
            return Ok(Action::requeue(NOT_FOUND_RETRY));
        };
        for _ in have..want {
            let mut body = self.sandbox_body(None, Some(&pool_name), &template);
            body["metadata"]["ownerReferences"] =
                self.owner_ref(EXTENSIONS_GROUP, "SandboxWarmPool", pool);
            body["metadata"]["labels"][labels::WARM_POOL_SANDBOX] = json!(hash);
            body["metadata"]["labels"][labels::LAUNCH_TYPE] = json!("warm");
            body["metadata"]["labels"]["agents.x-k8s.io/created-by"] = json!("controller");
            let obj: DynamicObject =
                serde_json::from_value(body).map_err(|source| ReconcileError::Build {
                    what: "warm pool Sandbox",
                    source,
                })?;
            let created = self
                .sandboxes_api()
                .create(&PostParams::default(), &obj)
                .await
                .map_err(step("create warm pool sandbox"))?;
            lock(&self.expected)
                .entry(pool_name.clone())
                .or_default()
                .insert(created.name_any());
        }
        Ok(Action::requeue(POOL_RESYNC))
    }

    /// Members of `pool` whose pod is still starting (not Ready, not failed for good, not
    /// being replaced).
    pub(super) fn starting_members(&self, pool: &str) -> usize {
        let hash = name_hash(pool);
        let replacing = lock(&self.replacing);
        let failed = |s: &DynamicObject| {
            ready_condition(&sandbox_status(s).conditions).is_some_and(|c| {
                c.status == "False"
                    && crate::reason::classify(&c.reason) == crate::reason::ReasonClass::Terminal
            })
        };
        self.sandboxes
            .state_filter(|s| {
                is_member(s, &hash)
                    && !is_ready(s)
                    && !failed(s)
                    && !replacing.contains(&s.name_any())
            })
            .len()
    }

    /// Adopts a Ready pool member: the claim becomes its controller owner and the pool label
    /// goes, as in upstream's warm adoption. The patch carries the member's resourceVersion,
    /// so a member changed meanwhile (adopted by another claim, its pod replaced) is not
    /// taken; the claim is then reconciled again.
    ///
    /// Claims adopt concurrently: a member is reserved (in `adopted`) when it is chosen, so no
    /// two claims choose the same one, and the reservation is dropped again if the patch does
    /// not land. A pod replacement takes the pool lock exclusively, so it waits for adoptions
    /// in flight and none starts while it runs.
    pub(super) async fn adopt(
        &self,
        claim: &DynamicObject,
        pool: &str,
    ) -> Result<Option<DynamicObject>, ReconcileError> {
        let _shared = self.pool_lock.read().await;
        let hash = name_hash(pool);
        let reservation = {
            let mut adopted = lock(&self.adopted);
            let replacing = lock(&self.replacing);
            self.sandboxes
                .find(|s| {
                    is_member(s, &hash)
                        && is_ready(s)
                        && !adopted.contains(&s.uid().unwrap_or_default())
                        && !replacing.contains(&s.name_any())
                })
                .map(|candidate| {
                    adopted.insert(candidate.uid().unwrap_or_default());
                    Reservation {
                        adopted: &self.adopted,
                        candidate,
                        landed: false,
                    }
                })
        };
        let Some(mut reservation) = reservation else {
            return Ok(None);
        };
        let candidate = &reservation.candidate;
        let name = candidate.name_any();
        let patch = json!({
            "metadata": {
                "resourceVersion": candidate.resource_version(),
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
            .await
            .map_err(step("adopt warm pool sandbox"))?;
        reservation.landed = true;
        Ok(Some(adopted))
    }
}

/// A pool member chosen by one claim: kept in `adopted` once the adoption landed, released
/// if it did not (the patch failed, or the reconcile was dropped mid-way).
struct Reservation<'a> {
    adopted: &'a Mutex<HashSet<String>>,
    candidate: Arc<DynamicObject>,
    landed: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.landed {
            lock(self.adopted).remove(&self.candidate.uid().unwrap_or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(replicas: Option<i64>) -> DynamicObject {
        let mut spec = json!({ "sandboxTemplateRef": { "name": "t" } });
        if let Some(r) = replicas {
            spec["replicas"] = json!(r);
        }
        serde_json::from_value(json!({
            "apiVersion": "extensions.agents.x-k8s.io/v1beta1",
            "kind": "SandboxWarmPool",
            "metadata": { "name": "p" },
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn a_pool_without_replicas_keeps_one_member() {
        assert_eq!(replicas_of(&pool(None)), 1);
        assert_eq!(replicas_of(&pool(Some(3))), 3);
        assert_eq!(replicas_of(&pool(Some(-1))), 0);
        assert_eq!(template_of(&pool(None)), "t");
    }

    #[test]
    fn only_labelled_non_deleting_sandboxes_are_members() {
        let mut s: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "agents.x-k8s.io/v1beta1",
            "kind": "Sandbox",
            "metadata": { "name": "p-1", "labels": { labels::WARM_POOL_SANDBOX: "h" } },
        }))
        .unwrap();
        assert!(is_member(&s, "h"));
        assert!(!is_member(&s, "other"));
        s.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        assert!(!is_member(&s, "h"));
    }
}
