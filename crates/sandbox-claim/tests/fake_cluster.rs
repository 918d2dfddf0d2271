//! The claim lifecycle against the fake cluster: the real kube client over HTTP, the fake
//! API server validating every write against the CRDs generated from the types (strict
//! unknown fields), and the simulated agent-sandbox controller.

use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use sandbox_claim::testing::{
    FakeCluster, FakeClusterOptions, Fault, FaultAction, ReadyMode, Verb,
};
use sandbox_claim::types::v1beta1;
use sandbox_claim::wait::Error as WaitError;
use sandbox_claim::{
    ApiVersion, ClaimOptions, Claims, Cleanup, Error, RetryPolicy, VersionSelection, WatchMode,
    labels, naming,
};
use std::time::Duration;

const POOL: &str = "python-pool";
const TEMPLATE: &str = "python";

fn options() -> ClaimOptions {
    ClaimOptions::default()
        .source(POOL)
        .ready_timeout(Duration::from_secs(10))
        .retry(RetryPolicy {
            initial_backoff: Duration::from_millis(10),
            ..RetryPolicy::default()
        })
}

async fn cluster_with(opts: FakeClusterOptions, replicas: Option<i32>) -> FakeCluster {
    let cluster = FakeCluster::start(opts).await.expect("fake cluster starts");
    cluster
        .create_template(TEMPLATE, None)
        .await
        .expect("template");
    if let Some(r) = replicas {
        cluster
            .create_warm_pool(POOL, TEMPLATE, r)
            .await
            .expect("pool");
    }
    cluster
}

/// A v1beta1 cluster with an empty pool (every claim is a cold start).
async fn cold_cluster() -> FakeCluster {
    cluster_with(FakeClusterOptions::default(), Some(0)).await
}

async fn claims(cluster: &FakeCluster, opts: ClaimOptions) -> Claims {
    Claims::detect(cluster.client(), opts)
        .await
        .expect("detect")
}

fn claim_api(cluster: &FakeCluster) -> Api<v1beta1::SandboxClaim> {
    Api::namespaced(cluster.client(), cluster.namespace())
}

fn sandbox_api(cluster: &FakeCluster) -> Api<v1beta1::Sandbox> {
    Api::namespaced(cluster.client(), cluster.namespace())
}

