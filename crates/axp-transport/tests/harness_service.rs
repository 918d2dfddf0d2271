//! Loopback gRPC for `ax.HarnessService`: our server (and our HarnessClient)
//! over real TCP, beside AgentService on the same port.

mod support;

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use axp_transport::{
    AgentError, AxpClient, ClientError, ClientOptions, HarnessClient, Protocol, ServerOptions,
    content,
    pb::{
        AgentStart, CancelReason, HarnessCancel, HarnessEnd, HarnessRequest, HarnessResponse,
        HarnessStart, State, harness_request, harness_response,
        harness_service_client::HarnessServiceClient,
    },
};
use futures::StreamExt;
use support::{Script, serve, texts};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Code, Status, Streaming, transport::Channel};

fn harness_start(text: &str) -> HarnessStart {
    HarnessStart {
        harness_config: br#"{"timeout_secs": 5}"#.to_vec(),
        messages: vec![content::user_text(text)],
    }
}

fn start_frame(conversation: &str, start: HarnessStart) -> HarnessRequest {
    HarnessRequest {
        conversation_id: conversation.into(),
        harness_id: "python".into(),
        r#type: Some(harness_request::Type::Start(start)),
    }
}

fn cancel_frame(conversation: &str, reason: CancelReason) -> HarnessRequest {
    HarnessRequest {
        conversation_id: conversation.into(),
        harness_id: "python".into(),
        r#type: Some(harness_request::Type::Cancel(HarnessCancel {
            reason: reason as i32,
        })),
    }
}

async fn raw(url: String) -> HarnessServiceClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    HarnessServiceClient::new(channel)
}

/// Opens a stream whose request side the test keeps open and feeds by hand.
async fn open(
    url: String,
    first: Option<HarnessRequest>,
) -> (
    mpsc::UnboundedSender<HarnessRequest>,
    Result<Streaming<HarnessResponse>, Status>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    if let Some(first) = first {
        tx.send(first).unwrap();
    }
    let response = raw(url)
        .await
        .connect(UnboundedReceiverStream::new(rx))
        .await
        .map(|r| r.into_inner());
    (tx, response)
}

/// Every frame until the stream closes, and the status it closed with, if any.
async fn collect(mut stream: Streaming<HarnessResponse>) -> (Vec<HarnessResponse>, Option<Status>) {
    let mut frames = Vec::new();
    let within = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.message().await {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    });
    let status = within.await.expect("the stream must close");
    (frames, status)
}

fn end_of(frame: &HarnessResponse) -> Option<&HarnessEnd> {
    match &frame.r#type {
        Some(harness_response::Type::End(end)) => Some(end),
        _ => None,
    }
}

/// Asserts the frames close with exactly one `end`, last, and returns it.
fn single_end(frames: &[HarnessResponse]) -> &HarnessEnd {
    let ends = frames.iter().filter(|f| end_of(f).is_some()).count();
    assert_eq!(ends, 1, "exactly one end: {frames:?}");
    end_of(frames.last().unwrap()).expect("end is the last frame")
}

fn failed_code(end: &HarnessEnd) -> Code {
    assert_eq!(end.state(), State::Failed, "{end:?}");
    Code::from(end.error.as_ref().expect("FAILED carries an Error").code)
}

