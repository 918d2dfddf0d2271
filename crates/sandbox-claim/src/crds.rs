//! The CustomResourceDefinitions of the four agent-sandbox kinds, generated from
//! [`crate::types`] with `kube::CustomResourceExt` — the project owns its CRDs.
//!
//! ```
//! use sandbox_claim::crds::{self, CrdVersions, Kind};
//! let claims = crds::crd(Kind::SandboxClaim, CrdVersions::Current)?;
//! assert_eq!(claims.metadata.name.as_deref(), Some("sandboxclaims.extensions.agents.x-k8s.io"));
//! let versions: Vec<&str> = claims.spec.versions.iter().map(|v| v.name.as_str()).collect();
//! assert_eq!(versions, ["v1beta1", "v1alpha1"]);
//! # Ok::<(), sandbox_claim::crds::Error>(())
//! ```
//!
//! # Guarantees
//! - Names, plurals, short names, scope, the status and scale subresources and the printer
//!   columns are agent-sandbox's; the schemas are structural (the fake API server of the
//!   `testing` feature and a real API server accept them).
//! - [`CrdVersions::Current`] serves `v1beta1` (the storage version) and `v1alpha1`
//!   (deprecated), as agent-sandbox v0.5+ releases install them;
//!   [`CrdVersions::V1alpha1Only`] serves what a v0.4.x cluster serves.
//!
//! # Caveats
//! - The embedded PodSpec, PVC spec and NetworkPolicy rule schemas come from the
//!   k8s-openapi version feature the build enables, so they follow that Kubernetes version.
//! - No conversion webhook: a real cluster serving both versions needs agent-sandbox's.
//! - Where k8s-openapi marks a field of those types required that Kubernetes lets be empty
//!   (the `name` of secret and config map references), the schema makes it optional with
//!   default `""`, as the Kubernetes API does.
//! - The field descriptions inside those embedded Kubernetes types are left out (the types'
//!   own descriptions stay): they are Kubernetes' documentation, and with them the Sandbox and
//!   SandboxTemplate CRDs would come close to etcd's 1.5 MiB request limit.
//! - No CEL rules (`x-kubernetes-validations`), no `x-kubernetes-list-type` markers.

use crate::api_version::{ApiVersion, EXTENSIONS_GROUP, SANDBOX_GROUP};
use crate::types::{v1alpha1, v1beta1};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::core::crd::{MergeError, merge_crds};
use std::fmt;

/// Which API versions a generated CRD serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CrdVersions {
    /// `v1beta1` (served, storage) and `v1alpha1` (served, deprecated): agent-sandbox v0.5+.
    #[default]
    Current,
    /// `v1alpha1` only (served, storage): a pre-1.0 cluster on agent-sandbox v0.4.x.
    V1alpha1Only,
}

/// One of the four agent-sandbox kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `sandboxes.agents.x-k8s.io`.
    Sandbox,
    /// `sandboxclaims.extensions.agents.x-k8s.io`.
    SandboxClaim,
    /// `sandboxtemplates.extensions.agents.x-k8s.io`.
    SandboxTemplate,
    /// `sandboxwarmpools.extensions.agents.x-k8s.io`.
    SandboxWarmPool,
}

impl Kind {
    /// Every kind, in the order [`all`] returns their CRDs.
    pub const ALL: [Self; 4] = [
        Self::Sandbox,
        Self::SandboxClaim,
        Self::SandboxTemplate,
        Self::SandboxWarmPool,
    ];

