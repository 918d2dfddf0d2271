//! Chaos: many conversations through the whole pipeline (fake cluster, simulated controller,
//! real agent processes, the backend) while the API server fails requests at random, in
//! every way it can, on every verb, the simulated controller's own requests included.
//!
//! Every conversation either succeeds or fails with a typed error before its deadline, and
//! once every conversation is released (and the warm pool deleted) no claim and no agent
//! process is left, without any sweep. The test prints its figures.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agent_sandbox_backend::SandboxAgentError;
use futures::StreamExt as _;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject};
use pipeline::{
    NAMESPACE, Pipeline, WARM_POOL,
    calls::{planner_call, run},
};
use sandbox_claim::testing::{
    FakeClusterOptions, Fault, FaultAction, FaultKind, RandomFaults, Verb,
};
use sandbox_claim::wait::Error as WaitError;

/// Conversations in the run.
const CONVERSATIONS: usize = 200;
/// Conversations at once.
const AT_ONCE: usize = 16;
/// Chance that any API request suffers a fault.
const FAULT_PROBABILITY: f64 = 0.1;
/// Watches that are also cut off or answered 410 (each kind drawn at random): watches are
/// few and long-lived (one shared claim watch, the controller's), so the general draw alone
/// may never reach one. Each such fault makes its client re-watch or re-list, which the
/// next one hits, so these spread over the run's first events.
const WATCH_FAULTS: u32 = 12;
/// How long one conversation may take, faults and all; its claim waits at most
/// `READY_TIMEOUT` and its call at most `CALL_TIMEOUT`.
const DEADLINE: Duration = Duration::from_secs(40);
const READY_TIMEOUT: &str = "15s";
const CALL_TIMEOUT: &str = "15s";

/// One conversation: its index, how its execution ended, how its release ended.
type Outcome = (
    usize,
    Result<(), SandboxAgentError>,
    Result<(), SandboxAgentError>,
);

