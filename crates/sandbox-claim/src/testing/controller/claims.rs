//! Claim reconciling: where a claim's sandbox comes from (a warm pool's member or a cold
//! start from the template), the reasons a claim fails before any sandbox exists, and
//! forwarding the Sandbox's `Ready` to the claim.

use super::*;
use crate::reason::{ReasonClass, classify};
use crate::types::{ClaimSandboxStatus, Lifecycle};

/// How often a claim whose Sandbox is not Ready yet re-reads it from the store.
const FORWARD_RECHECK: Duration = Duration::from_millis(100);
/// How long a Sandbox this controller just made or adopted for a claim may take to show up
/// in the store before the claim is provisioned again (it may have been deleted meanwhile).
const STORE_LAG: Duration = Duration::from_secs(5);
/// How long a new claim waits for a starting warm-pool member before it starts cold
/// (upstream's `warmCandidateGracePeriod`).
const ADOPTION_GRACE: Duration = Duration::from_secs(2);

/// Whether a claim that found no Ready member should wait (`AdoptionPending`) rather than
/// start cold: members are starting and the claim is younger than [`ADOPTION_GRACE`].
pub(super) fn adoption_pending(members_starting: usize, claim_age: Duration) -> bool {
    members_starting > 0 && claim_age < ADOPTION_GRACE
}

/// Reasons the upstream claim controller sets on the claim itself, before any sandbox; once
/// set they stay until the claim changes.
const CLAIM_SIDE_REASONS: &[&str] = &[
    "InvalidMetadata",
    "EnvVarsInjectionRejected",
    "VolumeClaimTemplatesError",
    "ClaimExpired",
];

/// Where a claim's sandbox comes from.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Sources {
    /// Adopt from `pool` (if any), else cold-start from `template`.
    Found {
        pool: Option<String>,
        template: String,
    },
    /// A dependency is missing: `Ready=False` with this reason and message.
    Missing {
        reason: &'static str,
        message: String,
    },
}

/// What the claim's status should say, given its Sandbox (`None`: the claim's status is
/// right as it is).
pub(super) fn forwarded(
    claim: &DynamicObject,
    sandbox: &DynamicObject,
) -> Option<SandboxClaimStatus> {
    let current = claim_status(claim);
    let sb = sandbox_status(sandbox);
    let generation = claim.metadata.generation;
    let mut ready = match ready_condition(&sb.conditions) {
        Some(c) => Condition {
            observed_generation: generation,
            ..c.clone()
        },
        None => condition(
            "Ready",
            false,
            "SandboxNotReady",
            "Sandbox is not ready",
            generation,
        ),
    };
    let desired_sandbox = ClaimSandboxStatus {
        name: Some(sandbox.name_any()),
        pod_ips: sb.pod_ips,
    };
    let unchanged_ready =
        ready_condition(&current.conditions).filter(|c| same_condition(c, &ready));
    if let Some(c) = unchanged_ready {
        if current.sandbox.as_ref() == Some(&desired_sandbox) {
            return None;
        }
        ready.last_transition_time = c.last_transition_time.clone();
    }
    Some(SandboxClaimStatus {
        conditions: vec![ready],
        sandbox: Some(desired_sandbox),
    })
}

/// The claim's `spec.lifecycle`, typed.
pub(super) fn lifecycle(claim: &DynamicObject) -> Option<Lifecycle> {
    serde_json::from_value(claim.data["spec"]["lifecycle"].clone()).ok()
}

