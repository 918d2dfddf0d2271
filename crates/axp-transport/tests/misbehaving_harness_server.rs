//! Our HarnessClient against hand-written HarnessService servers: ones that
//! break the contract, and one that records what the client sends.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use axp_transport::{
    ClientError, ClientOptions, HarnessClient, content,
    pb::{
        self, CancelReason, HarnessEnd, HarnessOutputs, HarnessRequest, HarnessResponse,
        HarnessStart, State, harness_request,
        harness_response::Type,
        harness_service_server::{HarnessService, HarnessServiceServer},
    },
};
use futures::{Stream, StreamExt};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status, Streaming};

#[derive(Clone, Copy)]
enum Misbehaviour {
    CloseWithoutEnd,
    FailedWithError,
    FailedWithoutError,
    Canceled,
    UnspecifiedState,
    WrongConversation,
    UnsetOneof,
    StatusAfterOneFrame,
    StallAfterOneFrame,
    FramesAfterEnd,
    /// Answers `start` with "started", then a `cancel` with its reason and `end{CANCELED}`.
    EchoCancel,
}

#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<HarnessRequest>>,
}

struct Rogue {
    misbehaviour: Misbehaviour,
    seen: Arc<Seen>,
}

type Frames = Pin<Box<dyn Stream<Item = Result<HarnessResponse, Status>> + Send>>;

fn frame(conversation: &str, kind: Option<Type>) -> HarnessResponse {
    HarnessResponse {
        conversation_id: conversation.into(),
        r#type: kind,
    }
}

fn outputs(text: &str) -> Option<Type> {
    Some(Type::Outputs(HarnessOutputs {
        messages: vec![content::model_text(text)],
    }))
}

fn end(state: State, error: Option<pb::Error>) -> Option<Type> {
    Some(Type::End(HarnessEnd {
        state: state as i32,
        error,
    }))
}

#[tonic::async_trait]
impl HarnessService for Rogue {
    type ConnectStream = Frames;

    async fn connect(
        &self,
        request: Request<Streaming<HarnessRequest>>,
    ) -> Result<Response<Frames>, Status> {
        let mut requests = request.into_inner();
        let first = requests
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("no start"))?;
        self.seen.requests.lock().unwrap().push(first.clone());
        let c = first.conversation_id.clone();
        let first_frame = frame(&c, outputs("first"));
        let stream: Frames = match self.misbehaviour {
            Misbehaviour::CloseWithoutEnd => Box::pin(futures::stream::iter([Ok(first_frame)])),
            Misbehaviour::FailedWithError => Box::pin(futures::stream::iter([
                Ok(first_frame),
                Ok(frame(
                    &c,
                    end(
                        State::Failed,
                        Some(pb::Error {
                            code: 9,
                            description: "sandbox busy".into(),
                        }),
                    ),
                )),
            ])),
            Misbehaviour::FailedWithoutError => Box::pin(futures::stream::iter([Ok(frame(
                &c,
                end(State::Failed, None),
            ))])),
            Misbehaviour::Canceled => Box::pin(futures::stream::iter([Ok(frame(
                &c,
                end(State::Canceled, None),
            ))])),
            Misbehaviour::UnspecifiedState => Box::pin(futures::stream::iter([
                Ok(first_frame),
                Ok(frame(&c, end(State::Unspecified, None))),
            ])),
            Misbehaviour::WrongConversation => Box::pin(futures::stream::iter([
                Ok(first_frame),
                Ok(frame("someone-else", outputs("leak"))),
            ])),
            Misbehaviour::UnsetOneof => Box::pin(futures::stream::iter([Ok(frame(&c, None))])),
            Misbehaviour::StatusAfterOneFrame => Box::pin(futures::stream::iter([
                Ok(first_frame),
                Err(Status::failed_precondition("sandbox busy")),
            ])),
            Misbehaviour::StallAfterOneFrame => {
                Box::pin(futures::stream::iter([Ok(first_frame)]).chain(futures::stream::pending()))
            }
            Misbehaviour::FramesAfterEnd => Box::pin(futures::stream::iter([
                Ok(first_frame),
                Ok(frame(&c, end(State::Completed, None))),
                Ok(frame(&c, outputs("after end"))),
            ])),
            Misbehaviour::EchoCancel => {
                let seen = self.seen.clone();
                Box::pin(async_stream::stream! {
                    yield Ok(frame(&c, outputs("started")));
                    while let Some(Ok(request)) = requests.next().await {
                        seen.requests.lock().unwrap().push(request.clone());
                        if let Some(harness_request::Type::Cancel(cancel)) = request.r#type {
                            yield Ok(frame(&c, outputs(cancel.reason().as_str_name())));
                            yield Ok(frame(&c, end(State::Canceled, None)));
                            break;
                        }
                    }
                })
            }
        };
        Ok(Response::new(stream))
    }
}

