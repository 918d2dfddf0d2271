//! The agent-sandbox backend against the fake cluster: the real kube client
//! over HTTP, the simulated agent-sandbox controller, and in-process AXP
//! agents served at each "pod IP" over real TCP.

mod support;

use std::{net::SocketAddr, sync::atomic::Ordering, time::Duration};

use agent_sandbox_backend::{
    AgentSandboxAgent, ConfigError, ConnectionMode, Registry, ReleasePolicy, SandboxAgentError,
    SandboxAgentOptions,
};
use axp_transport::content;
use sandbox_claim::{
    Claims,
    testing::{FakeCluster, FakeClusterOptions, ReadyMode, Verb},
};
use support::{
    Behaviour, POOL, PORT, ServingRuntime, TEMPLATE, backend, claims_left, options, run, setup,
    setup_with, start,
};
use tonic::Code;

#[tokio::test]
async fn a_conversation_keeps_its_sandbox_and_its_state_across_executions() {
    let setup = setup(Behaviour::Count, 0).await;
    let agent = backend(&setup).await;
    let server = setup.cluster.server();

    let first = run(&agent, "conv-a", "e1").await.unwrap();
    assert!(first.starts_with("turn 1 at 127."), "{first}");
    let creates = server.requests().count(Verb::Create, "sandboxclaims");
    let watches = server.requests().count(Verb::Watch, "sandboxclaims");

    let mut second_report = None;
    let mut seen = Vec::new();
    second_report.replace(
        agent
            .connect("conv-a", "e2", start(), |b| seen.extend(b))
            .await
            .unwrap(),
    );
    let second = content::planner_view(&seen);
    let address = first.trim_start_matches("turn 1 at ");
    assert_eq!(
        second,
        format!("turn 2 at {address}"),
        "same sandbox, state kept"
    );
    let report = second_report.unwrap();
    assert_eq!(
        report.claim_to_ready,
        Duration::ZERO,
        "no claim or wait on the second turn"
    );
    assert!(report.ended && report.frames == 1 && !report.re_resolved);
    assert_eq!(
        server.requests().count(Verb::Create, "sandboxclaims"),
        creates,
        "no new claim"
    );
    assert_eq!(
        server.requests().count(Verb::Watch, "sandboxclaims"),
        watches,
        "no new wait"
    );
    assert_eq!(claims_left(&setup), 1);
}

#[tokio::test]
async fn two_conversations_get_two_sandboxes() {
    let setup = setup(Behaviour::Count, 0).await;
    let agent = backend(&setup).await;
    let (a, b) = tokio::join!(run(&agent, "conv-a", "e1"), run(&agent, "conv-b", "e1"));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.starts_with("turn 1") && b.starts_with("turn 1"));
    assert_ne!(a, b, "different pod addresses");
    assert_eq!(claims_left(&setup), 2);
    assert_eq!(setup.runtime.running(), 2);
}

#[tokio::test]
async fn release_and_close_leave_no_claims_and_no_pods() {
    let setup = setup(Behaviour::Count, 0).await;
    let agent = backend(&setup).await;
    for conversation in ["a", "b", "c"] {
        run(&agent, conversation, "e1").await.unwrap();
    }
    assert_eq!(claims_left(&setup), 3);
    agent.release("a").await.unwrap();
    agent.release("a").await.expect("release is idempotent");
    assert_eq!(claims_left(&setup), 2);
    agent.close().await.unwrap();
    assert_eq!(claims_left(&setup), 0);
    assert!(agent.active_conversations().is_empty());
    for _ in 0..100 {
        if setup.runtime.running() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        setup.runtime.running(),
        0,
        "the controller stopped every pod"
    );
}