impl Shared {
    pub(super) async fn reconcile_claim(
        self: &Arc<Self>,
        claim: &DynamicObject,
    ) -> Result<Action, ReconcileError> {
        if claim.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let uid = claim.uid().unwrap_or_default();
        let until = expiry::until_shutdown(lifecycle(claim).as_ref(), jiff::Timestamp::now());
        if until == Some(Duration::ZERO) {
            self.expire(claim).await?;
            return Ok(Action::await_change());
        }
        // Wake up at the shutdown time (the upstream controller requeues the same way).
        let after = |action: Action| match until {
            Some(wait) => Action::requeue(wait.max(Duration::from_millis(10))),
            None => action,
        };
        let status = claim_status(claim);
        if let Some(sandbox) = self.sandbox_of(claim, &status) {
            if let Some(desired) = forwarded(claim, &sandbox) {
                let ready = desired.conditions[0].clone();
                self.set_claim_ready(claim, &ready, desired.sandbox).await?;
            }
            return Ok(self.until_ready(&sandbox, after));
        }
        if status
            .ready()
            .is_some_and(|c| CLAIM_SIDE_REASONS.contains(&c.reason.as_str()))
        {
            return Ok(after(Action::await_change()));
        }
        // Just created or adopted, not in the store yet: wait for it rather than make another.
        if lock(&self.bound)
            .get(&uid)
            .is_some_and(|(_, at)| at.elapsed() < STORE_LAG)
        {
            return Ok(Action::requeue(FORWARD_RECHECK));
        }
        // The first reconcile of a claim takes the next forced reason, if any.
        let forced = lock(&self.seen_claims)
            .insert(uid.clone())
            .then(|| lock(&self.forced).pop_front())
            .flatten();
        if let Some(f) = &forced
            && CLAIM_SIDE_REASONS.contains(&f.reason.as_str())
        {
            let ready = condition(
                "Ready",
                false,
                &f.reason,
                &f.message,
                claim.metadata.generation,
            );
            self.set_claim_ready(claim, &ready, None).await?;
            return Ok(after(Action::await_change()));
        }
        let (pool, template) = match self.resolve_sources(claim).await? {
            Sources::Found { pool, template } => (pool, template),
            Sources::Missing { reason, message } => {
                let ready = condition("Ready", false, reason, &message, claim.metadata.generation);
                if !status.ready().is_some_and(|c| same_condition(c, &ready)) {
                    self.set_claim_ready(claim, &ready, None).await?;
                }
                return Ok(Action::requeue(NOT_FOUND_RETRY));
            }
        };
        if forced.is_none()
            && let Some(pool) = &pool
        {
            if let Some(sandbox) = self.adopt(claim, pool).await? {
                let name = sandbox.name_any();
                lock(&self.bound).insert(uid, (name, std::time::Instant::now()));
                if let Some(desired) = forwarded(claim, &sandbox) {
                    let ready = desired.conditions[0].clone();
                    self.set_claim_ready(claim, &ready, desired.sandbox).await?;
                }
                return Ok(self.until_ready(&sandbox, after));
            }
            let age = claim
                .metadata
                .creation_timestamp
                .as_ref()
                .and_then(|t| Duration::try_from(jiff::Timestamp::now().duration_since(t.0)).ok())
                .unwrap_or_default();
            if adoption_pending(self.starting_members(pool), age) {
                let ready = condition(
                    "Ready",
                    false,
                    "AdoptionPending",
                    &format!(
                        "waiting for a warm sandbox of SandboxWarmPool \"{pool}\" to become ready"
                    ),
                    claim.metadata.generation,
                );
                if !status.ready().is_some_and(|c| same_condition(c, &ready)) {
                    self.set_claim_ready(claim, &ready, None).await?;
                }
                return Ok(Action::requeue(FORWARD_RECHECK));
            }
        }
        let Some(template) = self
            .templates_api()
            .get_opt(&template)
            .await
            .map_err(step("read template"))?
        else {
            let ready = condition(
                "Ready",
                false,
                "TemplateNotFound",
                &format!("SandboxTemplate \"{template}\" not found"),
                claim.metadata.generation,
            );
            if !status.ready().is_some_and(|c| same_condition(c, &ready)) {
                self.set_claim_ready(claim, &ready, None).await?;
            }
            return Ok(Action::requeue(NOT_FOUND_RETRY));
        };
        let sandbox = self.cold_start(claim, &template, forced).await?;
        lock(&self.bound).insert(uid, (sandbox.name_any(), std::time::Instant::now()));
        if let Some(desired) = forwarded(claim, &sandbox) {
            let ready = desired.conditions[0].clone();
            self.set_claim_ready(claim, &ready, desired.sandbox).await?;
        }
        Ok(self.until_ready(&sandbox, after))
    }

    /// What to do after forwarding `sandbox`: the claim is woken by its Sandbox's events,
    /// but those come from another watch than the Sandbox store it reads, which may lag
    /// behind them; so while the Sandbox is not Ready the claim also looks again every
    /// [`FORWARD_RECHECK`] (a read of the store, no request unless something changed).
    fn until_ready(&self, sandbox: &DynamicObject, after: impl Fn(Action) -> Action) -> Action {
        let settled = is_ready(sandbox)
            || ready_condition(&sandbox_status(sandbox).conditions).is_some_and(|c| {
                c.status == "False" && classify(&c.reason) == ReasonClass::Terminal
            });
        if settled {
            after(Action::await_change())
        } else {
            Action::requeue(FORWARD_RECHECK)
        }
    }

    /// The Sandbox this claim controls, from what this controller bound it to, the claim's
    /// `status.sandbox.name`, or a store scan by the claim-uid label.
    pub(super) fn sandbox_of(
        &self,
        claim: &DynamicObject,
        status: &SandboxClaimStatus,
    ) -> Option<Arc<DynamicObject>> {
        let uid = claim.uid().unwrap_or_default();
        let controlled = |s: &DynamicObject| {
            s.metadata.deletion_timestamp.is_none()
                && controller_of(s).is_some_and(|o| o.uid == uid)
        };
        let bound = lock(&self.bound).get(&uid).map(|(name, _)| name.clone());
        let named = status.sandbox.as_ref().and_then(|s| s.name.clone());
        for name in bound.into_iter().chain(named) {
            if let Some(s) = self.stored_sandbox(&name).filter(|s| controlled(s)) {
                return Some(s);
            }
        }
        self.sandboxes
            .find(|s| s.labels().get(labels::CLAIM_UID) == Some(&uid) && controlled(s))
    }

