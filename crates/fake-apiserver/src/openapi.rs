//! OpenAPI documents built from the installed CRDs' schemas: `/openapi/v3` (the index),
//! `/openapi/v3/apis/{group}/{version}` and `/openapi/v3/api/v1` (JSON), and `/openapi/v2`
//! (JSON, or the protobuf kubectl asks for: [`crate::openapi_pb`]).
//!
//! What clients use them for: kubectl checks in v3 that a kind's PATCH takes `fieldValidation`
//! (then it validates server-side, sending `fieldValidation=Strict`), `kubectl explain` reads
//! the schemas, and every `kubectl apply` loads v2 first.
//!
//! # Caveats
//!
//! `ObjectMeta` and `ListMeta` are abridged (the fields clients write); the core kinds (pods,
//! namespaces) have a schema that accepts any fields (the server stores them as
//! written). Operations list only their 200 response.

use std::collections::BTreeMap;
use std::hash::{Hash as _, Hasher as _};

use serde_json::{Map, Value, json};

use crate::crd::{Registry, Resource, Version};

/// The schema name of a kind: the group reversed, then version and kind
/// (`io.x-k8s.agents.v1beta1.Sandbox`), as upstream names CRD definitions.
pub(crate) fn definition_name(group: &str, version: &str, kind: &str) -> String {
    if group.is_empty() {
        return format!("io.k8s.api.core.{version}.{kind}");
    }
    let reversed: Vec<&str> = group.split('.').rev().collect();
    format!("{}.{version}.{kind}", reversed.join("."))
}

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";

/// Where `$ref`s point in each document version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    V2,
    V3,
}

impl Dialect {
    fn reference(self, name: &str) -> Value {
        match self {
            Self::V2 => json!({"$ref": format!("#/definitions/{name}")}),
            Self::V3 => json!({"$ref": format!("#/components/schemas/{name}")}),
        }
    }

    /// A reference with a description beside it (v3 needs `allOf` for that, as upstream).
    fn described_reference(self, name: &str, description: &str) -> Value {
        match self {
            Self::V2 => {
                let mut r = self.reference(name);
                r["description"] = json!(description);
                r
            }
            Self::V3 => json!({"allOf": [self.reference(name)], "description": description}),
        }
    }
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "version": version, "kind": kind})
}

fn object_meta() -> Value {
    let string = |d: &str| json!({"type": "string", "description": d});
    let strings = |d: &str| json!({"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": d});
    json!({
        "type": "object",
        "description": "ObjectMeta is metadata that all persisted resources must have, which includes all objects users must create.",
        "properties": {
            "name": string("Name must be unique within a namespace."),
            "generateName": string("GenerateName is an optional prefix, used by the server, to generate a unique name ONLY IF the Name field has not been provided."),
            "namespace": string("Namespace defines the space within which each name must be unique."),
            "uid": string("UID is the unique in time and space value for this object."),
            "resourceVersion": string("An opaque value that represents the internal version of this object."),
            "generation": {"type": "integer", "format": "int64", "description": "A sequence number representing a specific generation of the desired state."},
            "creationTimestamp": {"type": "string", "format": "date-time", "description": "CreationTimestamp is a timestamp representing the server time when this object was created."},
            "deletionTimestamp": {"type": "string", "format": "date-time", "description": "DeletionTimestamp is RFC 3339 date and time at which this resource will be deleted."},
            "labels": strings("Map of string keys and values that can be used to organize and categorize (scope and select) objects."),
            "annotations": strings("Annotations is an unstructured key value map stored with a resource that may be set by external tools to store and retrieve arbitrary metadata."),
            "finalizers": {"type": "array", "items": {"type": "string", "default": ""}, "description": "Must be empty before the object is deleted from the registry."},
            "ownerReferences": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}, "description": "List of objects depended by this object."},
            "managedFields": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}, "description": "ManagedFields maps workflow-id and version to the set of fields that are managed by that workflow."},
        },
    })
}

fn list_meta() -> Value {
    json!({
        "type": "object",
        "description": "ListMeta describes metadata that synthetic resources must have, including lists and various status objects.",
        "properties": {
            "resourceVersion": {"type": "string", "description": "String that identifies the server's internal version of this object."},
            "continue": {"type": "string", "description": "continue may be set if the user set a limit on the number of items returned."},
        },
    })
}

/// The kind's schema: the CRD's, with the standard `apiVersion`/`kind`/`metadata` fields and
/// the `x-kubernetes-group-version-kind` clients look kinds up by.
fn kind_schema(resource: &Resource, version: &Version, dialect: Dialect) -> Value {
    let mut schema = version
        .schema
        .clone()
        .unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
    let Some(map) = schema.as_object_mut() else {
        return schema;
    };
    let properties = map
        .entry("properties")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(props) = properties.as_object_mut() {
        props.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
        props.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
        props.insert(
            "metadata".into(),
            dialect.described_reference(OBJECT_META, "Standard object's metadata."),
        );
    }
    map.insert(
        "x-kubernetes-group-version-kind".into(),
        json!([gvk(&resource.group, &version.name, &resource.kind)]),
    );
    schema
}

