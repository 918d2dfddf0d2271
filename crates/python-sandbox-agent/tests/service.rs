//! Service behaviour: pinning, concurrency, auth, health, shutdown, bad input.

mod common;

use std::time::{Duration, Instant};

use axp_transport::pb::{AgentRequest, AgentStart};
use common::*;
use futures::StreamExt as _;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

async fn health_status(url: &str) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .ok()?
        .connect()
        .await
        .ok()?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(response.into_inner().status).ok()
}

fn sigterm(pid: u32) {
    // SAFETY: signalling a child process this test spawned.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
}

#[tokio::test]
async fn a_pinned_agent_refuses_a_second_conversation() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    run(&mut client, "first", "secret = 1").await;
    let refused = call(&mut client, request("second", "e", prompt("print(secret)")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("pinned to another conversation"));
    assert_eq!(run(&mut client, "first", "secret").await.text(), "1");
}

#[tokio::test]
async fn an_unpinned_agent_runs_conversations_concurrently_with_separate_state() {
    let agent = agent(&["--unpinned"]).await;
    let mut a = client(&agent).await;
    let mut b = client(&agent).await;
    run(&mut a, "a", "who = 'a'").await;
    run(&mut b, "b", "who = 'b'").await;
    let started = Instant::now();
    let code = "import time\ntime.sleep(1)\nwho";
    let (ra, rb) = tokio::join!(run(&mut a, "a", code), run(&mut b, "b", code));
    assert!(
        started.elapsed() < Duration::from_millis(1800),
        "ran one after the other: {:?}",
        started.elapsed()
    );
    assert_eq!((ra.text(), rb.text()), ("'a'".to_owned(), "'b'".to_owned()));
}

#[tokio::test]
async fn a_second_concurrent_call_for_one_conversation_fails_its_precondition() {
    let agent = agent(&[]).await;
    let mut a = client(&agent).await;
    let mut b = client(&agent).await;
    let mut slow = a
        .connect(request(
            "c",
            "e1",
            prompt("import time\nprint('go', flush=True)\ntime.sleep(1)"),
        ))
        .await
        .unwrap()
        .into_inner();
    slow.next().await.unwrap().unwrap();
    let second = call(&mut b, request("c", "e2", prompt("print(1)")))
        .await
        .unwrap_err();
    assert_eq!(second.code(), Code::FailedPrecondition, "{second:?}");
    while slow.next().await.is_some() {}
    assert_eq!(run(&mut b, "c", "print(1)").await.text(), "1");
}

