//! Discovery documents: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/{group}`,
//! `/apis/{group}/{version}` — enough for `kube::discovery::Discovery::run`.
//!
//! # Caveats
//!
//! Aggregated discovery (`Discovery::run_aggregated`) is not served. The core group lists only
//! the built-in namespaces and pods (with `pods/status` and `pods/portforward`), and `apiextensions.k8s.io`
//! itself is not served.

use serde_json::{Value, json};

use crate::crd::Registry;

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

pub(crate) fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-fake-apiserver",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

pub(crate) fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

pub(crate) fn core_resources(registry: &Registry) -> Value {
    let mut list = resources(registry, "", "v1").unwrap_or_else(|| {
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": []})
    });
    if registry.get("", "pods").is_some()
        && let Some(resources) = list["resources"].as_array_mut()
    {
        resources.push(json!({
            "name": "pods/portforward",
            "singularName": "",
            "namespaced": true,
            "kind": "PodPortForwardOptions",
            "verbs": ["create", "get"],
        }));
    }
    list
}

/// The group document, or `None` when no resource of that group is installed.
pub(crate) fn group(registry: &Registry, name: &str) -> Option<Value> {
    let mut versions: Vec<String> = Vec::new();
    let mut preferred = None;
    for r in registry.all().filter(|r| r.group == name) {
        for v in &r.versions {
            if !versions.contains(&v.name) {
                versions.push(v.name.clone());
            }
        }
        if preferred.is_none() && r.version(&r.storage_version).is_some() {
            preferred = Some(r.storage_version.clone());
        }
    }
    let preferred = preferred.or_else(|| versions.first().cloned())?;
    let gv = |v: &str| json!({"groupVersion": format!("{name}/{v}"), "version": v});
    Some(json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": name,
        "versions": versions.iter().map(|v| gv(v)).collect::<Vec<_>>(),
        "preferredVersion": gv(&preferred),
    }))
}

pub(crate) fn groups(registry: &Registry) -> Value {
    // The core group is not an API group: it is served at `/api`.
    let mut names: Vec<&str> = registry
        .all()
        .map(|r| r.group.as_str())
        .filter(|g| !g.is_empty())
        .collect();
    names.dedup();
    let groups: Vec<Value> = names
        .into_iter()
        .filter_map(|g| group(registry, g))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// The resource list of one group version, or `None` when nothing is served there.
pub(crate) fn resources(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in registry.all().filter(|r| r.group == group) {
        let Some(v) = r.version(version) else {
            continue;
        };
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
            "shortNames": r.short_names,
        }));
        if v.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": crate::crd::api_version(group, version),
        "resources": resources,
    }))
}
