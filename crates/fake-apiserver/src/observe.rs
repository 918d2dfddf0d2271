//! What the server shows of its own behaviour beyond request counts, for tests and benches:
//! the watch connections open now (and at most), how long each request took to answer, and
//! a hook that sees every write at the moment it is committed.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Most request latencies kept; later ones are dropped (a bench resets between runs).
const MAX_LATENCY_SAMPLES: usize = 1 << 20;

/// How a write changed an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteKind {
    /// The object was created.
    Created,
    /// The object (or its status) was changed, or marked for deletion.
    Updated,
    /// The object was removed.
    Deleted,
}

/// One committed write, as a [`FakeApiServer::on_write`](crate::FakeApiServer::on_write)
/// hook sees it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Write<'a> {
    /// When the write was committed: before any watcher or client could see it.
    pub at: Instant,
    /// What it did.
    pub kind: WriteKind,
    /// API group (`""` for core).
    pub group: &'a str,
    /// Resource plural (`sandboxclaims`).
    pub resource: &'a str,
    /// The object as stored (with its new resourceVersion).
    pub object: &'a Value,
}

/// A write hook.
pub(crate) type WriteHook = Arc<dyn Fn(&Write<'_>) + Send + Sync>;

/// The hooks of a store (called under the store's lock: they must be quick).
#[derive(Clone, Default)]
pub(crate) struct WriteHooks(Vec<WriteHook>);

impl WriteHooks {
    pub(crate) fn add(&mut self, hook: WriteHook) {
        self.0.push(hook);
    }

    pub(crate) fn call(&self, write: &Write<'_>) {
        for hook in &self.0 {
            hook(write);
        }
    }
}

impl fmt::Debug for WriteHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WriteHooks({})", self.0.len())
    }
}

/// Watch connections of one resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchCount {
    /// Open now.
    pub open: usize,
    /// Most open at once since the server started (or the last
    /// [`reset_requests`](crate::FakeApiServer::reset_requests)).
    pub peak: usize,
}

/// Open watches and request latencies.
#[derive(Debug, Default)]
pub(crate) struct Observer {
    watches: Mutex<BTreeMap<String, WatchCount>>,
    latencies: Mutex<Vec<Duration>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Counters stay meaningful after a panic elsewhere.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Observer {
    /// Counts a watch of `resource` as open until the returned guard is dropped.
    pub(crate) fn watch_opened(self: &Arc<Self>, resource: &str) -> WatchGuard {
        let mut watches = lock(&self.watches);
        let count = watches.entry(resource.to_owned()).or_default();
        count.open += 1;
        count.peak = count.peak.max(count.open);
        WatchGuard {
            observer: self.clone(),
            resource: resource.to_owned(),
        }
    }

    pub(crate) fn watches(&self, resource: &str) -> WatchCount {
        lock(&self.watches)
            .get(resource)
            .copied()
            .unwrap_or_default()
    }

    pub(crate) fn record_latency(&self, took: Duration) {
        let mut latencies = lock(&self.latencies);
        if latencies.len() < MAX_LATENCY_SAMPLES {
            latencies.push(took);
        }
    }

    pub(crate) fn latencies(&self) -> Vec<Duration> {
        lock(&self.latencies).clone()
    }

    /// Forgets latencies and peaks (open watches stay counted).
    pub(crate) fn reset(&self) {
        lock(&self.latencies).clear();
        for count in lock(&self.watches).values_mut() {
            count.peak = count.open;
        }
    }
}

/// An open watch; dropping it closes the count.
#[derive(Debug)]
pub(crate) struct WatchGuard {
    observer: Arc<Observer>,
    resource: String,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        if let Some(count) = lock(&self.observer.watches).get_mut(&self.resource) {
            count.open = count.open.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_watch_leaves_its_peak_behind() {
        let observer = Arc::new(Observer::default());
        let a = observer.watch_opened("things");
        let b = observer.watch_opened("things");
        drop(a);
        assert_eq!(observer.watches("things"), WatchCount { open: 1, peak: 2 });
        drop(b);
        observer.reset();
        assert_eq!(observer.watches("things"), WatchCount { open: 0, peak: 0 });
    }
}
