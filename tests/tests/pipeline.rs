//! The whole pipeline: fake cluster, real `python-sandbox-agent` pods at their
//! own pod IPs, the agent-sandbox backend, AXP over TCP.
//!
//! The pods are local agent processes, or with `PIPELINE_RUNTIME=docker`
//! containers of the agent's image (`cargo xtask test` runs this suite both
//! ways, and builds the binary and the image first).

use std::time::Duration;

use agent_sandbox_backend::{AgentSandboxAgent, SandboxAgentError};
use axp_transport::{
    content,
    pb::{AgentStart, Message},
};
use pipeline::{
    Pipeline,
    calls::{legacy_call, planner_call, run},
};
use sandbox_claim::RetryPolicy;
use sandbox_claim::testing::{FakeClusterOptions, Fault, Verb};

#[tokio::test]
async fn a_planner_sub_agent_call_runs_the_structured_prompt_and_the_legacy_envelope() {
    let pipeline = Pipeline::start(1).await.unwrap();
    let agent = pipeline.backend("").await.unwrap();

    let (text, report) = run(
        &agent,
        "conv-1",
        "e1",
        planner_call("print('hi from ' + 'python')\n6 * 7"),
    )
    .await
    .unwrap();
    assert!(text.contains("hi from python"), "{text}");
    assert!(
        text.contains("42"),
        "the expression's value is reported: {text}"
    );
    assert!(report.ended, "the agent ends with `end`");

    let (text, _) = run(
        &agent,
        "conv-2",
        "e1",
        legacy_call("```python\nprint(sum(range(10)))\n```"),
    )
    .await
    .unwrap();
    assert!(text.contains("45"), "{text}");
    agent.close().await.unwrap();
}

#[tokio::test]
async fn two_executions_of_a_conversation_share_state_and_its_sandbox() {
    let pipeline = Pipeline::start(0).await.unwrap();
    let agent = pipeline.backend("").await.unwrap();
    let (_, first) = run(
        &agent,
        "conv",
        "e1",
        planner_call("import math\nradius = 2\ndef area(r): return math.pi * r * r"),
    )
    .await
    .unwrap();
    let (text, second) = run(
        &agent,
        "conv",
        "e2",
        planner_call("print(round(area(radius), 3))"),
    )
    .await
    .unwrap();
    assert!(text.contains("12.566"), "{text}");
    assert_eq!(first.sandbox, second.sandbox);
    assert_eq!(second.claim_to_ready, Duration::ZERO);
    assert_eq!(pipeline.runtime.started(), 1);
    agent.close().await.unwrap();
}