    /// The kind name, e.g. `SandboxClaim`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sandbox => "Sandbox",
            Self::SandboxClaim => "SandboxClaim",
            Self::SandboxTemplate => "SandboxTemplate",
            Self::SandboxWarmPool => "SandboxWarmPool",
        }
    }

    /// The API group of the kind.
    pub fn group(self) -> &'static str {
        match self {
            Self::Sandbox => SANDBOX_GROUP,
            _ => EXTENSIONS_GROUP,
        }
    }

    /// The lowercase plural, e.g. `sandboxclaims`.
    pub fn plural(self) -> &'static str {
        match self {
            Self::Sandbox => "sandboxes",
            Self::SandboxClaim => "sandboxclaims",
            Self::SandboxTemplate => "sandboxtemplates",
            Self::SandboxWarmPool => "sandboxwarmpools",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A version's schema did not round-trip through JSON while embedded descriptions were
    /// dropped.
    #[error("failed to rewrite the {kind} {version} schema")]
    Schema {
        /// The kind.
        kind: Kind,
        /// The version.
        version: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The per-version CRDs of a kind did not merge into one.
    #[error("failed to merge the versions of the {kind} CRD")]
    Merge {
        /// The kind.
        kind: Kind,
        /// Why.
        #[source]
        source: MergeError,
    },
}

/// The CRD of `kind` serving `versions`.
///
/// # Errors
/// [`Error::Merge`] when the per-version CRDs disagree on group, kind or scope (a bug in
/// [`crate::types`]; the crate's tests build every CRD).
pub fn crd(kind: Kind, versions: CrdVersions) -> Result<CustomResourceDefinition, Error> {
    let (beta, alpha) = match kind {
        Kind::Sandbox => (v1beta1::Sandbox::crd(), v1alpha1::Sandbox::crd()),
        Kind::SandboxClaim => (v1beta1::SandboxClaim::crd(), v1alpha1::SandboxClaim::crd()),
        Kind::SandboxTemplate => (
            v1beta1::SandboxTemplate::crd(),
            v1alpha1::SandboxTemplate::crd(),
        ),
        Kind::SandboxWarmPool => (
            v1beta1::SandboxWarmPool::crd(),
            v1alpha1::SandboxWarmPool::crd(),
        ),
    };
    let mut crd = match versions {
        CrdVersions::Current => merge_crds(vec![beta, alpha], ApiVersion::V1beta1.as_str())
            .map_err(|source| Error::Merge { kind, source })?,
        CrdVersions::V1alpha1Only => {
            let mut only = alpha;
            // Deprecation starts with v0.5, which added v1beta1; a v0.4.x cluster has nothing
            // to point a client to.
            for v in &mut only.spec.versions {
                v.deprecated = None;
                v.deprecation_warning = None;
                v.storage = true;
            }
            only
        }
    };
    // The API server would default it to the same; spelt out as agent-sandbox does.
    crd.spec.names.list_kind = Some(format!("{kind}List"));
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        let schema_err = |source| Error::Schema {
            kind,
            version: version.name.clone(),
            source,
        };
        let mut value = serde_json::to_value(&*schema).map_err(schema_err)?;
        for path in EMBEDDED_KUBERNETES_TYPES {
            if let Some(embedded) = at_path(&mut value, path) {
                rewrite_embedded(embedded);
            }
        }
        *schema = serde_json::from_value(value).map_err(schema_err)?;
    }
    Ok(crd)
}

/// Where the schemas embed Kubernetes API types (k8s-openapi's), as property names from the
/// root; `[]` steps into array items.
const EMBEDDED_KUBERNETES_TYPES: &[&[&str]] = &[
    &["spec", "podTemplate", "spec"],
    &["spec", "volumeClaimTemplates", "[]", "spec"],
    &["spec", "networkPolicy", "ingress"],
    &["spec", "networkPolicy", "egress"],
];

fn at_path<'a>(
    schema: &'a mut serde_json::Value,
    path: &[&str],
) -> Option<&'a mut serde_json::Value> {
    path.iter().try_fold(schema, |s, step| match *step {
        "[]" => s.get_mut("items"),
        name => s.get_mut("properties")?.get_mut(name),
    })
}

/// Rewrites an embedded Kubernetes type's schema: drops the `description` of every property
/// below it (keeping its own), and makes optional what k8s-openapi marks required but
/// Kubernetes does not.
///
/// k8s-openapi models the `name` of `LocalObjectReference` and its kin (secret and config map
/// references) as a required `String`, while the Kubernetes API declares it optional with
/// default `""`; left alone, a `secretRef` without `name` would be refused here and accepted by
/// a real cluster. Those fields are the ones whose description says they are "allowed to be
/// empty" (Kubernetes' own wording).
fn rewrite_embedded(schema: &mut serde_json::Value) {
    fn walk(s: &mut serde_json::Value, keep_own: bool) {
        let Some(map) = s.as_object_mut() else {
            return;
        };
        if !keep_own {
            map.remove("description");
        }
        let may_be_empty: Vec<String> = map
            .get("properties")
            .and_then(|p| p.as_object())
            .into_iter()
            .flatten()
            .filter(|(_, p)| {
                p.get("description")
                    .and_then(|d| d.as_str())
                    .is_some_and(|d| d.contains(ALLOWED_TO_BE_EMPTY))
            })
            .map(|(name, _)| name.clone())
            .collect();
        if let Some(required) = map.get_mut("required").and_then(|r| r.as_array_mut()) {
            required.retain(|r| !may_be_empty.iter().any(|n| r == n.as_str()));
            if required.is_empty() {
                map.remove("required");
            }
        }
        if let Some(props) = map.get_mut("properties").and_then(|p| p.as_object_mut()) {
            for name in &may_be_empty {
                if let Some(p) = props.get_mut(name).and_then(|p| p.as_object_mut()) {
                    p.insert("default".into(), serde_json::Value::String(String::new()));
                }
            }
            props.values_mut().for_each(|p| walk(p, false));
        }
        for key in ["items", "additionalProperties"] {
            if let Some(sub) = map.get_mut(key) {
                walk(sub, false);
            }
        }
    }
    walk(schema, true);
}

