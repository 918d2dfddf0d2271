//! Installed CustomResourceDefinitions: what the server knows how to serve.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::schema::{PatternError, Patterns};
use crate::table::PrinterColumn;

/// A CRD that cannot be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The YAML stream did not parse.
    #[error("parsing CRD YAML: {0}")]
    ParseYaml(String),
    /// A required field of the CRD is missing or of the wrong type.
    #[error("CRD {crd:?} lacks {field}")]
    MissingField {
        /// `metadata.name` of the CRD, if any.
        crd: String,
        /// The JSON pointer that was expected.
        field: &'static str,
    },
    /// `apiVersion`/`kind` are not `apiextensions.k8s.io/v1` `CustomResourceDefinition`.
    #[error("not an apiextensions.k8s.io/v1 CustomResourceDefinition: {0}")]
    NotACrd(String),
    /// A `pattern` of a version's schema is not a regular expression the server can run.
    #[error("CRD {crd:?} version {version}: {source}")]
    InvalidPattern {
        /// `metadata.name` of the CRD.
        crd: String,
        /// The version whose schema holds the pattern.
        version: String,
        /// The pattern, its place and why it does not compile.
        #[source]
        source: Box<PatternError>,
    },
}

/// One served version of a resource.
#[derive(Debug, Clone)]
pub(crate) struct Version {
    pub(crate) name: String,
    pub(crate) schema: Option<Value>,
    /// The compiled `pattern`s of `schema`.
    pub(crate) patterns: Patterns,
    pub(crate) status_subresource: bool,
    /// `additionalPrinterColumns`: what `kubectl get` shows (server-side `Table`s).
    pub(crate) printer_columns: Vec<PrinterColumn>,
    /// `deprecationWarning` (or the default text) of a `deprecated: true` version: sent as a
    /// `Warning` header with every request to it, as upstream.
    pub(crate) deprecation: Option<String>,
}

/// One resource (`group` + `plural`) and its served versions.
#[derive(Debug, Clone)]
pub(crate) struct Resource {
    pub(crate) group: String,
    pub(crate) plural: String,
    pub(crate) singular: String,
    pub(crate) kind: String,
    pub(crate) list_kind: String,
    pub(crate) short_names: Vec<String>,
    pub(crate) namespaced: bool,
    pub(crate) versions: Vec<Version>,
    /// The storage version, used for `apiVersion` of synthetic objects and discovery preference.
    pub(crate) storage_version: String,
}

impl Resource {
    pub(crate) fn version(&self, name: &str) -> Option<&Version> {
        self.versions.iter().find(|v| v.name == name)
    }

    /// `group/version`, or the bare version in the core group (`v1`).
    pub(crate) fn api_version(&self, version: &str) -> String {
        api_version(&self.group, version)
    }

    /// Core `v1` pods: served without a schema (anything a client writes is kept), with the
    /// status subresource and `pods/portforward`.
    pub(crate) fn core_pods() -> Self {
        Self {
            group: String::new(),
            plural: "pods".into(),
            singular: "pod".into(),
            kind: "Pod".into(),
            list_kind: "PodList".into(),
            short_names: vec!["po".into()],
            namespaced: true,
            versions: vec![Version {
                name: "v1".into(),
                schema: None,
                patterns: Patterns::default(),
                status_subresource: true,
                printer_columns: PrinterColumn::pods(),
                deprecation: None,
            }],
            storage_version: "v1".into(),
        }
    }

    /// Core `v1` namespaces: cluster-scoped, served without a schema, so that `kubectl get
    /// namespaces` and `kubectl create namespace` work (namespaced objects do not need one).
    pub(crate) fn core_namespaces() -> Self {
        Self {
            group: String::new(),
            plural: "namespaces".into(),
            singular: "namespace".into(),
            kind: "Namespace".into(),
            list_kind: "NamespaceList".into(),
            short_names: vec!["ns".into()],
            namespaced: false,
            versions: vec![Version {
                name: "v1".into(),
                schema: None,
                patterns: Patterns::default(),
                status_subresource: true,
                printer_columns: PrinterColumn::namespaces(),
                deprecation: None,
            }],
            storage_version: "v1".into(),
        }
    }