#[tokio::test]
async fn one_agent_on_one_port_answers_both_agent_service_and_harness_service() {
    let served = serve(
        Script::Batches(vec![texts(&["one"]), texts(&["two"])], Duration::ZERO),
        ServerOptions::default(),
    )
    .await;
    let axp = AxpClient::new(&served.url(), ClientOptions::default()).unwrap();
    let harness = HarnessClient::new(&served.url(), ClientOptions::default()).unwrap();

    let via_axp = axp
        .run("conv-a", "exec-a", content::planner_start("print(1)", ""))
        .await
        .unwrap();
    let via_harness = harness
        .run("conv-h", "py-harness", harness_start("print(2)"))
        .await
        .unwrap();
    let again = harness
        .run("conv-h", "py-harness", harness_start("print(3)"))
        .await
        .unwrap();
    assert_eq!(content::planner_view(&via_axp), "one\ntwo");
    assert_eq!(content::planner_view(&via_harness), "one\ntwo");
    assert_eq!(content::planner_view(&again), "one\ntwo");

    assert_eq!(
        *served.record.protocols.lock().unwrap(),
        [
            Protocol::AgentService,
            Protocol::HarnessService,
            Protocol::HarnessService
        ]
    );
    let starts = served.record.starts.lock().unwrap();
    let (conversation, exec_id, start) = &starts[1];
    assert_eq!(conversation, "conv-h");
    assert_eq!(start.agent_id, "py-harness", "harness_id reaches agent_id");
    assert_eq!(
        start.agent_config, br#"{"timeout_secs": 5}"#,
        "harness_config reaches agent_config"
    );
    assert_eq!(content::last_user_text(&start.messages), Some("print(2)"));
    assert!(start.subagent_prompt.is_empty() && start.subagent_history.is_empty());
    assert!(!exec_id.is_empty(), "the server makes an exec id");
    assert_ne!(exec_id, &starts[2].1, "one exec id per start");
}

#[tokio::test]
async fn a_client_that_sends_start_and_half_closes_at_once_gets_every_output_and_one_completed_end()
{
    let served = serve(
        Script::Batches(
            vec![texts(&["a"]), texts(&["b"]), texts(&["c"])],
            Duration::from_millis(30),
        ),
        ServerOptions::default(),
    )
    .await;
    // As AX's Go client does: the request stream ends right after `start`.
    let request = futures::stream::iter([start_frame("Conv-ÄÖ", harness_start("x"))]);
    let stream = raw(served.url())
        .await
        .connect(request)
        .await
        .unwrap()
        .into_inner();
    let (frames, status) = collect(stream).await;
    assert!(status.is_none(), "{status:?}");
    for frame in &frames {
        assert_eq!(frame.conversation_id, "Conv-ÄÖ", "conversation id echoed");
        assert!(frame.r#type.is_some(), "no frame may have its oneof unset");
    }
    let texts: Vec<String> = frames
        .iter()
        .filter_map(|f| match &f.r#type {
            Some(harness_response::Type::Outputs(o)) => Some(content::planner_view(&o.messages)),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["a", "b", "c"]);
    let end = single_end(&frames);
    assert_eq!(end.state(), State::Completed);
    assert_eq!(end.error, None, "COMPLETED carries no error");
}

#[tokio::test]
async fn a_first_request_other_than_start_ends_failed_with_invalid_argument() {
    let served = serve(
        Script::Batches(vec![texts(&["never"])], Duration::ZERO),
        ServerOptions::default(),
    )
    .await;
    let empty = HarnessRequest {
        conversation_id: "c".into(),
        harness_id: String::new(),
        r#type: None,
    };
    for first in [cancel_frame("c", CancelReason::UserRequested), empty] {
        let (_tx, stream) = open(served.url(), Some(first.clone())).await;
        let (frames, status) = collect(stream.unwrap()).await;
        assert!(status.is_none(), "answered in band: {status:?}");
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0].conversation_id, "c");
        let end = single_end(&frames);
        assert_eq!(failed_code(end), Code::InvalidArgument, "{first:?}");
        assert!(
            end.error.as_ref().unwrap().description.contains("start"),
            "{end:?}"
        );
    }
    assert!(
        served.record.starts.lock().unwrap().is_empty(),
        "the agent must not see them"
    );
}