#[tokio::test]
async fn a_cancelled_call_stops_its_cell_and_frees_the_conversation() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    let mut stream = client
        .connect(request(
            "c",
            "e1",
            prompt("import time\nprint('go', flush=True)\ntime.sleep(100)"),
        ))
        .await
        .unwrap()
        .into_inner();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    let started = Instant::now();
    loop {
        match call(&mut client, request("c", "e2", prompt("print(2)"))).await {
            Ok(run) => {
                assert_eq!(run.text(), "2");
                break;
            }
            Err(status)
                if status.code() == Code::FailedPrecondition
                    && started.elapsed() < Duration::from_secs(3) =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
}

#[tokio::test]
async fn the_bearer_token_guards_agent_service_but_not_health() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let agent = agent_with_env(
        &["--token-file", token_file.to_str().unwrap()],
        &[("AXP_TOKEN", "env-token")],
    )
    .await;
    let mut client = client(&agent).await;
    let missing = call(&mut client, request("c", "e", prompt("print(1)")))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    let mut wrong = tonic::Request::new(request("c", "e", prompt("print(1)")));
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(
        client.connect(wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut right = tonic::Request::new(request(
        "c",
        "e",
        prompt("import os\nprint(os.environ.get('AXP_TOKEN'), os.environ.get('AXP_TOKEN_FILE'))"),
    ));
    right
        .metadata_mut()
        .insert("authorization", "Bearer s3cret-token".parse().unwrap());
    let mut stream = client.connect(right).await.unwrap().into_inner();
    let mut frames = Vec::new();
    while let Some(frame) = stream.next().await {
        frames.push(frame.unwrap());
    }
    let run = Run { frames };
    // The worker never sees the token, so user code cannot read it.
    assert_eq!(run.text(), "None None");
    assert_eq!(
        health_status(&agent.url()).await,
        Some(ServingStatus::Serving)
    );
}

#[tokio::test]
async fn health_is_serving_only_while_the_worker_is_up_and_until_shutdown() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let mut child = tokio::process::Command::new(BINARY)
        .args([
            "--listen",
            &addr.to_string(),
            "--startup-delay-ms",
            "1500",
            "--grace-period-secs",
            "5",
        ])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://{addr}");
    let mut seen = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        let status = health_status(&url).await;
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        if status == Some(ServingStatus::Serving) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen.contains(&Some(ServingStatus::NotServing)), "{seen:?}");
    assert_eq!(seen.last(), Some(&Some(ServingStatus::Serving)), "{seen:?}");

    // While draining, health never says SERVING (the server reports NOT_SERVING and stops taking new streams).
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client =
        axp_transport::pb::agent_service_client::AgentServiceClient::new(channel.clone());
    let mut slow = client
        .connect(request(
            "c",
            "e",
            prompt("import time\nprint('go', flush=True)\ntime.sleep(1)"),
        ))
        .await
        .unwrap()
        .into_inner();
    slow.next().await.unwrap().unwrap();
    sigterm(child.id().unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status);
    assert_ne!(status.ok(), Some(ServingStatus::Serving as i32));
    while slow.next().await.is_some() {}
    let exit = within(Duration::from_secs(10), child.wait()).await.unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn sigterm_lets_running_executions_finish_then_exits_zero() {
    let mut agent = agent(&["--grace-period-secs", "5"]).await;
    let mut client = client(&agent).await;
    let mut slow = client
        .connect(request(
            "c",
            "e1",
            prompt("import time\nprint('go', flush=True)\ntime.sleep(1)\nprint('done')"),
        ))
        .await
        .unwrap()
        .into_inner();
    slow.next().await.unwrap().unwrap();
    sigterm(agent.pid());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New calls are refused while draining (or cannot connect once the listener is closed).
    let mut other = client.clone();
    let refused = call(&mut other, request("c", "e2", prompt("print(1)"))).await;
    assert!(refused.is_err());
    let mut frames = Vec::new();
    while let Some(frame) = slow.next().await {
        frames.push(frame.expect("the running execution finishes normally"));
    }
    let run = Run { frames };
    assert!(run.ends_once());
    assert_eq!(run.text(), "done");
    let exit = within(Duration::from_secs(10), agent.child().wait())
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn executions_still_running_when_the_grace_period_ends_are_cancelled_and_the_agent_exits_zero()
 {
    let mut agent = agent(&["--grace-period-secs", "0.5"]).await;
    let mut client = client(&agent).await;
    let mut slow = client
        .connect(request(
            "c",
            "e1",
            prompt("import time\nprint('go', flush=True)\ntime.sleep(100)"),
        ))
        .await
        .unwrap()
        .into_inner();
    slow.next().await.unwrap().unwrap();
    let started = Instant::now();
    sigterm(agent.pid());
    let mut last = None;
    while let Some(frame) = slow.next().await {
        last = Some(frame);
    }
    assert_eq!(last.unwrap().unwrap_err().code(), Code::Unavailable);
    let exit = within(Duration::from_secs(10), agent.child().wait())
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn malformed_and_oversized_requests_get_clear_errors_and_the_server_stays_up() {
    let agent = agent(&["--max-message-bytes", "1000000"]).await;
    let mut client = client(&agent).await;
    let cases: Vec<(&str, AgentRequest, Code, &str)> = vec![
        (
            "no start",
            AgentRequest {
                conversation_id: "c".into(),
                exec_id: "e".into(),
                start: None,
            },
            Code::InvalidArgument,
            "start",
        ),
        (
            "no conversation",
            request("", "e", prompt("print(1)")),
            Code::InvalidArgument,
            "conversation_id",
        ),
        (
            "no code",
            request("c", "e", AgentStart::default()),
            Code::InvalidArgument,
            "no code",
        ),
        (
            "blank code",
            request("c", "e", prompt("```python\n   \n```")),
            Code::InvalidArgument,
            "no code",
        ),
        (
            "config not JSON",
            request("c", "e", prompt_with("print(1)", "{nope")),
            Code::InvalidArgument,
            "agent_config",
        ),
        (
            "unknown config key",
            request("c", "e", prompt_with("print(1)", r#"{"timeout": 3}"#)),
            Code::InvalidArgument,
            "unknown field",
        ),
        (
            "negative timeout",
            request("c", "e", prompt_with("print(1)", r#"{"timeout_secs": -1}"#)),
            Code::InvalidArgument,
            "timeout_secs",
        ),
        (
            "huge output limit",
            request(
                "c",
                "e",
                prompt_with("print(1)", r#"{"output_limit_bytes": 1e15}"#),
            ),
            Code::InvalidArgument,
            "agent_config",
        ),
    ];
    for (what, req, code, needle) in cases {
        let status = call(&mut client, req).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{what}: {:?}",
            status.message()
        );
    }
    let oversized = call(
        &mut client,
        request(
            "c",
            "e",
            prompt(&format!("x = '{}'", "a".repeat(2_000_000))),
        ),
    )
    .await;
    let status = oversized.expect_err("oversized");
    assert!(
        matches!(
            status.code(),
            Code::ResourceExhausted | Code::OutOfRange | Code::Internal
        ),
        "{status:?}"
    );

    // Junk bytes on the port do not hurt the server.
    {
        use tokio::io::AsyncWriteExt as _;
        let mut junk = tokio::net::TcpStream::connect(agent.addr()).await.unwrap();
        let _ = junk
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\x00garbage")
            .await;
        let _ = junk.write_all(&[0u8; 4096]).await;
    }
    let mut fresh = common::client(&agent).await;
    assert_eq!(run(&mut fresh, "c", "print(6*7)").await.text(), "42");
}

#[tokio::test]
async fn a_worker_that_cannot_start_makes_the_agent_exit_with_a_clear_error() {
    let output = tokio::process::Command::new(BINARY)
        .args(["--listen", "127.0.0.1:0", "--memory-limit-mb", "1"])
        .env("RUST_LOG", "error")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("could not start the Python worker"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_binary_says_which_python_it_runs_and_documents_every_flag() {
    let help = tokio::process::Command::new(BINARY)
        .arg("--help")
        .output()
        .await
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--listen",
        "--timeout-secs",
        "--max-timeout-secs",
        "--output-limit-bytes",
        "--memory-limit-mb",
        "--file-size-limit-mb",
        "--open-files",
        "--block-subprocess",
        "--unpinned",
        "--max-conversations",
        "--token-file",
        "--grace-period-secs",
        "--max-message-bytes",
        "--log-format",
        "LISTEN_ADDR",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    let mut command = tokio::process::Command::new(BINARY);
    command
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "error")
        .stderr(std::process::Stdio::piped());
    let mut agent = python_sandbox_agent::LocalAgent::from_command(command)
        .await
        .unwrap();
    sigterm(agent.pid());
    let mut stderr = agent.child().stderr.take().unwrap();
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text)
        .await
        .unwrap();
    let expected = String::from_utf8(
        std::process::Command::new("python3")
            .args([
                "-c",
                "import sys; print(sys.version.split()[0], sys.prefix)",
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let (version, prefix) = expected.trim().split_once(' ').unwrap();
    assert!(
        text.contains(&format!("running Python {version} (prefix {prefix})")),
        "{text}"
    );
}
