//! Claim lifecycle expiry: `ClaimExpired` at `shutdownTime`, then what `shutdownPolicy` says.

use super::*;
use crate::types::{Lifecycle, ShutdownPolicy};

/// How long until the claim's `shutdownTime` (`Duration::ZERO` once it passed), or `None`
/// when the claim has no shutdown time and never expires.
pub(super) fn until_shutdown(
    lifecycle: Option<&Lifecycle>,
    now: jiff::Timestamp,
) -> Option<Duration> {
    let at = lifecycle?.shutdown_time.as_ref()?.0;
    Some(Duration::try_from(at.duration_since(now)).unwrap_or_default())
}

impl Shared {
    /// As upstream: set `ClaimExpired`, then delete per `shutdownPolicy` (`Delete`,
    /// `DeleteForeground`: the claim; `Retain`: its Sandbox, keeping the claim). Repeating it
    /// writes nothing new.
    pub(super) async fn expire(&self, claim: &DynamicObject) -> Result<(), ReconcileError> {
        let name = claim.name_any();
        let status = claim_status(claim);
        let ready = condition(
            "Ready",
            false,
            "ClaimExpired",
            "Claim expired. Sandbox cleanup initiated.",
            claim.metadata.generation,
        );
        let already = status.ready().is_some_and(|c| same_condition(c, &ready));
        let policy = claims::lifecycle(claim)
            .and_then(|l| l.shutdown_policy)
            .unwrap_or_default();
        match policy {
            ShutdownPolicy::Delete | ShutdownPolicy::DeleteForeground => {
                if !already {
                    self.set_claim_ready(claim, &ready, status.sandbox.clone())
                        .await?;
                }
                let dp = if policy == ShutdownPolicy::Delete {
                    DeleteParams::background()
                } else {
                    DeleteParams::foreground()
                };
                match self.claims_api().delete(&name, &dp).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
                    Err(e) => Err(step("delete expired claim")(e)),
                }
            }
            ShutdownPolicy::Retain => {
                if let Some(sandbox) = self.sandbox_of(claim, &status) {
                    let sb = sandbox.name_any();
                    match self
                        .sandboxes_api()
                        .delete(&sb, &DeleteParams::background())
                        .await
                    {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.is_not_found() => {}
                        Err(e) => return Err(step("delete expired claim's sandbox")(e)),
                    }
                    self.stop_pod(&sb).await;
                }
                lock(&self.bound).remove(&claim.uid().unwrap_or_default());
                if already && status.sandbox.is_none() {
                    return Ok(());
                }
                self.set_claim_ready(claim, &ready, None).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(secs).unwrap()
    }

    fn shutting_down_at(secs: i64) -> Lifecycle {
        Lifecycle {
            shutdown_time: Some(Time(at(secs))),
            ..Lifecycle::default()
        }
    }

    #[test]
    fn a_claim_without_a_shutdown_time_never_expires() {
        assert_eq!(until_shutdown(None, at(100)), None);
        assert_eq!(until_shutdown(Some(&Lifecycle::default()), at(100)), None);
    }

    #[test]
    fn a_claim_expires_at_its_shutdown_time_and_waits_until_then() {
        let l = shutting_down_at(100);
        assert_eq!(
            until_shutdown(Some(&l), at(90)),
            Some(Duration::from_secs(10))
        );
        assert_eq!(until_shutdown(Some(&l), at(100)), Some(Duration::ZERO));
        assert_eq!(
            until_shutdown(Some(&l), at(500)),
            Some(Duration::ZERO),
            "long past"
        );
    }
}
