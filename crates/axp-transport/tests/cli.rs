//! The `axp` binary against our server: both protocols for `call`, and `health` on grpc.health.v1.

mod support;

use std::time::Duration;

use axp_transport::{AgentError, Protocol, ServerOptions};
use support::{Script, serve, serve_agent_with, texts};

const AXP: &str = env!("CARGO_BIN_EXE_axp");

async fn axp(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(AXP)
        .args(args)
        .output()
        .await
        .expect("axp runs")
}

#[tokio::test]
async fn call_speaks_agent_service_by_default_and_harness_service_on_request() {
    let served = serve(
        Script::Batches(vec![texts(&["hello"])], Duration::ZERO),
        ServerOptions::default(),
    )
    .await;
    let addr = served.addr.to_string();
    let default = axp(&["call", &addr, "print(1)"]).await;
    assert!(default.status.success(), "{default:?}");
    let harness = axp(&[
        "call",
        &addr,
        "--protocol",
        "harness",
        "--agent-id",
        "py",
        "--config",
        r#"{"timeout_secs": 2}"#,
        "print(2)",
    ])
    .await;
    assert!(harness.status.success(), "{harness:?}");
    assert_eq!(String::from_utf8_lossy(&harness.stdout), "hello\n");
    assert_eq!(
        *served.record.protocols.lock().unwrap(),
        [Protocol::AgentService, Protocol::HarnessService]
    );
    let starts = served.record.starts.lock().unwrap();
    assert_eq!(starts[1].2.agent_id, "py");
    assert_eq!(starts[1].2.agent_config, br#"{"timeout_secs": 2}"#);
}

#[tokio::test]
async fn a_failed_harness_call_exits_non_zero_with_the_code_and_description() {
    let served = serve(
        Script::Refuse(AgentError::FailedPrecondition("busy".into())),
        ServerOptions::default(),
    )
    .await;
    let output = axp(&[
        "call",
        &served.addr.to_string(),
        "--protocol",
        "harness",
        "x",
    ])
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("FailedPrecondition") && stderr.contains("busy"),
        "{stderr}"
    );
}

#[tokio::test]
async fn health_reports_grpc_health_for_the_empty_service() {
    let served = serve_agent_with(
        Script::Batches(vec![], Duration::ZERO),
        ServerOptions::default(),
        false,
    )
    .await;
    let addr = served.addr.to_string();
    let before = axp(&["health", &addr]).await;
    assert!(!before.status.success());
    assert_eq!(String::from_utf8_lossy(&before.stdout), "NOT_SERVING\n");
    served.health.set_serving().await;
    let after = axp(&["health", &addr]).await;
    assert!(after.status.success(), "{after:?}");
    assert_eq!(String::from_utf8_lossy(&after.stdout), "SERVING\n");
}
