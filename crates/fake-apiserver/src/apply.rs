//! Server-side apply (`PATCH` with `application/apply-patch+yaml`): field ownership per field
//! manager, kept in `metadata.managedFields` as `FieldsV1`.
//!
//! # Guarantees
//!
//! - An apply sets every field of its configuration and owns it; a field the same manager
//!   applied before and now leaves out is removed, unless another applier owns it too.
//! - Objects merge key by key; a list is replaced whole (`atomic`, the CRD default) unless its
//!   schema says `x-kubernetes-list-type: map` (items merged by `x-kubernetes-list-map-keys`) or
//!   `set` (scalar items united); `x-kubernetes-map-type: atomic` objects are replaced whole.
//! - Setting a field another applier owns to a different value is a 409 `Conflict` naming the
//!   field and its manager, unless `force=true`, which moves the field to the new manager.
//!
//! # Caveats
//!
//! Only appliers own fields: creates, updates and non-apply patches are not recorded as
//! `Update` managers, so they never conflict with an apply and never shield a field from
//! removal. `managedFields` entries carry no per-subresource split.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::status::{ApiError, Cause};

/// Who applies, and whether they take fields from other appliers.
#[derive(Debug, Clone)]
pub(crate) struct Applier {
    /// `fieldManager` (required for apply, as upstream).
    pub(crate) manager: String,
    /// `force=true`.
    pub(crate) force: bool,
}

/// Why an apply failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ApplyError {
    /// `fieldManager` was not given.
    NoManager,
    /// Fields owned by other appliers would change: `(field path, manager)`.
    Conflicts(Vec<(String, String)>),
}

impl ApplyError {
    /// The `Status` upstream answers with: 400 without a manager, 409 `Conflict` naming each
    /// contested field and its manager (also as `FieldManagerConflict` causes).
    pub(crate) fn into_status(self, group: &str, plural: &str, name: &str) -> ApiError {
        match self {
            Self::NoManager => ApiError::bad_request(
                "PATCH with application/apply-patch+yaml requires the fieldManager parameter",
            ),
            Self::Conflicts(conflicts) => {
                let listed: Vec<String> = conflicts
                    .iter()
                    .map(|(field, manager)| format!("conflict with \"{manager}\": {field}"))
                    .collect();
                let plural_s = if conflicts.len() == 1 { "" } else { "s" };
                let why = format!(
                    "Apply failed with {} conflict{plural_s}: {}",
                    conflicts.len(),
                    listed.join(", ")
                );
                let mut err = ApiError::conflict(group, plural, name, &why);
                err.causes = conflicts
                    .into_iter()
                    .map(|(field, manager)| {
                        Cause::new(
                            "FieldManagerConflict",
                            &field,
                            format!("conflict with \"{manager}\""),
                        )
                    })
                    .collect();
                err
            }
        }
    }
}

/// One step of a field path, as FieldsV1 writes it (`f:name`, `k:{"name":"a"}`, `v:"x"`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Field(String),
    Key(String),
    Value(String),
}

impl Step {
    fn encode(&self) -> String {
        match self {
            Self::Field(f) => format!("f:{f}"),
            Self::Key(k) => format!("k:{k}"),
            Self::Value(v) => format!("v:{v}"),
        }
    }

    fn decode(s: &str) -> Option<Self> {
        let (prefix, rest) = s.split_once(':')?;
        match prefix {
            "f" => Some(Self::Field(rest.to_owned())),
            "k" => Some(Self::Key(rest.to_owned())),
            "v" => Some(Self::Value(rest.to_owned())),
            _ => None,
        }
    }

    /// As upstream prints paths in conflicts: `.spec.ports[name="http"]`, `.spec.tags[="a"]`.
    fn display(&self) -> String {
        match self {
            Self::Field(f) => format!(".{f}"),
            Self::Key(k) => {
                let keys: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let pairs: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("[{}]", pairs.join(","))
            }
            Self::Value(v) => format!("[={v}]"),
        }
    }
}