#[tokio::test]
async fn a_conversation_over_harness_service_keeps_its_state_across_turns() {
    let pipeline = Pipeline::start(1).await.unwrap();
    // Upstream AX's dialect: the same entry, `protocol: harness`.
    let yaml = pipeline
        .ax_yaml("")
        .replace("protocol: axp", "protocol: harness");
    let registry = agent_sandbox_backend::Registry::from_yaml(&yaml).unwrap();
    let entry = registry.get("py").unwrap();
    assert_eq!(entry.protocol, axp_transport::Protocol::HarnessService);
    let agent = AgentSandboxAgent::from_config(pipeline.cluster.client(), entry)
        .await
        .unwrap();

    let (_, first) = run(&agent, "conv-h", "e1", planner_call("total = 40"))
        .await
        .unwrap();
    assert!(first.ended, "HarnessService ends with `end`");
    let (text, second) = run(&agent, "conv-h", "e2", planner_call("print(total + 2)"))
        .await
        .unwrap();
    assert!(
        text.contains("42"),
        "turn two sees turn one's state: {text}"
    );
    assert_eq!(first.sandbox, second.sandbox);

    // The agent heard HarnessService: a bad option is reported in that
    // protocol's terms (`harness_config`), as `end{FAILED, INVALID_ARGUMENT}`.
    let bad = AgentStart {
        agent_config: br#"{"timeout_secs": -1}"#.to_vec(),
        ..planner_call("print(1)")
    };
    let error = run(&agent, "conv-h", "e3", bad).await.unwrap_err();
    assert_eq!(
        error.agent_code(),
        Some(tonic::Code::InvalidArgument),
        "{error}"
    );
    let chain = std::iter::successors(Some(&error as &dyn std::error::Error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    assert!(chain.contains("harness_config"), "{chain}");
    agent.release("conv-h").await.unwrap();
    assert_eq!(pipeline.claims(), 0);
}

#[tokio::test]
async fn two_conversations_are_isolated_in_two_sandboxes() {
    let pipeline = Pipeline::start(0).await.unwrap();
    let agent = pipeline.backend("").await.unwrap();
    let (a, b) = tokio::join!(
        run(
            &agent,
            "alice",
            "e1",
            planner_call("secret = 'alice-only'\nprint('set')")
        ),
        run(&agent, "bob", "e1", planner_call("print('bob here')"))
    );
    let ((_, a), (_, b)) = (a.unwrap(), b.unwrap());
    assert_ne!(a.sandbox.pod_ip, b.sandbox.pod_ip);
    let (text, _) = run(&agent, "bob", "e2", planner_call("print(secret)"))
        .await
        .unwrap();
    assert!(
        text.contains("NameError"),
        "bob must not see alice's variables: {text}"
    );
    assert_eq!(pipeline.claims(), 2);
    agent.close().await.unwrap();
}

#[tokio::test]
async fn a_warm_pool_hit_adopts_a_ready_agent_and_an_empty_pool_starts_cold() {
    let warm = Pipeline::start(1).await.unwrap();
    let agent = warm.backend("").await.unwrap();
    let (_, report) = run(&agent, "conv", "e1", planner_call("1")).await.unwrap();
    assert!(
        report
            .sandbox
            .sandbox_name
            .starts_with("python-sandbox-pool-"),
        "{}",
        report.sandbox.sandbox_name
    );
    agent.close().await.unwrap();

    let cold = Pipeline::start(0).await.unwrap();
    let agent = cold.backend("").await.unwrap();
    let (_, report) = run(&agent, "conv", "e1", planner_call("1")).await.unwrap();
    assert_eq!(
        report.sandbox.sandbox_name, report.sandbox.claim_name,
        "a cold sandbox is named after its claim"
    );
    agent.close().await.unwrap();
}

#[tokio::test]
async fn a_sandbox_killed_between_executions_is_re_resolved_and_the_call_retried() {
    let pipeline = Pipeline::start(0).await.unwrap();
    let agent = pipeline.backend("").await.unwrap();
    let (_, first) = run(&agent, "conv", "e1", planner_call("x = 1"))
        .await
        .unwrap();

    pipeline
        .cluster
        .replace_pod(&first.sandbox.sandbox_name)
        .await
        .unwrap();

    let (text, second) = run(
        &agent,
        "conv",
        "e2",
        planner_call("print('after the crash')"),
    )
    .await
    .unwrap();
    assert!(text.contains("after the crash"), "{text}");
    assert!(second.re_resolved);
    assert_ne!(first.sandbox.pod_ip, second.sandbox.pod_ip);
    agent.close().await.unwrap();
}

#[tokio::test]
async fn a_sandbox_killed_during_an_execution_is_a_clear_error_and_not_retried() {
    let pipeline = Pipeline::start(0).await.unwrap();
    let agent = pipeline.backend("").await.unwrap();
    let (_, first) = run(&agent, "conv", "e1", planner_call("print('warm')"))
        .await
        .unwrap();
    let pod = first.sandbox.pod_name.clone();

    let slow = planner_call(
        "import sys, time\nprint('started', flush=True)\ntime.sleep(30)\nprint('never')",
    );
    let mut seen = Vec::new();
    let (first_output, mut output_started) = tokio::sync::mpsc::unbounded_channel();
    let crash = async {
        // Crash the pod once the execution has produced output.
        output_started.recv().await;
        assert!(pipeline.runtime.crash(&pod).await);
    };
    let on_output = |batch: Vec<Message>| {
        let _ = first_output.send(());
        seen.extend(batch);
    };
    let (result, ()) = tokio::join!(agent.connect("conv", "e2", slow, on_output), crash);
    let error = result.unwrap_err();
    assert!(
        matches!(error, SandboxAgentError::Stream { outputs, .. } if outputs >= 1),
        "{error:?}"
    );
    assert!(content::planner_view(&seen).contains("started"));
    assert_eq!(
        pipeline.runtime.started(),
        1,
        "nothing was retried in a new sandbox"
    );
    agent.close().await.unwrap();
}

#[tokio::test]
async fn a_restarted_controller_adopts_the_live_claim_and_keeps_the_state() {
    let pipeline = Pipeline::start(0).await.unwrap();
    let before = pipeline.backend("").await.unwrap();
    run(&before, "conv", "e1", planner_call("counter = 41"))
        .await
        .unwrap();
    drop(before);

    let after = pipeline.backend("").await.unwrap();
    let (text, _) = run(&after, "conv", "e2", planner_call("counter + 1"))
        .await
        .unwrap();
    assert!(text.contains("42"), "{text}");
    assert_eq!(pipeline.runtime.started(), 1);
    assert_eq!(pipeline.claims(), 1);
    after.close().await.unwrap();
}

#[tokio::test]
async fn an_idle_conversations_claim_expires_with_its_ttl_and_its_agent_is_stopped() {
    let pipeline = Pipeline::start(0).await.unwrap();
    // Long enough for a cold start on a busy machine (a container, on the Docker runtime),
    // short enough to watch it run out.
    let agent = pipeline.backend("      ttl: 8s\n").await.unwrap();
    let (_, first) = run(&agent, "conv", "e1", planner_call("x = 1"))
        .await
        .unwrap();
    assert_eq!(pipeline.claims(), 1);
    pipeline
        .wait_until(Duration::from_secs(30), |p| {
            p.claims() == 0 && p.runtime.running() == 0
        })
        .await
        .expect("the controller deletes the expired claim and its pod");

    // The conversation goes on in a new sandbox; the old state is gone.
    let (text, report) = run(&agent, "conv", "e2", planner_call("print(x)"))
        .await
        .unwrap();
    assert!(report.re_resolved, "the stale endpoint was noticed");
    assert_ne!(report.sandbox.pod_ip, first.sandbox.pod_ip, "a new sandbox");
    assert!(text.contains("NameError"), "{text}");
    agent.close().await.unwrap();
}

#[tokio::test]
async fn release_and_close_leave_no_claims_and_no_agent_processes() {
    let pipeline = Pipeline::start(0).await.unwrap();
    let agent = pipeline.backend("").await.unwrap();
    for conversation in ["a", "b", "c"] {
        run(&agent, conversation, "e1", planner_call("print(1)"))
            .await
            .unwrap();
    }
    assert_eq!(pipeline.runtime.running(), 3);
    agent.release("a").await.unwrap();
    agent.close().await.unwrap();
    pipeline
        .wait_until(Duration::from_secs(10), |p| {
            p.claims() == 0 && p.sandboxes() == 0 && p.runtime.running() == 0
        })
        .await
        .expect("nothing left behind");
}

#[tokio::test]
async fn a_hundred_conversations_under_api_faults_leak_nothing() {
    let pipeline = Pipeline::start_with(FakeClusterOptions::default(), 2)
        .await
        .unwrap();
    let server = pipeline.cluster.server();
    // Transient API trouble on the claim path: 5xx on creates and deletes,
    // expired resource versions and dropped watches while waiting. A conversation
    // that creates or releases while the others are busy can meet every 5xx in a
    // row, so there are as many as the retry policy absorbs in a row, no more.
    let in_a_row = RetryPolicy::default().max_attempts - 1;
    server.inject(
        Fault::status(503, "ServiceUnavailable")
            .verb(Verb::Create)
            .resource("sandboxclaims")
            .times(in_a_row),
    );
    server.inject(
        Fault::status(500, "InternalError")
            .verb(Verb::Delete)
            .resource("sandboxclaims")
            .times(in_a_row),
    );
    server.inject(
        Fault::expire_resource_version()
            .verb(Verb::Watch)
            .resource("sandboxclaims")
            .times(10),
    );
    server.inject(
        Fault::drop_watch(1)
            .verb(Verb::Watch)
            .resource("sandboxclaims")
            .times(10),
    );

    let agent = pipeline.backend("").await.unwrap();
    let conversations: Vec<String> = (0..100).map(|i| format!("conversation-{i:03}")).collect();
    let mut failures = Vec::new();
    for chunk in conversations.chunks(8) {
        let runs = chunk.iter().map(|c| {
            let agent = agent.clone();
            async move {
                let result = run(&agent, c, "e1", planner_call("print(2 + 2)")).await;
                let released = agent.release(c).await;
                (c.clone(), result, released)
            }
        });
        for (conversation, result, released) in futures::future::join_all(runs).await {
            match result {
                Ok((text, _)) => assert!(text.contains('4'), "{conversation}: {text}"),
                Err(error) => failures.push(format!("{conversation}: {error}")),
            }
            released.unwrap_or_else(|e| panic!("{conversation}: release failed: {e}: {e:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "transient faults must be absorbed: {failures:?}"
    );
    // The faults really fired, and were retried or recovered from.
    let requests = server.requests();
    let retried = 100 + u64::from(in_a_row);
    assert!(
        requests.count(Verb::Create, "sandboxclaims") >= retried,
        "{requests:?}"
    );
    assert!(
        requests.count(Verb::Delete, "sandboxclaims") >= retried,
        "{requests:?}"
    );
    // The backend's one shared watch is re-opened after each of the 20 watch faults.
    assert!(
        requests.count(Verb::Watch, "sandboxclaims") >= 20,
        "{requests:?}"
    );
    pipeline
        .wait_until(Duration::from_secs(20), |p| {
            p.claims() == 0 && p.runtime.running() <= 2
        })
        .await
        .unwrap_or_else(|()| {
            panic!(
                "leaked: {} claims, {} agent processes",
                pipeline.claims(),
                pipeline.runtime.running()
            )
        });
    assert!(pipeline.runtime.started() >= 100);
}

#[tokio::test]
async fn a_conversation_through_port_forward_keeps_its_state_and_tunnel_and_release_closes_it() {
    let pipeline = Pipeline::start(1).await.unwrap();
    let agent = pipeline
        .backend("      connection: port-forward\n")
        .await
        .unwrap();
    let server = pipeline.cluster.server();
    server.reset_requests();

    let (_, first) = run(
        &agent,
        "conv-pf",
        "e1",
        planner_call("counter = 40\ncounter += 1"),
    )
    .await
    .unwrap();
    let (text, second) = run(
        &agent,
        "conv-pf",
        "e2",
        planner_call("counter += 1\nprint('counter is', counter)"),
    )
    .await
    .unwrap();
    assert!(text.contains("counter is 42"), "state is kept: {text}");
    assert_eq!(first.sandbox, second.sandbox);
    let agent_sandbox_backend::Reached::PortForward { local } = first.reached else {
        panic!("the first execution went {:?}", first.reached);
    };
    assert_eq!(first.reached.mode(), "port-forward");
    assert_eq!(second.reached, first.reached, "the tunnel is reused");
    assert!(local.ip().is_loopback(), "{local}");
    assert_eq!(first.endpoint, format!("http://{local}"));
    // One gRPC connection carries both executions: the tunnel opened one port-forward
    // (two at most, should the client have reconnected between them).
    let forwards = server.requests().count(Verb::Get, "pods/portforward");
    assert!((1..=2).contains(&forwards), "{forwards} port-forwards");
    eprintln!(
        "port-forward: {forwards} port-forward request(s) for two executions; first output after {:?}",
        first.first_output
    );

    agent.release("conv-pf").await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(local).await.is_err(),
        "the tunnel's listener at {local} stops accepting on release"
    );
    agent.close().await.unwrap();
}

#[tokio::test]
async fn a_port_forward_the_api_server_refuses_names_the_port_forward_step() {
    let pipeline = Pipeline::start(1).await.unwrap();
    let agent = pipeline
        .backend("      connection: port-forward\n")
        .await
        .unwrap();
    // Every port-forward fails, as when RBAC lacks `pods/portforward`.
    pipeline
        .cluster
        .server()
        .inject(Fault::status(403, "Forbidden").resource("pods/portforward"));
    let error = run(&agent, "conv-pf-403", "e1", planner_call("1 + 1"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, SandboxAgentError::PortForward { .. }),
        "{error:?}"
    );
    agent.close().await.unwrap();
}

#[tokio::test]
async fn the_pod_network_probe_finds_reachable_pods_and_says_why_others_are_not() {
    let pipeline = Pipeline::start(1).await.unwrap();
    let client = pipeline.cluster.client();
    // The controller writes the pool member's Pod just after its runtime reports it started.
    let mut reached = pipeline::reach::probe_pod_network(&client, pipeline::NAMESPACE).await;
    for _ in 0..100 {
        if reached.reachable {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        reached = pipeline::reach::probe_pod_network(&client, pipeline::NAMESPACE).await;
    }
    assert!(reached.reachable, "{reached:?}");

    // A pod at an address nothing answers on (TEST-NET-1), alone in its namespace.
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), "elsewhere");
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "far", "namespace": "elsewhere"},
        "spec": {"containers": [{"name": "agent", "image": "i"}]},
    }))
    .unwrap();
    pods.create(&kube::api::PostParams::default(), &pod)
        .await
        .unwrap();
    let status = serde_json::json!({"status": {"podIP": "192.0.2.1", "phase": "Running"}});
    pods.patch_status(
        "far",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&status),
    )
    .await
    .unwrap();
    let far = pipeline::reach::probe_pod_network(&client, "elsewhere").await;
    assert!(!far.reachable);
    assert!(far.why.contains("192.0.2.1:8494"), "{far:?}");
    let empty = pipeline::reach::probe_pod_network(&client, "nobody-here").await;
    assert!(!empty.reachable);
    assert!(empty.why.contains("no pod in nobody-here"), "{empty:?}");
}
