//! `ax.AgentService`: one `AgentRequest` in, a stream of `AgentResponse` frames
//! out. Refusals and failures are gRPC statuses, as the AX fork expects.

use std::{pin::Pin, sync::Arc};

use futures::{Stream, StreamExt};
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::execution::{self, Run, Shared, sleep_until};
use crate::{
    agent::{Agent, Execution, OutputStream, Protocol},
    pb::{
        AgentEnd, AgentOutputs, AgentRequest, AgentResponse, HealthCheckRequest,
        HealthCheckResponse, agent_response, agent_service_server::AgentService,
    },
};

/// The tonic service: checks the request, runs the agent, frames its outputs.
pub(super) struct AxpService<A> {
    pub(super) agent: Arc<A>,
    pub(super) shared: Arc<Shared>,
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<AgentResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<A: Agent> AgentService for AxpService<A> {
    type ConnectStream = FrameStream;

    async fn connect(
        &self,
        request: Request<AgentRequest>,
    ) -> Result<Response<FrameStream>, Status> {
        self.shared.authorize(request.metadata())?;
        let permit = self.shared.admit()?;
        let deadline = execution::deadline(request.metadata());
        let (metadata, _, request) = request.into_parts();
        let AgentRequest {
            conversation_id,
            exec_id,
            start,
        } = request;
        let start = start.ok_or_else(|| {
            Status::invalid_argument("AgentRequest.start is missing: send exactly one AgentStart")
        })?;

        let span = tracing::info_span!(
            "axp.connect",
            otel.kind = "server",
            %conversation_id,
            %exec_id,
        );
        crate::trace_context::continue_trace(&span, &metadata);
        let cancelled = self.shared.executions.child_token();
        let execution = Execution {
            protocol: Protocol::AgentService,
            conversation_id: conversation_id.clone(),
            exec_id: exec_id.clone(),
            start,
            metadata,
            cancelled: cancelled.clone(),
            deadline,
        };
        let outputs = execution::start(self.agent.clone(), execution, &span).await?;
        let frames = frames(
            Ids {
                conversation_id,
                exec_id,
            },
            outputs,
            Run {
                cancelled,
                deadline,
                permit,
                span,
            },
        );
        Ok(Response::new(Box::pin(frames)))
    }

    async fn health_check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.shared.authorize(request.metadata())?;
        if !self.shared.is_serving() {
            return Ok(Response::new(HealthCheckResponse {
                healthy: false,
                message: "not serving".into(),
            }));
        }
        Ok(Response::new(self.agent.health().await))
    }
}

struct Ids {
    conversation_id: String,
    exec_id: String,
}

impl Ids {
    fn frame(&self, kind: agent_response::Type) -> AgentResponse {
        AgentResponse {
            conversation_id: self.conversation_id.clone(),
            exec_id: self.exec_id.clone(),
            r#type: Some(kind),
        }
    }
}

/// Frames the agent's outputs: ids on every frame, `end` exactly once at the end.
fn frames(
    ids: Ids,
    mut outputs: OutputStream,
    run: Run,
) -> impl Stream<Item = Result<AgentResponse, Status>> + Send {
    let Run {
        cancelled,
        deadline,
        permit,
        span,
    } = run;
    async_stream::stream! {
        // Dropping this stream (client cancel, connection loss) cancels the execution.
        let _cancel_on_drop = cancelled.clone().drop_guard();
        let _permit = permit;
        let started = Instant::now();
        let mut frames_sent = 0usize;
        loop {
            tokio::select! {
                biased;
                () = cancelled.cancelled() => {
                    yield Err(Status::unavailable("agent server is shutting down; execution cancelled"));
                    break;
                }
                () = sleep_until(deadline) => {
                    cancelled.cancel();
                    yield Err(Status::deadline_exceeded("the call's deadline passed while the agent was running"));
                    break;
                }
                item = outputs.next().instrument(span.clone()) => match item {
                    Some(Ok(messages)) => {
                        // An empty batch would be a frame that says nothing; skip it.
                        if messages.is_empty() {
                            continue;
                        }
                        frames_sent += 1;
                        yield Ok(ids.frame(agent_response::Type::Outputs(AgentOutputs { messages })));
                    }
                    Some(Err(error)) => {
                        tracing::info!(parent: &span, %error, frames_sent, "execution failed");
                        yield Err(Status::from(error));
                        break;
                    }
                    None => {
                        tracing::debug!(parent: &span, frames_sent, elapsed = ?started.elapsed(), "execution finished");
                        yield Ok(ids.frame(agent_response::Type::End(AgentEnd {})));
                        break;
                    }
                },
            }
        }
    }
}