fn list_schema(resource: &Resource, version: &Version, dialect: Dialect) -> Value {
    let item = definition_name(&resource.group, &version.name, &resource.kind);
    json!({
        "type": "object",
        "description": format!("{} is a list of {}", resource.list_kind, resource.kind),
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "items": {"type": "array", "items": dialect.reference(&item)},
            "metadata": dialect.reference(LIST_META),
        },
        "x-kubernetes-group-version-kind": [gvk(&resource.group, &version.name, &resource.list_kind)],
    })
}

/// The query parameters of a write, as upstream declares them (kubectl looks for
/// `fieldValidation` on PATCH to decide where validation happens).
fn write_parameters(dialect: Dialect, patch: bool) -> Vec<Value> {
    let query = |name: &str, description: &str, ty: &str| match dialect {
        Dialect::V2 => {
            json!({"name": name, "in": "query", "type": ty, "uniqueItems": true, "description": description})
        }
        Dialect::V3 => {
            json!({"name": name, "in": "query", "schema": {"type": ty, "uniqueItems": true}, "description": description})
        }
    };
    let mut params = vec![
        query(
            "dryRun",
            "When present, indicates that modifications should not be persisted.",
            "string",
        ),
        query(
            "fieldManager",
            "fieldManager is a name associated with the actor or entity that is making these changes.",
            "string",
        ),
        query(
            "fieldValidation",
            "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn (the default), Strict.",
            "string",
        ),
    ];
    if patch {
        params.push(query(
            "force",
            "Force is going to \"force\" Apply requests.",
            "boolean",
        ));
    }
    params
}

fn operation(
    dialect: Dialect,
    id: String,
    action: &str,
    gvk_value: &Value,
    parameters: Vec<Value>,
    response: &str,
) -> Value {
    let body = match dialect {
        Dialect::V2 => json!({"description": "OK", "schema": dialect.reference(response)}),
        Dialect::V3 => {
            json!({"description": "OK", "content": {"application/json": {"schema": dialect.reference(response)}}})
        }
    };
    json!({
        "operationId": id,
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk_value,
        "parameters": parameters,
        "responses": {"200": body},
    })
}

/// The paths of one resource version, keyed by path.
fn resource_paths(resource: &Resource, version: &Version, dialect: Dialect) -> Map<String, Value> {
    let prefix = if resource.group.is_empty() {
        format!("/api/{}", version.name)
    } else {
        format!("/apis/{}/{}", resource.group, version.name)
    };
    let scope = if resource.namespaced {
        "/namespaces/{namespace}"
    } else {
        ""
    };
    let kind = definition_name(&resource.group, &version.name, &resource.kind);
    let list = definition_name(&resource.group, &version.name, &resource.list_kind);
    let g = gvk(&resource.group, &version.name, &resource.kind);
    let id = |verb: &str, suffix: &str| format!("{verb}{}{suffix}", resource.kind);
    let mut paths = Map::new();
    let collection = format!("{prefix}{scope}/{}", resource.plural);
    paths.insert(
        collection.clone(),
        json!({
            "get": operation(dialect, id("list", ""), "list", &g, vec![], &list),
            "post": operation(dialect, id("create", ""), "post", &g, write_parameters(dialect, false), &kind),
            "delete": operation(dialect, id("deletecollection", ""), "deletecollection", &g, vec![], &list),
        }),
    );
    let item = format!("{collection}/{{name}}");
    paths.insert(
        item.clone(),
        json!({
            "get": operation(dialect, id("read", ""), "get", &g, vec![], &kind),
            "put": operation(dialect, id("replace", ""), "put", &g, write_parameters(dialect, false), &kind),
            "patch": operation(dialect, id("patch", ""), "patch", &g, write_parameters(dialect, true), &kind),
            "delete": operation(dialect, id("delete", ""), "delete", &g, vec![], &kind),
        }),
    );
    if version.status_subresource {
        paths.insert(
            format!("{item}/status"),
            json!({
                "get": operation(dialect, id("read", "Status"), "get", &g, vec![], &kind),
                "put": operation(dialect, id("replace", "Status"), "put", &g, write_parameters(dialect, false), &kind),
                "patch": operation(dialect, id("patch", "Status"), "patch", &g, write_parameters(dialect, true), &kind),
            }),
        );
    }
    paths
}