#[tokio::test]
async fn a_second_start_ends_failed_with_invalid_argument_and_cancels_the_execution() {
    let served = serve(
        Script::StopOnCancel(texts(&["running"])),
        ServerOptions::default(),
    )
    .await;
    let (tx, stream) = open(served.url(), Some(start_frame("c", harness_start("x")))).await;
    let mut stream = stream.unwrap();
    let first = stream.message().await.unwrap().unwrap();
    assert!(end_of(&first).is_none(), "{first:?}");
    tx.send(start_frame("c", harness_start("y"))).unwrap();
    let (frames, status) = collect(stream).await;
    assert!(status.is_none(), "{status:?}");
    let end = single_end(&frames);
    assert_eq!(failed_code(end), Code::InvalidArgument);
    assert!(
        end.error.as_ref().unwrap().description.contains("second"),
        "{end:?}"
    );
    assert_eq!(served.record.cancelled.load(Ordering::SeqCst), 1);
    assert_eq!(served.record.starts.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_request_for_another_conversation_on_the_stream_ends_failed_with_invalid_argument() {
    let served = serve(Script::Hang, ServerOptions::default()).await;
    let (tx, stream) = open(served.url(), Some(start_frame("mine", harness_start("x")))).await;
    tx.send(cancel_frame("theirs", CancelReason::UserRequested))
        .unwrap();
    let (frames, _) = collect(stream.unwrap()).await;
    let end = single_end(&frames);
    assert_eq!(failed_code(end), Code::InvalidArgument);
    assert_eq!(frames.last().unwrap().conversation_id, "mine");
}

#[tokio::test]
async fn a_stream_without_any_request_has_no_conversation_to_answer_and_gets_a_status() {
    let served = serve(
        Script::Batches(vec![texts(&["never"])], Duration::ZERO),
        ServerOptions::default(),
    )
    .await;
    let stream = raw(served.url())
        .await
        .connect(futures::stream::empty::<HarnessRequest>())
        .await
        .unwrap()
        .into_inner();
    let (frames, status) = collect(stream).await;
    assert!(frames.is_empty(), "{frames:?}");
    let status = status.expect("the rule: no first request, no `end`, a status");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("start"), "{status:?}");
}

#[tokio::test]
async fn agent_refusals_end_failed_with_the_same_code_agent_service_returns() {
    let refusal = AgentError::PermissionDenied("pinned to conversation a".into());
    let served = serve(Script::Refuse(refusal), ServerOptions::default()).await;
    let axp = AxpClient::new(&served.url(), ClientOptions::default()).unwrap();
    let harness = HarnessClient::new(&served.url(), ClientOptions::default()).unwrap();

    let status = axp
        .connect("b", "e", AgentStart::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Some(Code::PermissionDenied));

    let mut outputs = harness
        .connect("b", "python", harness_start("x"))
        .await
        .unwrap();
    match outputs.next().await {
        Some(Err(ClientError::HarnessFailed { code, description })) => {
            assert_eq!(code, Code::PermissionDenied);
            assert_eq!(description, "pinned to conversation a");
        }
        other => panic!("expected HarnessFailed, got {other:?}"),
    }
    assert!(outputs.next().await.is_none(), "the error is the last item");
    assert_eq!(outputs.end_state(), Some(State::Failed));

    // On the wire: the code number itself.
    let (_tx, stream) = open(served.url(), Some(start_frame("b", harness_start("x")))).await;
    let (frames, _) = collect(stream.unwrap()).await;
    let end = single_end(&frames);
    assert_eq!(
        end.error.as_ref().unwrap().code,
        7,
        "PERMISSION_DENIED is 7"
    );
}

#[tokio::test]
async fn an_agent_error_after_outputs_ends_failed_after_those_outputs() {
    let served = serve(
        Script::FailAfterOne(
            texts(&["partial"]),
            AgentError::Internal("worker died".into()),
        ),
        ServerOptions::default(),
    )
    .await;
    let harness = HarnessClient::new(&served.url(), ClientOptions::default()).unwrap();
    let mut outputs = harness
        .connect("c", "python", harness_start("x"))
        .await
        .unwrap();
    assert_eq!(
        content::planner_view(&outputs.next().await.unwrap().unwrap()),
        "partial"
    );
    let error = outputs.next().await.unwrap().unwrap_err();
    assert!(
        matches!(&error, ClientError::HarnessFailed { code: Code::Internal, description } if description == "worker died"),
        "{error:?}"
    );
    assert_eq!(error.code(), Some(Code::Internal));
}

#[tokio::test]
async fn a_cancel_frame_stops_the_agent_and_ends_canceled_after_its_last_outputs() {
    let served = serve(
        Script::StopOnCancel(texts(&["running"])),
        ServerOptions::default(),
    )
    .await;
    let harness = HarnessClient::new(&served.url(), ClientOptions::default()).unwrap();
    let mut outputs = harness
        .connect("c", "python", harness_start("x"))
        .await
        .unwrap();
    assert_eq!(
        content::planner_view(&outputs.next().await.unwrap().unwrap()),
        "running"
    );
    let asked = Instant::now();
    assert!(outputs.cancel(CancelReason::UserRequested));
    let stopped = outputs.next().await.unwrap().unwrap();
    assert_eq!(
        content::planner_view(&stopped),
        "stopped",
        "what the agent sent while stopping is forwarded"
    );
    let error = outputs.next().await.unwrap().unwrap_err();
    assert!(matches!(error, ClientError::Canceled), "{error:?}");
    assert_eq!(error.code(), Some(Code::Cancelled));
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(outputs.end_state(), Some(State::Canceled));
    assert_eq!(served.record.cancelled.load(Ordering::SeqCst), 1);
    assert!(
        !outputs.cancel(CancelReason::UserRequested),
        "nothing left to cancel"
    );
}

#[tokio::test]
async fn every_cancel_reason_ends_canceled() {
    let served = serve(
        Script::StopOnCancel(texts(&["running"])),
        ServerOptions::default(),
    )
    .await;
    for reason in [
        CancelReason::Unspecified,
        CancelReason::UserRequested,
        CancelReason::Timeout,
        CancelReason::InternalError,
    ] {
        let (tx, stream) = open(served.url(), Some(start_frame("c", harness_start("x")))).await;
        let mut stream = stream.unwrap();
        stream.message().await.unwrap().unwrap();
        tx.send(cancel_frame("c", reason)).unwrap();
        let (frames, status) = collect(stream).await;
        assert!(status.is_none(), "{reason:?}: {status:?}");
        let end = single_end(&frames);
        assert_eq!(end.state(), State::Canceled, "{reason:?}");
        assert_eq!(end.error, None);
    }
}

#[tokio::test]
async fn an_agent_that_ignores_cancel_still_ends_canceled_after_the_cancel_grace() {
    let options = ServerOptions {
        cancel_grace: Duration::from_millis(200),
        ..ServerOptions::default()
    };
    let served = serve(Script::Hang, options).await;
    let (tx, stream) = open(served.url(), Some(start_frame("c", harness_start("x")))).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let asked = Instant::now();
    tx.send(cancel_frame("c", CancelReason::Timeout)).unwrap();
    let (frames, _) = collect(stream.unwrap()).await;
    assert_eq!(single_end(&frames).state(), State::Canceled);
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(1),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_cancel_frame_while_the_agent_is_still_starting_ends_canceled() {
    let served = serve(
        Script::SlowStart(Duration::from_secs(30)),
        ServerOptions::default(),
    )
    .await;
    let (tx, stream) = open(served.url(), Some(start_frame("c", harness_start("x")))).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.send(cancel_frame("c", CancelReason::UserRequested))
        .unwrap();
    let (frames, _) = collect(stream.unwrap()).await;
    assert_eq!(single_end(&frames).state(), State::Canceled);
    assert_eq!(served.record.cancelled.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_cancel_after_end_is_ignored() {
    let served = serve(
        Script::Batches(vec![texts(&["done"])], Duration::ZERO),
        ServerOptions::default(),
    )
    .await;
    let (tx, stream) = open(served.url(), Some(start_frame("c", harness_start("x")))).await;
    let mut stream = stream.unwrap();
    let mut frames = Vec::new();
    while let Some(frame) = stream.message().await.unwrap() {
        let done = end_of(&frame).is_some();
        frames.push(frame);
        if done {
            break;
        }
    }
    assert_eq!(single_end(&frames).state(), State::Completed);
    let _ = tx.send(cancel_frame("c", CancelReason::UserRequested));
    let rest = tokio::time::timeout(Duration::from_secs(2), stream.message())
        .await
        .expect("the stream is over");
    assert!(
        matches!(rest, Ok(None)),
        "no second end, no error: {rest:?}"
    );

    // Our client says so too.
    let harness = HarnessClient::new(&served.url(), ClientOptions::default()).unwrap();
    let mut outputs = harness
        .connect("c", "python", harness_start("x"))
        .await
        .unwrap();
    while let Some(batch) = outputs.next().await {
        batch.unwrap();
    }
    assert_eq!(outputs.end_state(), Some(State::Completed));
    assert!(!outputs.cancel(CancelReason::UserRequested));
}

#[tokio::test]
async fn dropping_the_harness_outputs_cancels_the_execution_within_a_second() {
    let served = serve(Script::Hang, ServerOptions::default()).await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    *served.record.cancelled_tx.lock().unwrap() = Some(tx);
    let harness = HarnessClient::new(&served.url(), ClientOptions::default()).unwrap();
    let outputs = harness
        .connect("c", "python", harness_start("x"))
        .await
        .unwrap();
    // A canceller kept elsewhere must not keep the call alive.
    let canceller = outputs.canceller();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(outputs);
    tokio::time::timeout(Duration::from_secs(1), rx)
        .await
        .expect("the server must cancel the execution within 1 s")
        .unwrap();
    assert!(!canceller.cancel(CancelReason::UserRequested));
}

#[tokio::test]
async fn calls_over_the_execution_limit_end_failed_with_resource_exhausted() {
    let options = ServerOptions {
        max_concurrent_executions: 1,
        ..ServerOptions::default()
    };
    let served = serve(Script::Hang, options).await;
    let harness = HarnessClient::new(&served.url(), ClientOptions::default()).unwrap();
    let axp = AxpClient::new(&served.url(), ClientOptions::default()).unwrap();
    let first = harness
        .connect("c1", "python", harness_start("x"))
        .await
        .unwrap();
    // Wait until the first execution holds the permit.
    for _ in 0..100 {
        if !served.record.starts.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let error = harness
        .run("c2", "python", harness_start("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ClientError::HarnessFailed {
                code: Code::ResourceExhausted,
                ..
            }
        ),
        "{error:?}"
    );
    // The limit is shared across protocols.
    let error = axp
        .connect("c3", "e3", AgentStart::default())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::ResourceExhausted));
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = harness
        .connect("c4", "python", harness_start("x"))
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_millis(300), again.next()).await;
    assert!(next.is_err(), "admitted and running: {next:?}");
}

#[tokio::test]
async fn the_callers_grpc_timeout_ends_failed_with_deadline_exceeded_and_cancels_the_agent() {
    let served = serve(Script::Hang, ServerOptions::default()).await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    *served.record.cancelled_tx.lock().unwrap() = Some(tx);
    // A raw client that sends `grpc-timeout` but does not enforce it itself.
    let mut request = tonic::Request::new(futures::stream::iter([start_frame(
        "c",
        harness_start("x"),
    )]));
    request.set_timeout(Duration::from_millis(200));
    let stream = raw(served.url())
        .await
        .connect(request)
        .await
        .unwrap()
        .into_inner();
    let (frames, _) = collect(stream).await;
    assert_eq!(failed_code(single_end(&frames)), Code::DeadlineExceeded);
    tokio::time::timeout(Duration::from_secs(1), rx)
        .await
        .expect("the agent must see the cancel")
        .unwrap();
}

#[tokio::test]
async fn the_client_deadline_covers_a_stalled_harness_stream() {
    let served = serve(Script::Hang, ServerOptions::default()).await;
    let options = ClientOptions {
        timeout: Some(Duration::from_millis(300)),
        ..ClientOptions::default()
    };
    let harness = HarnessClient::new(&served.url(), options).unwrap();
    let mut outputs = harness
        .connect("c", "python", harness_start("x"))
        .await
        .unwrap();
    let error = tokio::time::timeout(Duration::from_secs(3), outputs.next())
        .await
        .expect("the client must not hang past its deadline")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(error, ClientError::DeadlineExceeded { timeout } if timeout == Duration::from_millis(300)),
        "{error:?}"
    );
}