    /// Parses one CRD; non-served versions are skipped.
    pub(crate) fn from_crd(crd: &Value) -> Result<Self, Error> {
        let name = crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let api_version = crd.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = crd.get("kind").and_then(Value::as_str).unwrap_or("");
        if api_version != "apiextensions.k8s.io/v1" || kind != "CustomResourceDefinition" {
            return Err(Error::NotACrd(format!("{api_version} {kind} {name}")));
        }
        let text = |field: &'static str| -> Result<String, Error> {
            crd.pointer(field)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| Error::MissingField {
                    crd: name.clone(),
                    field,
                })
        };
        let group = text("/spec/group")?;
        let plural = text("/spec/names/plural")?;
        let kind = text("/spec/names/kind")?;
        let singular = text("/spec/names/singular").unwrap_or_else(|_| kind.to_lowercase());
        let list_kind = text("/spec/names/listKind").unwrap_or_else(|_| format!("{kind}List"));
        let short_names = crd
            .pointer("/spec/names/shortNames")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let namespaced = text("/spec/scope")? == "Namespaced";
        let raw_versions = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::MissingField {
                crd: name.clone(),
                field: "/spec/versions",
            })?;
        let mut versions = Vec::new();
        let mut storage_version = None;
        for v in raw_versions {
            let Some(vname) = v.get("name").and_then(Value::as_str) else {
                return Err(Error::MissingField {
                    crd: name,
                    field: "/spec/versions/*/name",
                });
            };
            if v.get("storage").and_then(Value::as_bool) == Some(true) {
                storage_version = Some(vname.to_owned());
            }
            if v.get("served").and_then(Value::as_bool) == Some(false) {
                continue;
            }
            let schema = v.pointer("/schema/openAPIV3Schema").cloned();
            let patterns = match &schema {
                Some(s) => Patterns::compile(s).map_err(|source| Error::InvalidPattern {
                    crd: name.clone(),
                    version: vname.to_owned(),
                    source,
                })?,
                None => Patterns::default(),
            };
            let deprecation =
                (v.get("deprecated").and_then(Value::as_bool) == Some(true)).then(|| {
                    v.get("deprecationWarning")
                        .and_then(Value::as_str)
                        .map_or_else(
                            || format!("{group}/{vname} {kind} is deprecated"),
                            str::to_owned,
                        )
                });
            versions.push(Version {
                name: vname.to_owned(),
                schema,
                patterns,
                status_subresource: v.pointer("/subresources/status").is_some(),
                printer_columns: PrinterColumn::from_crd_version(v),
                deprecation,
            });
        }
        let storage_version = storage_version
            .or_else(|| versions.first().map(|v| v.name.clone()))
            .ok_or_else(|| Error::MissingField {
                crd: name.clone(),
                field: "/spec/versions/*/served",
            })?;
        Ok(Self {
            group,
            plural,
            singular,
            kind,
            list_kind,
            short_names,
            namespaced,
            versions,
            storage_version,
        })
    }
}

/// `group/version`, or the bare version in the core group (`v1`).
pub(crate) fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

/// Every installed resource, keyed by `(group, plural)`; the core group is `""`.
/// Cloning is cheap (the resources are shared), so documents are built from a snapshot
/// without holding the server's lock.
#[derive(Debug, Default, Clone)]
pub(crate) struct Registry {
    resources: BTreeMap<(String, String), Arc<Resource>>,
}

impl Registry {
    /// The built-in resources every server serves: core `v1` pods and namespaces.
    pub(crate) fn with_builtins() -> Self {
        let mut registry = Self::default();
        registry.install(Resource::core_pods());
        registry.install(Resource::core_namespaces());
        registry
    }

    /// Installs or replaces a resource definition.
    pub(crate) fn install(&mut self, resource: Resource) {
        let key = (resource.group.clone(), resource.plural.clone());
        self.resources.insert(key, Arc::new(resource));
    }

    pub(crate) fn get(&self, group: &str, plural: &str) -> Option<Arc<Resource>> {
        self.resources
            .get(&(group.to_owned(), plural.to_owned()))
            .cloned()
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &Arc<Resource>> {
        self.resources.values()
    }
}

/// Parses a multi-document YAML stream and keeps only the CRDs.
pub(crate) fn crds_from_yaml(yaml: &str) -> Result<Vec<Value>, Error> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(yaml).map_err(|e| Error::ParseYaml(e.to_string()))?;
    Ok(docs
        .into_iter()
        .filter(|d| d.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition"))
        .collect())
}
