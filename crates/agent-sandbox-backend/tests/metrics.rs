//! The backend's metrics as a host controller serves them: registered in a Prometheus
//! registry, scraped over real HTTP after a few executions against the fake cluster.

mod support;

use std::{sync::Arc, time::Duration};

use agent_sandbox_backend::{AgentSandboxAgent, BackendMetrics, SandboxAgentOptions};
use sandbox_claim::testing::{Fault, Verb};
use support::{Behaviour, options, run, setup};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// `GET /metrics` over a plain TCP connection; the body.
async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    body.to_owned()
}

/// The value of one series (`name{labels}` exactly as exposed); 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn a_scrape_after_a_few_executions_counts_paths_retries_re_resolves_and_releases() {
    let setup = setup(Behaviour::Count, 1).await;
    for _ in 0..250 {
        if setup.runtime.running() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = BackendMetrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axp_transport::metrics_http::serve(
        listener,
        Arc::new(registry),
        std::future::pending(),
    ));
    let backend_options = || SandboxAgentOptions {
        metrics: metrics.clone(),
        ..options(&setup.cluster)
    };

    // A warm claim whose create met one server error, then a reuse.
    setup.cluster.server().inject(
        Fault::status(500, "InternalError")
            .verb(Verb::Create)
            .resource("sandboxclaims")
            .times(1),
    );
    let first = AgentSandboxAgent::new(setup.cluster.client(), backend_options())
        .await
        .unwrap();
    run(&first, "conv-a", "e1").await.unwrap();
    run(&first, "conv-a", "e2").await.unwrap();
    assert_eq!(
        value(
            &scrape(addr).await,
            "agent_sandbox_backend_active_conversations"
        ),
        1.0
    );
    drop(first); // a controller restart: nothing released

    // The restarted controller adopts the claim; then its pod is replaced under it.
    let restarted = AgentSandboxAgent::new(setup.cluster.client(), backend_options())
        .await
        .unwrap();
    let report = restarted
        .connect("conv-a", "e3", support::start(), |_| {})
        .await
        .unwrap();
    setup
        .cluster
        .replace_pod(&report.sandbox.sandbox_name)
        .await
        .unwrap();
    let report = restarted
        .connect("conv-a", "e4", support::start(), |_| {})
        .await
        .unwrap();
    assert!(report.re_resolved);
    restarted.release("conv-a").await.unwrap();

    let text = scrape(addr).await;
    let series = |name: &str| value(&text, &format!("agent_sandbox_backend_{name}"));
    assert_eq!(
        series(r#"claim_acquire_seconds_count{path="warm",outcome="ok"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        series(r#"claim_acquire_seconds_count{path="adopt",outcome="ok"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(series("ready_wait_seconds_count"), 2.0, "{text}");
    assert_eq!(
        series(r#"api_retries_total{kind="server_error"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(series(r#"re_resolves_total{outcome="ok"}"#), 1.0, "{text}");
    assert_eq!(series(r#"executions_total{outcome="ok"}"#), 4.0, "{text}");
    assert_eq!(series("execution_duration_seconds_count"), 4.0, "{text}");
    assert_eq!(
        series(r#"claims_released_total{reason="released"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(series("active_conversations"), 0.0, "{text}");
    // The unit is in the name and the help, as Prometheus conventions ask.
    assert!(
        text.contains("# UNIT agent_sandbox_backend_claim_acquire_seconds seconds"),
        "{text}"
    );
}