#[tokio::test]
async fn bearer_token_guards_harness_connect_with_a_status_before_anything_is_read() {
    let options = ServerOptions {
        bearer_token: Some("t0ken".into()),
        ..ServerOptions::default()
    };
    let served = serve(
        Script::Batches(vec![texts(&["hi"])], Duration::ZERO),
        options,
    )
    .await;
    let anonymous = HarnessClient::new(&served.url(), ClientOptions::default()).unwrap();
    let error = anonymous
        .connect("c", "python", harness_start("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ClientError::Status {
                code: Code::Unauthenticated,
                ..
            }
        ),
        "{error:?}"
    );
    anonymous
        .wait_until_serving(Default::default())
        .await
        .expect("grpc.health.v1 stays open for probes");

    let right = HarnessClient::new(
        &served.url(),
        ClientOptions {
            bearer_token: Some("t0ken".into()),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let messages = right.run("c", "python", harness_start("x")).await.unwrap();
    assert_eq!(content::planner_view(&messages), "hi");
    assert_eq!(served.record.starts.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn gzip_in_both_directions_round_trips_large_harness_outputs() {
    let big = "x".repeat(512 * 1024);
    let served = serve(
        Script::Batches(vec![texts(&[big.as_str()])], Duration::ZERO),
        ServerOptions::default(),
    )
    .await;
    let harness = HarnessClient::new(
        &served.url(),
        ClientOptions {
            gzip: true,
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let messages = harness
        .run("c", "python", harness_start(&"y".repeat(256 * 1024)))
        .await
        .unwrap();
    assert_eq!(content::planner_view(&messages).len(), big.len());
}

#[tokio::test]
async fn shutdown_drains_a_running_harness_execution_to_completed() {
    let mut served = serve(
        Script::Batches(
            vec![texts(&["a"]), texts(&["b"])],
            Duration::from_millis(200),
        ),
        ServerOptions::default(),
    )
    .await;
    let harness = HarnessClient::new(&served.url(), ClientOptions::default()).unwrap();
    let mut outputs = harness
        .connect("c", "python", harness_start("x"))
        .await
        .unwrap();
    assert_eq!(
        content::planner_view(&outputs.next().await.unwrap().unwrap()),
        "a"
    );
    served.begin_shutdown();
    assert_eq!(
        content::planner_view(&outputs.next().await.unwrap().unwrap()),
        "b"
    );
    assert!(outputs.next().await.is_none());
    assert_eq!(outputs.end_state(), Some(State::Completed));
    let result = tokio::time::timeout(Duration::from_secs(5), served.task)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn executions_still_running_when_the_grace_period_ends_end_failed_unavailable() {
    let options = ServerOptions {
        grace_period: Duration::from_millis(200),
        ..ServerOptions::default()
    };
    let mut served = serve(Script::Hang, options).await;
    let harness = HarnessClient::new(&served.url(), ClientOptions::default()).unwrap();
    let mut outputs = harness
        .connect("c", "python", harness_start("x"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    served.begin_shutdown();
    let error = tokio::time::timeout(Duration::from_secs(3), outputs.next())
        .await
        .expect("the hung execution must be ended after the grace period")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            error,
            ClientError::HarnessFailed {
                code: Code::Unavailable,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(served.record.cancelled.load(Ordering::SeqCst), 1);
}
