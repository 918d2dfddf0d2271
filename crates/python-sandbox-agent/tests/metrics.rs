//! The agent's Prometheus endpoint (`--metrics-listen`), scraped over real HTTP after executions that complete,
//! raise, time out, overflow the output limit, kill their worker, or are refused.

mod common;

use common::{agent, call, client, prompt, prompt_with, request, run};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;

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
    body.to_owned()
}

/// The value of one series (`name{labels}` as exposed); 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn the_metrics_endpoint_counts_each_kind_of_execution_end() {
    let agent = agent(&["--metrics-listen", "127.0.0.1:0"]).await;
    let metrics = agent
        .metrics_addr()
        .expect("the agent printed its metrics address");
    let mut client = client(&agent).await;

    run(&mut client, "c", "import os\nos._exit(3)").await;
    run(&mut client, "c", "print(1)").await;
    run(&mut client, "c", "1/0").await;
    call(
        &mut client,
        request(
            "c",
            "t",
            prompt_with("import time\ntime.sleep(30)", r#"{"timeout_secs": 0.5}"#),
        ),
    )
    .await
    .unwrap();
    call(
        &mut client,
        request(
            "c",
            "big",
            prompt_with("print('x' * 5000)", r#"{"output_limit_bytes": 100}"#),
        ),
    )
    .await
    .unwrap();
    let refused = call(&mut client, request("other", "x", prompt("print(2)"))).await;
    assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);

    let text = scrape(metrics).await;
    let series = |name: &str| value(&text, &format!("python_sandbox_agent_{name}"));
    let executions = |outcome: &str| {
        series(&format!(
            r#"executions_total{{protocol="ax.AgentService",outcome="{outcome}"}}"#
        ))
    };
    assert_eq!(executions("completed"), 2.0, "{text}");
    assert_eq!(executions("exception"), 1.0, "{text}");
    assert_eq!(executions("timeout"), 1.0, "{text}");
    assert_eq!(executions("worker_died"), 1.0, "{text}");
    assert_eq!(executions("refused"), 1.0, "{text}");
    assert_eq!(series("execution_duration_seconds_count"), 5.0, "{text}");
    assert_eq!(series("first_output_seconds_count"), 5.0, "{text}");
    assert_eq!(
        series(r#"worker_restarts_total{cause="died_running"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        series(r#"timeouts_total{action="interrupted"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        series(r#"output_truncations_total{stream="stdout"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        series(r#"output_truncations_total{stream="stderr"}"#),
        0.0,
        "{text}"
    );
    assert_eq!(series("live_conversations"), 1.0, "{text}");
    let rss = series("worker_resident_memory_bytes");
    assert!(
        rss > f64::from(1 << 20),
        "a live worker has resident memory: {rss}\n{text}"
    );
}
