//! One trace per execution across processes: the caller's span (as AX's controller would
//! hold it) → the backend's execution → the agent process's server span → its Python run,
//! all exported over OTLP to an in-process collector, on both AXP protocols. Runs on local
//! agent processes (the spans of containers would need the collector on their network).

use std::{sync::Arc, time::Duration};

use agent_sandbox_backend::{AgentSandboxAgent, Registry, TRACE_CONTEXT_ANNOTATION};
use axp_transport::{content, telemetry::OtlpExport, trace_context};
use pipeline::{
    LocalAgentRuntime, NAMESPACE, Pipeline, Pods, agent_binary,
    otlp::{Collector, one, render_tree},
};
use sandbox_claim::testing::FakeClusterOptions;
use tracing::Instrument as _;
use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// The span of the caller's caller: what AX's planner would send as `traceparent`.
fn remote_parent(trace_id: &str) -> tonic::metadata::MetadataMap {
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert(
        trace_context::TRACEPARENT,
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    metadata
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_execution_is_one_trace_from_the_callers_span_to_the_python_run_on_both_protocols() {
    let collector = Collector::start().await.unwrap();
    let export = OtlpExport::to_endpoint(&collector.endpoint(), "ax-controller").unwrap();
    tracing_subscriber::registry()
        .with(export.layer())
        .try_init()
        .expect("the only subscriber of this test binary");
    let runtime = LocalAgentRuntime::with_binary(agent_binary(), Vec::<String>::new())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint())
        // Export each batch within 50 ms rather than the default 5 s.
        .env("OTEL_BSP_SCHEDULE_DELAY", "50");
    let pipeline = Pipeline::start_with_pods(
        Pods::Local(Arc::new(runtime)),
        FakeClusterOptions::default(),
        2,
    )
    .await
    .unwrap();

    let cases = [
        ("axp", "4bf92f3577b34da6a3ce929d0e0e4736", "axp.connect"),
        (
            "harness",
            "0af7651916cd43dd8448eb211c80319c",
            "harness.connect",
        ),
    ];
    for (protocol, trace_id, server_span) in cases {
        let yaml = pipeline
            .ax_yaml("")
            .replace("protocol: axp", &format!("protocol: {protocol}"));
        let registry = Registry::from_yaml(&yaml).unwrap();
        let backend =
            AgentSandboxAgent::from_config(pipeline.cluster.client(), registry.get("py").unwrap())
                .await
                .unwrap();
        let conversation = format!("traced-{protocol}");
        let caller = tracing::info_span!("ax.turn");
        trace_context::continue_trace(&caller, &remote_parent(trace_id));
        let mut seen = Vec::new();
        backend
            .connect(
                &conversation,
                "e1",
                content::planner_start("print(6 * 7)", ""),
                |batch| seen.extend(batch),
            )
            .instrument(caller)
            .await
            .unwrap();
        assert!(content::planner_view(&seen).contains("42"));

        // The claim records the execution's trace context, as the SDKs do.
        let claim = pipeline
            .cluster
            .server()
            .objects(
                "extensions.agents.x-k8s.io",
                "sandboxclaims",
                Some(NAMESPACE),
            )
            .into_iter()
            .find(|c| {
                c["metadata"]["annotations"][sandbox_claim::labels::CONVERSATION_ID]
                    == conversation.as_str()
            })
            .expect("the conversation's claim");
        let recorded: serde_json::Value = serde_json::from_str(
            claim["metadata"]["annotations"][TRACE_CONTEXT_ANNOTATION]
                .as_str()
                .expect("a trace-context annotation"),
        )
        .unwrap();
        assert!(
            recorded["traceparent"]
                .as_str()
                .is_some_and(|tp| tp.starts_with(&format!("00-{trace_id}-"))),
            "{recorded}"
        );
        // Our spans are sent at once; the agent's within its batch delay.
        let flushing = export.clone();
        tokio::task::spawn_blocking(move || flushing.flush())
            .await
            .unwrap();
        // A bound on waiting (a loaded machine may take a while), not a speed check.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !collector
            .trace(trace_id)
            .iter()
            .any(|s| s.name == "python.run")
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Released only now: the local runtime stops a released sandbox's agent with SIGKILL,
        // which would lose the spans still in its batch (a pod's SIGTERM flushes them).
        backend.release(&conversation).await.unwrap();
        let spans = collector.trace(trace_id);
        println!("{protocol}: trace {trace_id}\n{}", render_tree(&spans));

        let turn = one(&spans, "ax.turn");
        assert_eq!(
            turn.parent_span_id, "00f067aa0ba902b7",
            "the caller's parent"
        );
        let execution = one(&spans, "execution");
        assert_eq!(execution.parent_span_id, turn.span_id);
        assert_eq!(execution.service, "ax-controller");
        assert_eq!(
            execution.attribute("conversation_id"),
            Some(conversation.as_str())
        );
        assert_eq!(execution.attribute("exec_id"), Some("e1"));
        assert_eq!(execution.attribute("outcome"), Some("ok"));
        let acquire = one(&spans, "acquire");
        assert_eq!(acquire.parent_span_id, execution.span_id);
        for step in ["create_claim", "wait_ready"] {
            assert_eq!(one(&spans, step).parent_span_id, acquire.span_id, "{step}");
        }
        let connect = one(&spans, "connect");
        assert_eq!(connect.parent_span_id, execution.span_id);
        assert_eq!(one(&spans, "stream").parent_span_id, execution.span_id);

        // Across the process boundary: the agent's span continues the call's.
        let server = one(&spans, server_span);
        assert_eq!(server.service, "python-sandbox-agent");
        assert_eq!(server.parent_span_id, connect.span_id);
        assert_eq!(
            server.attribute("conversation_id"),
            Some(conversation.as_str())
        );
        assert_eq!(
            one(&spans, "worker.dispatch").parent_span_id,
            server.span_id
        );
        let run = one(&spans, "python.run");
        assert_eq!(run.parent_span_id, server.span_id);
        assert_eq!(run.service, "python-sandbox-agent");
        assert_eq!(
            run.attribute("conversation_id"),
            Some(conversation.as_str())
        );
        assert_eq!(run.attribute("outcome"), Some("completed"));
        assert!(run.attribute("exec_id").is_some_and(|id| !id.is_empty()));
    }
    pipeline.runtime.shutdown().await;
    export.shutdown();
}
