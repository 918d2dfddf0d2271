//! The simulated controller as a controller-runtime controller: it resumes from the store
//! after a restart, keeps up with many claims at once, and under random API faults of every
//! kind (its own requests included) leaves no claim without a status once the faults stop.

use kube::api::{Api, PostParams};
use sandbox_claim::testing::{FakeCluster, FakeClusterOptions, Fault, RandomFaults, ReadyMode};
use sandbox_claim::types::{Lifecycle, NameRef, v1beta1};
use std::time::Duration;

const POOL: &str = "pool";
const TEMPLATE: &str = "tpl";

async fn cluster(options: FakeClusterOptions, replicas: i32) -> FakeCluster {
    let cluster = FakeCluster::start(options)
        .await
        .expect("fake cluster starts");
    cluster
        .create_template(TEMPLATE, None)
        .await
        .expect("template");
    cluster
        .create_warm_pool(POOL, TEMPLATE, replicas)
        .await
        .expect("pool");
    cluster
}

fn claim_api(cluster: &FakeCluster) -> Api<v1beta1::SandboxClaim> {
    Api::namespaced(cluster.client(), cluster.namespace())
}

fn claim(name: &str) -> v1beta1::SandboxClaim {
    v1beta1::SandboxClaim::new(
        name,
        v1beta1::SandboxClaimSpec {
            warm_pool_ref: NameRef { name: POOL.into() },
            lifecycle: Some(Lifecycle::default()),
            ..Default::default()
        },
    )
}

/// Creates claims straight through the API (no client-side waiting or retries).
async fn create_claims(api: &Api<v1beta1::SandboxClaim>, names: impl Iterator<Item = String>) {
    for name in names {
        api.create(&PostParams::default(), &claim(&name))
            .await
            .expect("claim created");
    }
}

/// Claims whose `Ready` is `True` with a pod IP, and claims with no `Ready` at all.
async fn census(api: &Api<v1beta1::SandboxClaim>) -> (usize, usize) {
    let list = api.list(&Default::default()).await.expect("list claims");
    let ready = list
        .items
        .iter()
        .filter(|c| {
            c.status.as_ref().is_some_and(|s| {
                s.ready().is_some_and(|r| r.status == "True")
                    && s.sandbox.as_ref().is_some_and(|sb| !sb.pod_ips.is_empty())
            })
        })
        .count();
    let without = list
        .items
        .iter()
        .filter(|c| c.status.as_ref().and_then(|s| s.ready()).is_none())
        .count();
    (ready, without)
}

