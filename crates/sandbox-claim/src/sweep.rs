//! Deleting claims of ours that nobody needs any more.

use crate::api_version::ApiVersion;
use crate::claim::{Claims, Error};
use crate::labels;
use crate::retry::retry;
use crate::types::{ClaimResource, v1alpha1, v1beta1};
use kube::ResourceExt;
use kube::api::ListParams;

/// What a sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Names of the claims deleted.
    pub deleted: Vec<String>,
    /// Claims of ours left in place.
    pub kept: usize,
}

impl Claims {
    /// Deletes every claim of ours (same namespace and source) whose conversation is no
    /// longer live (`is_live` returns false) or whose `shutdownTime` has passed.
    ///
    /// # Guarantees
    /// Only claims carrying our managed-by and source labels are touched (one `LIST` by
    /// label selector, then one `DELETE` per claim, each with a uid precondition).
    ///
    /// # Errors
    /// [`Error::List`] / [`Error::Delete`] on API errors after retries.
    #[tracing::instrument(skip_all, fields(namespace = %self.options().namespace))]
    pub async fn sweep(&self, is_live: impl FnMut(&str) -> bool) -> Result<SweepReport, Error> {
        match self.api_version() {
            ApiVersion::V1beta1 => self.sweep_as::<v1beta1::SandboxClaim>(is_live, false).await,
            ApiVersion::V1alpha1 => {
                self.sweep_as::<v1alpha1::SandboxClaim>(is_live, false)
                    .await
            }
        }
    }

    /// Deletes every claim of ours (same namespace and source).
    ///
    /// # Errors
    /// As [`Claims::sweep`].
    #[tracing::instrument(skip_all, fields(namespace = %self.options().namespace))]
    pub async fn release_all(&self) -> Result<SweepReport, Error> {
        match self.api_version() {
            ApiVersion::V1beta1 => {
                self.sweep_as::<v1beta1::SandboxClaim>(|_| false, true)
                    .await
            }
            ApiVersion::V1alpha1 => {
                self.sweep_as::<v1alpha1::SandboxClaim>(|_| false, true)
                    .await
            }
        }
    }

    async fn sweep_as<K: ClaimResource>(
        &self,
        mut is_live: impl FnMut(&str) -> bool,
        all: bool,
    ) -> Result<SweepReport, Error> {
        let api = self.api::<K>();
        let selector = format!(
            "{}={},{}={}",
            labels::MANAGED_BY,
            labels::MANAGED_BY_VALUE,
            labels::SOURCE,
            self.options().source
        );
        let lp = ListParams::default().labels(&selector);
        let list = retry(&self.options().retry, "list claims", || api.list(&lp))
            .await
            .map_err(Error::List)?;
        let now = jiff::Timestamp::now();
        let mut report = SweepReport::default();
        for claim in list.items {
            let name = claim.name_any();
            if claim.meta().deletion_timestamp.is_some() {
                continue;
            }
            let expired = claim
                .lifecycle()
                .and_then(|l| l.shutdown_time.as_ref())
                .is_some_and(|t| t.0 <= now);
            let live = claim
                .annotations()
                .get(labels::CONVERSATION_ID)
                .is_some_and(|id| is_live(id));
            if all || expired || !live {
                tracing::info!(claim = %name, expired, live, "sweeping claim");
                self.delete_claim(&api, &name, claim.uid()).await?;
                report.deleted.push(name);
            } else {
                report.kept += 1;
            }
        }
        Ok(report)
    }
}
