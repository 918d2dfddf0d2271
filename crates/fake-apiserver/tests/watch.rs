//! Watches, `await_condition`, the kube watcher's recovery, and fault injection.

mod common;

use std::time::Duration;

use common::*;
use fake_apiserver::{FakeApiServerOptions, Fault, Verb};
use futures::{StreamExt as _, TryStreamExt as _};
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::DynamicObject;
use kube::runtime::{WatchStreamExt as _, wait::await_condition, watcher};
use serde_json::json;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(10);

fn rv(o: &DynamicObject) -> String {
    o.metadata.resource_version.clone().unwrap_or_default()
}

#[tokio::test]
async fn a_watch_sees_added_modified_and_deleted_in_order() {
    let server = server().await;
    let api = claims(&server);
    let start = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = api
        .watch(&WatchParams::default(), &start)
        .await
        .unwrap()
        .boxed();

    api.create(&PostParams::default(), &claim("c1", "p"))
        .await
        .unwrap();
    api.patch(
        "c1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"warmPoolRef": {"name": "q"}}})),
    )
    .await
    .unwrap();
    api.delete("c1", &DeleteParams::default()).await.unwrap();

    let mut seen = Vec::new();
    while seen.len() < 3 {
        match timeout(LIMIT, stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Added(o) => seen.push(("ADDED", o)),
            WatchEvent::Modified(o) => seen.push(("MODIFIED", o)),
            WatchEvent::Deleted(o) => seen.push(("DELETED", o)),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("unexpected error event {e:?}"),
        }
    }
    let kinds: Vec<&str> = seen.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);
    assert_eq!(seen[1].1.data["spec"]["warmPoolRef"]["name"], "q");
    let rvs: Vec<u64> = seen.iter().map(|(_, o)| rv(o).parse().unwrap()).collect();
    assert!(rvs.windows(2).all(|w| w[0] < w[1]), "{rvs:?}");
}

#[tokio::test]
async fn a_watch_from_zero_starts_with_the_current_objects() {
    let server = server().await;
    let api = claims(&server);
    api.create(&PostParams::default(), &claim("c1", "p"))
        .await
        .unwrap();
    let mut stream = api
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    match timeout(LIMIT, stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("c1")),
        other => panic!("expected ADDED, got {other:?}"),
    }
}

#[tokio::test]
async fn an_object_leaving_the_selector_is_deleted_for_the_watcher() {
    let server = server().await;
    let api = claims(&server);
    let mut c = claim("c1", "p");
    c.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
    let created = api.create(&PostParams::default(), &c).await.unwrap();
    let mut stream = api
        .watch(&WatchParams::default().labels("app=web"), &rv(&created))
        .await
        .unwrap()
        .boxed();
    api.patch(
        "c1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "db"}}})),
    )
    .await
    .unwrap();
    match timeout(LIMIT, stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Deleted(o) => assert_eq!(o.metadata.name.as_deref(), Some("c1")),
        other => panic!("expected DELETED, got {other:?}"),
    }
}

#[tokio::test]
async fn bookmarks_are_sent_when_allowed_and_timeouts_end_the_stream() {
    let server =
        server_with(FakeApiServerOptions::default().bookmark_interval(Duration::from_millis(100)))
            .await;
    let api = claims(&server);
    let created = api
        .create(&PostParams::default(), &claim("c1", "p"))
        .await
        .unwrap();
    let params = WatchParams::default().timeout(1);
    let mut stream = api.watch(&params, &rv(&created)).await.unwrap().boxed();
    match timeout(LIMIT, stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Bookmark(b) => {
            assert_eq!(b.metadata.resource_version, rv(&created));
            assert_eq!(b.types.kind, "SandboxClaim");
        }
        other => panic!("expected BOOKMARK, got {other:?}"),
    }
    let rest = timeout(LIMIT, stream.try_collect::<Vec<_>>())
        .await
        .expect("the stream ends at timeoutSeconds");
    assert!(
        rest.unwrap()
            .iter()
            .all(|e| matches!(e, WatchEvent::Bookmark(_)))
    );
}

#[tokio::test]
async fn await_condition_completes_when_status_becomes_ready_later() {
    let server = server().await;
    let api = claims(&server);
    api.create(&PostParams::default(), &claim("c1", "p"))
        .await
        .unwrap();
    let writer = api.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        writer
            .patch_status("c1", &PatchParams::default(), &Patch::Merge(ready_status()))
            .await
            .unwrap();
    });
    let is_ready = |o: Option<&DynamicObject>| {
        o.and_then(|o| o.data["status"]["conditions"].as_array())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
    };
    let ready = timeout(LIMIT, await_condition(api, "c1", is_ready))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ready.data["status"]["sandbox"]["name"], "sb-1");
}

#[tokio::test]
async fn watch_from_an_expired_resource_version_yields_gone() {
    let server = server_with(FakeApiServerOptions::default().event_history(5)).await;
    let api = claims(&server);
    let first = api
        .create(&PostParams::default(), &claim("c0", "p"))
        .await
        .unwrap();
    for i in 1..10 {
        api.create(&PostParams::default(), &claim(&format!("c{i}"), "p"))
            .await
            .unwrap();
    }
    let mut stream = api
        .watch(&WatchParams::default(), &rv(&first))
        .await
        .unwrap()
        .boxed();
    match timeout(LIMIT, stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Error(status) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
}

#[tokio::test]
async fn the_watcher_relists_after_an_injected_expiry() {
    let server = server().await;
    let api = claims(&server);
    api.create(&PostParams::default(), &claim("c1", "p"))
        .await
        .unwrap();
    server.inject(Fault::expire_resource_version().verb(Verb::Watch).times(1));
    let stream = watcher(api.clone(), watcher::Config::default()).boxed();
    let writer = api.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        writer
            .create(&PostParams::default(), &claim("c2", "p"))
            .await
            .unwrap();
    });
    // Errors are expected on the way (the 410); keep going until c2 shows up.
    let found = timeout(
        LIMIT,
        stream
            .applied_objects()
            .filter_map(|o| async move { o.ok() })
            .filter(|o| futures::future::ready(o.metadata.name.as_deref() == Some("c2")))
            .boxed()
            .next(),
    )
    .await
    .unwrap();
    assert!(found.is_some());
    assert!(
        server.requests().count(Verb::List, "sandboxclaims") >= 2,
        "{:?}",
        server.requests()
    );
}

