//! Our client against hand-written servers that break the AXP contract.

use std::{pin::Pin, time::Duration};

use axp_transport::{
    AxpClient, ClientError, ClientOptions, content,
    pb::{
        AgentEnd, AgentOutputs, AgentRequest, AgentResponse, AgentStart, HealthCheckRequest,
        HealthCheckResponse,
        agent_response::Type,
        agent_service_server::{AgentService, AgentServiceServer},
    },
};
use futures::{Stream, StreamExt};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};

#[derive(Clone, Copy)]
enum Misbehaviour {
    WrongConversation,
    WrongExec,
    UnsetOneof,
    StatusAfterOneFrame,
    StallAfterOneFrame,
    CloseWithoutEnd,
    FramesAfterEnd,
}

struct Rogue(Misbehaviour);

type Frames = Pin<Box<dyn Stream<Item = Result<AgentResponse, Status>> + Send>>;

fn frame(request: &AgentRequest, kind: Option<Type>) -> AgentResponse {
    AgentResponse {
        conversation_id: request.conversation_id.clone(),
        exec_id: request.exec_id.clone(),
        r#type: kind,
    }
}

fn outputs(text: &str) -> Option<Type> {
    Some(Type::Outputs(AgentOutputs {
        messages: vec![content::model_text(text)],
    }))
}

#[tonic::async_trait]
impl AgentService for Rogue {
    type ConnectStream = Frames;

    async fn connect(&self, request: Request<AgentRequest>) -> Result<Response<Frames>, Status> {
        let request = request.into_inner();
        let first = frame(&request, outputs("first"));
        let stream: Frames = match self.0 {
            Misbehaviour::WrongConversation => {
                let mut bad = first.clone();
                bad.conversation_id = "someone-else".into();
                Box::pin(futures::stream::iter([Ok(first), Ok(bad)]))
            }
            Misbehaviour::WrongExec => {
                let mut bad = first.clone();
                bad.exec_id = "other-exec".into();
                Box::pin(futures::stream::iter([Ok(bad)]))
            }
            Misbehaviour::UnsetOneof => {
                Box::pin(futures::stream::iter([Ok(frame(&request, None))]))
            }
            Misbehaviour::StatusAfterOneFrame => Box::pin(futures::stream::iter([
                Ok(first),
                Err(Status::failed_precondition("sandbox busy")),
            ])),
            Misbehaviour::StallAfterOneFrame => {
                Box::pin(futures::stream::iter([Ok(first)]).chain(futures::stream::pending()))
            }
            Misbehaviour::CloseWithoutEnd => Box::pin(futures::stream::iter([Ok(first)])),
            Misbehaviour::FramesAfterEnd => Box::pin(futures::stream::iter([
                Ok(first),
                Ok(frame(&request, Some(Type::End(AgentEnd {})))),
                Ok(frame(&request, outputs("after end"))),
            ])),
        };
        Ok(Response::new(stream))
    }

    async fn health_check(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse {
            healthy: true,
            message: "rogue".into(),
        }))
    }
}

async fn rogue(misbehaviour: Misbehaviour, options: ClientOptions) -> AxpClient {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(Rogue(misbehaviour)))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    AxpClient::new(&format!("http://{addr}"), options).unwrap()
}

/// Collects every item until the stream ends.
async fn drain(client: &AxpClient) -> Vec<Result<String, ClientError>> {
    let mut outputs = client
        .connect("conv", "exec", AgentStart::default())
        .await
        .unwrap();
    let mut items = Vec::new();
    while let Some(item) = outputs.next().await {
        items.push(item.map(|batch| content::planner_view(&batch)));
    }
    items
}

#[tokio::test]
async fn a_frame_for_another_conversation_is_a_mismatched_ids_error() {
    let client = rogue(Misbehaviour::WrongConversation, ClientOptions::default()).await;
    let items = drain(&client).await;
    assert_eq!(items.len(), 2, "the error ends the stream");
    assert_eq!(items[0].as_ref().unwrap(), "first");
    match &items[1] {
        Err(ClientError::MismatchedIds {
            expected_conversation,
            got_conversation,
            ..
        }) => {
            assert_eq!(expected_conversation, "conv");
            assert_eq!(got_conversation, "someone-else");
        }
        other => panic!("expected MismatchedIds, got {other:?}"),
    }
}

#[tokio::test]
async fn a_frame_for_another_exec_is_a_mismatched_ids_error() {
    let client = rogue(Misbehaviour::WrongExec, ClientOptions::default()).await;
    let items = drain(&client).await;
    assert!(
        matches!(&items[..], [Err(ClientError::MismatchedIds { got_exec, .. })] if got_exec == "other-exec"),
        "{items:?}"
    );
}

#[tokio::test]
async fn a_frame_with_no_oneof_set_is_an_empty_frame_error() {
    let client = rogue(Misbehaviour::UnsetOneof, ClientOptions::default()).await;
    let items = drain(&client).await;
    assert!(
        matches!(&items[..], [Err(ClientError::EmptyFrame)]),
        "{items:?}"
    );
}

#[tokio::test]
async fn a_status_mid_stream_comes_back_with_its_code_and_message() {
    let client = rogue(Misbehaviour::StatusAfterOneFrame, ClientOptions::default()).await;
    let items = drain(&client).await;
    assert_eq!(items[0].as_ref().unwrap(), "first");
    match &items[1] {
        Err(ClientError::Status { code, message }) => {
            assert_eq!(*code, Code::FailedPrecondition);
            assert_eq!(message, "sandbox busy");
        }
        other => panic!("expected a status, got {other:?}"),
    }
}

#[tokio::test]
async fn a_stream_that_stalls_past_the_deadline_is_a_deadline_error() {
    let options = ClientOptions {
        timeout: Some(Duration::from_millis(250)),
        ..ClientOptions::default()
    };
    let client = rogue(Misbehaviour::StallAfterOneFrame, options).await;
    let items = tokio::time::timeout(Duration::from_secs(5), drain(&client))
        .await
        .expect("the client must not hang past its deadline");
    assert_eq!(items[0].as_ref().unwrap(), "first");
    assert!(
        matches!(items[1], Err(ClientError::DeadlineExceeded { .. })),
        "{:?}",
        items[1]
    );
}

#[tokio::test]
async fn a_clean_close_without_end_is_accepted_as_older_agents_did() {
    let client = rogue(Misbehaviour::CloseWithoutEnd, ClientOptions::default()).await;
    let mut outputs = client
        .connect("conv", "exec", AgentStart::default())
        .await
        .unwrap();
    assert_eq!(
        content::planner_view(&outputs.next().await.unwrap().unwrap()),
        "first"
    );
    assert!(outputs.next().await.is_none());
    assert!(!outputs.ended(), "no `end` was sent");
}

#[tokio::test]
async fn nothing_after_end_is_read() {
    let client = rogue(Misbehaviour::FramesAfterEnd, ClientOptions::default()).await;
    let items = drain(&client).await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0].as_ref().unwrap(), "first");
}

#[tokio::test]
async fn an_agent_without_grpc_health_is_waited_for_through_axp_health_check() {
    let client = rogue(Misbehaviour::CloseWithoutEnd, ClientOptions::default()).await;
    client
        .wait_until_serving(Default::default())
        .await
        .expect("Unimplemented grpc.health.v1 falls back to AXP HealthCheck");
    assert_eq!(client.health_check().await.unwrap().message, "rogue");
}
