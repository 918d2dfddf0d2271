//! Which agent-sandbox API version a cluster serves.
//!
//! `v1beta1` is the default everywhere in this crate: agent-sandbox v1.0 (2026-08-28) serves
//! `v1beta1` only, and v0.5 and later store it. `v1alpha1` stays for clusters that have not
//! reached 1.0 yet (v0.4.x serves `v1alpha1` only); [`detect`] picks it only when `v1beta1`
//! is not served.

use std::fmt;

/// The group of claims, templates and warm pools.
pub const EXTENSIONS_GROUP: &str = "extensions.agents.x-k8s.io";
/// The group of sandboxes.
pub const SANDBOX_GROUP: &str = "agents.x-k8s.io";

/// An agent-sandbox API version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ApiVersion {
    /// `v1beta1` (agent-sandbox v0.5+, the only version v1.0 serves; the default): claims
    /// name a warm pool.
    #[default]
    V1beta1,
    /// `v1alpha1` (pre-1.0 clusters; the only version v0.4.x serves): claims name a template.
    V1alpha1,
}

impl ApiVersion {
    /// `"v1beta1"` or `"v1alpha1"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1beta1 => "v1beta1",
            Self::V1alpha1 => "v1alpha1",
        }
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How [`crate::Claims`] picks its [`ApiVersion`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VersionSelection {
    /// Ask discovery once ([`crate::Claims::detect`]); [`crate::Claims::new`] assumes v1beta1.
    #[default]
    Auto,
    /// Always v1beta1.
    V1beta1,
    /// Always v1alpha1.
    V1alpha1,
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The discovery request failed.
    #[error("failed to discover the API groups of the cluster")]
    Discover(#[source] kube::Error),
    /// The cluster does not serve the extensions group in a version we speak.
    #[error(
        "the cluster serves no usable version of {EXTENSIONS_GROUP} (found {found:?}); is agent-sandbox installed with extensions?"
    )]
    NotInstalled {
        /// Versions of the group the cluster does serve.
        found: Vec<String>,
    },
}

/// Picks the best version among those served: v1beta1 if present, else v1alpha1.
pub fn pick(served: &[String]) -> Option<ApiVersion> {
    if served.iter().any(|v| v == "v1beta1") {
        Some(ApiVersion::V1beta1)
    } else if served.iter().any(|v| v == "v1alpha1") {
        Some(ApiVersion::V1alpha1)
    } else {
        None
    }
}

/// Asks the cluster's discovery (`GET /apis`, one request) which version to use.
///
/// # Errors
/// [`Error::Discover`] when the request fails, [`Error::NotInstalled`] when the group is
/// not served in v1beta1 or v1alpha1.
#[tracing::instrument(skip(client))]
pub async fn detect(client: &kube::Client) -> Result<ApiVersion, Error> {
    let groups = client.list_api_groups().await.map_err(Error::Discover)?;
    let served: Vec<String> = groups
        .groups
        .iter()
        .filter(|g| g.name == EXTENSIONS_GROUP)
        .flat_map(|g| g.versions.iter().map(|v| v.version.clone()))
        .collect();
    let version = pick(&served).ok_or(Error::NotInstalled { found: served })?;
    tracing::debug!(%version, "detected agent-sandbox API version");
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1beta1_wins_when_both_are_served() {
        let both = vec!["v1alpha1".to_owned(), "v1beta1".to_owned()];
        assert_eq!(pick(&both), Some(ApiVersion::V1beta1));
        assert_eq!(pick(&["v1alpha1".to_owned()]), Some(ApiVersion::V1alpha1));
        assert_eq!(pick(&["v2".to_owned()]), None);
    }
}
