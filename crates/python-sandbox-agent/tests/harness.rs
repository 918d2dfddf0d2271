//! The reference agent over `ax.HarnessService` (upstream AX's protocol), against the real binary: the same Python
//! conversations as on AgentService, with refusals as `end{FAILED}` and cancellation as `end{CANCELED}`.

mod common;

use std::time::{Duration, Instant};

use axp_transport::{
    ClientError, ClientOptions, HarnessClient, content,
    pb::{
        CancelReason, HarnessEnd, HarnessRequest, HarnessResponse, HarnessStart, Message, State,
        harness_request, harness_response, harness_service_client::HarnessServiceClient,
    },
};
use common::*;
use futures::StreamExt as _;
use python_sandbox_agent::output;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;

fn start(text: &str) -> HarnessStart {
    start_with(text, "")
}

fn start_with(text: &str, config: &str) -> HarnessStart {
    HarnessStart {
        harness_config: config.as_bytes().to_vec(),
        messages: vec![content::user_text(text)],
    }
}

/// What one call sent back.
#[derive(Debug)]
struct HarnessRun {
    frames: Vec<HarnessResponse>,
}

impl HarnessRun {
    fn messages(&self) -> Vec<Message> {
        self.frames
            .iter()
            .filter_map(|f| match &f.r#type {
                Some(harness_response::Type::Outputs(o)) => Some(o.messages.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn text(&self) -> String {
        content::planner_view(&self.messages())
    }

    /// The one `end`, which must be the last frame.
    fn end(&self) -> &HarnessEnd {
        let ends: Vec<_> = self
            .frames
            .iter()
            .filter_map(|f| match &f.r#type {
                Some(harness_response::Type::End(end)) => Some(end),
                _ => None,
            })
            .collect();
        assert_eq!(ends.len(), 1, "exactly one end: {:?}", self.frames);
        assert!(
            matches!(
                self.frames.last().and_then(|f| f.r#type.as_ref()),
                Some(harness_response::Type::End(_))
            ),
            "end is last"
        );
        ends[0]
    }

    fn completed(&self) -> &Self {
        assert_eq!(self.end().state(), State::Completed, "{:?}", self.frames);
        self
    }

    /// The code and description of `end{FAILED}`.
    fn failure(&self) -> (Code, String) {
        let end = self.end();
        assert_eq!(end.state(), State::Failed, "{:?}", self.frames);
        let error = end.error.as_ref().expect("FAILED carries an Error");
        (Code::from(error.code), error.description.clone())
    }

    fn call_id(&self) -> String {
        let messages = self.messages();
        messages
            .iter()
            .find_map(|m| match m.content.as_ref()?.r#type.as_ref()? {
                axp_transport::pb::content::Type::ToolResult(result) => {
                    Some(result.call_id.clone())
                }
                _ => None,
            })
            .expect("a structured result")
    }

    fn error_type(&self) -> Option<String> {
        let messages = self.messages();
        let result = output::structured_result(&messages)?;
        match result.fields.get("error_type")?.kind.as_ref()? {
            prost_types::value::Kind::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    }
}

/// Calls as AX's Go harness client does: one `start`, half-close at once, read until the stream ends.
async fn ax_call(url: &str, conversation: &str, start: HarnessStart) -> Result<HarnessRun, Status> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let request = HarnessRequest {
        conversation_id: conversation.into(),
        harness_id: "python".into(),
        r#type: Some(harness_request::Type::Start(start)),
    };
    let mut stream = HarnessServiceClient::new(channel)
        .connect(futures::stream::iter([request]))
        .await?
        .into_inner();
    let mut frames = Vec::new();
    while let Some(frame) = within(Duration::from_secs(30), stream.message()).await? {
        assert_eq!(
            frame.conversation_id, conversation,
            "conversation id echoed"
        );
        assert!(frame.r#type.is_some(), "oneof set");
        frames.push(frame);
    }
    Ok(HarnessRun { frames })
}

async fn turn(url: &str, conversation: &str, code: &str) -> HarnessRun {
    let run = ax_call(url, conversation, start(code))
        .await
        .expect("the call opens");
    run.completed();
    run
}

fn harness(url: &str) -> HarnessClient {
    HarnessClient::new(url, ClientOptions::default()).unwrap()
}

#[tokio::test]
async fn a_harness_conversation_keeps_python_state_across_turns_and_each_turn_ends_completed() {
    let agent = agent(&[]).await;
    let url = agent.url();
    let first = turn(
        &url,
        "c1",
        &content::planner_envelope("user: compute", "x = 6 * 7\nprint('set')"),
    )
    .await;
    assert_eq!(first.text(), "set", "the planner envelope is stripped");
    let second = turn(&url, "c1", "print(x)").await;
    assert_eq!(second.text(), "42");
    assert_eq!(second.end().error, None);
    // No exec id travels on this wire; the server made one per start for the agent's bookkeeping.
    assert!(!first.call_id().is_empty());
    assert_ne!(first.call_id(), second.call_id());
}

#[tokio::test]
async fn one_conversation_can_be_driven_over_both_protocols_by_the_same_agent() {
    let agent = agent(&[]).await;
    let mut axp = client(&agent).await;
    run(&mut axp, "shared", "y = 'from AgentService'").await;
    let run = turn(&agent.url(), "shared", "print(y)").await;
    assert_eq!(run.text(), "from AgentService");
}

#[tokio::test]
async fn a_python_exception_is_a_completed_execution_whose_text_shows_the_traceback() {
    let agent = agent(&[]).await;
    let run = turn(&agent.url(), "c1", "print('before')\n1/0").await;
    let text = run.text();
    assert!(
        text.starts_with("before\nTraceback (most recent call last):"),
        "{text}"
    );
    assert!(
        text.contains("ZeroDivisionError: division by zero"),
        "{text}"
    );
    assert_eq!(run.error_type().as_deref(), Some("ZeroDivisionError"));
}

#[tokio::test]
async fn a_dying_interpreter_says_so_in_the_outputs_and_ends_failed_with_internal() {
    let agent = agent(&[]).await;
    let run = ax_call(&agent.url(), "c1", start("import os\nos._exit(3)"))
        .await
        .unwrap();
    assert_eq!(run.error_type().as_deref(), Some("WorkerDied"));
    assert!(run.text().contains("exit status 3"), "{}", run.text());
    let (code, description) = run.failure();
    assert_eq!(code, Code::Internal);
    assert!(description.contains("exit status 3"), "{description}");
    assert_eq!(turn(&agent.url(), "c1", "print(1)").await.text(), "1");
}

#[tokio::test]
async fn harness_config_carries_the_same_options_as_agent_config() {
    let agent = agent(&[]).await;
    let url = agent.url();
    let started = Instant::now();
    let slow = ax_call(
        &url,
        "c1",
        start_with("import time\ntime.sleep(5)", r#"{"timeout_secs": 0.5}"#),
    )
    .await
    .unwrap();
    let (code, description) = slow.failure();
    assert_eq!(
        code,
        Code::DeadlineExceeded,
        "a timeout is an agent-side failure"
    );
    assert!(description.contains("0.5 s timeout"), "{description}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(slow.error_type().as_deref(), Some("TimeoutError"));

    turn(&url, "c1", "kept = 1").await;
    let reset = ax_call(
        &url,
        "c1",
        start_with("'kept' in globals()", r#"{"reset": true}"#),
    )
    .await
    .unwrap();
    reset.completed();
    assert_eq!(reset.text(), "False");
}

#[tokio::test]
async fn bad_harness_config_ends_failed_with_invalid_argument_naming_the_field() {
    let agent = agent(&[]).await;
    let cases = [
        ("{nope", "harness_config is not valid"),
        (r#"{"timeout": 3}"#, "unknown field"),
        (r#"{"timeout_secs": -1}"#, "harness_config.timeout_secs"),
        (
            r#"{"output_limit_bytes": 999999999999}"#,
            "harness_config.output_limit_bytes",
        ),
    ];
    for (config, needle) in cases {
        let run = ax_call(&agent.url(), "c1", start_with("print(1)", config))
            .await
            .expect("answered in band");
        let (code, description) = run.failure();
        assert_eq!(code, Code::InvalidArgument, "{config}: {description}");
        assert!(description.contains(needle), "{config}: {description}");
        assert!(description.contains("harness_config"), "{description}");
    }
    // The agent is still fine.
    assert_eq!(turn(&agent.url(), "c1", "print(2)").await.text(), "2");
}

#[tokio::test]
async fn requests_without_code_or_conversation_end_failed_with_invalid_argument() {
    let agent = agent(&[]).await;
    let no_code = ax_call(&agent.url(), "c1", HarnessStart::default())
        .await
        .unwrap();
    let (code, description) = no_code.failure();
    assert_eq!(code, Code::InvalidArgument);
    assert!(description.contains("no code"), "{description}");

    let no_conversation = ax_call(&agent.url(), "", start("print(1)")).await.unwrap();
    let (code, description) = no_conversation.failure();
    assert_eq!(code, Code::InvalidArgument);
    assert!(
        description.contains("HarnessRequest.conversation_id"),
        "{description}"
    );
}

#[tokio::test]
async fn a_cancel_frame_interrupts_running_python_and_ends_canceled_within_a_second() {
    let agent = agent(&[]).await;
    let client = harness(&agent.url());
    let mut outputs = client
        .connect(
            "c1",
            "python",
            start("import time\nx = 1\nprint('started', flush=True)\ntime.sleep(30)\nx = 2"),
        )
        .await
        .unwrap();
    let first = within(Duration::from_secs(10), outputs.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(content::planner_view(&first), "started");

    let asked = Instant::now();
    assert!(outputs.cancel(CancelReason::UserRequested));
    let ended = loop {
        match within(Duration::from_secs(5), outputs.next()).await {
            Some(Ok(_)) => continue,
            Some(Err(error)) => break error,
            None => panic!("the stream must not end COMPLETED"),
        }
    };
    let took = asked.elapsed();
    assert!(matches!(ended, ClientError::Canceled), "{ended:?}");
    assert!(took < Duration::from_secs(1), "CANCELED after {took:?}");

    // The cell was interrupted in its sleep: the line after it never ran, and the namespace is kept.
    let after = turn(&agent.url(), "c1", "print(x)").await;
    assert_eq!(after.text(), "1");
}

#[tokio::test]
async fn cancelling_the_stream_interrupts_running_python_and_frees_the_conversation() {
    let agent = agent(&[]).await;
    let client = harness(&agent.url());
    let mut outputs = client
        .connect(
            "c1",
            "python",
            start("import time\nx = 1\nprint('started', flush=True)\ntime.sleep(30)\nx = 2"),
        )
        .await
        .unwrap();
    within(Duration::from_secs(10), outputs.next())
        .await
        .unwrap()
        .unwrap();
    drop(outputs);
    let dropped = Instant::now();
    let after = loop {
        let run = ax_call(&agent.url(), "c1", start("print(x)"))
            .await
            .unwrap();
        if run.end().state() == State::Completed {
            break run;
        }
        let (code, _) = run.failure();
        assert_eq!(code, Code::FailedPrecondition, "only a still-running cell");
        assert!(
            dropped.elapsed() < Duration::from_secs(2),
            "the cell must stop soon after the stream is cancelled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(after.text(), "1");
}

#[tokio::test]
async fn a_pinned_agent_ends_another_conversation_failed_with_permission_denied() {
    let agent = agent(&[]).await;
    turn(&agent.url(), "owner", "print(1)").await;
    let other = ax_call(&agent.url(), "intruder", start("print(2)"))
        .await
        .unwrap();
    let (code, description) = other.failure();
    assert_eq!(code, Code::PermissionDenied);
    assert_eq!(other.end().error.as_ref().unwrap().code, 7);
    assert!(description.contains("pinned"), "{description}");
}

#[tokio::test]
async fn a_second_call_while_the_conversation_runs_ends_failed_with_failed_precondition() {
    let agent = agent(&[]).await;
    let client = harness(&agent.url());
    let mut slow = client
        .connect(
            "c1",
            "python",
            start("import time\nprint('go', flush=True)\ntime.sleep(2)"),
        )
        .await
        .unwrap();
    within(Duration::from_secs(10), slow.next())
        .await
        .unwrap()
        .unwrap();
    let second = ax_call(&agent.url(), "c1", start("print(2)"))
        .await
        .unwrap();
    let (code, _) = second.failure();
    assert_eq!(code, Code::FailedPrecondition);
    assert_eq!(second.end().error.as_ref().unwrap().code, 9);
    // The first call is unaffected.
    while let Some(batch) = within(Duration::from_secs(10), slow.next()).await {
        batch.unwrap();
    }
    assert_eq!(slow.end_state(), Some(State::Completed));
}

#[tokio::test]
async fn health_for_the_empty_service_turns_serving_only_once_the_worker_is_up() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let _child = tokio::process::Command::new(BINARY)
        .args(["--listen", &addr.to_string(), "--startup-delay-ms", "1500"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://{addr}");
    let client = harness(&url);
    // Wait for the port, then ask while Python is still starting.
    let started = Instant::now();
    let before = loop {
        match client.serving_status().await {
            Ok(status) => break status,
            Err(error) if started.elapsed() < Duration::from_secs(5) => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("{error}"),
        }
    };
    assert_eq!(before, ServingStatus::NotServing);
    let early = ax_call(&url, "c1", start("print(1)")).await.unwrap();
    let (code, _) = early.failure();
    assert_eq!(code, Code::Unavailable, "no work before the worker is up");

    client
        .wait_until_serving(Default::default())
        .await
        .expect("SERVING once the worker is up");
    assert_eq!(
        client.serving_status().await.unwrap(),
        ServingStatus::Serving
    );
    let messages = client
        .run("c1", "python", start("print(6 * 7)"))
        .await
        .unwrap();
    assert_eq!(content::planner_view(&messages).lines().next(), Some("42"));
}
