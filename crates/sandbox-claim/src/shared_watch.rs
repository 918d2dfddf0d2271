//! One watch per [`Claims`](crate::Claims) for every claim it waits for
//! ([`WatchMode::Shared`](crate::WatchMode::Shared)).
//!
//! A background task LISTs the namespace's claims of this crate (label
//! `app.kubernetes.io/managed-by=sandbox-claim`) and WATCHes them from the list's
//! resourceVersion, keeping the latest object of each claim. A waiter subscribes to one
//! claim name: it is handed the cached state at once, then every change, so a thousand
//! waiting conversations share one watch connection and cost no request each beyond their
//! create. A dropped stream is resumed from the last resourceVersion seen; `410 Gone` is
//! answered with one new LIST, which also reports the claims deleted meanwhile.
//!
//! The task starts with the first wait and stops when the last clone of its `Claims` is
//! dropped.

use crate::labels;
use crate::retry::{RetryPolicy, transient};
use crate::types::ClaimResource;
use crate::wait::{Error, Step};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::mpsc;

/// Server-side timeout of one watch request: the stream is renewed from its
/// resourceVersion after it, as client-go's reflectors do.
const WATCH_TIMEOUT_SECS: u32 = 290;

/// What a subscriber is told about its claim.
#[derive(Debug)]
enum Signal<K> {
    /// The claim's latest state.
    Seen(Arc<K>),
    /// The claim with this uid was deleted.
    Deleted(Option<String>),
    /// The claim did not exist as of this resourceVersion (a LIST, or the cache at
    /// subscription time).
    Absent(Option<u64>),
    /// Listing or watching failed with an error retrying will not fix.
    Failed(Arc<kube::Error>),
}

/// A subscriber's channel.
type Sender<K> = mpsc::UnboundedSender<Signal<K>>;

/// The cache and the subscribers, behind one lock: an update and its dispatch are atomic
/// with respect to a subscription, so no change falls between a waiter's look at the
/// cache and its first signal.
struct State<K> {
    /// The latest object of each of our claims in the namespace.
    objects: HashMap<String, Arc<K>>,
    /// The resourceVersion the cache is complete up to, when it parses as a number.
    synced_rv: Option<u64>,
    /// Whether a LIST has filled the cache.
    synced: bool,
    subscribers: HashMap<String, Vec<(u64, Sender<K>)>>,
    next_id: u64,
}

impl<K> State<K> {
    fn send(&mut self, name: &str, signal: impl Fn() -> Signal<K>) {
        if let Some(subscribers) = self.subscribers.get(name) {
            for (_, tx) in subscribers {
                let _ = tx.send(signal());
            }
        }
    }

    fn fail_all(&mut self, error: &Arc<kube::Error>) {
        for subscribers in self.subscribers.values() {
            for (_, tx) in subscribers {
                let _ = tx.send(Signal::Failed(error.clone()));
            }
        }
    }
}

type Shared<K> = Arc<Mutex<State<K>>>;

fn lock<K>(state: &Mutex<State<K>>) -> MutexGuard<'_, State<K>> {
    // Every critical section leaves the maps consistent, so a poisoned lock is still usable.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The shared watch of one [`Claims`](crate::Claims) (and its clones) for claims of type `K`.
