//! The verbs on one custom resource: the object lifecycle rules of the API server.
//!
//! # Guarantees
//!
//! - `metadata.uid`, `creationTimestamp`, `name`, `namespace` are server-owned; `generation` is 1
//!   on create and grows only when something outside `metadata` and `status` changes.
//! - With a status subresource, main-resource writes keep the stored `.status` and `/status`
//!   writes change only `.status`. A create starts with no status.
//! - A write naming a stale `metadata.resourceVersion` is a 409 Conflict; a write that changes
//!   nothing does not bump the resourceVersion.
//! - Deleting an object with finalizers only sets `deletionTimestamp`; it goes away when the last
//!   finalizer is removed. Removal cascades to objects whose `ownerReferences` name its uid,
//!   unless the propagation policy is `Orphan`, which strips those owner references instead.
//!
//! # Caveats
//!
//! Foreground deletion removes dependents first and then the owner in the same request instead of
//! waiting on a garbage collector. No conversion between versions: an object written through one
//! version is served through another with only `apiVersion` rewritten.

use rand::Rng as _;
use serde_json::{Value, json};

use crate::apply::{self, Applier};
use crate::crd::{Resource, Version};
use crate::field_validation::{FieldValidation, Warnings};
use crate::schema;
use crate::selector::Selectors;
use crate::status::{self, ApiError, Cause};
use crate::store::{ObjectKey, ResourceKey, Store, object_key, resource_version};

/// The resource, version and object a request addresses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub(crate) resource: &'a Resource,
    pub(crate) version: &'a Version,
    /// `None` for cluster-scoped resources or all-namespace collections.
    pub(crate) namespace: Option<&'a str>,
    pub(crate) name: Option<&'a str>,
    /// The `/status` subresource.
    pub(crate) status: bool,
}

/// How writes treat the schema.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteOptions<'a> {
    pub(crate) validate: bool,
    /// What fields the schema does not declare do to the write.
    pub(crate) fields: FieldValidation,
    /// Where `Warn` puts its warnings.
    pub(crate) warnings: &'a Warnings,
}

/// The patch flavours clients send.
#[derive(Debug, Clone)]
pub(crate) enum PatchType {
    Merge,
    Json,
    /// Server-side apply, by this field manager.
    Apply(Applier),
}

/// The outcome of a delete: still present (finalizers pending) or gone.
#[derive(Debug)]
pub(crate) enum Deleted {
    Pending(Value),
    Gone(Value),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Propagation {
    Background,
    Foreground,
    Orphan,
}

impl Target<'_> {
    fn key(&self) -> ResourceKey {
        (self.resource.group.clone(), self.resource.plural.clone())
    }

    fn object_key(&self) -> ObjectKey {
        (
            self.namespace.unwrap_or("").to_owned(),
            self.name.unwrap_or("").to_owned(),
        )
    }

    fn name(&self) -> &str {
        self.name.unwrap_or("")
    }

    fn api_version(&self) -> String {
        self.resource.api_version(&self.version.name)
    }

    /// Rewrites `apiVersion`/`kind` for the version the client asked for.
    pub(crate) fn present(&self, mut object: Value) -> Value {
        object["apiVersion"] = json!(self.api_version());
        object["kind"] = json!(self.resource.kind);
        object
    }

    fn not_found(&self) -> ApiError {
        ApiError::not_found(&self.resource.group, &self.resource.plural, self.name())
    }

    fn invalid(&self, name: &str, causes: Vec<Cause>) -> ApiError {
        ApiError::invalid(&self.resource.kind, &self.resource.group, name, causes)
    }

    fn validate(&self, object: &mut Value, opts: WriteOptions<'_>) -> Result<(), ApiError> {
        let Some(schema) = self.version.schema.as_ref().filter(|_| opts.validate) else {
            return Ok(());
        };
        let checked = schema::validate(schema, &self.version.patterns, object);
        opts.fields.apply(
            &self.resource.kind,
            &self.version.name,
            &checked.unknown,
            opts.warnings,
        )?;
        let causes = checked.causes;
        if causes.is_empty() {
            Ok(())
        } else {
            let name = object
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            Err(self.invalid(&name, causes))
        }
    }
}