fn wait_error(e: &Error) -> &WaitError {
    e.wait_error()
        .unwrap_or_else(|| panic!("not a wait error: {e:?}"))
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn a_cold_claim_becomes_ready_with_the_sandbox_named_after_it() {
    let cluster = cold_cluster().await;
    let claims = claims(&cluster, options()).await;
    assert_eq!(claims.api_version(), ApiVersion::V1beta1);
    let h = claims.acquire("Conversation_ABC").await.unwrap();
    assert_eq!(
        h.claim_name,
        naming::claim_name("conv", "Conversation_ABC").unwrap()
    );
    assert_eq!(h.sandbox_name, h.claim_name);
    assert_eq!(h.pod_name, h.sandbox_name);
    assert!(h.pod_ip.is_loopback(), "{}", h.pod_ip);
    assert_eq!(h.conversation_id, "Conversation_ABC");

    let claim = claim_api(&cluster).get(&h.claim_name).await.unwrap();
    assert_eq!(claim.labels()[labels::MANAGED_BY], labels::MANAGED_BY_VALUE);
    assert_eq!(claim.labels()[labels::SOURCE], POOL);
    assert_eq!(
        claim.labels()[labels::CONVERSATION_HASH],
        naming::conversation_hash("Conversation_ABC")
    );
    assert_eq!(
        claim.annotations()[labels::CONVERSATION_ID],
        "Conversation_ABC"
    );
    assert!(
        claim
            .annotations()
            .contains_key(labels::CLIENT_FIRST_REQUESTED_AT)
    );
    let lifecycle = claim.spec.lifecycle.expect("lifecycle always set");
    assert_eq!(
        lifecycle.shutdown_policy,
        Some(sandbox_claim::types::ShutdownPolicy::Delete)
    );
    let left = lifecycle
        .shutdown_time
        .unwrap()
        .0
        .duration_since(jiff::Timestamp::now());
    assert!(left.as_secs() > 3500 && left.as_secs() <= 3600, "{left:?}");

    let sandbox = sandbox_api(&cluster).get(&h.sandbox_name).await.unwrap();
    let owner = &sandbox.owner_references()[0];
    assert_eq!(owner.kind, "SandboxClaim");
    assert_eq!(Some(&owner.uid), claim.metadata.uid.as_ref());
}

#[tokio::test]
async fn a_warm_pool_member_is_adopted_and_the_pool_replenished() {
    let cluster = cluster_with(FakeClusterOptions::default(), Some(2)).await;
    let sandboxes = sandbox_api(&cluster);
    eventually("two ready pool members", || async {
        sandboxes
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len()
            == 2
    })
    .await;
    let claims = claims(&cluster, options()).await;
    let h = claims.acquire("warm-1").await.unwrap();
    assert!(
        h.sandbox_name.starts_with("python-pool-"),
        "{}",
        h.sandbox_name
    );
    assert_ne!(h.sandbox_name, h.claim_name);
    let adopted = sandboxes.get(&h.sandbox_name).await.unwrap();
    assert_eq!(adopted.owner_references()[0].kind, "SandboxClaim");
    assert!(!adopted.labels().contains_key(labels::WARM_POOL_SANDBOX));
    eventually("the pool replenished", || async {
        sandboxes
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len()
            == 3
    })
    .await;
}

#[tokio::test]
async fn acquiring_again_adopts_our_own_claim() {
    let cluster = cold_cluster().await;
    let claims = claims(&cluster, options()).await;
    let a = claims.acquire("same").await.unwrap();
    let b = claims.acquire("same").await.unwrap();
    assert_eq!(a, b);
    assert_eq!(
        claim_api(&cluster)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    let r = claims.resolve("same").await.unwrap();
    assert_eq!(r, a);
}

fn foreign_claim(name: &str) -> v1beta1::SandboxClaim {
    v1beta1::SandboxClaim::new(
        name,
        v1beta1::SandboxClaimSpec {
            warm_pool_ref: sandbox_claim::types::NameRef { name: POOL.into() },
            ..Default::default()
        },
    )
}

#[tokio::test]
async fn a_claim_that_is_not_ours_is_a_conflict() {
    let cluster = cold_cluster().await;
    let claims = claims(&cluster, options()).await;
    let name = claims.claim_name("taken").unwrap();
    claim_api(&cluster)
        .create(&PostParams::default(), &foreign_claim(&name))
        .await
        .unwrap();
    let err = claims.acquire("taken").await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    let err = claims.release("taken").await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
}

#[tokio::test]
async fn a_claim_of_ours_for_another_conversation_is_a_conflict() {
    let cluster = cold_cluster().await;
    let claims = claims(&cluster, options()).await;
    let name = claims.claim_name("mine").unwrap();
    let mut c = foreign_claim(&name);
    c.labels_mut()
        .insert(labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into());
    c.labels_mut().insert(
        labels::CONVERSATION_HASH.into(),
        naming::conversation_hash("other"),
    );
    c.annotations_mut()
        .insert(labels::CONVERSATION_ID.into(), "other".into());
    claim_api(&cluster)
        .create(&PostParams::default(), &c)
        .await
        .unwrap();
    let err = claims.acquire("mine").await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
}

#[tokio::test]
async fn a_claim_being_deleted_is_waited_out_then_recreated() {
    let cluster = cold_cluster().await;
    let claims = claims(&cluster, options()).await;
    let first = claims.acquire("again").await.unwrap();
    let api = claim_api(&cluster);
    let old_uid = api.get(&first.claim_name).await.unwrap().uid();
    // Hold the old claim in "deleting" with a finalizer.
    api.patch(
        &first.claim_name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"finalizers": ["test/hold"]}})),
    )
    .await
    .unwrap();
    api.delete(&first.claim_name, &DeleteParams::default())
        .await
        .unwrap();
    let acquiring = tokio::spawn({
        let claims = claims.clone();
        async move { claims.acquire("again").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!acquiring.is_finished(), "must not adopt a deleting claim");
    api.patch(
        &first.claim_name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    let second = acquiring.await.unwrap().unwrap();
    assert_eq!(second.claim_name, first.claim_name);
    assert_ne!(api.get(&second.claim_name).await.unwrap().uid(), old_uid);
}

#[tokio::test]
async fn the_wait_ends_when_ready_flips_and_not_before() {
    let cluster = cluster_with(
        FakeClusterOptions::default().ready_mode(ReadyMode::Manual),
        Some(0),
    )
    .await;
    let claims = claims(&cluster, options()).await;
    let acquiring = tokio::spawn({
        let claims = claims.clone();
        async move { claims.acquire("manual").await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!acquiring.is_finished());
    cluster.controller().make_ready(1);
    let h = tokio::time::timeout(Duration::from_secs(5), acquiring)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(h.sandbox_name, h.claim_name);
}

/// Open watch connections on `sandboxclaims` while `waiting` claims of one `Claims` wait
/// at once, beyond those the controller holds; and the watch requests our client made.
async fn watches_while_waiting(mode: WatchMode, waiting: usize) -> (usize, u64) {
    let cluster = cluster_with(
        FakeClusterOptions::default().ready_mode(ReadyMode::Manual),
        Some(0),
    )
    .await;
    let claims = claims(&cluster, options().watch(mode)).await;
    let server = cluster.server();
    let api = claim_api(&cluster);
    eventually("the controller watches", || async {
        server.watches("sandboxclaims").open > 0
    })
    .await;
    let controller = server.watches("sandboxclaims").open;
    let before = server.requests().count(Verb::Watch, "sandboxclaims");
    let acquiring: Vec<_> = (0..waiting)
        .map(|i| {
            let claims = claims.clone();
            tokio::spawn(async move { claims.acquire(&format!("waiting-{i}")).await })
        })
        .collect();
    eventually("every claim exists", || async {
        api.list(&Default::default()).await.unwrap().items.len() == waiting
    })
    .await;
    // Every acquire has its claim; give the last ones time to start waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let open = server.watches("sandboxclaims").open - controller;
    let requested = server.requests().count(Verb::Watch, "sandboxclaims") - before;
    cluster.controller().make_ready(waiting);
    for acquire in acquiring {
        acquire.await.unwrap().expect("ready");
    }
    (open, requested)
}

#[tokio::test]
async fn waiting_claims_share_one_watch_however_many_there_are() {
    // The controller's own watches are not counted.
    for waiting in [1, 40] {
        let (open, requested) = watches_while_waiting(WatchMode::Shared, waiting).await;
        assert_eq!(open, 1, "{waiting} waiting claims hold one watch");
        assert_eq!(requested, 1, "{waiting} waiting claims: one watch request");
    }
    let (open, _) = watches_while_waiting(WatchMode::PerClaim, 40).await;
    assert_eq!(open, 40, "one watch per claim in the old mode");
}

#[tokio::test]
async fn every_terminal_reason_fails_fast() {
    let cluster = cold_cluster().await;
    let claims = claims(&cluster, options()).await;
    for reason in sandbox_claim::reason::TERMINAL_REASONS {
        cluster.controller().fail_next(reason, "forced by test");
        let started = std::time::Instant::now();
        let err = claims.acquire(&format!("fail-{reason}")).await.unwrap_err();
        match wait_error(&err) {
            WaitError::Terminal {
                reason: r, message, ..
            } => {
                assert_eq!(r, reason);
                assert_eq!(message, "forced by test");
            }
            other => panic!("{reason}: {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            matches!(err.cleanup(), Some(Cleanup::Deleted)),
            "{reason}: {err:?}"
        );
    }
    assert_eq!(
        claim_api(&cluster)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len(),
        0,
        "every claim that failed on a terminal reason was deleted"
    );
}

#[tokio::test]
async fn a_missing_warm_pool_fails_at_once_or_is_waited_for() {
    let cluster = cluster_with(FakeClusterOptions::default(), None).await;
    let claims = claims(&cluster, options()).await;
    let err = claims.acquire("no-pool").await.unwrap_err();
    assert!(
        matches!(wait_error(&err), WaitError::WarmPoolNotFound { .. }),
        "{err:?}"
    );

    let patient = Claims::detect(cluster.client(), options().keep_waiting_on_not_found(true))
        .await
        .unwrap();
    let acquiring = tokio::spawn(async move { patient.acquire("late-pool").await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!acquiring.is_finished());
    cluster.create_warm_pool(POOL, TEMPLATE, 0).await.unwrap();
    acquiring
        .await
        .unwrap()
        .expect("ready once the pool exists");
}

#[tokio::test]
async fn a_missing_template_fails_at_once() {
    let cluster = FakeCluster::start(FakeClusterOptions::default())
        .await
        .unwrap();
    cluster.create_warm_pool(POOL, "nope", 0).await.unwrap();
    let claims = claims(&cluster, options()).await;
    let err = claims.acquire("no-template").await.unwrap_err();
    match wait_error(&err) {
        WaitError::TemplateNotFound { message, .. } => assert!(message.contains("nope")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_deadline_error_names_the_last_reason() {
    let cluster = cluster_with(
        FakeClusterOptions::default().ready_mode(ReadyMode::Manual),
        Some(0),
    )
    .await;
    let claims = claims(
        &cluster,
        options().ready_timeout(Duration::from_millis(600)),
    )
    .await;
    let err = claims.acquire("slow").await.unwrap_err();
    match wait_error(&err) {
        WaitError::Timeout { last_reason, .. } => {
            assert_eq!(last_reason.as_deref(), Some("DependenciesNotReady"));
        }
        other => panic!("{other:?}"),
    }
    let text = chain(&err);
    assert!(
        text.contains("Ready=False: DependenciesNotReady: Pod exists with phase: Pending"),
        "{text}"
    );
    assert!(!text.contains("None") && !text.contains("Some("), "{text}");
}

/// An error and its sources, in words (`Display`), joined by `: `.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn claim_count(cluster: &FakeCluster) -> usize {
    claim_api(cluster)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .len()
}

/// A cluster whose cold sandboxes never turn ready (manual mode, no permits).
async fn never_ready_cluster() -> FakeCluster {
    cluster_with(
        FakeClusterOptions::default().ready_mode(ReadyMode::Manual),
        Some(0),
    )
    .await
}

fn impatient() -> ClaimOptions {
    options().ready_timeout(Duration::from_millis(600))
}

#[tokio::test]
async fn an_acquire_that_times_out_deletes_the_claim_it_created() {
    let cluster = never_ready_cluster().await;
    let claims = claims(&cluster, impatient()).await;
    let err = claims.acquire("times-out").await.unwrap_err();
    assert!(
        matches!(wait_error(&err), WaitError::Timeout { .. }),
        "the original failure stays the error: {err:?}"
    );
    assert!(matches!(err.cleanup(), Some(Cleanup::Deleted)), "{err:?}");
    assert!(
        std::error::Error::source(&err).is_some_and(|s| s.to_string().contains("not ready after"))
    );
    assert!(err.to_string().contains("was deleted"), "{err}");
    assert_eq!(claim_count(&cluster).await, 0);
}

#[tokio::test]
async fn an_acquire_that_times_out_keeps_the_claim_when_asked_to() {
    let cluster = never_ready_cluster().await;
    let claims = claims(&cluster, impatient().keep_failed_claims(true)).await;
    let err = claims.acquire("kept").await.unwrap_err();
    assert!(
        matches!(wait_error(&err), WaitError::Timeout { .. }),
        "{err:?}"
    );
    assert!(matches!(err.cleanup(), Some(Cleanup::Kept)), "{err:?}");
    assert!(err.to_string().contains("was kept"), "{err}");
    assert_eq!(claim_count(&cluster).await, 1);
}

#[tokio::test]
async fn a_terminal_reason_deletes_the_claim_acquire_created() {
    let cluster = cold_cluster().await;
    let claims = claims(&cluster, options()).await;
    cluster
        .controller()
        .fail_next("InvalidConfiguration", "Service is invalid");
    let err = claims.acquire("invalid").await.unwrap_err();
    assert!(
        matches!(wait_error(&err), WaitError::Terminal { reason, .. } if reason == "InvalidConfiguration"),
        "{err:?}"
    );
    assert!(matches!(err.cleanup(), Some(Cleanup::Deleted)), "{err:?}");
    assert_eq!(claim_count(&cluster).await, 0);
}

#[tokio::test]
async fn an_adopted_claim_that_times_out_is_left_in_place() {
    let cluster = never_ready_cluster().await;
    // Another party (here: an acquire that keeps its failures) made the claim.
    let first = claims(&cluster, impatient().keep_failed_claims(true)).await;
    first.acquire("adopted").await.unwrap_err();
    let name = first.claim_name("adopted").unwrap();
    let api = claim_api(&cluster);
    let uid = api.get(&name).await.unwrap().uid();

    let second = claims(&cluster, impatient()).await;
    let err = second.acquire("adopted").await.unwrap_err();
    assert!(
        matches!(wait_error(&err), WaitError::Timeout { .. }),
        "{err:?}"
    );
    assert!(matches!(err.cleanup(), Some(Cleanup::LeftAlone)), "{err:?}");
    assert!(err.to_string().contains("left in place"), "{err}");
    assert_eq!(
        api.get_opt(&name).await.unwrap().map(|c| c.uid()),
        Some(uid),
        "the adopted claim is still there, unchanged"
    );
}

#[tokio::test]
async fn a_timeout_without_any_status_says_the_controller_reported_no_status() {
    let cluster = never_ready_cluster().await;
    let claims = claims(&cluster, impatient()).await;
    let name = claims.claim_name("mute").unwrap();
    // The controller cannot write this claim's status.
    cluster.server().inject(
        Fault::status(403, "Forbidden")
            .verb(Verb::Patch)
            .resource("sandboxclaims/status")
            .name(&name),
    );
    let err = claims.acquire("mute").await.unwrap_err();
    let text = chain(&err);
    assert!(
        text.contains("last seen: the controller reported no status"),
        "{text}"
    );
    assert!(!text.contains("None") && !text.contains("Some("), "{text}");
    assert_eq!(claim_count(&cluster).await, 0);
}

#[tokio::test]
async fn a_watch_that_cannot_resume_deletes_the_claim_acquire_created() {
    let cluster = never_ready_cluster().await;
    let claims = claims(&cluster, impatient()).await;
    cluster.server().inject(
        Fault::status(403, "Forbidden")
            .verb(Verb::Watch)
            .resource("sandboxclaims")
            .times(1),
    );
    let err = claims.acquire("blind").await.unwrap_err();
    assert!(
        matches!(wait_error(&err), WaitError::Watch { .. }),
        "{err:?}"
    );
    assert!(matches!(err.cleanup(), Some(Cleanup::Deleted)), "{err:?}");
    assert_eq!(claim_count(&cluster).await, 0);
}

#[tokio::test]
async fn a_failed_cleanup_delete_does_not_mask_the_timeout() {
    let cluster = never_ready_cluster().await;
    let claims = claims(&cluster, impatient()).await;
    let name = claims.claim_name("sticky").unwrap();
    cluster.server().inject(
        Fault::status(403, "Forbidden")
            .verb(Verb::Delete)
            .resource("sandboxclaims")
            .name(&name),
    );
    let err = claims.acquire("sticky").await.unwrap_err();
    assert!(
        matches!(wait_error(&err), WaitError::Timeout { .. }),
        "the timeout stays the error: {err:?}"
    );
    assert!(
        matches!(err.cleanup(), Some(Cleanup::DeleteFailed(_))),
        "{err:?}"
    );
    assert!(err.to_string().contains("deleting the claim"), "{err}");
    assert_eq!(claim_count(&cluster).await, 1);
}

#[tokio::test]
async fn a_claim_deleted_while_waiting_fails_the_wait() {
    let cluster = cluster_with(
        FakeClusterOptions::default().ready_mode(ReadyMode::Manual),
        Some(0),
    )
    .await;
    let claims = claims(&cluster, options()).await;
    let acquiring = tokio::spawn({
        let claims = claims.clone();
        async move { claims.acquire("doomed").await }
    });
    let name = claims.claim_name("doomed").unwrap();
    let api = claim_api(&cluster);
    eventually("the claim exists", || async {
        api.get_opt(&name).await.unwrap().is_some()
    })
    .await;
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    let err = acquiring.await.unwrap().unwrap_err();
    assert!(
        matches!(wait_error(&err), WaitError::Deleted { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_expired_resource_version_is_recovered_with_one_list() {
    let cluster = cluster_with(
        FakeClusterOptions::default().ready_mode(ReadyMode::Manual),
        Some(0),
    )
    .await;
    let claims = claims(&cluster, options()).await;
    cluster.server().inject(
        Fault::new(FaultAction::ExpireResourceVersion)
            .verb(Verb::Watch)
            .resource("sandboxclaims")
            .times(1),
    );
    cluster.server().reset_requests();
    let acquiring = tokio::spawn({
        let claims = claims.clone();
        async move { claims.acquire("gone").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.controller().make_ready(1);
    acquiring.await.unwrap().expect("ready after the re-list");
    assert!(
        cluster
            .server()
            .requests()
            .count(Verb::List, "sandboxclaims")
            >= 1
    );
}

#[tokio::test]
async fn a_dropped_watch_is_resumed() {
    let cluster = cluster_with(
        FakeClusterOptions::default().ready_mode(ReadyMode::Manual),
        Some(0),
    )
    .await;
    let claims = claims(&cluster, options()).await;
    cluster.server().inject(
        Fault::new(FaultAction::DropWatch { after_events: 1 })
            .verb(Verb::Watch)
            .resource("sandboxclaims")
            .times(1),
    );
    let acquiring = tokio::spawn({
        let claims = claims.clone();
        async move { claims.acquire("dropped").await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    cluster.controller().make_ready(1);
    acquiring
        .await
        .unwrap()
        .expect("ready after resuming the watch");
}

#[tokio::test]
async fn server_errors_and_throttling_are_retried() {
    let cluster = cold_cluster().await;
    let claims = claims(&cluster, options()).await;
    cluster.server().inject(
        Fault::status(500, "InternalError")
            .verb(Verb::Create)
            .resource("sandboxclaims")
            .times(2),
    );
    cluster.server().inject(
        Fault::too_many_requests(1)
            .verb(Verb::Watch)
            .resource("sandboxclaims")
            .times(1),
    );
    cluster.server().reset_requests();
    claims
        .acquire("flaky")
        .await
        .expect("retried through 500s and a 429");
    assert_eq!(
        cluster
            .server()
            .requests()
            .count(Verb::Create, "sandboxclaims"),
        3
    );
}

#[tokio::test]
async fn a_reset_connection_is_retried() {
    let cluster = cold_cluster().await;
    let claims = claims(&cluster, options()).await;
    cluster.server().inject(
        Fault::reset_connection()
            .verb(Verb::Delete)
            .resource("sandboxclaims")
            .times(1),
    );
    claims.acquire("reset").await.unwrap();
    claims
        .release("reset")
        .await
        .expect("delete retried after a reset");
    assert!(
        claim_api(&cluster)
            .get_opt(&claims.claim_name("reset").unwrap())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn client_errors_surface_at_once() {
    let cluster = cold_cluster().await;
    let claims = claims(&cluster, options()).await;
    cluster.server().inject(
        Fault::status(403, "Forbidden")
            .verb(Verb::Create)
            .resource("sandboxclaims"),
    );
    cluster.server().reset_requests();
    let err = claims.acquire("forbidden").await.unwrap_err();
    assert!(matches!(err, Error::Create { .. }), "{err:?}");
    assert_eq!(
        cluster
            .server()
            .requests()
            .count(Verb::Create, "sandboxclaims"),
        1
    );
}

#[tokio::test]
async fn release_is_idempotent_and_cascades() {
    let cluster = cold_cluster().await;
    let claims = claims(&cluster, options()).await;
    let h = claims.acquire("bye").await.unwrap();
    claims.release(&h).await.unwrap();
    claims.release(&h).await.unwrap();
    claims.release("never-acquired").await.unwrap();
    let sandboxes = sandbox_api(&cluster);
    eventually("the sandbox is gone", || async {
        sandboxes.get_opt(&h.sandbox_name).await.unwrap().is_none()
    })
    .await;
}

#[tokio::test]
async fn renew_pushes_the_shutdown_time_with_one_patch() {
    let cluster = cold_cluster().await;
    let claims = claims(&cluster, options().ttl(Duration::from_secs(60))).await;
    let h = claims.acquire("renew").await.unwrap();
    let api = claim_api(&cluster);
    let before = api
        .get(&h.claim_name)
        .await
        .unwrap()
        .spec
        .lifecycle
        .unwrap()
        .shutdown_time
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    cluster.server().reset_requests();
    claims.renew(&h).await.unwrap();
    assert_eq!(cluster.server().requests().total(), 1);
    let after = api
        .get(&h.claim_name)
        .await
        .unwrap()
        .spec
        .lifecycle
        .unwrap()
        .shutdown_time
        .unwrap();
    assert!(after.0 > before.0);
    let err = claims.renew("unknown").await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn an_expired_claim_is_deleted_by_the_controller() {
    let cluster = cold_cluster().await;
    // Acquire with the default TTL (a loaded machine may take longer than a short
    // TTL to make the sandbox Ready), then shorten the lifetime with one renewal.
    let h = claims(&cluster, options())
        .await
        .acquire("short")
        .await
        .unwrap();
    let claims = claims(&cluster, options().ttl(Duration::from_secs(1))).await;
    claims.renew(&h).await.unwrap();
    let api = claim_api(&cluster);
    eventually("the claim expired", || async {
        api.get_opt(&h.claim_name).await.unwrap().is_none()
    })
    .await;
    let sandboxes = sandbox_api(&cluster);
    eventually("the sandbox is gone", || async {
        sandboxes.get_opt(&h.sandbox_name).await.unwrap().is_none()
    })
    .await;
}

#[tokio::test]
async fn the_sweeper_deletes_dead_and_expired_claims_only() {
    let cluster = cold_cluster().await;
    let claims = claims(&cluster, options()).await;
    for id in ["live", "dead"] {
        claims.acquire(id).await.unwrap();
    }
    // An expired claim of ours (the controller would delete it too; make it look expired).
    let expired = claims.acquire("expired").await.unwrap();
    let api = claim_api(&cluster);
    api.patch(
        &expired.claim_name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"lifecycle": {"shutdownPolicy": "Retain", "shutdownTime": "2000-01-01T00:00:00Z"}}})),
    )
    .await
    .unwrap();
    // Someone else's claim in the same namespace is never touched.
    api.create(&PostParams::default(), &foreign_claim("not-ours"))
        .await
        .unwrap();

    let report = claims.sweep(|id| id != "dead").await.unwrap();
    let mut deleted = report.deleted.clone();
    deleted.sort();
    let mut want = vec![
        claims.claim_name("dead").unwrap(),
        expired.claim_name.clone(),
    ];
    want.sort();
    assert_eq!(deleted, want);
    assert_eq!(report.kept, 1);

    let all = claims.release_all().await.unwrap();
    assert_eq!(all.deleted, vec![claims.claim_name("live").unwrap()]);
    assert!(api.get_opt("not-ours").await.unwrap().is_some());
}

#[tokio::test]
async fn a_v0_4_6_cluster_is_detected_and_served_with_v1alpha1() {
    let cluster = cluster_with(FakeClusterOptions::v0_4_6(), None).await;
    let claims = claims(&cluster, options().source(TEMPLATE)).await;
    assert_eq!(claims.api_version(), ApiVersion::V1alpha1);
    let h = claims.acquire("old-cluster").await.unwrap();
    assert_eq!(h.api_version, ApiVersion::V1alpha1);
    assert_eq!(h.sandbox_name, h.claim_name);
    claims.renew(&h).await.unwrap();
    claims.release(&h).await.unwrap();
}

#[tokio::test]
async fn a_v0_4_6_warm_pool_is_used_by_template() {
    let cluster = cluster_with(FakeClusterOptions::v0_4_6(), None).await;
    cluster.create_warm_pool(POOL, TEMPLATE, 1).await.unwrap();
    let sandboxes: Api<sandbox_claim::types::v1alpha1::Sandbox> =
        Api::namespaced(cluster.client(), cluster.namespace());
    eventually("a pool member", || async {
        !sandboxes
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    })
    .await;
    let claims = claims(
        &cluster,
        options().source(TEMPLATE).v1alpha1_warmpool("default"),
    )
    .await;
    let h = claims.acquire("old-warm").await.unwrap();
    assert!(
        h.sandbox_name.starts_with("python-pool-"),
        "{}",
        h.sandbox_name
    );
}

#[tokio::test]
async fn a_missing_template_on_v1alpha1_is_template_not_found() {
    let cluster = FakeCluster::start(FakeClusterOptions::v0_4_6())
        .await
        .unwrap();
    let claims = claims(&cluster, options().source("absent")).await;
    let err = claims.acquire("x").await.unwrap_err();
    assert!(
        matches!(wait_error(&err), WaitError::TemplateNotFound { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_fixed_version_skips_discovery() {
    let cluster = cold_cluster().await;
    cluster.server().reset_requests();
    let claims = Claims::detect(
        cluster.client(),
        options().api_version(VersionSelection::V1beta1),
    )
    .await
    .unwrap();
    assert_eq!(claims.api_version(), ApiVersion::V1beta1);
    assert_eq!(cluster.server().requests().total(), 0);
}

/// Requests for one claim (create → ready → release), client and controller together,
/// with a fast and a slow sandbox: the same count, because nobody polls.
#[tokio::test]
async fn requests_do_not_grow_with_time_to_ready() {
    async fn count(delay: Duration) -> u64 {
        let cluster = cluster_with(
            FakeClusterOptions::default().ready_mode(ReadyMode::After(delay)),
            Some(0),
        )
        .await;
        let claims = claims(&cluster, options()).await;
        // The shared watch opens with the first wait (one list, one watch); count the next claim.
        let first = claims.acquire("first").await.unwrap();
        claims.release(&first).await.unwrap();
        // Let the controller's watches settle before counting.
        tokio::time::sleep(Duration::from_millis(200)).await;
        cluster.server().reset_requests();
        let h = claims.acquire("count").await.unwrap();
        claims.release(&h).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let log = cluster.server().requests();
        // Our client: 1 create + 1 get + 1 delete; readiness came through the shared watch.
        assert_eq!(log.count(Verb::Create, "sandboxclaims"), 1);
        assert_eq!(log.count(Verb::Watch, "sandboxclaims"), 0, "{log:?}");
        assert_eq!(log.count(Verb::List, "sandboxclaims"), 0, "{log:?}");
        assert_eq!(log.count(Verb::Delete, "sandboxclaims"), 1);
        log.total()
    }
    let fast = count(Duration::from_millis(10)).await;
    let slow = count(Duration::from_millis(3000)).await;
    assert_eq!(fast, slow);
}

#[tokio::test]
async fn a_dropped_acquire_leaves_nothing_the_next_call_trips_over() {
    let cluster = cluster_with(
        FakeClusterOptions::default().ready_mode(ReadyMode::Manual),
        Some(0),
    )
    .await;
    let claims = claims(&cluster, options()).await;
    let name = claims.claim_name("cancel").unwrap();
    let api = claim_api(&cluster);
    // Drop the future mid-wait (after the create).
    let dropped = tokio::time::timeout(Duration::from_millis(300), claims.acquire("cancel")).await;
    assert!(dropped.is_err());
    assert!(api.get_opt(&name).await.unwrap().is_some());
    cluster.controller().make_ready(1);
    let h = claims
        .acquire("cancel")
        .await
        .expect("adopts the claim left behind");
    assert_eq!(h.claim_name, name);
    assert_eq!(api.list(&Default::default()).await.unwrap().items.len(), 1);
}

#[tokio::test]
async fn a_retained_claim_that_expires_reports_claim_expired() {
    let cluster = cold_cluster().await;
    let claims = claims(&cluster, options()).await;
    let h = claims.acquire("retain").await.unwrap();
    let api = claim_api(&cluster);
    api.patch(
        &h.claim_name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"lifecycle": {"shutdownPolicy": "Retain", "shutdownTime": "2000-01-01T00:00:00Z"}}})),
    )
    .await
    .unwrap();
    let sandboxes = sandbox_api(&cluster);
    eventually("the sandbox is deleted", || async {
        sandboxes.get_opt(&h.sandbox_name).await.unwrap().is_none()
    })
    .await;
    let err = claims.resolve(&h).await.unwrap_err();
    match wait_error(&err) {
        WaitError::Terminal { reason, .. } => assert_eq!(reason, "ClaimExpired"),
        other => panic!("{other:?}"),
    }
    assert!(
        api.get_opt(&h.claim_name).await.unwrap().is_some(),
        "Retain keeps the claim"
    );
}

#[tokio::test]
async fn resolve_without_a_claim_is_not_found() {
    let cluster = cold_cluster().await;
    let claims = claims(&cluster, options()).await;
    let err = claims.resolve("nobody").await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
}

/// A runtime whose pods never start: the sandbox reports `PodFailed`, forwarded to the claim.
#[derive(Debug)]
struct BrokenRuntime;

impl sandbox_claim::testing::PodRuntime for BrokenRuntime {
    fn start<'a>(
        &'a self,
        _request: &'a sandbox_claim::testing::PodRequest,
    ) -> futures::future::BoxFuture<
        'a,
        Result<sandbox_claim::testing::PodStarted, sandbox_claim::testing::PodRuntimeError>,
    > {
        Box::pin(async {
            Err(sandbox_claim::testing::PodRuntimeError {
                message: "image pull failed".into(),
            })
        })
    }

    fn stop<'a>(&'a self, _: &'a str, _: &'a str) -> futures::future::BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

#[tokio::test]
async fn a_pod_runtime_failure_is_pod_failed() {
    let opts = FakeClusterOptions::default().runtime(std::sync::Arc::new(BrokenRuntime));
    let cluster = cluster_with(opts, Some(0)).await;
    let claims = claims(&cluster, options()).await;
    let err = claims.acquire("broken").await.unwrap_err();
    match wait_error(&err) {
        WaitError::Terminal {
            reason, message, ..
        } => {
            assert_eq!(reason, "PodFailed");
            assert!(message.contains("image pull failed"));
        }
        other => panic!("{other:?}"),
    }
}

/// The fake API server validates every write against the upstream CRD schemas, strictly:
/// the claims, sandboxes and statuses written in the other tests passed it, and a field the
/// CRD does not know is rejected with the field path.
#[tokio::test]
async fn writes_are_validated_against_the_upstream_crds() {
    let cluster = cold_cluster().await;
    let ar = kube::api::ApiResource::erase::<v1beta1::SandboxClaim>(&());
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(cluster.client(), cluster.namespace(), &ar);
    let mut bad = kube::api::DynamicObject::new("bad", &ar);
    bad.data = serde_json::json!({"spec": {"warmPoolRef": {"name": "p"}, "lifecycle": {"shutdownPolicy": "Sometimes"}}});
    let err = api.create(&PostParams::default(), &bad).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "{err:?}"
    );
    bad.data = serde_json::json!({"spec": {"warmPoolRef": {"name": "p"}, "sandboxTemplateRef": {"name": "t"}}});
    let err = api.create(&PostParams::default(), &bad).await.unwrap_err();
    // As upstream under `fieldValidation=Strict`: a decoding error, not a validation one.
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 400
            && s.message.contains("unknown field \"spec.sandboxTemplateRef\"")),
        "{err:?}"
    );

    // And what we write passes, on both versions.
    let claims = claims(&cluster, options()).await;
    claims.acquire("valid").await.unwrap();
    let old = cluster_with(FakeClusterOptions::v0_4_6(), None).await;
    let old_claims = Claims::detect(
        old.client(),
        options().source(TEMPLATE).v1alpha1_warmpool("none"),
    )
    .await
    .unwrap();
    old_claims.acquire("valid").await.unwrap();
}

// ---- Pod loss between two executions (node failure / eviction) ----

/// What a [`RecordingRuntime`] saw, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PodEvent {
    Started {
        pod: String,
        ip: std::net::IpAddr,
    },
    /// `ip` is the address of the pod that was running under that name (`None`: none was).
    Stopped {
        pod: String,
        ip: Option<std::net::IpAddr>,
    },
}

/// Hands out loopback addresses like `LoopbackRuntime`, records every start and stop, and
/// can hold starts until the test lets them through.
#[derive(Debug)]
struct RecordingRuntime {
    ips: sandbox_claim::testing::LoopbackRuntime,
    live: std::sync::Mutex<std::collections::HashMap<String, std::net::IpAddr>>,
    events: std::sync::Mutex<Vec<PodEvent>>,
    /// While true, a start announces itself on `entered` and waits for a `release` permit.
    hold: std::sync::atomic::AtomicBool,
    entered: tokio::sync::Notify,
    release: tokio::sync::Semaphore,
}

impl RecordingRuntime {
    fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            ips: sandbox_claim::testing::LoopbackRuntime::new(),
            live: Default::default(),
            events: Default::default(),
            hold: Default::default(),
            entered: tokio::sync::Notify::new(),
            release: tokio::sync::Semaphore::new(0),
        })
    }

    fn events(&self) -> Vec<PodEvent> {
        self.events.lock().unwrap().clone()
    }

    fn live(&self) -> std::collections::HashMap<String, std::net::IpAddr> {
        self.live.lock().unwrap().clone()
    }
}

impl sandbox_claim::testing::PodRuntime for RecordingRuntime {
    fn start<'a>(
        &'a self,
        request: &'a sandbox_claim::testing::PodRequest,
    ) -> futures::future::BoxFuture<
        'a,
        Result<sandbox_claim::testing::PodStarted, sandbox_claim::testing::PodRuntimeError>,
    > {
        Box::pin(async move {
            if self.hold.load(std::sync::atomic::Ordering::SeqCst) {
                self.entered.notify_one();
                self.release.acquire().await.unwrap().forget();
            }
            let started = self.ips.start(request).await?;
            self.live
                .lock()
                .unwrap()
                .insert(started.pod_name.clone(), started.ip);
            self.events.lock().unwrap().push(PodEvent::Started {
                pod: started.pod_name.clone(),
                ip: started.ip,
            });
            Ok(started)
        })
    }

    fn stop<'a>(
        &'a self,
        _namespace: &'a str,
        pod_name: &'a str,
    ) -> futures::future::BoxFuture<'a, ()> {
        Box::pin(async move {
            let ip = self.live.lock().unwrap().remove(pod_name);
            self.events.lock().unwrap().push(PodEvent::Stopped {
                pod: pod_name.to_owned(),
                ip,
            });
        })
    }
}

async fn recording_cluster() -> (FakeCluster, std::sync::Arc<RecordingRuntime>) {
    let runtime = RecordingRuntime::new();
    let cluster = cluster_with(
        FakeClusterOptions::default().runtime(runtime.clone()),
        Some(0),
    )
    .await;
    (cluster, runtime)
}

/// `(status, reason, podIPs)` of a claim's `Ready` condition and `status.sandbox.podIPs`.
fn ready_of(claim: &v1beta1::SandboxClaim) -> Option<(String, String, Vec<String>)> {
    let status = claim.status.as_ref()?;
    let ready = status.ready()?;
    let ips = status
        .sandbox
        .as_ref()
        .map(|s| s.pod_ips.clone())
        .unwrap_or_default();
    Some((ready.status.clone(), ready.reason.clone(), ips))
}

#[tokio::test]
async fn a_replaced_pod_comes_back_under_the_same_claim_and_sandbox_with_a_new_ip() {
    let (cluster, runtime) = recording_cluster().await;
    let claims = claims(&cluster, options()).await;
    let a = claims.acquire("node-failure").await.unwrap();

    let new = cluster.replace_pod(&a.sandbox_name).await.unwrap();
    assert_ne!(new.ip, a.pod_ip);
    assert_eq!(
        new.pod_name, a.pod_name,
        "the pod is named after the sandbox"
    );

    let b = claims.resolve("node-failure").await.unwrap();
    assert_eq!(b.claim_name, a.claim_name);
    assert_eq!(b.sandbox_name, a.sandbox_name);
    assert_eq!(b.pod_name, a.pod_name);
    assert_eq!(b.pod_ip, new.ip);

    assert_eq!(
        runtime.events(),
        vec![
            PodEvent::Started {
                pod: a.pod_name.clone(),
                ip: a.pod_ip
            },
            PodEvent::Stopped {
                pod: a.pod_name.clone(),
                ip: Some(a.pod_ip)
            },
            PodEvent::Started {
                pod: a.pod_name.clone(),
                ip: new.ip
            },
        ]
    );
    assert_eq!(cluster.controller().pod(&a.sandbox_name), Some(new.clone()));
    let sandbox = sandbox_api(&cluster).get(&a.sandbox_name).await.unwrap();
    assert_eq!(sandbox.status.unwrap().pod_ips, vec![new.ip.to_string()]);
}

#[tokio::test]
async fn the_claim_reports_not_ready_without_pod_ips_while_its_pod_is_replaced() {
    let (cluster, _runtime) = recording_cluster().await;
    let claims = claims(&cluster, options()).await;
    let a = claims.acquire("gap").await.unwrap();
    let api = claim_api(&cluster);
    let before = api
        .get(&a.claim_name)
        .await
        .unwrap()
        .resource_version()
        .unwrap();

    let new = cluster.replace_pod(&a.sandbox_name).await.unwrap();

    // Every write since `before` is replayed from the server's watch history, in order.
    let wp = kube::api::WatchParams::default().fields(&format!("metadata.name={}", a.claim_name));
    let mut stream = std::pin::pin!(api.watch(&wp, &before).await.unwrap());
    let mut seen = Vec::new();
    let want_last = (
        "True".to_owned(),
        "DependenciesReady".to_owned(),
        vec![new.ip.to_string()],
    );
    while seen.last() != Some(&want_last) {
        let event = tokio::time::timeout(
            Duration::from_secs(10),
            futures::StreamExt::next(&mut stream),
        )
        .await
        .expect("the Ready write with the new IP is in the history")
        .expect("the watch stays open")
        .unwrap();
        if let kube::api::WatchEvent::Modified(claim) = event
            && let Some(r) = ready_of(&claim)
        {
            seen.push(r);
        }
    }
    assert_eq!(
        seen,
        vec![
            (
                "False".to_owned(),
                "DependenciesNotReady".to_owned(),
                vec![]
            ),
            want_last,
        ],
        "Ready=False with no pod IPs, then Ready=True with the new IP"
    );
    let sb = sandbox_api(&cluster).get(&a.sandbox_name).await.unwrap();
    let ready = sb.status.unwrap().conditions;
    assert!(
        ready
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
}

#[tokio::test]
async fn resolve_during_a_pod_replacement_waits_for_the_new_pod() {
    let (cluster, runtime) = recording_cluster().await;
    let cluster = std::sync::Arc::new(cluster);
    let claims = claims(&cluster, options()).await;
    let a = claims.acquire("slow-restart").await.unwrap();

    runtime
        .hold
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let replacing = tokio::spawn({
        let cluster = cluster.clone();
        let sandbox = a.sandbox_name.clone();
        async move { cluster.replace_pod(&sandbox).await }
    });
    // The new pod is being started: the old one is gone and the gap is visible.
    runtime.entered.notified().await;
    let claim = claim_api(&cluster).get(&a.claim_name).await.unwrap();
    assert_eq!(
        ready_of(&claim),
        Some(("False".into(), "DependenciesNotReady".into(), vec![]))
    );
    let sandbox = sandbox_api(&cluster)
        .get(&a.sandbox_name)
        .await
        .unwrap()
        .status
        .unwrap();
    assert!(sandbox.pod_ips.is_empty());
    assert!(
        sandbox
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "False")
    );
    assert!(runtime.live().is_empty(), "the old pod was stopped");

    // resolve now can only end with the pod that has not been started yet.
    let resolving = tokio::spawn({
        let claims = claims.clone();
        async move { claims.resolve("slow-restart").await }
    });
    runtime.release.add_permits(1);
    let new = replacing.await.unwrap().unwrap();
    let b = resolving.await.unwrap().unwrap();
    assert_eq!(b.pod_ip, new.ip);
    assert_ne!(b.pod_ip, a.pod_ip);
    assert_eq!(b.sandbox_name, a.sandbox_name);
}

#[tokio::test]
async fn a_release_after_a_pod_replacement_stops_the_new_pod() {
    let (cluster, runtime) = recording_cluster().await;
    let claims = claims(&cluster, options()).await;
    let a = claims.acquire("release-after").await.unwrap();
    let new = cluster.replace_pod(&a.sandbox_name).await.unwrap();
    claims.release("release-after").await.unwrap();
    let stopped_new = PodEvent::Stopped {
        pod: new.pod_name.clone(),
        ip: Some(new.ip),
    };
    eventually("the new pod is stopped", || async {
        runtime.events().contains(&stopped_new)
    })
    .await;
    assert!(runtime.live().is_empty(), "{:?}", runtime.live());
    assert_eq!(cluster.controller().pod(&a.sandbox_name), None);
    eventually("the sandbox is gone", || async {
        sandbox_api(&cluster)
            .get_opt(&a.sandbox_name)
            .await
            .unwrap()
            .is_none()
    })
    .await;
}

#[tokio::test]
async fn an_expiring_claim_stops_the_replaced_pod() {
    let (cluster, runtime) = recording_cluster().await;
    let claims = claims(&cluster, options()).await;
    let a = claims.acquire("expire-after").await.unwrap();
    let new = cluster.replace_pod(&a.sandbox_name).await.unwrap();
    claim_api(&cluster)
        .patch(
            &a.claim_name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"lifecycle": {"shutdownTime": "2000-01-01T00:00:00Z"}}})),
        )
        .await
        .unwrap();
    let stopped_new = PodEvent::Stopped {
        pod: new.pod_name.clone(),
        ip: Some(new.ip),
    };
    eventually("the new pod is stopped", || async {
        runtime.events().contains(&stopped_new)
    })
    .await;
    assert!(runtime.live().is_empty(), "{:?}", runtime.live());
    assert!(
        claim_api(&cluster)
            .get_opt(&a.claim_name)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_replaced_warm_pool_member_stays_in_the_pool_and_is_adopted_with_its_new_ip() {
    let runtime = RecordingRuntime::new();
    let cluster = cluster_with(
        FakeClusterOptions::default().runtime(runtime.clone()),
        Some(1),
    )
    .await;
    let sandboxes = sandbox_api(&cluster);
    let ready_member = || async {
        sandboxes
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|s| s.status.as_ref().is_some_and(|st| !st.pod_ips.is_empty()))
            .map(|s| s.name_any())
    };
    eventually("a ready pool member", || async {
        ready_member().await.is_some()
    })
    .await;
    let member = ready_member().await.unwrap();
    let new = cluster.replace_pod(&member).await.unwrap();
    let again = sandboxes.get(&member).await.unwrap();
    assert!(again.labels().contains_key(labels::WARM_POOL_SANDBOX));
    assert_eq!(again.owner_references()[0].kind, "SandboxWarmPool");

    let claims = claims(&cluster, options()).await;
    let h = claims.acquire("warm-after-replace").await.unwrap();
    assert_eq!(h.sandbox_name, member);
    assert_eq!(h.pod_ip, new.ip);
    claims.release(&h).await.unwrap();
    let stopped_new = PodEvent::Stopped {
        pod: member.clone(),
        ip: Some(new.ip),
    };
    eventually("the new pod is stopped", || async {
        runtime.events().contains(&stopped_new)
    })
    .await;
}

#[tokio::test]
async fn replacing_a_pod_that_is_missing_or_not_yet_started_is_an_error() {
    let cluster = cluster_with(
        FakeClusterOptions::default().ready_mode(ReadyMode::Manual),
        Some(0),
    )
    .await;
    let err = cluster.replace_pod("nobody").await.unwrap_err();
    assert!(
        matches!(&err, sandbox_claim::testing::ReplaceError::SandboxNotFound { sandbox } if sandbox == "nobody"),
        "{err:?}"
    );

    // A cold sandbox whose pod is not up yet has nothing to lose.
    let claims = claims(&cluster, options()).await;
    let acquiring = tokio::spawn({
        let claims = claims.clone();
        async move { claims.acquire("starting").await }
    });
    let name = claims.claim_name("starting").unwrap();
    let sandboxes = sandbox_api(&cluster);
    eventually("the sandbox exists", || async {
        sandboxes.get_opt(&name).await.unwrap().is_some()
    })
    .await;
    let err = cluster.replace_pod(&name).await.unwrap_err();
    assert!(
        matches!(&err, sandbox_claim::testing::ReplaceError::NoPod { .. }),
        "{err:?}"
    );
    cluster.controller().make_ready(1);
    acquiring.await.unwrap().unwrap();
}

/// `status.podIP` of the core `v1` Pod object named `name`, `None` when there is none.
async fn pod_object_ip(cluster: &FakeCluster, name: &str) -> Option<String> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(cluster.client(), cluster.namespace());
    pods.get_opt(name)
        .await
        .unwrap()
        .map(|pod| pod.status.and_then(|s| s.pod_ip).unwrap_or_default())
}

#[tokio::test]
async fn each_running_pod_is_a_pod_object_rewritten_on_replacement_and_deleted_on_release() {
    let (cluster, _runtime) = recording_cluster().await;
    let claims = claims(&cluster, options()).await;
    let a = claims.acquire("pod-objects").await.unwrap();
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(cluster.client(), cluster.namespace());
    let pod = pods.get(&a.sandbox_name).await.unwrap();
    let status = pod.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(status.pod_ip, Some(a.pod_ip.to_string()));
    assert!(
        status
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );

    let new = cluster.replace_pod(&a.sandbox_name).await.unwrap();
    assert_eq!(
        pod_object_ip(&cluster, &new.pod_name).await,
        Some(new.ip.to_string())
    );

    claims.release("pod-objects").await.unwrap();
    eventually("the Pod object is deleted", || async {
        pod_object_ip(&cluster, &new.pod_name).await.is_none()
    })
    .await;
}

#[tokio::test]
async fn acquire_with_says_warm_cold_or_adopted_and_annotates_only_the_claim_it_creates() {
    use sandbox_claim::{AcquireOptions, AcquirePath};
    let cluster = cluster_with(FakeClusterOptions::default(), Some(1)).await;
    let sandboxes = sandbox_api(&cluster);
    eventually("a ready pool member", || async {
        sandboxes
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len()
            == 1
    })
    .await;
    let claims = claims(&cluster, options()).await;
    let traced = AcquireOptions::default().annotation(
        "opentelemetry.io/trace-context",
        r#"{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#,
    );
    let warm = claims.acquire_with("first", &traced).await.unwrap();
    assert_eq!(warm.path, AcquirePath::Warm);
    let claim = claim_api(&cluster)
        .get(&warm.handle.claim_name)
        .await
        .unwrap();
    assert!(
        claim.annotations()["opentelemetry.io/trace-context"].contains("4bf92f3577b34da6"),
        "{:?}",
        claim.annotations()
    );
    // Our own annotations cannot be overridden by the caller's.
    let forged = AcquireOptions::default().annotation(labels::CONVERSATION_ID, "someone-else");
    let again = claims.acquire_with("first", &forged).await.unwrap();
    assert_eq!(again.path, AcquirePath::Adopted);
    assert_eq!(again.handle, warm.handle);
    let claim = claim_api(&cluster)
        .get(&warm.handle.claim_name)
        .await
        .unwrap();
    assert_eq!(claim.annotations()[labels::CONVERSATION_ID], "first");

    // The pool is empty until it refills: the next claim may be cold or warm, but a cold one
    // is named after its claim.
    let next = claims.acquire_with("second", &forged).await.unwrap();
    assert_eq!(
        next.path == AcquirePath::Cold,
        next.handle.sandbox_name == next.handle.claim_name
    );
    let claim = claim_api(&cluster)
        .get(&next.handle.claim_name)
        .await
        .unwrap();
    assert_eq!(claim.annotations()[labels::CONVERSATION_ID], "second");
}

#[tokio::test]
async fn the_retry_observer_is_told_of_each_transient_error_by_kind() {
    use sandbox_claim::{ApiErrorKind, RetryObserver};
    let cluster = cold_cluster().await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let opts = options().retry(RetryPolicy {
        initial_backoff: Duration::from_millis(10),
        observer: Some(RetryObserver::new(move |event| {
            record.lock().unwrap().push((event.operation, event.kind));
        })),
        ..RetryPolicy::default()
    });
    let claims = claims(&cluster, opts).await;
    cluster.server().inject(
        Fault::status(500, "InternalError")
            .verb(Verb::Create)
            .resource("sandboxclaims")
            .times(2),
    );
    // (kube's client retries a 429 itself; what reaches this layer is counted.)
    cluster.server().inject(
        Fault::reset_connection()
            .verb(Verb::Delete)
            .resource("sandboxclaims")
            .times(1),
    );
    claims.acquire("flaky").await.expect("retried");
    claims.release("flaky").await.expect("retried");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            ("create claim", ApiErrorKind::ServerError),
            ("create claim", ApiErrorKind::ServerError),
            ("delete claim", ApiErrorKind::Transport),
        ]
    );
}
