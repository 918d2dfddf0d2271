//! Object storage, the global resourceVersion counter and the watch-event history.
//!
//! Every write takes the next value of ONE counter, as etcd's revision does, so resourceVersions
//! are comparable across resources. Each write is recorded as an [`Event`] in a bounded history
//! (for watches resuming from an old resourceVersion) and broadcast to live watches.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

use crate::observe::{Write, WriteHook, WriteHooks, WriteKind};

/// `(group, plural)`.
pub(crate) type ResourceKey = (String, String);

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects.
pub(crate) type ObjectKey = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One committed write.
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) rv: u64,
    pub(crate) kind: EventType,
    pub(crate) resource: ResourceKey,
    pub(crate) object: Value,
    /// The object before a MODIFIED write, so watches can tell an object leaving their selector.
    pub(crate) previous: Option<Value>,
}

/// Live events, as a watch receives them.
pub(crate) type Live = broadcast::Receiver<Arc<Event>>;

/// A watch asked for a resourceVersion older than the retained history.
#[derive(Debug)]
pub(crate) struct Expired {
    pub(crate) oldest: u64,
}

#[derive(Debug)]
pub(crate) struct Store {
    rv: u64,
    objects: HashMap<ResourceKey, BTreeMap<ObjectKey, Value>>,
    /// Owner uid → the objects whose `metadata.ownerReferences` name it, so a cascading delete finds dependents
    /// without scanning every object (a thousand claims deleted at once would otherwise cost a million scans).
    dependents: HashMap<String, BTreeSet<(ResourceKey, ObjectKey)>>,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    /// Every event with a resourceVersion above this is still in `history`.
    compacted_rv: u64,
    events: broadcast::Sender<Arc<Event>>,
    hooks: WriteHooks,
}

/// `metadata.<field>` of an object. Every write and every event on every watch reads these,
/// so this indexes directly instead of parsing a JSON pointer, which allocates per segment.
pub(crate) fn metadata_field<'a>(object: &'a Value, field: &str) -> Option<&'a Value> {
    object.get("metadata")?.get(field)
}

