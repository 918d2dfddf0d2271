//! Claim lifecycle expiry: `ClaimExpired` at `shutdownTime`, then what `shutdownPolicy` says.

use super::*;

impl Shared {
    pub(super) async fn check_expiry(&self, uid: &str, name: &str) {
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

    /// As upstream: set `ClaimExpired`, then delete per `shutdownPolicy`.
    pub(super) async fn expire(&self, claim: &DynamicObject) -> Result<(), kube::Error> {
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
}