/// `name` is a DNS-1123 subdomain, as every custom resource name must be.
pub(crate) fn is_dns1123_subdomain(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.starts_with(alnum)
                && label.ends_with(alnum)
                && label.chars().all(|c| alnum(c) || c == '-')
        })
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn new_uid() -> String {
    let bits: u128 = rand::rng().random();
    let hex = format!(
        "{:032x}",
        (bits & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62)
    );
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

pub(crate) fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Whether two objects agree on everything but `metadata`, `status` and their type: what
/// `generation` tracks. Every write asks, so the parts are compared in place, not on copies.
fn same_spec(a: &Value, b: &Value) -> bool {
    let spec = |k: &String| !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind");
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => {
            a.keys().filter(|k| spec(k)).count() == b.keys().filter(|k| spec(k)).count()
                && a.iter()
                    .filter(|(k, _)| spec(k))
                    .all(|(k, v)| b.get(k) == Some(v))
        }
        _ => a == b,
    }
}

fn finalizers(object: &Value) -> usize {
    object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

fn require_object(body: &Value) -> Result<(), ApiError> {
    if body.is_object() && body.get("metadata").is_none_or(Value::is_object) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "the body must be a JSON object with an object `metadata`",
        ))
    }
}

pub(crate) fn get(store: &Store, t: Target<'_>) -> Result<Value, ApiError> {
    store
        .get(&t.key(), &t.object_key())
        .cloned()
        .map(|o| t.present(o))
        .ok_or_else(|| t.not_found())
}

pub(crate) fn list(store: &Store, t: Target<'_>, selectors: &Selectors) -> Value {
    let items: Vec<Value> = store
        .list(&t.key(), t.namespace)
        .into_iter()
        .filter(|o| selectors.matches(o))
        .map(|o| t.present(o.clone()))
        .collect();
    json!({
        "apiVersion": t.api_version(),
        "kind": t.resource.list_kind,
        "metadata": {"resourceVersion": store.current_rv().to_string()},
        "items": items,
    })
}

pub(crate) fn create(
    store: &mut Store,
    t: Target<'_>,
    body: Value,
    opts: WriteOptions<'_>,
) -> Result<Value, ApiError> {
    create_owned(store, t, body, opts, None)
}