/// The uids `object`'s `metadata.ownerReferences` name.
fn owner_uids(object: &Value) -> impl Iterator<Item = &str> {
    metadata_field(object, "ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("uid").and_then(Value::as_str))
}

pub(crate) fn object_key(object: &Value) -> ObjectKey {
    let field = |f: &str| {
        metadata_field(object, f)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    (field("namespace"), field("name"))
}

pub(crate) fn resource_version(object: &Value) -> Option<&str> {
    metadata_field(object, "resourceVersion").and_then(Value::as_str)
}

impl Store {
    pub(crate) fn new(history_limit: usize) -> Self {
        // The channel is the backlog a live watch may fall behind by before it is expired.
        let (events, _) = broadcast::channel(history_limit.max(64));
        Self {
            rv: 1,
            objects: HashMap::new(),
            dependents: HashMap::new(),
            history: VecDeque::new(),
            history_limit,
            compacted_rv: 0,
            events,
            hooks: WriteHooks::default(),
        }
    }

    /// Calls `hook` with every later write, as it is committed.
    pub(crate) fn on_write(&mut self, hook: WriteHook) {
        self.hooks.add(hook);
    }

    pub(crate) fn current_rv(&self) -> u64 {
        self.rv
    }

    pub(crate) fn get(&self, resource: &ResourceKey, key: &ObjectKey) -> Option<&Value> {
        self.objects.get(resource).and_then(|m| m.get(key))
    }

    /// Objects of one resource, optionally in one namespace, ordered by namespace and name.
    pub(crate) fn list(&self, resource: &ResourceKey, namespace: Option<&str>) -> Vec<&Value> {
        self.objects
            .get(resource)
            .map(|m| {
                m.iter()
                    .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
                    .map(|(_, v)| v)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every stored object whose `metadata.ownerReferences` names `owner_uid`.
    pub(crate) fn dependents(&self, owner_uid: &str) -> Vec<(ResourceKey, ObjectKey)> {
        self.dependents
            .get(owner_uid)
            .map(|objects| objects.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Moves `(resource, key)` in the owner index from the owners `before` names to those `after` names. Most
    /// writes (status updates) keep the owners: then nothing in the index changes.
    fn reindex_owners(
        &mut self,
        resource: &ResourceKey,
        key: &ObjectKey,
        before: Option<&Value>,
        after: Option<&Value>,
    ) {
        let before: Vec<&str> = before.into_iter().flat_map(owner_uids).collect();
        let after: Vec<&str> = after.into_iter().flat_map(owner_uids).collect();
        for uid in before.iter().filter(|uid| !after.contains(uid)) {
            if let Some(objects) = self.dependents.get_mut(*uid) {
                objects.remove(&(resource.clone(), key.clone()));
                if objects.is_empty() {
                    self.dependents.remove(*uid);
                }
            }
        }
        for uid in after.iter().filter(|uid| !before.contains(uid)) {
            self.dependents
                .entry((*uid).to_owned())
                .or_default()
                .insert((resource.clone(), key.clone()));
        }
    }

    /// Stores a new object, stamping the next resourceVersion.
    pub(crate) fn insert(&mut self, resource: &ResourceKey, object: Value) -> Value {
        self.commit(resource, object, EventType::Added)
    }

    /// Replaces an existing object, stamping the next resourceVersion.
    pub(crate) fn update(&mut self, resource: &ResourceKey, object: Value) -> Value {
        self.commit(resource, object, EventType::Modified)
    }

    /// Removes an object; the returned copy carries the deletion's resourceVersion.
    pub(crate) fn remove(&mut self, resource: &ResourceKey, key: &ObjectKey) -> Option<Value> {
        let object = self.objects.get_mut(resource)?.remove(key)?;
        Some(self.commit(resource, object, EventType::Deleted))
    }

    fn commit(&mut self, resource: &ResourceKey, mut object: Value, kind: EventType) -> Value {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        let key = object_key(&object);
        self.hooks.call(&Write {
            at: std::time::Instant::now(),
            kind: match kind {
                EventType::Added => WriteKind::Created,
                EventType::Modified => WriteKind::Updated,
                EventType::Deleted => WriteKind::Deleted,
            },
            group: &resource.0,
            resource: &resource.1,
            object: &object,
        });
        let previous = match kind {
            EventType::Deleted => {
                self.reindex_owners(resource, &key, Some(&object), None);
                None
            }
            _ => {
                let previous = self
                    .objects
                    .entry(resource.clone())
                    .or_default()
                    .insert(key.clone(), object.clone());
                self.reindex_owners(resource, &key, previous.as_ref(), Some(&object));
                previous
            }
        };
        let event = Arc::new(Event {
            rv: self.rv,
            kind,
            resource: resource.clone(),
            object: object.clone(),
            previous,
        });
        self.history.push_back(event.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted_rv = old.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(event);
        object
    }

    /// Subscribes to live events after replaying the retained events newer than `since`.
    ///
    /// Taking both under the store's lock guarantees no event falls between replay and live.
    pub(crate) fn subscribe_since(&self, since: u64) -> Result<(Vec<Arc<Event>>, Live), Expired> {
        if since < self.compacted_rv {
            return Err(Expired {
                oldest: self.compacted_rv,
            });
        }
        let replay = self
            .history
            .iter()
            .filter(|e| e.rv > since)
            .cloned()
            .collect();
        Ok((replay, self.events.subscribe()))
    }

    pub(crate) fn subscribe(&self) -> Live {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> ResourceKey {
        ("g".into(), "things".into())
    }

    #[test]
    fn every_write_takes_the_next_global_resource_version() {
        let mut store = Store::new(10);
        let a = store.insert(
            &key(),
            json!({"metadata": {"name": "a", "namespace": "ns"}}),
        );
        let b = store.insert(
            &("g".into(), "others".into()),
            json!({"metadata": {"name": "b", "namespace": "ns"}}),
        );
        let a_rv: u64 = resource_version(&a).unwrap().parse().unwrap();
        let b_rv: u64 = resource_version(&b).unwrap().parse().unwrap();
        assert_eq!(b_rv, a_rv + 1);
        let gone = store.remove(&key(), &("ns".into(), "a".into())).unwrap();
        assert_eq!(
            resource_version(&gone),
            Some((b_rv + 1).to_string().as_str())
        );
    }

    #[test]
    fn dependents_follow_owner_references_through_updates_and_deletes() {
        let mut store = Store::new(10);
        let owned_by = |name: &str, uids: &[&str]| {
            let refs: Vec<_> = uids.iter().map(|uid| json!({"uid": uid})).collect();
            json!({"metadata": {"name": name, "namespace": "ns", "ownerReferences": refs}})
        };
        let child = ("ns".to_owned(), "child".to_owned());
        store.insert(&key(), owned_by("child", &["a", "b"]));
        store.insert(&key(), owned_by("other", &["b"]));
        assert_eq!(store.dependents("a"), vec![(key(), child.clone())]);
        assert_eq!(store.dependents("b").len(), 2);

        // Re-owned: it leaves a's dependents and joins c's.
        store.update(&key(), owned_by("child", &["c"]));
        assert!(store.dependents("a").is_empty());
        assert_eq!(
            store.dependents("b"),
            vec![(key(), ("ns".into(), "other".into()))]
        );
        assert_eq!(store.dependents("c"), vec![(key(), child.clone())]);

        // An update that keeps the owners (a status write) keeps it indexed.
        store.update(&key(), owned_by("other", &["b"]));
        assert_eq!(
            store.dependents("b"),
            vec![(key(), ("ns".into(), "other".into()))]
        );

        store.remove(&key(), &child);
        assert!(store.dependents("c").is_empty());
        assert!(
            !store.dependents.contains_key("c"),
            "emptied owners are dropped"
        );
    }

    #[test]
    fn resuming_before_the_retained_history_is_expired() {
        let mut store = Store::new(2);
        for i in 0..5 {
            store.insert(&key(), json!({"metadata": {"name": format!("o{i}")}}));
        }
        assert!(store.subscribe_since(1).is_err());
        let (replay, _) = store.subscribe_since(store.current_rv() - 2).unwrap();
        assert_eq!(replay.len(), 2);
    }
}
