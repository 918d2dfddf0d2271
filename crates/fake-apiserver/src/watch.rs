//! Watch streams: newline-delimited `{"type": …, "object": …}` events over a chunked response.
//!
//! # Expected flow
//!
//! A watch with resourceVersion `""`/`"0"` (or `sendInitialEvents=true`) first gets synthetic
//! ADDED events for the current objects; one with a resourceVersion N replays the retained events
//! after N, then everything follows live. With `allowWatchBookmarks=true` a BOOKMARK carrying
//! the latest resourceVersion the watch has seen is sent every
//! [`bookmark_interval`](crate::FakeApiServerOptions::bookmark_interval). The stream ends at
//! `timeoutSeconds`.
//!
//! # Errors
//!
//! A resourceVersion older than the retained history, or a watch that falls too far behind the
//! live events, gets an `ERROR` event with a 410 `Expired` Status and the stream ends, which is
//! what makes `kube::runtime::watcher` re-list.
//!
//! With selectors, an object that stops matching is reported as DELETED and one that starts
//! matching as ADDED, like the real watch cache.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};

use crate::crd::Resource;
use crate::observe::WatchGuard;
use crate::selector::Selectors;
use crate::status::ApiError;
use crate::store::{Event, EventType, Store, metadata_field};

/// A parsed watch request.
#[derive(Debug, Clone)]
pub(crate) struct WatchRequest {
    pub(crate) resource: Arc<Resource>,
    pub(crate) version: String,
    pub(crate) namespace: Option<String>,
    pub(crate) selectors: Selectors,
    pub(crate) resource_version: Option<String>,
    pub(crate) bookmarks: bool,
    pub(crate) send_initial_events: bool,
    pub(crate) timeout: Option<Duration>,
    /// Fault injection: abort the connection after this many events.
    pub(crate) drop_after: Option<usize>,
    /// Fault injection: answer as if the resourceVersion were compacted.
    pub(crate) expire: bool,
}

/// A chunk of the response body, or the instruction to abort the connection.
pub(crate) type Chunk = Result<Bytes, std::io::Error>;

impl WatchRequest {
    fn api_version(&self) -> String {
        self.resource.api_version(&self.version)
    }

    fn present(&self, object: &Value) -> Value {
        let mut object = object.clone();
        object["apiVersion"] = json!(self.api_version());
        object["kind"] = json!(self.resource.kind);
        object
    }

    fn in_scope(&self, object: &Value) -> bool {
        let ns = metadata_field(object, "namespace")
            .and_then(Value::as_str)
            .unwrap_or("");
        self.namespace.as_deref().is_none_or(|n| n == ns)
    }

    fn visible(&self, object: &Value) -> bool {
        self.in_scope(object) && self.selectors.matches(object)
    }

    /// Translates a store event into what this watch sees, if anything.
    fn translate(&self, event: &Event) -> Option<Value> {
        if event.resource.0 != self.resource.group || event.resource.1 != self.resource.plural {
            return None;
        }
        let now = self.visible(&event.object);
        let kind = match event.kind {
            EventType::Added if now => "ADDED",
            EventType::Deleted if now => "DELETED",
            EventType::Modified => match (
                event.previous.as_ref().is_some_and(|p| self.visible(p)),
                now,
            ) {
                (true, true) => "MODIFIED",
                (false, true) => "ADDED",
                (true, false) => "DELETED",
                (false, false) => return None,
            },
            _ => return None,
        };
        Some(json!({"type": kind, "object": self.present(&event.object)}))
    }

    fn bookmark(&self, rv: u64, initial_events_end: bool) -> Value {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({"type": "BOOKMARK", "object": {"apiVersion": self.api_version(), "kind": self.resource.kind, "metadata": metadata}})
    }
}

fn expired_event(message: &str) -> Value {
    json!({"type": "ERROR", "object": ApiError::expired(message).to_json()})
}

fn line(value: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// Registers the watch under the store lock and returns the receiving half of its body.
///
/// The events are produced by a spawned task, so the HTTP body only forwards them and a client
/// that stops reading only stalls its own task (and is later expired), never a writer.
pub(crate) fn start(
    store: &Store,
    req: WatchRequest,
    bookmark_interval: Duration,
    mut shutdown: watch::Receiver<bool>,
    open: WatchGuard,
) -> Result<mpsc::Receiver<Chunk>, ApiError> {
    let (tx, rx) = mpsc::channel::<Chunk>(16);
    let rv = req
        .resource_version
        .as_deref()
        .filter(|rv| !rv.is_empty() && *rv != "0");
    let mut initial: Vec<Value> = Vec::new();
    let mut live: Option<broadcast::Receiver<Arc<Event>>> = None;
    let mut progress = store.current_rv();
    if req.expire && rv.is_some() {
        initial.push(expired_event("too old resource version (injected fault)"));
    } else if let (Some(rv), false) = (rv, req.send_initial_events) {
        let since: u64 = rv
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?;
        match store.subscribe_since(since) {
            Ok((replay, rx)) => {
                initial.extend(replay.iter().filter_map(|e| req.translate(e)));
                live = Some(rx);
            }
            Err(expired) => initial.push(expired_event(&format!(
                "too old resource version: {since} ({})",
                expired.oldest
            ))),
        }
    } else {
        let key = (req.resource.group.clone(), req.resource.plural.clone());
        initial.extend(
            store
                .list(&key, req.namespace.as_deref())
                .into_iter()
                .filter(|o| req.selectors.matches(o))
                .map(|o| json!({"type": "ADDED", "object": req.present(o)})),
        );
        if req.send_initial_events {
            initial.push(req.bookmark(progress, true));
        }
        live = Some(store.subscribe());
    }
    let span =
        tracing::debug_span!("watch", resource = %req.resource.plural, namespace = ?req.namespace);
    let task = async move {
        // Counted as open for as long as this task streams.
        let _open = open;
        let mut sent = 0usize;
        let dropped = |sent: usize| req.drop_after.is_some_and(|n| sent >= n);
        let abort = || {
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "watch dropped (injected fault)",
            ))
        };
        if dropped(sent) {
            let _ = tx.send(abort()).await;
            return;
        }
        for event in initial {
            let counts = event["type"] != "BOOKMARK";
            if tx.send(Ok(line(&event))).await.is_err() {
                return;
            }
            sent += usize::from(counts);
            if dropped(sent) {
                let _ = tx.send(abort()).await;
                return;
            }
        }
        let Some(mut live) = live else { return };
        let deadline = req.timeout.map(|t| tokio::time::Instant::now() + t);
        let mut ticker = tokio::time::interval(bookmark_interval.max(Duration::from_millis(10)));
        ticker.reset();
        loop {
            let timeout = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let out = tokio::select! {
                _ = shutdown.changed() => return,
                () = timeout => return,
                () = tx.closed() => return,
                _ = ticker.tick(), if req.bookmarks => req.bookmark(progress, false),
                received = live.recv() => match received {
                    Ok(event) => {
                        progress = progress.max(event.rv);
                        match req.translate(&event) {
                            Some(v) => v,
                            None => continue,
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(Ok(line(&expired_event("watch fell too far behind; resourceVersion too old")))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            let counts = out["type"] != "BOOKMARK";
            if tx.send(Ok(line(&out))).await.is_err() {
                return;
            }
            sent += usize::from(counts);
            if dropped(sent) {
                let _ = tx.send(abort()).await;
                return;
            }
        }
    };
    tokio::spawn(tracing::Instrument::instrument(task, span));
    Ok(rx)
}