///
/// # Guarantees
/// - One LIST and one WATCH connection at a time, whatever the number of waiting claims.
/// - A waiter sees every state of its claim from its subscription on, or a later one: the
///   latest object is cached, so a change made before the waiter subscribed is not lost.
///
/// # Caveats
/// Staleness is judged by comparing resourceVersions as numbers (what etcd-backed API
/// servers hand out); with versions that do not parse, every state seen is taken as new.
pub(crate) struct SharedWatch<K: ClaimResource> {
    api: Api<K>,
    policy: RetryPolicy,
    state: Shared<K>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl<K: ClaimResource> Drop for SharedWatch<K> {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

fn parse_rv(rv: Option<&str>) -> Option<u64> {
    rv.and_then(|rv| rv.parse().ok())
}

impl<K: ClaimResource> SharedWatch<K> {
    /// A watch on `api`'s namespace, started by the first [`SharedWatch::observe`].
    pub(crate) fn new(api: Api<K>, policy: RetryPolicy) -> Self {
        Self {
            api,
            policy,
            state: Arc::new(Mutex::new(State {
                objects: HashMap::new(),
                synced_rv: None,
                synced: false,
                subscribers: HashMap::new(),
                next_id: 0,
            })),
            task: Mutex::new(None),
        }
    }

    fn ensure_started(&self) {
        let mut task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let run = run(self.api.clone(), self.state.clone(), self.policy.clone());
        *task = Some(tokio::spawn(run).abort_handle());
    }

    /// Feeds every state of claim `name` newer than the one the caller holds (`uid` at
    /// `resource_version`) to `f` (`None`: that claim no longer exists), until `f` returns
    /// `Done` or an error. No deadline: callers wrap it in `tokio::time::timeout_at`;
    /// dropping the future unsubscribes.
    pub(crate) async fn observe<T>(
        &self,
        name: &str,
        uid: Option<&str>,
        resource_version: &str,
        mut f: impl FnMut(Option<&K>) -> Result<Step<T>, Error>,
    ) -> Result<T, Error> {
        self.ensure_started();
        let held = parse_rv(Some(resource_version));
        let (mut subscription, first) = Subscription::new(&self.state, name);
        let mut next = first;
        loop {
            let signal = match next.take() {
                Some(signal) => signal,
                None => match subscription.rx.recv().await {
                    Some(signal) => signal,
                    // The task is gone (the Claims is being dropped): nothing more will come.
                    None => std::future::pending().await,
                },
            };
            let step = match signal {
                Signal::Seen(object) => {
                    let rv = parse_rv(object.meta().resource_version.as_deref());
                    let newer = match (rv, held) {
                        (Some(rv), Some(held)) => rv >= held,
                        _ => true,
                    };
                    if !newer {
                        continue;
                    }
                    if object.meta().uid.as_deref() == uid {
                        f(Some(&object))?
                    } else {
                        // A newer object of the same name: ours is gone (and was replaced).
                        f(None)?
                    }
                }
                Signal::Deleted(gone) if gone.as_deref() == uid => f(None)?,
                Signal::Deleted(_) => continue,
                Signal::Absent(as_of) => match (as_of, held) {
                    (Some(as_of), Some(held)) if as_of >= held => f(None)?,
                    _ => continue,
                },
                Signal::Failed(error) => {
                    return Err(Error::Watch {
                        claim: name.to_owned(),
                        source: clone_error(&error),
                    });
                }
            };
            if let Step::Done(value) = step {
                return Ok(value);
            }
        }
    }
}

/// A copy of a shared failure for one waiter (`kube::Error` is not `Clone`): API statuses
/// are copied whole, anything else keeps its message.
fn clone_error(error: &kube::Error) -> kube::Error {
    match error {
        kube::Error::Api(status) => kube::Error::Api(status.clone()),
        other => kube::Error::Service(other.to_string().into()),
    }
}

/// One waiter's registration; dropping it unsubscribes.
struct Subscription<K> {
    state: Shared<K>,
    name: String,
    id: u64,
    rx: mpsc::UnboundedReceiver<Signal<K>>,
}

impl<K> Subscription<K> {
    /// Registers for `name` and returns what the cache knows of it now.
    fn new(state: &Shared<K>, name: &str) -> (Self, Option<Signal<K>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut guard = lock(state);
        let id = guard.next_id;
        guard.next_id += 1;
        guard
            .subscribers
            .entry(name.to_owned())
            .or_default()
            .push((id, tx));
        let first = match guard.objects.get(name) {
            Some(object) => Some(Signal::Seen(object.clone())),
            None if guard.synced => Some(Signal::Absent(guard.synced_rv)),
            None => None,
        };
        drop(guard);
        let subscription = Self {
            state: state.clone(),
            name: name.to_owned(),
            id,
            rx,
        };
        (subscription, first)
    }
}

impl<K> Drop for Subscription<K> {
    fn drop(&mut self) {
        let mut guard = lock(&self.state);
        if let Some(subscribers) = guard.subscribers.get_mut(&self.name) {
            subscribers.retain(|(id, _)| *id != self.id);
            if subscribers.is_empty() {
                guard.subscribers.remove(&self.name);
            }
        }
    }
}

/// Reports a failed LIST or WATCH: a transient one is retried quietly (waiters keep
/// waiting, bounded by their deadlines); any other fails every current waiter.
fn report<K>(state: &Shared<K>, what: &str, error: kube::Error) {
    if transient(&error).is_some() {
        tracing::debug!(%error, "{what} of the shared claim watch failed, retrying");
        return;
    }
    tracing::warn!(%error, "{what} of the shared claim watch failed");
    lock(state).fail_all(&Arc::new(error));
}

/// Replaces the cache with a LIST's items; returns the list's resourceVersion.
fn apply_list<K: ClaimResource>(state: &Shared<K>, list: kube::core::ObjectList<K>) -> String {
    let rv = list.metadata.resource_version.unwrap_or_default();
    let mut guard = lock(state);
    let mut fresh = HashMap::with_capacity(list.items.len());
    for item in list.items {
        if let Some(name) = item.meta().name.clone() {
            fresh.insert(name, Arc::new(item));
        }
    }
    let old = std::mem::replace(&mut guard.objects, fresh);
    guard.synced = true;
    guard.synced_rv = parse_rv(Some(&rv));
    let as_of = guard.synced_rv;
    let names: Vec<String> = guard.subscribers.keys().cloned().collect();
    for name in names {
        match guard.objects.get(&name).cloned() {
            Some(object) => guard.send(&name, || Signal::Seen(object.clone())),
            None if old.contains_key(&name) => guard.send(&name, || Signal::Absent(as_of)),
            None => {}
        }
    }
    rv
}

/// The watch loop: LIST, then WATCH from the list's resourceVersion, resumed on drops,
/// re-listed on 410, until aborted.
async fn run<K: ClaimResource>(api: Api<K>, state: Shared<K>, policy: RetryPolicy) {
    let selector = labels::managed_selector();
    let mut resource_version: Option<String> = None;
    let mut failures = 0u32;
    loop {
        let rv = match resource_version.clone() {
            Some(rv) => rv,
            None => match api.list(&ListParams::default().labels(&selector)).await {
                Ok(list) => {
                    let rv = apply_list(&state, list);
                    resource_version = Some(rv.clone());
                    rv
                }
                Err(error) => {
                    report(&state, "listing", error);
                    tokio::time::sleep(policy.delay(failures, None)).await;
                    failures = failures.saturating_add(1).min(16);
                    continue;
                }
            },
        };
        let wp = WatchParams::default()
            .labels(&selector)
            .timeout(WATCH_TIMEOUT_SECS);
        let stream = match api.watch(&wp, &rv).await {
            Ok(stream) => stream,
            Err(kube::Error::Api(s)) if s.code == 410 => {
                resource_version = None;
                continue;
            }
            Err(error) => {
                let hint = transient(&error).flatten();
                report(&state, "watching", error);
                tokio::time::sleep(policy.delay(failures, hint)).await;
                failures = failures.saturating_add(1).min(16);
                continue;
            }
        };
        let mut stream = std::pin::pin!(stream.into_stream());
        let mut progressed = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(WatchEvent::Added(object) | WatchEvent::Modified(object)) => {
                    progressed = true;
                    let Some(name) = object.meta().name.clone() else {
                        continue;
                    };
                    let rv = object.meta().resource_version.clone();
                    let object = Arc::new(object);
                    let mut guard = lock(&state);
                    guard.synced_rv = parse_rv(rv.as_deref()).or(guard.synced_rv);
                    guard.objects.insert(name.clone(), object.clone());
                    guard.send(&name, || Signal::Seen(object.clone()));
                    drop(guard);
                    resource_version = rv.or(resource_version);
                }
                Ok(WatchEvent::Deleted(object)) => {
                    progressed = true;
                    let Some(name) = object.meta().name.clone() else {
                        continue;
                    };
                    let rv = object.meta().resource_version.clone();
                    let uid = object.meta().uid.clone();
                    let mut guard = lock(&state);
                    guard.synced_rv = parse_rv(rv.as_deref()).or(guard.synced_rv);
                    if guard
                        .objects
                        .get(&name)
                        .is_some_and(|o| o.meta().uid == uid)
                    {
                        guard.objects.remove(&name);
                    }
                    guard.send(&name, || Signal::Deleted(uid.clone()));
                    drop(guard);
                    resource_version = rv.or(resource_version);
                }
                Ok(WatchEvent::Bookmark(bookmark)) => {
                    progressed = true;
                    let rv = bookmark.metadata.resource_version;
                    let mut guard = lock(&state);
                    guard.synced_rv = parse_rv(Some(&rv)).or(guard.synced_rv);
                    drop(guard);
                    resource_version = Some(rv);
                }
                Ok(WatchEvent::Error(status)) if status.code == 410 => {
                    tracing::debug!("resourceVersion expired (410), re-listing");
                    resource_version = None;
                    break;
                }
                Ok(WatchEvent::Error(status)) => {
                    tracing::debug!(?status, "watch error event, re-watching");
                    break;
                }
                Err(error) => {
                    tracing::debug!(%error, "watch stream broke, re-watching");
                    break;
                }
            }
        }
        if progressed {
            failures = 0;
        } else if resource_version.is_some() {
            // A stream that ends without delivering anything counts as a failure for the
            // backoff, so a server that keeps closing watches at once is not hammered.
            tokio::time::sleep(policy.delay(failures, None)).await;
            failures = failures.saturating_add(1).min(16);
        }
    }
}