/// [`create`], with the `managedFields` an apply computed.
fn create_owned(
    store: &mut Store,
    t: Target<'_>,
    mut body: Value,
    opts: WriteOptions<'_>,
    managed_fields: Option<Value>,
) -> Result<Value, ApiError> {
    require_object(&body)?;
    let namespace = t.namespace.unwrap_or("");
    let meta = body["metadata"].take();
    let text = |f: &str| meta.get(f).and_then(Value::as_str).unwrap_or("").to_owned();
    if !text("namespace").is_empty() && text("namespace") != namespace {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let name = match (text("name"), text("generateName")) {
        (n, _) if !n.is_empty() => n,
        (_, g) if !g.is_empty() => format!("{g}{}", random_suffix()),
        _ => {
            let cause = Cause::new(
                "FieldValueRequired",
                "metadata.name",
                "Required value: name or generateName is required",
            );
            return Err(t.invalid("", vec![cause]));
        }
    };
    if !is_dns1123_subdomain(&name) {
        let msg = format!(
            "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        );
        return Err(t.invalid(
            &name,
            vec![Cause::new("FieldValueInvalid", "metadata.name", msg)],
        ));
    }
    let key = (namespace.to_owned(), name.clone());
    if store.get(&t.key(), &key).is_some() {
        return Err(ApiError::already_exists(
            &t.resource.group,
            &t.resource.plural,
            &name,
        ));
    }
    let mut meta = meta;
    if let Some(m) = meta.as_object_mut() {
        for server_owned in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
        ] {
            m.remove(server_owned);
        }
    }
    meta["name"] = json!(name);
    if t.resource.namespaced {
        meta["namespace"] = json!(namespace);
    }
    meta["uid"] = json!(new_uid());
    meta["creationTimestamp"] = json!(now());
    meta["generation"] = json!(1);
    if let Some(managed) = managed_fields {
        meta["managedFields"] = managed;
    }
    body["metadata"] = meta;
    if t.version.status_subresource
        && let Some(m) = body.as_object_mut()
    {
        m.remove("status");
    }
    let mut body = t.present(body);
    t.validate(&mut body, opts)?;
    Ok(t.present(store.insert(&t.key(), body)))
}

pub(crate) fn replace(
    store: &mut Store,
    t: Target<'_>,
    body: Value,
    opts: WriteOptions<'_>,
) -> Result<Value, ApiError> {
    require_object(&body)?;
    let current = store
        .get(&t.key(), &t.object_key())
        .cloned()
        .ok_or_else(|| t.not_found())?;
    write(store, t, current, body, opts)
}

pub(crate) fn patch(
    store: &mut Store,
    t: Target<'_>,
    patch_type: &PatchType,
    body: &[u8],
    opts: WriteOptions<'_>,
) -> Result<Value, ApiError> {
    let bad = |e: &dyn std::fmt::Display| ApiError::bad_request(format!("invalid patch: {e}"));
    let current = store.get(&t.key(), &t.object_key()).cloned();
    match patch_type {
        PatchType::Json => {
            let current = current.ok_or_else(|| t.not_found())?;
            let ops: json_patch::Patch = serde_json::from_slice(body).map_err(|e| bad(&e))?;
            let mut desired = current.clone();
            json_patch::patch(&mut desired, &ops).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the JSON patch could not be applied: {e}"),
                )
            })?;
            require_object(&desired)?;
            write(store, t, current, desired, opts)
        }
        PatchType::Merge => {
            let patch: Value = serde_json::from_slice(body).map_err(|e| bad(&e))?;
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            let current = current.ok_or_else(|| t.not_found())?;
            let mut desired = current.clone();
            json_patch::merge(&mut desired, &patch);
            write(store, t, current, desired, opts)
        }
        PatchType::Apply(applier) => {
            // Server-side apply is specified as YAML (a superset of the JSON kube sends).
            let config: Value = std::str::from_utf8(body)
                .map_err(|e| bad(&e))
                .and_then(|s| serde_saphyr::from_str(s).map_err(|e| bad(&e)))?;
            require_object(&config)?;
            if t.status {
                // The status subresource takes `.status` only: a merge of the applied status.
                let current = current.ok_or_else(|| t.not_found())?;
                let mut desired = current.clone();
                json_patch::merge(&mut desired, &config);
                return write(store, t, current, desired, opts);
            }
            let mut applied = apply::apply(
                current.as_ref(),
                &config,
                applier,
                t.version.schema.as_ref(),
                &t.api_version(),
                &now(),
            )
            .map_err(|e| e.into_status(&t.resource.group, &t.resource.plural, t.name()))?;
            match current {
                Some(current) => write(store, t, current, applied, opts),
                None => {
                    let managed = applied["metadata"]["managedFields"].take();
                    applied["metadata"]["name"] = json!(t.name());
                    create_owned(store, t, applied, opts, Some(managed))
                }
            }
        }
    }
}