async fn eventually_all_ready(api: &Api<v1beta1::SandboxClaim>, n: usize, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (ready, without) = census(api).await;
        if ready == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{ready} of {n} claims ready, {without} without any status, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_restarted_controller_finishes_the_claims_its_predecessor_left_half_done() {
    let mut cluster = cluster(
        FakeClusterOptions::default().ready_mode(ReadyMode::Manual),
        0,
    )
    .await;
    let api = claim_api(&cluster);
    create_claims(&api, (0..5).map(|i| format!("half-{i}"))).await;
    // The first controller creates the Sandboxes and starts their pods, then waits at the
    // ready gate forever.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cluster
        .server()
        .objects("agents.x-k8s.io", "sandboxes", Some(cluster.namespace()))
        .len()
        < 5
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sandboxes not created"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster
        .controller()
        .set_ready_mode(ReadyMode::After(Duration::ZERO));
    cluster.restart_controller();
    // Claims created while the new controller starts are served too.
    create_claims(&api, (0..3).map(|i| format!("late-{i}"))).await;
    eventually_all_ready(&api, 8, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn many_claims_at_once_all_become_ready_from_the_pool_and_cold_each_with_its_own_sandbox() {
    let cluster = cluster(
        FakeClusterOptions::default().ready_mode(ReadyMode::After(Duration::ZERO)),
        10,
    )
    .await;
    let api = claim_api(&cluster);
    create_claims(&api, (0..60).map(|i| format!("load-{i}"))).await;
    eventually_all_ready(&api, 60, Duration::from_secs(30)).await;
    // Claims adopt pool members concurrently: none may be handed to two of them.
    let list = api.list(&Default::default()).await.expect("list claims");
    let sandboxes: std::collections::HashSet<_> = list
        .items
        .iter()
        .filter_map(|c| c.status.as_ref()?.sandbox.as_ref()?.name.clone())
        .collect();
    assert_eq!(sandboxes.len(), 60, "{sandboxes:?}");
}

#[tokio::test]
async fn under_random_faults_of_every_kind_no_claim_is_left_without_a_status_once_they_stop() {
    let cluster = cluster(
        FakeClusterOptions::default().ready_mode(ReadyMode::After(Duration::ZERO)),
        4,
    )
    .await;
    let api = claim_api(&cluster);
    // Faults on every verb and resource, the controller's own requests included.
    let chaos = cluster
        .server()
        .inject(Fault::random(RandomFaults::every_kind(13, 0.2)));
    // The test's own creates get through: they are what the controller has to serve.
    let mut created = 0;
    while created < 30 {
        if api
            .create(&PostParams::default(), &claim(&format!("chaos-{created}")))
            .await
            .is_ok()
        {
            created += 1;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fired = cluster.server().faults_fired();
    cluster.server().remove_fault(chaos);
    println!("faults fired: {fired}");
    assert!(fired.total() > 0, "the faults fired");
    eventually_all_ready(&api, 30, Duration::from_secs(30)).await;
    let (_, without) = census(&api).await;
    assert_eq!(without, 0);
}

/// Pods that take `delay` to start (the loopback runtime's addresses).
#[derive(Debug)]
struct SlowPods {
    delay: Duration,
    inner: sandbox_claim::testing::LoopbackRuntime,
}

impl sandbox_claim::testing::PodRuntime for SlowPods {
    fn start<'a>(
        &'a self,
        request: &'a sandbox_claim::testing::PodRequest,
    ) -> futures::future::BoxFuture<
        'a,
        Result<sandbox_claim::testing::PodStarted, sandbox_claim::testing::PodRuntimeError>,
    > {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            self.inner.start(request).await
        })
    }

    fn stop<'a>(&'a self, namespace: &'a str, pod: &'a str) -> futures::future::BoxFuture<'a, ()> {
        self.inner.stop(namespace, pod)
    }
}

#[tokio::test]
async fn a_claim_waits_with_adoption_pending_for_a_starting_pool_member_and_adopts_it() {
    let runtime = std::sync::Arc::new(SlowPods {
        delay: Duration::from_millis(800),
        inner: sandbox_claim::testing::LoopbackRuntime::new(),
    });
    let cluster = cluster(FakeClusterOptions::default().runtime(runtime), 1).await;
    let api = claim_api(&cluster);
    // The pool's member exists but its pod is still starting.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cluster
        .server()
        .objects("agents.x-k8s.io", "sandboxes", Some(cluster.namespace()))
        .is_empty()
    {
        assert!(tokio::time::Instant::now() < deadline, "no pool member");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    create_claims(&api, std::iter::once("patient".to_owned())).await;
    let mut reasons = Vec::new();
    let sandbox = loop {
        let c = api.get("patient").await.unwrap();
        let status = c.status.unwrap_or_default();
        if let Some(r) = status.ready() {
            if reasons.last() != Some(&r.reason) {
                reasons.push(r.reason.clone());
            }
            if r.status == "True" {
                break status.sandbox.and_then(|s| s.name).unwrap();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready: {reasons:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        reasons.first().map(String::as_str),
        Some("AdoptionPending"),
        "{reasons:?}"
    );
    assert!(sandbox.starts_with("pool-"), "adopted, not cold: {sandbox}");
}