/// Definitions and paths of every resource version for which `select` holds.
fn collect(
    registry: &Registry,
    dialect: Dialect,
    select: impl Fn(&Resource, &Version) -> bool,
) -> (Map<String, Value>, Map<String, Value>) {
    let mut schemas = Map::new();
    let mut paths = Map::new();
    for resource in registry.all() {
        for version in resource.versions.iter().filter(|v| select(resource, v)) {
            schemas.insert(
                definition_name(&resource.group, &version.name, &resource.kind),
                kind_schema(resource, version, dialect),
            );
            schemas.insert(
                definition_name(&resource.group, &version.name, &resource.list_kind),
                list_schema(resource, version, dialect),
            );
            paths.extend(resource_paths(resource, version, dialect));
        }
    }
    if !schemas.is_empty() {
        schemas.insert(OBJECT_META.into(), object_meta());
        schemas.insert(LIST_META.into(), list_meta());
    }
    (schemas, paths)
}

/// `/openapi/v3/{api/v1 | apis/group/version}` for one group version, or `None`.
pub(crate) fn v3_group_version(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let (schemas, paths) = collect(registry, Dialect::V3, |r, v| {
        r.group == group && v.name == version
    });
    (!schemas.is_empty()).then(|| {
        json!({
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": crate::discovery::version()["gitVersion"]},
            "paths": paths,
            "components": {"schemas": schemas},
        })
    })
}

/// The relative path of each served group version's v3 document (`apis/g/v`, `api/v1`).
fn group_versions(registry: &Registry) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for resource in registry.all() {
        for version in &resource.versions {
            let key = if resource.group.is_empty() {
                format!("api/{}", version.name)
            } else {
                format!("apis/{}/{}", resource.group, version.name)
            };
            out.insert(key, (resource.group.clone(), version.name.clone()));
        }
    }
    out
}

/// `/openapi/v3`: where each group version's document is, with a content hash in the URL so
/// that a client's cache notices a changed CRD.
pub(crate) fn v3_index(registry: &Registry) -> Value {
    let mut paths = Map::new();
    for (key, (group, version)) in group_versions(registry) {
        let hash = v3_group_version(registry, &group, &version)
            .map(|doc| {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                doc.to_string().hash(&mut hasher);
                format!("{:016X}", hasher.finish())
            })
            .unwrap_or_default();
        paths.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash}")}),
        );
    }
    json!({"paths": paths})
}

/// `/openapi/v2` as JSON: one Swagger 2.0 document for every group version.
pub(crate) fn v2(registry: &Registry) -> Value {
    let (definitions, paths) = collect(registry, Dialect::V2, |_, _| true);
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": crate::discovery::version()["gitVersion"]},
        "paths": paths,
        "definitions": definitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget"},
                "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "spec": {"type": "object", "description": "What the widget is.", "properties": {"size": {"type": "integer"}}}}}}}]}
        });
        let mut registry = Registry::with_builtins();
        registry.install(Resource::from_crd(&crd).unwrap());
        registry
    }

    #[test]
    fn definitions_are_named_by_reversed_group() {
        assert_eq!(
            definition_name("extensions.agents.x-k8s.io", "v1beta1", "SandboxClaim"),
            "io.x-k8s.agents.extensions.v1beta1.SandboxClaim"
        );
        assert_eq!(definition_name("", "v1", "Pod"), "io.k8s.api.core.v1.Pod");
    }

    #[test]
    fn a_group_version_document_describes_the_kind_and_takes_field_validation_on_patch() {
        let doc = v3_group_version(&registry(), "example.com", "v1").unwrap();
        let widget = &doc["components"]["schemas"]["com.example.v1.Widget"];
        assert_eq!(
            widget["properties"]["spec"]["description"],
            "What the widget is."
        );
        assert_eq!(
            widget["x-kubernetes-group-version-kind"][0],
            json!({"group": "example.com", "version": "v1", "kind": "Widget"})
        );
        assert_eq!(
            widget["properties"]["metadata"]["allOf"][0]["$ref"],
            format!("#/components/schemas/{OBJECT_META}")
        );
        let patch =
            &doc["paths"]["/apis/example.com/v1/namespaces/{namespace}/widgets/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Widget");
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
        );
        assert!(
            doc["paths"]
                .get("/apis/example.com/v1/namespaces/{namespace}/widgets/{name}/status")
                .is_some()
        );
        assert!(v3_group_version(&registry(), "example.com", "v2").is_none());
    }

    #[test]
    fn the_index_points_at_every_group_version_with_a_hash() {
        let index = v3_index(&registry());
        let url = index["paths"]["apis/example.com/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap();
        assert!(
            url.starts_with("/openapi/v3/apis/example.com/v1?hash="),
            "{url}"
        );
        assert!(index["paths"].get("api/v1").is_some());
    }

    #[test]
    fn v2_refers_to_definitions() {
        let doc = v2(&registry());
        assert_eq!(doc["swagger"], "2.0");
        assert_eq!(
            doc["definitions"]["com.example.v1.Widget"]["properties"]["metadata"]["$ref"],
            format!("#/definitions/{OBJECT_META}")
        );
        assert!(doc["definitions"].get("io.k8s.api.core.v1.Pod").is_some());
    }
}