/// The shared update pipeline of PUT and PATCH, main resource or `/status`.
fn write(
    store: &mut Store,
    t: Target<'_>,
    current: Value,
    mut desired: Value,
    opts: WriteOptions<'_>,
) -> Result<Value, ApiError> {
    require_object(&desired)?;
    let (group, plural, name) = (&t.resource.group, &t.resource.plural, t.name());
    if desired
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_some_and(|n| n != name)
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object does not match the name on the URL ({name})"
        )));
    }
    if let Some(rv) = resource_version(&desired).filter(|rv| !rv.is_empty())
        && Some(rv) != resource_version(&current)
    {
        return Err(ApiError::conflict(
            group,
            plural,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    if t.status {
        // The status subresource ignores everything but `.status`.
        let new_status = desired.get("status").cloned();
        desired = current.clone();
        match new_status {
            Some(s) => desired["status"] = s,
            None => {
                if let Some(m) = desired.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    } else {
        if desired.get("metadata").is_none() {
            desired["metadata"] = json!({});
        }
        // A write that leaves `managedFields` out keeps them, as upstream.
        if desired["metadata"].get("managedFields").is_none()
            && let Some(managed) = current["metadata"].get("managedFields")
        {
            desired["metadata"]["managedFields"] = managed.clone();
        }
        for server_owned in [
            "uid",
            "creationTimestamp",
            "name",
            "namespace",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            match current["metadata"].get(server_owned) {
                Some(v) => desired["metadata"][server_owned] = v.clone(),
                None => {
                    if let Some(m) = desired["metadata"].as_object_mut() {
                        m.remove(server_owned);
                    }
                }
            }
        }
        if t.version.status_subresource
            && let Some(m) = desired.as_object_mut()
        {
            match current.get("status") {
                Some(s) => m.insert("status".into(), s.clone()),
                None => m.remove("status"),
            };
        }
    }
    desired["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
    let mut desired = t.present(desired);
    t.validate(&mut desired, opts)?;
    if !same_spec(&desired, &current) {
        let generation = current
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        desired["metadata"]["generation"] = json!(generation + 1);
    }
    let current = t.present(current);
    if desired == current {
        return Ok(current);
    }
    let key = t.key();
    if desired.pointer("/metadata/deletionTimestamp").is_some() && finalizers(&desired) == 0 {
        store.update(&key, desired);
        let gone = remove_cascading(store, &key, &t.object_key());
        return Ok(t.present(gone.unwrap_or(current)));
    }
    Ok(t.present(store.update(&key, desired)))
}

/// Parsed `DeleteOptions`: from the body, with the query's `propagationPolicy` taking precedence.
#[derive(Debug, Clone)]
pub(crate) struct DeleteOptions {
    pub(crate) propagation: Propagation,
    pub(crate) uid: Option<String>,
    pub(crate) resource_version: Option<String>,
}

impl DeleteOptions {
    pub(crate) fn parse(body: &[u8], query_policy: Option<&str>) -> Result<Self, ApiError> {
        let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
        };
        let policy = query_policy.or_else(|| body.get("propagationPolicy").and_then(Value::as_str));
        let propagation = match policy {
            None | Some("Background") => Propagation::Background,
            Some("Foreground") => Propagation::Foreground,
            Some("Orphan") => Propagation::Orphan,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "unsupported propagationPolicy {other:?}"
                )));
            }
        };
        let pre = |f: &str| {
            body.pointer(&format!("/preconditions/{f}"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Ok(Self {
            propagation,
            uid: pre("uid"),
            resource_version: pre("resourceVersion"),
        })
    }
}

pub(crate) fn delete(
    store: &mut Store,
    t: Target<'_>,
    opts: &DeleteOptions,
) -> Result<Deleted, ApiError> {
    let key = t.key();
    let okey = t.object_key();
    let current = store
        .get(&key, &okey)
        .cloned()
        .ok_or_else(|| t.not_found())?;
    let (group, plural, name) = (&t.resource.group, &t.resource.plural, t.name());
    let uid = current
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if opts.uid.as_ref().is_some_and(|u| *u != uid) {
        return Err(ApiError::conflict(
            group,
            plural,
            name,
            "Precondition failed: UID in precondition does not match the UID of the object",
        ));
    }
    if opts
        .resource_version
        .as_deref()
        .is_some_and(|rv| Some(rv) != resource_version(&current))
    {
        return Err(ApiError::conflict(
            group,
            plural,
            name,
            "Precondition failed: the ResourceVersion in the precondition does not match the ResourceVersion in record",
        ));
    }
    match opts.propagation {
        Propagation::Orphan => orphan_dependents(store, &uid),
        Propagation::Foreground => {
            for (dkey, dobj) in store.dependents(&uid) {
                delete_or_mark(store, &dkey, &dobj);
            }
        }
        Propagation::Background => {}
    }
    match delete_or_mark(store, &key, &okey) {
        Some(Deleted::Pending(o)) => Ok(Deleted::Pending(t.present(o))),
        _ => Ok(Deleted::Gone(status::success(group, plural, name, &uid))),
    }
}

/// Deletes every object of a collection matching the selectors; returns them as a list.
pub(crate) fn delete_collection(
    store: &mut Store,
    t: Target<'_>,
    selectors: &Selectors,
    opts: &DeleteOptions,
) -> Value {
    let keys: Vec<ObjectKey> = store
        .list(&t.key(), t.namespace)
        .into_iter()
        .filter(|o| selectors.matches(o))
        .map(object_key)
        .collect();
    let mut items = Vec::new();
    for (ns, name) in keys {
        let target = Target {
            namespace: Some(ns.as_str()).filter(|n| !n.is_empty()),
            name: Some(name.as_str()),
            ..t
        };
        match delete(store, target, opts) {
            Ok(Deleted::Pending(o)) => items.push(o),
            Ok(Deleted::Gone(_)) | Err(_) => {}
        }
    }
    json!({
        "apiVersion": t.api_version(),
        "kind": t.resource.list_kind,
        "metadata": {"resourceVersion": store.current_rv().to_string()},
        "items": items,
    })
}

/// Starts deleting one object: marks it when finalizers are pending, removes it otherwise.
fn delete_or_mark(store: &mut Store, key: &ResourceKey, okey: &ObjectKey) -> Option<Deleted> {
    let current = store.get(key, okey)?.clone();
    if finalizers(&current) > 0 {
        if current.pointer("/metadata/deletionTimestamp").is_some() {
            return Some(Deleted::Pending(current));
        }
        let mut marked = current;
        marked["metadata"]["deletionTimestamp"] = json!(now());
        marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        return Some(Deleted::Pending(store.update(key, marked)));
    }
    remove_cascading(store, key, okey).map(Deleted::Gone)
}

/// Removes an object and, as the garbage collector would, starts deleting its dependents.
fn remove_cascading(store: &mut Store, key: &ResourceKey, okey: &ObjectKey) -> Option<Value> {
    let gone = store.remove(key, okey)?;
    if let Some(uid) = gone.pointer("/metadata/uid").and_then(Value::as_str) {
        // Recursion follows ownership chains; an ownership cycle ends at the removed owner.
        for (dkey, dobj) in store.dependents(uid) {
            delete_or_mark(store, &dkey, &dobj);
        }
    }
    Some(gone)
}

fn orphan_dependents(store: &mut Store, owner_uid: &str) {
    for (dkey, dobj) in store.dependents(owner_uid) {
        if let Some(mut object) = store.get(&dkey, &dobj).cloned() {
            if let Some(refs) = object
                .pointer_mut("/metadata/ownerReferences")
                .and_then(Value::as_array_mut)
            {
                refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(owner_uid));
            }
            store.update(&dkey, object);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns1123_subdomains_are_recognised() {
        for ok in ["a", "a-b.c", "0abc", "x.y.z"] {
            assert!(is_dns1123_subdomain(ok), "{ok}");
        }
        for bad in ["", "A", "-a", "a-", "a..b", "a_b", &"a".repeat(254)] {
            assert!(!is_dns1123_subdomain(bad), "{bad}");
        }
    }

    #[test]
    fn generation_tracks_the_spec_and_not_metadata_status_or_type() {
        let base = json!({
            "apiVersion": "v1", "kind": "K",
            "metadata": {"name": "a", "labels": {"x": "1"}},
            "spec": {"n": 1}, "status": {"ready": false},
        });
        let mut other = base.clone();
        other["metadata"]["labels"]["x"] = json!("2");
        other["status"]["ready"] = json!(true);
        other["apiVersion"] = json!("v2");
        assert!(same_spec(&base, &other));
        other["spec"]["n"] = json!(2);
        assert!(!same_spec(&base, &other));
        // A top-level field the other lacks is a spec change, on either side.
        let mut extra = base.clone();
        extra["data"] = json!({"k": "v"});
        assert!(!same_spec(&base, &extra) && !same_spec(&extra, &base));
    }

    #[test]
    fn uids_look_like_version_4_uuids() {
        let uid = new_uid();
        assert_eq!(uid.len(), 36);
        assert_eq!(&uid[14..15], "4");
    }
}