    /// Finds the pool to adopt from and the template to cold-start from.
    pub(super) async fn resolve_sources(
        &self,
        claim: &DynamicObject,
    ) -> Result<Sources, ReconcileError> {
        let spec = &claim.data["spec"];
        match self.res.version {
            ApiVersion::V1beta1 => {
                let pool = spec["warmPoolRef"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let found = match self.stored_pool(&pool) {
                    Some(p) => Some((*p).clone()),
                    // The store may lag a pool created a moment ago: ask the server.
                    None => self
                        .pools_api()
                        .get_opt(&pool)
                        .await
                        .map_err(step("read warm pool"))?,
                };
                Ok(match found {
                    None => Sources::Missing {
                        reason: "WarmPoolNotFound",
                        message: format!("SandboxWarmPool \"{pool}\" not found"),
                    },
                    Some(p) => Sources::Found {
                        template: warm_pools::template_of(&p),
                        pool: Some(pool),
                    },
                })
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
                        .pools
                        .find(|p| warm_pools::template_of(p) == template)
                        .map(|p| p.name_any()),
                    named => Some(named.to_owned()),
                };
                Ok(Sources::Found { pool, template })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: Value) -> DynamicObject {
        serde_json::from_value(value).unwrap()
    }

    fn claim(status: Value) -> DynamicObject {
        object(json!({
            "apiVersion": "extensions.agents.x-k8s.io/v1beta1",
            "kind": "SandboxClaim",
            "metadata": { "name": "c", "uid": "u1", "generation": 3 },
            "spec": { "warmPoolRef": { "name": "p" } },
            "status": status,
        }))
    }

    fn sandbox(status: Value) -> DynamicObject {
        object(json!({
            "apiVersion": "agents.x-k8s.io/v1beta1",
            "kind": "Sandbox",
            "metadata": { "name": "s", "uid": "u2", "generation": 1 },
            "spec": {},
            "status": status,
        }))
    }

    fn ready(status: &str, reason: &str) -> Value {
        json!({ "type": "Ready", "status": status, "reason": reason, "message": "m",
                "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1 })
    }

    #[test]
    fn a_sandbox_without_conditions_is_forwarded_as_sandbox_not_ready() {
        let desired = forwarded(&claim(Value::Null), &sandbox(Value::Null)).unwrap();
        let c = &desired.conditions[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "SandboxNotReady")
        );
        assert_eq!(desired.sandbox.unwrap().name.as_deref(), Some("s"));
    }

    #[test]
    fn the_sandboxs_ready_is_forwarded_with_the_claims_generation_and_pod_ips() {
        let sb = sandbox(
            json!({ "conditions": [ready("True", "DependenciesReady")], "podIPs": ["10.0.0.7"] }),
        );
        let desired = forwarded(&claim(Value::Null), &sb).unwrap();
        let c = &desired.conditions[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "DependenciesReady")
        );
        assert_eq!(c.observed_generation, Some(3));
        assert_eq!(desired.sandbox.unwrap().pod_ips, ["10.0.0.7"]);
    }

    #[test]
    fn a_claim_that_already_says_what_its_sandbox_says_is_not_written_again() {
        let sb = sandbox(
            json!({ "conditions": [ready("True", "DependenciesReady")], "podIPs": ["10.0.0.7"] }),
        );
        let up_to_date = claim(json!({
            "conditions": [ready("True", "DependenciesReady")],
            "sandbox": { "name": "s", "podIPs": ["10.0.0.7"] },
        }));
        assert!(forwarded(&up_to_date, &sb).is_none());
        let stale_ip = claim(json!({
            "conditions": [ready("True", "DependenciesReady")],
            "sandbox": { "name": "s", "podIPs": ["10.0.0.1"] },
        }));
        assert!(forwarded(&stale_ip, &sb).is_some());
    }

    #[test]
    fn a_young_claim_waits_for_a_starting_member_and_an_older_one_starts_cold() {
        assert!(adoption_pending(1, Duration::from_millis(300)));
        assert!(
            !adoption_pending(0, Duration::from_millis(300)),
            "nothing to wait for"
        );
        assert!(
            !adoption_pending(2, Duration::from_secs(3)),
            "past the grace period"
        );
    }

    #[test]
    fn the_lifecycle_is_read_typed() {
        let mut c = claim(Value::Null);
        c.data["spec"]["lifecycle"] =
            json!({ "shutdownTime": "2030-01-01T00:00:00Z", "shutdownPolicy": "Delete" });
        let l = lifecycle(&c).unwrap();
        assert_eq!(
            l.shutdown_policy,
            Some(crate::types::ShutdownPolicy::Delete)
        );
        assert!(l.shutdown_time.is_some());
        assert!(lifecycle(&claim(Value::Null)).is_none());
    }
}