type Path = Vec<Step>;

/// A set of owned leaf paths (a node that is owned as a whole is a leaf).
type FieldSet = std::collections::BTreeSet<Path>;

fn display(path: &Path) -> String {
    path.iter().map(Step::display).collect()
}

/// Metadata a client does not own.
const SERVER_METADATA: [&str; 9] = [
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "generateName",
];

fn child_schema<'a>(schema: Option<&'a Value>, key: &str) -> Option<&'a Value> {
    let schema = schema?;
    schema
        .get("properties")
        .and_then(|p| p.get(key))
        .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()))
}

fn list_type(schema: Option<&Value>) -> &str {
    schema
        .and_then(|s| s.get("x-kubernetes-list-type"))
        .and_then(Value::as_str)
        .unwrap_or("atomic")
}

fn map_keys(schema: Option<&Value>) -> Vec<String> {
    schema
        .and_then(|s| s.get("x-kubernetes-list-map-keys"))
        .and_then(Value::as_array)
        .map(|keys| {
            keys.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The FieldsV1 key of a list-map item: its key fields as a JSON object.
fn item_key(item: &Value, keys: &[String]) -> String {
    let mut key = Map::new();
    for k in keys {
        if let Some(v) = item.get(k) {
            key.insert(k.clone(), v.clone());
        }
    }
    Value::Object(key).to_string()
}

fn atomic_object(schema: Option<&Value>) -> bool {
    schema
        .and_then(|s| s.get("x-kubernetes-map-type"))
        .and_then(Value::as_str)
        == Some("atomic")
}

/// Every leaf path `config` sets.
fn fields_of(config: &Value, schema: Option<&Value>, path: &mut Path, out: &mut FieldSet) {
    match config {
        Value::Object(map) if !atomic_object(schema) && !map.is_empty() => {
            for (key, value) in map {
                if path.is_empty() && (key == "apiVersion" || key == "kind") {
                    continue;
                }
                if path.len() == 1
                    && path[0] == Step::Field("metadata".into())
                    && SERVER_METADATA.contains(&key.as_str())
                {
                    continue;
                }
                path.push(Step::Field(key.clone()));
                fields_of(value, child_schema(schema, key), path, out);
                path.pop();
            }
        }
        Value::Array(items) if list_type(schema) == "map" => {
            let keys = map_keys(schema);
            let item_schema = schema.and_then(|s| s.get("items"));
            for item in items {
                path.push(Step::Key(item_key(item, &keys)));
                out.insert(path.clone());
                fields_of(item, item_schema, path, out);
                path.pop();
            }
        }
        Value::Array(items) if list_type(schema) == "set" => {
            for item in items {
                path.push(Step::Value(item.to_string()));
                out.insert(path.clone());
                path.pop();
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
}

/// The value at `path` in `object`, if any.
fn value_at<'a>(object: &'a Value, path: &[Step], schema: Option<&Value>) -> Option<&'a Value> {
    let Some((first, rest)) = path.split_first() else {
        return Some(object);
    };
    match first {
        Step::Field(f) => value_at(object.get(f)?, rest, child_schema(schema, f)),
        Step::Key(k) => {
            let keys = map_keys(schema);
            let item = object
                .as_array()?
                .iter()
                .find(|i| item_key(i, &keys) == *k)?;
            value_at(item, rest, schema.and_then(|s| s.get("items")))
        }
        Step::Value(v) => {
            let wanted: Value = serde_json::from_str(v).ok()?;
            object.as_array()?.iter().find(|i| **i == wanted)
        }
    }
}

/// Removes the node at `path`; empties left behind stay (as upstream, an emptied map remains).
fn remove_at(object: &mut Value, path: &[Step], schema: Option<&Value>) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    match first {
        Step::Field(f) => {
            if rest.is_empty() {
                if let Some(m) = object.as_object_mut() {
                    m.remove(f);
                }
            } else if let Some(child) = object.get_mut(f) {
                remove_at(child, rest, child_schema(schema, f));
            }
        }
        Step::Key(k) => {
            let keys = map_keys(schema);
            let Some(items) = object.as_array_mut() else {
                return;
            };
            if rest.is_empty() {
                items.retain(|i| item_key(i, &keys) != *k);
            } else if let Some(item) = items.iter_mut().find(|i| item_key(i, &keys) == *k) {
                remove_at(item, rest, schema.and_then(|s| s.get("items")));
            }
        }
        Step::Value(v) => {
            if let (Some(items), Ok(wanted)) =
                (object.as_array_mut(), serde_json::from_str::<Value>(v))
            {
                items.retain(|i| *i != wanted);
            }
        }
    }
}

/// Merges `config` into `object` by the schema's merge rules.
fn merge(object: &mut Value, config: &Value, schema: Option<&Value>) {
    match (object, config) {
        (Value::Object(target), Value::Object(source)) if !atomic_object(schema) => {
            for (key, value) in source {
                match target.get_mut(key) {
                    Some(existing) => merge(existing, value, child_schema(schema, key)),
                    None => {
                        target.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Array(target), Value::Array(source)) if list_type(schema) == "map" => {
            let keys = map_keys(schema);
            let item_schema = schema.and_then(|s| s.get("items"));
            for item in source {
                let key = item_key(item, &keys);
                match target.iter_mut().find(|i| item_key(i, &keys) == key) {
                    Some(existing) => merge(existing, item, item_schema),
                    None => target.push(item.clone()),
                }
            }
        }
        (Value::Array(target), Value::Array(source)) if list_type(schema) == "set" => {
            for item in source {
                if !target.contains(item) {
                    target.push(item.clone());
                }
            }
        }
        (target, source) => *target = source.clone(),
    }
}

fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for (i, step) in path.iter().enumerate() {
            let entry = node
                .entry(step.encode())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            // A list-map item owns itself (`.`) as well as its fields.
            if matches!(step, Step::Key(_)) && i + 1 < path.len() {
                entry
                    .as_object_mut()
                    .map(|m| m.entry(".").or_insert_with(|| json!({})));
            }
            node = match entry.as_object_mut() {
                Some(m) => m,
                None => return Value::Object(root),
            };
        }
    }
    Value::Object(root)
}

fn from_fields_v1(value: &Value, path: &mut Path, out: &mut FieldSet) {
    let Some(map) = value.as_object() else {
        return;
    };
    let children: Vec<_> = map.iter().filter(|(k, _)| *k != ".").collect();
    if (children.is_empty() || map.contains_key(".")) && !path.is_empty() {
        out.insert(path.clone());
    }
    for (key, child) in children {
        if let Some(step) = Step::decode(key) {
            path.push(step);
            from_fields_v1(child, path, out);
            path.pop();
        }
    }
}

/// The applier-owned field sets of an object, by manager.
fn owners(object: Option<&Value>) -> BTreeMap<String, FieldSet> {
    let mut out = BTreeMap::new();
    let entries = object
        .and_then(|o| o.pointer("/metadata/managedFields"))
        .and_then(Value::as_array);
    for entry in entries.into_iter().flatten() {
        if entry.get("operation").and_then(Value::as_str) != Some("Apply") {
            continue;
        }
        let (Some(manager), Some(fields)) = (
            entry.get("manager").and_then(Value::as_str),
            entry.get("fieldsV1"),
        ) else {
            continue;
        };
        let mut set = FieldSet::new();
        from_fields_v1(fields, &mut Vec::new(), &mut set);
        out.insert(manager.to_owned(), set);
    }
    out
}

/// `true` when `owned` covers `path` (it is `path` or an ancestor or a descendant of it).
fn overlaps(owned: &Path, path: &Path) -> bool {
    owned.starts_with(path) || path.starts_with(owned)
}

/// Applies `config` on `current` (`None`: the object does not exist yet) for `applier`.
///
/// Returns the object to store, with its `metadata.managedFields` rewritten; `schema` is the
/// version's `openAPIV3Schema` (list and map types), `api_version` what the entries record.
pub(crate) fn apply(
    current: Option<&Value>,
    config: &Value,
    applier: &Applier,
    schema: Option<&Value>,
    api_version: &str,
    now: &str,
) -> Result<Value, ApplyError> {
    if applier.manager.is_empty() {
        return Err(ApplyError::NoManager);
    }
    let mut applied = FieldSet::new();
    fields_of(config, schema, &mut Vec::new(), &mut applied);
    let mut owners = owners(current);
    let previous = owners.remove(&applier.manager).unwrap_or_default();

    let mut conflicts = Vec::new();
    for (manager, owned) in &mut owners {
        let contested: Vec<Path> = owned
            .iter()
            .filter(|o| applied.iter().any(|p| overlaps(o, p)))
            // Owning a list-map item (`.`) is membership; only its fields can conflict.
            .filter(|o| !matches!(o.last(), Some(Step::Key(_))))
            .filter(|o| {
                let theirs = current.and_then(|c| value_at(c, o, schema));
                let ours = value_at(config, o, schema);
                ours.is_some() && theirs != ours
            })
            .cloned()
            .collect();
        if applier.force {
            for path in &contested {
                owned.remove(path);
            }
        } else {
            conflicts.extend(contested.iter().map(|p| (display(p), manager.clone())));
        }
    }
    if !conflicts.is_empty() {
        return Err(ApplyError::Conflicts(conflicts));
    }

    let mut object = current.cloned().unwrap_or_else(|| json!({}));
    for dropped in previous.difference(&applied) {
        let shared = owners
            .values()
            .any(|owned| owned.iter().any(|o| overlaps(o, dropped)));
        if !shared && !applied.iter().any(|p| p.starts_with(dropped)) {
            remove_at(&mut object, dropped, schema);
        }
    }
    merge(&mut object, config, schema);

    let mut entries: Vec<Value> = current
        .and_then(|c| c.pointer("/metadata/managedFields"))
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e.get("operation").and_then(Value::as_str) != Some("Apply"))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let entry = |manager: &str, fields: &FieldSet| {
        json!({
            "manager": manager,
            "operation": "Apply",
            "apiVersion": api_version,
            "time": now,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(fields),
        })
    };
    entries.push(entry(&applier.manager, &applied));
    for (manager, owned) in &owners {
        if !owned.is_empty() {
            let mut kept = entry(manager, owned);
            // Their entry keeps the time of their own last apply.
            if let Some(time) = current
                .and_then(|c| c.pointer("/metadata/managedFields"))
                .and_then(Value::as_array)
                .and_then(|es| {
                    es.iter().find(|e| {
                        e.get("manager").and_then(Value::as_str) == Some(manager.as_str())
                    })
                })
                .and_then(|e| e.get("time"))
            {
                kept["time"] = time.clone();
            }
            entries.push(kept);
        }
    }
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = json!({});
    }
    object["metadata"]["managedFields"] = Value::Array(entries);
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by(manager: &str) -> Applier {
        Applier {
            manager: manager.into(),
            force: false,
        }
    }

    fn run(current: Option<&Value>, config: Value, applier: &Applier) -> Value {
        apply(current, &config, applier, Some(&schema()), "g/v1", "t").unwrap()
    }

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "metadata": {"type": "object"},
            "spec": {"type": "object", "properties": {
                "replicas": {"type": "integer"},
                "image": {"type": "string"},
                "args": {"type": "array", "items": {"type": "string"}},
                "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
                "ports": {"type": "array", "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["name"],
                    "items": {"type": "object", "properties": {"name": {"type": "string"}, "port": {"type": "integer"}}}}
            }}
        }})
    }

    #[test]
    fn a_field_the_manager_stops_applying_is_removed_and_others_stay() {
        let first = run(
            None,
            json!({"metadata": {"name": "a", "labels": {"x": "1", "y": "2"}}, "spec": {"replicas": 1, "image": "i", "args": ["a", "b"]}}),
            &by("me"),
        );
        let second = run(
            Some(&first),
            json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"replicas": 2, "args": ["c"]}}),
            &by("me"),
        );
        assert_eq!(second["spec"], json!({"replicas": 2, "args": ["c"]}));
        assert_eq!(second["metadata"]["labels"], json!({"x": "1"}));
        let entries = second["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(
            entries[0]["fieldsV1"],
            json!({"f:metadata": {"f:labels": {"f:x": {}}, "f:name": {}}, "f:spec": {"f:args": {}, "f:replicas": {}}})
        );
    }

    #[test]
    fn list_map_items_merge_by_key_and_belong_to_their_applier() {
        let mine = run(
            None,
            json!({"spec": {"ports": [{"name": "http", "port": 80}]}}),
            &by("me"),
        );
        let both = run(
            Some(&mine),
            json!({"spec": {"ports": [{"name": "grpc", "port": 9090}]}}),
            &by("you"),
        );
        assert_eq!(
            both["spec"]["ports"],
            json!([{"name": "http", "port": 80}, {"name": "grpc", "port": 9090}])
        );
        let again = run(Some(&both), json!({"spec": {}}), &by("me"));
        assert_eq!(
            again["spec"]["ports"],
            json!([{"name": "grpc", "port": 9090}])
        );
    }

    #[test]
    fn set_items_are_united_and_each_belongs_to_its_applier() {
        let mine = run(None, json!({"spec": {"tags": ["a"]}}), &by("me"));
        let both = run(Some(&mine), json!({"spec": {"tags": ["b"]}}), &by("you"));
        assert_eq!(both["spec"]["tags"], json!(["a", "b"]));
        let again = run(Some(&both), json!({"spec": {"tags": []}}), &by("me"));
        assert_eq!(again["spec"]["tags"], json!(["b"]));
    }

    #[test]
    fn changing_a_field_another_applier_owns_conflicts_unless_forced() {
        let theirs = run(None, json!({"spec": {"replicas": 1}}), &by("them"));
        let err = apply(
            Some(&theirs),
            &json!({"spec": {"replicas": 3}}),
            &by("me"),
            Some(&schema()),
            "g/v1",
            "t",
        )
        .unwrap_err();
        assert_eq!(
            err,
            ApplyError::Conflicts(vec![(".spec.replicas".into(), "them".into())])
        );
        // The same value is shared ownership, not a conflict.
        let shared = run(Some(&theirs), json!({"spec": {"replicas": 1}}), &by("me"));
        assert_eq!(
            shared["metadata"]["managedFields"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let forced = run(
            Some(&theirs),
            json!({"spec": {"replicas": 3}}),
            &Applier {
                manager: "me".into(),
                force: true,
            },
        );
        assert_eq!(forced["spec"]["replicas"], 3);
        let managers: Vec<&str> = forced["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(
            managers,
            ["me"],
            "the forced field left `them` with nothing"
        );
    }

    #[test]
    fn a_conflict_on_a_list_map_item_names_it_by_its_key() {
        let theirs = run(
            None,
            json!({"spec": {"ports": [{"name": "http", "port": 80}]}}),
            &by("them"),
        );
        let err = apply(
            Some(&theirs),
            &json!({"spec": {"ports": [{"name": "http", "port": 8080}]}}),
            &by("me"),
            Some(&schema()),
            "g/v1",
            "t",
        )
        .unwrap_err();
        assert_eq!(
            err,
            ApplyError::Conflicts(vec![(
                r#".spec.ports[name="http"].port"#.into(),
                "them".into()
            )])
        );
    }

    #[test]
    fn an_apply_needs_a_field_manager() {
        let err = apply(None, &json!({}), &by(""), None, "v1", "t").unwrap_err();
        assert_eq!(err, ApplyError::NoManager);
    }
}