/// The kind of a backend error, by its variant (never by its text).
fn kind(error: &SandboxAgentError) -> String {
    match error {
        SandboxAgentError::Wait { source, .. } => match source.wait_error() {
            Some(WaitError::Timeout { .. }) => "wait: timeout".into(),
            Some(WaitError::Terminal { reason, .. }) => format!("wait: terminal {reason}"),
            Some(WaitError::Deleted { .. }) => "wait: deleted".into(),
            Some(WaitError::Watch { .. }) => "wait: watch".into(),
            Some(_) => "wait: other".into(),
            None => "wait".into(),
        },
        SandboxAgentError::Claim { source, .. } => match **source {
            sandbox_claim::Error::Create { .. } => "claim: create".into(),
            sandbox_claim::Error::Get { .. } => "claim: get".into(),
            sandbox_claim::Error::Renew { .. } => "claim: renew".into(),
            sandbox_claim::Error::AwaitDeletion { .. } => "claim: await deletion".into(),
            _ => "claim: other".into(),
        },
        SandboxAgentError::Connect { .. } => "connect".into(),
        SandboxAgentError::Stream { .. } => "stream".into(),
        SandboxAgentError::Release { .. } => "release".into(),
        _ => "other".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_random_api_faults_every_conversation_ends_typed_in_time_and_nothing_leaks() {
    let pipeline = Pipeline::start_with(FakeClusterOptions::default(), 8)
        .await
        .unwrap();
    let yaml = pipeline
        .ax_yaml(&format!("      call_timeout: {CALL_TIMEOUT}\n"))
        .replace(
            "ready_timeout: 60s",
            &format!("ready_timeout: {READY_TIMEOUT}"),
        );
    let registry = agent_sandbox_backend::Registry::from_yaml(&yaml).unwrap();
    let agent = Arc::new(
        agent_sandbox_backend::AgentSandboxAgent::from_config(
            pipeline.cluster.client(),
            registry.get("py").unwrap(),
        )
        .await
        .unwrap(),
    );
    let server = pipeline.cluster.server().clone();
    let chaos = server.inject(Fault::random(RandomFaults::every_kind(
        2026,
        FAULT_PROBABILITY,
    )));
    let watch_chaos = server.inject(
        Fault::random(RandomFaults {
            seed: 2027,
            probability: 1.0,
            actions: vec![
                FaultAction::DropWatch { after_events: 1 },
                FaultAction::ExpireResourceVersion,
            ],
        })
        .verb(Verb::Watch)
        .times(WATCH_FAULTS),
    );

    let outcomes: Vec<Outcome> = futures::stream::iter(0..CONVERSATIONS)
        .map(|i| {
            let agent = Arc::clone(&agent);
            async move {
                let conversation = format!("chaos-{i}");
                let ran = tokio::time::timeout(
                    DEADLINE,
                    run(&agent, &conversation, "e1", planner_call("print(6 * 7)")),
                )
                .await
                .unwrap_or_else(|_| panic!("{conversation} outlived its deadline"));
                let ran = ran.map(|(text, _)| {
                    assert!(text.contains("42"), "{conversation}: {text}");
                });
                let released = agent.release(&conversation).await;
                (i, ran, released)
            }
        })
        .buffer_unordered(AT_ONCE)
        .collect()
        .await;

    let fired = server.faults_fired();
    server.remove_fault(chaos);
    server.remove_fault(watch_chaos);

    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    let mut successes = 0;
    let mut unreleased = Vec::new();
    for (i, ran, released) in &outcomes {
        match ran {
            Ok(()) => successes += 1,
            Err(e) => {
                *failures.entry(kind(e)).or_default() += 1;
                let chain =
                    std::iter::successors(Some(e as &dyn std::error::Error), |e| e.source())
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(": ");
                println!("  chaos-{i} failed: {chain}");
            }
        }
        if let Err(e) = released {
            *failures.entry(kind(e)).or_default() += 1;
            unreleased.push(*i);
        }
    }
    // A release that failed under the faults is the caller's to repeat, as AX would.
    for i in &unreleased {
        agent.release(&format!("chaos-{i}")).await.unwrap();
    }
    let claims_left = pipeline.claims();
    // The pool's idle members are the last agents: deleting the pool stops them.
    let pools: Api<DynamicObject> = Api::namespaced_with(
        pipeline.cluster.client(),
        NAMESPACE,
        &ApiResource {
            group: "extensions.agents.x-k8s.io".into(),
            version: "v1beta1".into(),
            api_version: "extensions.agents.x-k8s.io/v1beta1".into(),
            kind: "SandboxWarmPool".into(),
            plural: "sandboxwarmpools".into(),
        },
    );
    pools
        .delete(WARM_POOL, &DeleteParams::background())
        .await
        .unwrap();
    let stopped = pipeline
        .wait_until(Duration::from_secs(15), |p| {
            p.runtime.running() == 0 && p.sandboxes() == 0
        })
        .await;

    for s in pipeline
        .cluster
        .server()
        .objects("agents.x-k8s.io", "sandboxes", Some(NAMESPACE))
    {
        println!(
            "  sandbox left: {} owned by {}",
            s["metadata"]["name"], s["metadata"]["ownerReferences"]
        );
    }
    println!("chaos figures:");
    println!("  conversations: {CONVERSATIONS} ({AT_ONCE} at once)");
    println!("  faults fired: {} ({fired})", fired.total());
    println!("  successes: {successes}");
    println!("  typed failures: {failures:?}");
    println!("  releases repeated after the faults: {}", unreleased.len());
    println!("  claims left: {claims_left}");
    println!(
        "  agent processes left: {}, sandboxes left: {}",
        pipeline.runtime.running(),
        pipeline.sandboxes()
    );

    assert_eq!(outcomes.len(), CONVERSATIONS);
    // Every kind of fault really happened during the run, not just in principle.
    for kind in [
        FaultKind::Status(500),
        FaultKind::Status(503),
        FaultKind::Status(429),
        FaultKind::ResetConnection,
        FaultKind::Latency,
        FaultKind::DropWatch,
        FaultKind::Expired,
    ] {
        assert!(fired.count(kind) > 0, "no {kind} fault fired: {fired}");
    }
    assert_eq!(claims_left, 0, "no claim is left after release");
    assert!(stopped.is_ok(), "no agent process is left");
    assert!(
        successes > CONVERSATIONS / 2,
        "most conversations ride out the faults: {successes} of {CONVERSATIONS}"
    );
}