async fn rogue(misbehaviour: Misbehaviour, options: ClientOptions) -> (HarnessClient, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HarnessServiceServer::new(Rogue {
                misbehaviour,
                seen: seen.clone(),
            }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let client = HarnessClient::new(&format!("http://{addr}"), options).unwrap();
    (client, seen)
}

fn start() -> HarnessStart {
    HarnessStart {
        harness_config: b"{}".to_vec(),
        messages: vec![content::user_text("print(1)")],
    }
}

/// Collects every item until the stream ends.
async fn drain(client: &HarnessClient) -> Vec<Result<String, ClientError>> {
    let mut outputs = client.connect("conv", "python", start()).await.unwrap();
    let mut items = Vec::new();
    while let Some(item) = outputs.next().await {
        items.push(item.map(|batch| content::planner_view(&batch)));
    }
    items
}

#[tokio::test]
async fn a_stream_that_closes_without_end_is_a_missing_end_error() {
    let (client, _) = rogue(Misbehaviour::CloseWithoutEnd, ClientOptions::default()).await;
    let items = drain(&client).await;
    assert_eq!(items[0].as_ref().unwrap(), "first");
    assert!(
        matches!(&items[1..], [Err(ClientError::MissingEnd)]),
        "{items:?}"
    );
}

#[tokio::test]
async fn end_failed_is_a_typed_error_with_the_code_and_description() {
    let (client, _) = rogue(Misbehaviour::FailedWithError, ClientOptions::default()).await;
    let items = drain(&client).await;
    assert_eq!(items[0].as_ref().unwrap(), "first");
    match &items[1..] {
        [Err(error @ ClientError::HarnessFailed { code, description })] => {
            assert_eq!(*code, Code::FailedPrecondition);
            assert_eq!(description, "sandbox busy");
            assert_eq!(error.code(), Some(Code::FailedPrecondition));
        }
        other => panic!("expected HarnessFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn end_failed_without_an_error_is_still_a_failure() {
    let (client, _) = rogue(Misbehaviour::FailedWithoutError, ClientOptions::default()).await;
    let error = client.run("conv", "python", start()).await.unwrap_err();
    assert!(
        matches!(&error, ClientError::HarnessFailed { code: Code::Unknown, description } if description.is_empty()),
        "{error:?}"
    );
}

#[tokio::test]
async fn end_canceled_is_reported_as_canceled() {
    let (client, _) = rogue(Misbehaviour::Canceled, ClientOptions::default()).await;
    let error = client.run("conv", "python", start()).await.unwrap_err();
    assert!(matches!(error, ClientError::Canceled), "{error:?}");
}

#[tokio::test]
async fn an_end_with_an_unspecified_state_counts_as_completion_as_in_ax() {
    let (client, _) = rogue(Misbehaviour::UnspecifiedState, ClientOptions::default()).await;
    let mut outputs = client.connect("conv", "python", start()).await.unwrap();
    assert_eq!(
        content::planner_view(&outputs.next().await.unwrap().unwrap()),
        "first"
    );
    assert!(outputs.next().await.is_none());
    assert_eq!(outputs.end_state(), Some(State::Unspecified));
}

#[tokio::test]
async fn a_frame_for_another_conversation_is_a_mismatched_conversation_error() {
    let (client, _) = rogue(Misbehaviour::WrongConversation, ClientOptions::default()).await;
    let items = drain(&client).await;
    assert_eq!(items.len(), 2, "the error ends the stream: {items:?}");
    assert!(
        matches!(&items[1], Err(ClientError::MismatchedConversation { expected, got }) if expected == "conv" && got == "someone-else"),
        "{items:?}"
    );
}

#[tokio::test]
async fn a_frame_with_no_oneof_set_is_an_empty_frame_error() {
    let (client, _) = rogue(Misbehaviour::UnsetOneof, ClientOptions::default()).await;
    let items = drain(&client).await;
    assert!(
        matches!(&items[..], [Err(ClientError::EmptyFrame)]),
        "{items:?}"
    );
}

#[tokio::test]
async fn a_status_mid_stream_comes_back_with_its_code_and_message() {
    let (client, _) = rogue(Misbehaviour::StatusAfterOneFrame, ClientOptions::default()).await;
    let items = drain(&client).await;
    assert!(
        matches!(&items[1], Err(ClientError::Status { code: Code::FailedPrecondition, message }) if message == "sandbox busy"),
        "{items:?}"
    );
}

#[tokio::test]
async fn a_stream_that_stalls_past_the_deadline_is_a_deadline_error() {
    let options = ClientOptions {
        timeout: Some(Duration::from_millis(250)),
        ..ClientOptions::default()
    };
    let (client, _) = rogue(Misbehaviour::StallAfterOneFrame, options).await;
    let items = tokio::time::timeout(Duration::from_secs(5), drain(&client))
        .await
        .expect("the client must not hang past its deadline");
    assert_eq!(items[0].as_ref().unwrap(), "first");
    assert!(
        matches!(items[1], Err(ClientError::DeadlineExceeded { .. })),
        "{items:?}"
    );
}

#[tokio::test]
async fn nothing_after_end_is_read() {
    let (client, _) = rogue(Misbehaviour::FramesAfterEnd, ClientOptions::default()).await;
    let items = drain(&client).await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0].as_ref().unwrap(), "first");
}

#[tokio::test]
async fn the_client_sends_start_first_and_cancel_with_its_reason() {
    let (client, seen) = rogue(Misbehaviour::EchoCancel, ClientOptions::default()).await;
    let mut outputs = client.connect("conv", "py-1", start()).await.unwrap();
    assert_eq!(
        content::planner_view(&outputs.next().await.unwrap().unwrap()),
        "started"
    );
    let canceller = outputs.canceller();
    let from_elsewhere = tokio::spawn(async move { canceller.cancel(CancelReason::Timeout) });
    assert!(from_elsewhere.await.unwrap(), "the cancel frame was sent");
    assert_eq!(
        content::planner_view(&outputs.next().await.unwrap().unwrap()),
        "CANCEL_REASON_TIMEOUT"
    );
    let error = outputs.next().await.unwrap().unwrap_err();
    assert!(matches!(error, ClientError::Canceled), "{error:?}");

    let requests = seen.requests.lock().unwrap();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].conversation_id, "conv");
    assert_eq!(requests[0].harness_id, "py-1");
    assert!(
        matches!(&requests[0].r#type, Some(harness_request::Type::Start(s)) if s.harness_config == b"{}"),
        "{requests:?}"
    );
    assert_eq!(requests[1].conversation_id, "conv");
    assert!(
        matches!(&requests[1].r#type, Some(harness_request::Type::Cancel(c)) if c.reason() == CancelReason::Timeout),
        "{requests:?}"
    );
}

#[tokio::test]
async fn an_agent_without_grpc_health_counts_as_ready_as_in_ax() {
    let (client, _) = rogue(Misbehaviour::CloseWithoutEnd, ClientOptions::default()).await;
    let status = client.serving_status().await.unwrap_err();
    assert_eq!(status.code(), Some(Code::Unimplemented));
    client
        .wait_until_serving(Default::default())
        .await
        .expect("UNIMPLEMENTED grpc.health.v1 counts as ready");
}
