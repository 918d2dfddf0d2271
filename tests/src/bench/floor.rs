//! The transport floor: a bare tonic `AgentService` and `HarnessService` that answer every
//! call with one output frame and `end`, on a thread and runtime of their own. Only the
//! generated protobuf types are shared with the project; none of its server code is on
//! the path, so the round trip against it is what gRPC alone costs on this machine.
//!
//! Beside it, [`start_project_server`] runs the project's own [`AgentServer`] with an
//! agent that answers at once, the same way: the round trip against it is what the
//! project's server adds to the floor, so the reference agent's figure splits into the
//! server's share and the worker's.

use std::net::SocketAddr;
use std::pin::Pin;

use axp_transport::pb::{
    AgentEnd, AgentOutputs, AgentRequest, AgentResponse, HarnessEnd, HarnessOutputs,
    HarnessRequest, HarnessResponse, HealthCheckRequest, HealthCheckResponse, State,
    agent_response, agent_service_server, harness_response, harness_service_server,
};
use axp_transport::{Agent, AgentError, AgentServer, Execution, OutputStream, ServerOptions};
use futures::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

type Frames<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The answer of every call: the text `42`.
fn output() -> axp_transport::pb::Message {
    axp_transport::content::model_text("42")
}

struct Floor;

#[tonic::async_trait]
impl agent_service_server::AgentService for Floor {
    type ConnectStream = Frames<AgentResponse>;

    async fn connect(
        &self,
        request: Request<AgentRequest>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let request = request.into_inner();
        let frame = |r#type| AgentResponse {
            conversation_id: request.conversation_id.clone(),
            exec_id: request.exec_id.clone(),
            r#type: Some(r#type),
        };
        let frames = [
            frame(agent_response::Type::Outputs(AgentOutputs {
                messages: vec![output()],
            })),
            frame(agent_response::Type::End(AgentEnd {})),
        ];
        Ok(Response::new(Box::pin(futures::stream::iter(
            frames.map(Ok),
        ))))
    }

    async fn health_check(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse {
            healthy: true,
            message: String::new(),
        }))
    }
}

#[tonic::async_trait]
impl harness_service_server::HarnessService for Floor {
    type ConnectStream = Frames<HarnessResponse>;

    async fn connect(
        &self,
        request: Request<Streaming<HarnessRequest>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut requests = request.into_inner();
        let first = requests
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("no start"))??;
        let frame = |r#type| HarnessResponse {
            conversation_id: first.conversation_id.clone(),
            r#type: Some(r#type),
        };
        let frames = [
            frame(harness_response::Type::Outputs(HarnessOutputs {
                messages: vec![output()],
            })),
            frame(harness_response::Type::End(HarnessEnd {
                state: State::Completed as i32,
                error: None,
            })),
        ];
        Ok(Response::new(Box::pin(futures::stream::iter(
            frames.map(Ok),
        ))))
    }
}

/// Starts the floor on `127.0.0.1` (an ephemeral port) on its own thread; it serves until
/// the process exits.
pub fn start() -> anyhow::Result<SocketAddr> {
    serve_on_own_thread("floor", |listener| async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let served = tonic::transport::Server::builder()
            .add_service(agent_service_server::AgentServiceServer::new(Floor))
            .add_service(harness_service_server::HarnessServiceServer::new(Floor))
            .serve_with_incoming(incoming)
            .await;
        if let Err(error) = served {
            eprintln!("the floor server stopped: {error}");
        }
    })
}

/// Answers every execution at once with the text `42`.
struct AnswersAtOnce;

impl Agent for AnswersAtOnce {
    async fn execute(&self, _: Execution) -> Result<OutputStream, AgentError> {
        Ok(Box::pin(futures::stream::iter([Ok(vec![output()])])))
    }
}

/// Starts the project's [`AgentServer`] (default options) with an agent that answers at
/// once, like [`start`]: on `127.0.0.1`, on its own thread, until the process exits.
pub fn start_project_server() -> anyhow::Result<SocketAddr> {
    serve_on_own_thread("project-server", |listener| async move {
        let server = AgentServer::new(AnswersAtOnce, ServerOptions::default());
        server.health().set_serving().await;
        if let Err(error) = server.serve(listener, std::future::pending()).await {
            eprintln!("the project's server stopped: {error}");
        }
    })
}

/// Binds an ephemeral loopback port and runs `serve` on it on a thread of its own, with a
/// current-thread runtime (the lightest a server can have), until the process exits.
fn serve_on_own_thread<F, Fut>(name: &str, serve: F) -> anyhow::Result<SocketAddr>
where
    F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for a bench server");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .expect("the bench server's listener");
                serve(listener).await;
            });
        })?;
    Ok(addr)
}