/// How Kubernetes documents a field that is optional but should not be left empty.
const ALLOWED_TO_BE_EMPTY: &str = "allowed to be empty";

/// The CRDs of all four kinds serving `versions`, in [`Kind::ALL`] order.
///
/// # Errors
/// As [`crd`].
pub fn all(versions: CrdVersions) -> Result<Vec<CustomResourceDefinition>, Error> {
    Kind::ALL.iter().map(|&k| crd(k, versions)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(crd: &CustomResourceDefinition) -> Vec<(&str, bool, bool, bool)> {
        crd.spec
            .versions
            .iter()
            .map(|v| {
                (
                    v.name.as_str(),
                    v.served,
                    v.storage,
                    v.deprecated.unwrap_or(false),
                )
            })
            .collect()
    }

    #[test]
    fn every_kind_serves_v1beta1_as_storage_and_v1alpha1_as_deprecated() {
        for kind in Kind::ALL {
            let crd = crd(kind, CrdVersions::Current).unwrap();
            assert_eq!(
                crd.metadata.name.as_deref(),
                Some(format!("{}.{}", kind.plural(), kind.group()).as_str())
            );
            assert_eq!(crd.spec.names.kind, kind.as_str());
            assert_eq!(crd.spec.scope, "Namespaced");
            assert_eq!(
                versions(&crd),
                [
                    ("v1beta1", true, true, false),
                    ("v1alpha1", true, false, true)
                ],
                "{kind}"
            );
        }
    }

    #[test]
    fn embedded_kubernetes_types_keep_their_shape_but_not_their_field_docs() {
        let crd = crd(Kind::Sandbox, CrdVersions::Current).unwrap();
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
        let pod = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["podTemplate"]["properties"]
            ["spec"];
        assert!(
            pod["description"].is_string(),
            "the embedded type's own doc stays"
        );
        let containers = &pod["properties"]["containers"];
        assert!(containers.get("description").is_none());
        assert_eq!(pod["required"], serde_json::json!(["containers"]));
        assert!(
            containers["items"]["properties"]["image"]["type"] == "string",
            "the shape stays"
        );
        let own = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["shutdownTime"];
        assert!(
            own["description"].is_string(),
            "our own fields keep their docs"
        );
    }

    #[test]
    fn the_v1alpha1_only_set_serves_and_stores_v1alpha1_without_deprecation() {
        for crd in all(CrdVersions::V1alpha1Only).unwrap() {
            assert_eq!(versions(&crd), [("v1alpha1", true, true, false)]);
            assert!(crd.spec.versions[0].deprecation_warning.is_none());
        }
    }

    #[test]
    fn short_names_subresources_and_printer_columns_are_agent_sandboxs() {
        let short = |k| {
            crd(k, CrdVersions::Current)
                .unwrap()
                .spec
                .names
                .short_names
                .unwrap_or_default()
        };
        assert_eq!(short(Kind::Sandbox), ["sandbox"]);
        assert_eq!(short(Kind::SandboxClaim), ["sandboxclaim"]);
        assert_eq!(short(Kind::SandboxTemplate), ["sandboxtemplate"]);
        assert_eq!(short(Kind::SandboxWarmPool), ["swp"]);

        let pools = crd(Kind::SandboxWarmPool, CrdVersions::Current).unwrap();
        for v in &pools.spec.versions {
            let scale = v.subresources.as_ref().and_then(|s| s.scale.as_ref());
            assert_eq!(
                scale.map(|s| s.spec_replicas_path.as_str()),
                Some(".spec.replicas")
            );
            let columns: Vec<&str> = v
                .additional_printer_columns
                .iter()
                .flatten()
                .map(|c| c.name.as_str())
                .collect();
            assert_eq!(columns, ["Ready", "Desired", "Age"]);
        }
        let templates = crd(Kind::SandboxTemplate, CrdVersions::Current).unwrap();
        assert!(
            templates
                .spec
                .versions
                .iter()
                .all(|v| v.subresources.is_none()),
            "templates have no status"
        );
        let sandboxes = crd(Kind::Sandbox, CrdVersions::Current).unwrap();
        let scale: Vec<bool> = sandboxes
            .spec
            .versions
            .iter()
            .map(|v| v.subresources.as_ref().is_some_and(|s| s.scale.is_some()))
            .collect();
        assert_eq!(scale, [false, true], "only v1alpha1 sandboxes scale");
    }
}