#[tokio::test]
async fn dropped_watches_are_reconnected_by_the_watcher() {
    let server = server().await;
    let api = claims(&server);
    server.inject(Fault::drop_watch(1).times(1));
    let stream = watcher(api.clone(), watcher::Config::default()).boxed();
    let writer = api.clone();
    tokio::spawn(async move {
        for i in 0..3 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            writer
                .create(&PostParams::default(), &claim(&format!("c{i}"), "p"))
                .await
                .unwrap();
        }
    });
    let names: Vec<String> = timeout(
        LIMIT,
        stream
            .applied_objects()
            .filter_map(|o| async move { o.ok().and_then(|o| o.metadata.name) })
            .take(3)
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    assert!(names.contains(&"c2".to_owned()), "{names:?}");
    assert!(
        server.requests().count(Verb::Watch, "sandboxclaims") >= 2,
        "{:?}",
        server.requests()
    );
}

#[tokio::test]
async fn injected_503_is_retried_by_kube_and_counted() {
    let server = server().await;
    let api = claims(&server);
    server.inject(
        Fault::status(503, "ServiceUnavailable")
            .verb(Verb::Create)
            .resource("sandboxclaims")
            .times(2),
    );
    api.create(&PostParams::default(), &claim("c1", "p"))
        .await
        .unwrap();
    assert_eq!(server.requests().count(Verb::Create, "sandboxclaims"), 3);
}

#[tokio::test]
async fn injected_429_with_retry_after_is_honoured() {
    let server = server().await;
    let api = claims(&server);
    server.inject(Fault::too_many_requests(1).verb(Verb::Get).times(1));
    api.create(&PostParams::default(), &claim("c1", "p"))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    api.get("c1").await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.requests().count_named("get", "sandboxclaims"), 2);
}

#[tokio::test]
async fn injected_errors_reach_the_client_as_api_errors() {
    let server = server().await;
    let api = claims(&server);
    let id = server.inject(Fault::status(500, "InternalError").name("c1"));
    let err = api_status(api.get("c1").await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (500, "InternalError"));
    server.remove_fault(id);
    // kube retries 429/503/504 itself (up to 15 times, with backoff), so only other codes surface at once.
    server.inject(Fault::status(409, "Conflict").verb(Verb::Get).times(1));
    assert!(api_status(api.get("c1").await.unwrap_err()).is_conflict());
    server.clear_faults();
    assert!(api_status(api.get("c1").await.unwrap_err()).is_not_found());
}

#[tokio::test]
async fn reset_connections_and_latency_are_observed_by_the_client() {
    let server = server().await;
    let api = claims(&server);
    server.inject(Fault::reset_connection().verb(Verb::List).times(1));
    let err = api.list(&ListParams::default()).await.unwrap_err();
    assert!(
        !matches!(err, kube::Error::Api(_)),
        "no HTTP answer at all: {err:?}"
    );
    api.list(&ListParams::default()).await.unwrap();

    server.inject(Fault::latency(Duration::from_millis(300)).verb(Verb::List));
    let started = std::time::Instant::now();
    api.list(&ListParams::default()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn requests_are_counted_by_verb_and_resource() {
    let server = server().await;
    let api = claims(&server);
    api.create(&PostParams::default(), &claim("c1", "p"))
        .await
        .unwrap();
    api.get("c1").await.unwrap();
    api.list(&ListParams::default()).await.unwrap();
    api.patch_status("c1", &PatchParams::default(), &Patch::Merge(ready_status()))
        .await
        .unwrap();
    api.delete("c1", &DeleteParams::default()).await.unwrap();
    let log = server.requests();
    assert_eq!(log.count(Verb::Create, "sandboxclaims"), 1);
    assert_eq!(log.count(Verb::Get, "sandboxclaims"), 1);
    assert_eq!(log.count(Verb::List, "sandboxclaims"), 1);
    assert_eq!(log.count(Verb::Patch, "sandboxclaims/status"), 1);
    assert_eq!(log.count_named("delete", "sandboxclaims"), 1);
    assert_eq!(log.total(), 5);
    server.objects(EXT_GROUP, "sandboxclaims", None);
    server.reset_requests();
    assert_eq!(server.requests().total(), 0);
}

#[tokio::test]
async fn a_streaming_list_watcher_gets_initial_objects_then_live_events() {
    let server = server().await;
    let api = claims(&server);
    api.create(&PostParams::default(), &claim("c1", "p"))
        .await
        .unwrap();
    let stream = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    let writer = api.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        writer
            .create(&PostParams::default(), &claim("c2", "p"))
            .await
            .unwrap();
    });
    let names: Vec<String> = timeout(
        LIMIT,
        stream
            .applied_objects()
            .filter_map(|o| async move { o.ok().and_then(|o| o.metadata.name) })
            .take(2)
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    assert_eq!(names, ["c1", "c2"]);
    assert_eq!(
        server.requests().count(Verb::List, "sandboxclaims"),
        0,
        "no LIST with streaming lists"
    );
}