#[tokio::test]
async fn the_per_execution_policy_releases_after_each_execution() {
    let setup = setup(Behaviour::Count, 0).await;
    let options = SandboxAgentOptions {
        release: ReleasePolicy::PerExecution,
        ..options(&setup.cluster)
    };
    let agent = AgentSandboxAgent::new(setup.cluster.client(), options)
        .await
        .unwrap();
    assert!(
        run(&agent, "conv", "e1")
            .await
            .unwrap()
            .starts_with("turn 1")
    );
    assert_eq!(claims_left(&setup), 0);
    assert!(
        run(&agent, "conv", "e2")
            .await
            .unwrap()
            .starts_with("turn 1"),
        "a fresh sandbox each time"
    );
    assert_eq!(setup.runtime.started.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_restarted_controller_adopts_the_live_claim_instead_of_creating_a_new_sandbox() {
    let setup = setup(Behaviour::Count, 0).await;
    let first = backend(&setup).await;
    run(&first, "conv", "e1").await.unwrap();
    drop(first); // the controller process "crashes": nothing is released

    let restarted = backend(&setup).await;
    let again = run(&restarted, "conv", "e2").await.unwrap();
    assert!(
        again.starts_with("turn 2"),
        "same sandbox, state intact: {again}"
    );
    assert_eq!(setup.runtime.started.load(Ordering::SeqCst), 1);
    assert_eq!(claims_left(&setup), 1);
}

#[tokio::test]
async fn a_warm_pool_serves_the_claim_from_a_ready_member() {
    let setup = setup(Behaviour::Count, 2).await;
    // Let the pool fill.
    for _ in 0..200 {
        if setup.runtime.running() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let agent = backend(&setup).await;
    let mut seen = Vec::new();
    let report = agent
        .connect("conv", "e1", start(), |b| seen.extend(b))
        .await
        .unwrap();
    assert!(
        report.sandbox.sandbox_name.starts_with(&format!("{POOL}-")),
        "adopted from the pool: {}",
        report.sandbox.sandbox_name
    );
    assert_ne!(report.sandbox.sandbox_name, report.sandbox.claim_name);
}

#[tokio::test]
async fn a_crashed_pod_is_re_resolved_once_and_the_execution_retried() {
    let setup = setup(Behaviour::Count, 0).await;
    let agent = backend(&setup).await;
    let mut seen = Vec::new();
    let first = agent
        .connect("conv", "e1", start(), |b| seen.extend(b))
        .await
        .unwrap();

    // The pod dies and the controller brings up a replacement with a new IP.
    setup
        .cluster
        .replace_pod(&first.sandbox.sandbox_name)
        .await
        .unwrap();

    let mut seen = Vec::new();
    let second = agent
        .connect("conv", "e2", start(), |b| seen.extend(b))
        .await
        .unwrap();
    assert!(second.re_resolved, "the stale endpoint must be re-resolved");
    assert_ne!(second.sandbox.pod_ip, first.sandbox.pod_ip);
    assert!(
        content::planner_view(&seen).starts_with("turn 1"),
        "a new pod has no state"
    );
}

#[tokio::test]
async fn a_reused_pod_ip_now_serving_another_conversation_is_re_resolved() {
    let setup = setup(Behaviour::Count, 0).await;
    let agent = backend(&setup).await;
    let mut seen = Vec::new();
    let first = agent
        .connect("conv", "e1", start(), |b| seen.extend(b))
        .await
        .unwrap();

    // The pod moves to a new IP, and its old IP goes to another conversation's
    // pinned agent, which refuses strangers.
    setup
        .cluster
        .replace_pod(&first.sandbox.sandbox_name)
        .await
        .unwrap();
    let old = SocketAddr::new(first.sandbox.pod_ip, PORT);
    let mut squatter = None;
    for _ in 0..100 {
        squatter = setup.runtime.serve_at(old, Behaviour::Refuse).await;
        if squatter.is_some() {
            break;
        }
        // The replaced pod's server is still draining its port.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _squatter = squatter.expect("the old address frees up");

    let mut seen = Vec::new();
    let second = agent
        .connect("conv", "e2", start(), |b| seen.extend(b))
        .await
        .unwrap();
    assert!(second.re_resolved);
    assert_ne!(second.sandbox.pod_ip, first.sandbox.pod_ip);
    assert!(content::planner_view(&seen).starts_with("turn 1"));
}

#[tokio::test]
async fn a_failure_after_output_started_is_reported_and_never_retried() {
    let setup = setup(Behaviour::FailAfterOutput, 0).await;
    let agent = backend(&setup).await;
    let mut seen = Vec::new();
    let error = agent
        .connect("conv", "e1", start(), |b| seen.extend(b))
        .await
        .unwrap_err();
    assert_eq!(seen.len(), 1, "the output before the failure was delivered");
    match &error {
        SandboxAgentError::Stream { outputs, claim, .. } => {
            assert_eq!(*outputs, 1);
            assert!(claim.starts_with("conv-"), "{claim}");
        }
        other => panic!("expected a stream error, got {other:?}"),
    }
    assert_eq!(error.agent_code(), Some(Code::Unavailable));
    assert_eq!(
        setup.runtime.executions.load(Ordering::SeqCst),
        1,
        "no retry: side effects must not repeat"
    );
}

#[tokio::test]
async fn an_agents_refusal_is_final_and_names_the_claim_and_endpoint() {
    let setup = setup(Behaviour::Refuse, 0).await;
    let agent = backend(&setup).await;
    let error = run(&agent, "conv", "e1").await.unwrap_err();
    assert_eq!(error.agent_code(), Some(Code::PermissionDenied));
    let message = error.to_string();
    assert!(
        message.contains("conv-") && message.contains(&format!(":{PORT}")),
        "{message}"
    );
    assert_eq!(setup.runtime.executions.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_sandbox_that_never_becomes_ready_is_a_wait_error_naming_the_last_reason_in_words() {
    let runtime = ServingRuntime::new(Behaviour::Count);
    let cluster = FakeCluster::start(
        FakeClusterOptions::default()
            .runtime(runtime)
            .ready_mode(ReadyMode::Manual),
    )
    .await
    .unwrap();
    cluster.create_template(TEMPLATE, None).await.unwrap();
    cluster.create_warm_pool(POOL, TEMPLATE, 0).await.unwrap();
    let mut options = options(&cluster);
    options.claims = options.claims.ready_timeout(Duration::from_millis(500));
    let agent = AgentSandboxAgent::new(cluster.client(), options)
        .await
        .unwrap();
    let error = run(&agent, "conv", "e1").await.unwrap_err();
    assert!(matches!(error, SandboxAgentError::Wait { .. }), "{error:?}");
    let chain = format!("{:?}", anyhow_chain(&error));
    assert!(chain.contains("Timeout"), "{chain}");
    let words = display_chain(&error);
    assert!(
        words.contains("last seen: Ready=False: DependenciesNotReady"),
        "{words}"
    );
    assert!(words.contains("was deleted"), "{words}");
    assert!(
        !words.contains("None") && !words.contains("Some("),
        "{words}"
    );
    agent.close().await.unwrap();
}

/// The error and its sources as their messages (`Display`), joined by `: `.
fn display_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn anyhow_chain(error: &dyn std::error::Error) -> Vec<String> {
    let mut chain = vec![format!("{error:?}")];
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push(format!("{cause:?}"));
        source = cause.source();
    }
    chain
}

#[tokio::test]
async fn a_long_execution_renews_the_claims_lifetime() {
    let setup = setup(Behaviour::Slow(Duration::from_millis(2500)), 0).await;
    let mut options = options(&setup.cluster);
    options.claims = options.claims.ttl(Duration::from_secs(3));
    let agent = AgentSandboxAgent::new(setup.cluster.client(), options)
        .await
        .unwrap();
    let patches_before = setup
        .cluster
        .server()
        .requests()
        .count(Verb::Patch, "sandboxclaims");
    run(&agent, "conv", "e1").await.unwrap();
    let patches = setup
        .cluster
        .server()
        .requests()
        .count(Verb::Patch, "sandboxclaims")
        - patches_before;
    assert!(
        patches >= 1,
        "the claim was renewed during the execution ({patches} patches)"
    );
    assert_eq!(
        claims_left(&setup),
        1,
        "the claim outlived its original TTL"
    );
}

#[tokio::test]
async fn direct_mode_dials_the_pod_ip_without_router_headers() {
    let setup = setup(Behaviour::Count, 0).await;
    let options = options(&setup.cluster);
    assert_eq!(options.connection, ConnectionMode::Direct);
    let agent = AgentSandboxAgent::new(setup.cluster.client(), options)
        .await
        .unwrap();
    let mut seen = Vec::new();
    let report = agent
        .connect("conv", "e1", start(), |b| seen.extend(b))
        .await
        .unwrap();
    assert!(report.sandbox.pod_ip.is_loopback(), "{report:?}");
    let headers = setup.runtime.metadata.lock().unwrap()[0].clone();
    assert_eq!(headers["execution-id"], "e1");
    assert!(
        headers.keys().all(|name| !name.starts_with("x-sandbox-")),
        "{headers:?}"
    );
}

#[tokio::test]
async fn a_registry_entry_builds_a_backend_for_v1beta1_and_v1alpha1_clusters() {
    let yaml = |ns: &str| {
        format!(
            "registry:\n  agent_sandbox_agents:\n    - id: py\n      namespace: {ns}\n      template: {TEMPLATE}\n      warm_pool: {POOL}\n      ready_timeout: 10s\n"
        )
    };
    for options in [FakeClusterOptions::default(), FakeClusterOptions::v0_4_6()] {
        let setup = setup_with(Behaviour::Count, 0, options).await;
        let registry = Registry::from_yaml(&yaml(setup.cluster.namespace())).unwrap();
        let agent =
            AgentSandboxAgent::from_config(setup.cluster.client(), registry.get("py").unwrap())
                .await
                .unwrap();
        assert_eq!(agent.claims().api_version(), setup.cluster.api_version());
        assert!(
            run(&agent, "conv", "e1")
                .await
                .unwrap()
                .starts_with("turn 1")
        );
        agent.close().await.unwrap();
        assert_eq!(claims_left(&setup), 0);
    }
}

#[tokio::test]
async fn an_entry_without_what_the_cluster_needs_is_a_config_error() {
    let setup = setup(Behaviour::Count, 0).await;
    let yaml = format!(
        "registry:\n  agent_sandbox_agents:\n    - id: py\n      namespace: {}\n      template: {TEMPLATE}\n",
        setup.cluster.namespace()
    );
    let registry = Registry::from_yaml(&yaml).unwrap();
    let error = AgentSandboxAgent::from_config(setup.cluster.client(), registry.get("py").unwrap())
        .await
        .unwrap_err();
    match &error {
        SandboxAgentError::Config(ConfigError::MissingSource { field, .. }) => {
            assert_eq!(*field, "warm_pool");
        }
        other => panic!("expected a missing warm pool, got {other:?}"),
    }
    assert_eq!(claims_left(&setup), 0, "nothing was claimed");
}

#[tokio::test]
async fn claims_made_by_the_backend_are_found_by_the_sweeper() {
    let setup = setup(Behaviour::Count, 0).await;
    let agent = backend(&setup).await;
    run(&agent, "live", "e1").await.unwrap();
    run(&agent, "gone", "e1").await.unwrap();
    let claims = Claims::new(setup.cluster.client(), options(&setup.cluster).claims);
    let report = claims
        .sweep(|conversation| conversation == "live")
        .await
        .unwrap();
    assert_eq!(report.deleted.len(), 1);
    assert_eq!(claims_left(&setup), 1);
}
