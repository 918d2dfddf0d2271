//! `ax.HarnessService`: one bidirectional `Connect` per execution. The client
//! sends `start` (and maybe `cancel`); the server streams `outputs` and ends
//! with exactly one `end` that says how the execution went.
//!
//! Failures are reported in band (`end{FAILED, Error{code, description}}`)
//! from the first decoded request on; see the [module rule](super#harnessservice).

use std::{
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use futures::{Stream, StreamExt};
use tokio::time::Instant;
use tonic::{Code, Request, Response, Status, Streaming, metadata::MetadataMap};
use tracing::Instrument;

use super::execution::{self, Shared, sleep_until};
use crate::{
    agent::{Agent, Execution, Protocol},
    pb::{
        self, AgentStart, HarnessEnd, HarnessOutputs, HarnessRequest, HarnessResponse, Message,
        State, harness_request, harness_response, harness_service_server::HarnessService,
    },
};

/// The tonic service: reads the control frames, runs the agent, frames its outputs.
pub(super) struct HarnessServer<A> {
    pub(super) agent: Arc<A>,
    pub(super) shared: Arc<Shared>,
    pub(super) cancel_grace: Duration,
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<HarnessResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<A: Agent> HarnessService for HarnessServer<A> {
    type ConnectStream = FrameStream;

    async fn connect(
        &self,
        request: Request<Streaming<HarnessRequest>>,
    ) -> Result<Response<FrameStream>, Status> {
        // Nothing is read from a caller without the token.
        self.shared.authorize(request.metadata())?;
        let deadline = execution::deadline(request.metadata());
        let (metadata, _, requests) = request.into_parts();
        let call = Call {
            agent: self.agent.clone(),
            shared: self.shared.clone(),
            cancel_grace: self.cancel_grace,
            metadata,
            deadline,
        };
        Ok(Response::new(Box::pin(call.frames(requests))))
    }
}

/// One `Connect` stream, before its first request is read.
struct Call<A> {
    agent: Arc<A>,
    shared: Arc<Shared>,
    cancel_grace: Duration,
    metadata: MetadataMap,
    deadline: Option<Instant>,
}

impl<A: Agent> Call<A> {
    fn frames(
        self,
        mut requests: Streaming<HarnessRequest>,
    ) -> impl Stream<Item = Result<HarnessResponse, Status>> + Send {
        let Self {
            agent,
            shared,
            cancel_grace,
            metadata,
            deadline,
        } = self;
        async_stream::stream! {
            // Until a first request arrives there is no conversation to answer
            // for: these outcomes are gRPC statuses.
            let first = tokio::select! {
                first = requests.next() => first,
                () = sleep_until(deadline) => {
                    yield Err(Status::deadline_exceeded("the call's deadline passed before its first HarnessRequest"));
                    return;
                }
                () = shared.draining.cancelled() => {
                    yield Err(Status::unavailable("agent server is shutting down"));
                    return;
                }
            };
            let first = match first {
                Some(Ok(first)) => first,
                Some(Err(status)) => {
                    yield Err(status);
                    return;
                }
                None => {
                    yield Err(Status::invalid_argument(
                        "the request stream closed before its first HarnessRequest: send `start` first",
                    ));
                    return;
                }
            };

            // From here on every outcome is exactly one `end`.
            let HarnessRequest { conversation_id, harness_id, r#type } = first;
            let reply = Reply { conversation_id };
            let start = match r#type {
                Some(harness_request::Type::Start(start)) => start,
                Some(harness_request::Type::Cancel(_)) => {
                    yield Ok(reply.failed(&Status::invalid_argument(
                        "the first HarnessRequest must be `start`, got `cancel`: there is no execution to cancel",
                    )));
                    return;
                }
                None => {
                    yield Ok(reply.failed(&Status::invalid_argument(
                        "the first HarnessRequest must be `start`, got one with neither start nor cancel set",
                    )));
                    return;
                }
            };
            let permit = match shared.admit() {
                Ok(permit) => permit,
                Err(status) => {
                    yield Ok(reply.failed(&status));
                    return;
                }
            };
            let _permit = permit;
            let exec_id = new_exec_id();
            let span = tracing::info_span!(
                "harness.connect",
                otel.kind = "server",
                conversation_id = %reply.conversation_id,
                %harness_id,
                %exec_id,
            );
            crate::trace_context::continue_trace(&span, &metadata);
            let cancelled = shared.executions.child_token();
            // Dropping this stream (client cancel, connection loss) cancels the execution.
            let _cancel_on_drop = cancelled.clone().drop_guard();
            let execution = Execution {
                protocol: Protocol::HarnessService,
                conversation_id: reply.conversation_id.clone(),
                exec_id,
                start: AgentStart {
                    agent_id: harness_id,
                    agent_config: start.harness_config,
                    messages: start.messages,
                    ..AgentStart::default()
                },
                metadata,
                cancelled: cancelled.clone(),
                deadline,
            };
            let mut control = Control {
                requests: Some(requests),
                conversation_id: reply.conversation_id.clone(),
            };

            // Starting: a cancel (or a broken request stream) may come first.
            let starting = execution::start(agent, execution, &span);
            tokio::pin!(starting);
            let mut outputs = tokio::select! {
                result = &mut starting => match result {
                    Ok(outputs) => outputs,
                    Err(status) => {
                        yield Ok(reply.failed(&status));
                        return;
                    }
                },
                event = control.next() => {
                    // Leaving drops `starting`, which cancels the execution.
                    yield Ok(reply.after_control(event, &span));
                    return;
                }
            };

            let started = Instant::now();
            let mut frames_sent = 0usize;
            loop {
                tokio::select! {
                    biased;
                    () = cancelled.cancelled() => {
                        yield Ok(reply.failed(&Status::unavailable(
                            "agent server is shutting down; execution cancelled",
                        )));
                        return;
                    }
                    () = sleep_until(deadline) => {
                        cancelled.cancel();
                        yield Ok(reply.failed(&Status::deadline_exceeded(
                            "the call's deadline passed while the agent was running",
                        )));
                        return;
                    }
                    event = control.next() => {
                        cancelled.cancel();
                        if matches!(event, Event::Cancel(_)) {
                            // Let the agent stop, so `end{CANCELED}` means it has.
                            let until = Instant::now() + cancel_grace;
                            loop {
                                tokio::select! {
                                    item = outputs.next() => match item {
                                        Some(Ok(messages)) if !messages.is_empty() => {
                                            yield Ok(reply.outputs(messages));
                                        }
                                        Some(Ok(_)) => {}
                                        Some(Err(_)) | None => break,
                                    },
                                    () = tokio::time::sleep_until(until) => {
                                        tracing::warn!(parent: &span, grace = ?cancel_grace, "the agent did not stop within the cancel grace");
                                        break;
                                    }
                                }
                            }
                        }
                        yield Ok(reply.after_control(event, &span));
                        return;
                    }
                    item = outputs.next().instrument(span.clone()) => match item {
                        Some(Ok(messages)) => {
                            // An empty batch would be a frame that says nothing; skip it.
                            if messages.is_empty() {
                                continue;
                            }
                            frames_sent += 1;
                            yield Ok(reply.outputs(messages));
                        }
                        Some(Err(error)) => {
                            tracing::info!(parent: &span, %error, frames_sent, "execution failed");
                            yield Ok(reply.failed(&Status::from(error)));
                            return;
                        }
                        None => {
                            tracing::debug!(parent: &span, frames_sent, elapsed = ?started.elapsed(), "execution finished");
                            yield Ok(reply.end(State::Completed, None));
                            return;
                        }
                    },
                }
            }
        }
    }
}

/// Builds the frames of one stream, each echoing its conversation id.
struct Reply {
    conversation_id: String,
}

impl Reply {
    fn frame(&self, kind: harness_response::Type) -> HarnessResponse {
        HarnessResponse {
            conversation_id: self.conversation_id.clone(),
            r#type: Some(kind),
        }
    }

    fn outputs(&self, messages: Vec<Message>) -> HarnessResponse {
        self.frame(harness_response::Type::Outputs(HarnessOutputs { messages }))
    }

    fn end(&self, state: State, error: Option<pb::Error>) -> HarnessResponse {
        self.frame(harness_response::Type::End(HarnessEnd {
            state: state as i32,
            error,
        }))
    }

    /// `end{FAILED}` with the status's gRPC code number and message.
    fn failed(&self, status: &Status) -> HarnessResponse {
        self.end(
            State::Failed,
            Some(pb::Error {
                code: status.code() as i32,
                description: status.message().to_owned(),
            }),
        )
    }

    /// The `end` a control event calls for.
    fn after_control(&self, event: Event, span: &tracing::Span) -> HarnessResponse {
        match event {
            Event::Cancel(reason) => {
                tracing::info!(parent: span, reason = reason.as_str_name(), "execution cancelled by the client");
                self.end(State::Canceled, None)
            }
            Event::StreamCancelled => {
                tracing::info!(parent: span, "the client cancelled the stream");
                self.end(State::Canceled, None)
            }
            Event::Violation(status) => {
                tracing::info!(parent: span, code = ?status.code(), message = status.message(), "protocol violation");
                self.failed(&status)
            }
        }
    }
}

/// What the client said after `start`.
enum Event {
    /// A `cancel` frame.
    Cancel(pb::CancelReason),
    /// The request stream was reset or broke.
    StreamCancelled,
    /// A frame or stream error that breaks the protocol.
    Violation(Status),
}

/// The request stream after `start`. A half-close is not an event: AX's
/// client half-closes right after `start` and then only reads.
struct Control {
    requests: Option<Streaming<HarnessRequest>>,
    conversation_id: String,
}

impl Control {
    /// The next event; pending forever once the client has half-closed.
    async fn next(&mut self) -> Event {
        let Some(requests) = self.requests.as_mut() else {
            return std::future::pending().await;
        };
        let frame = match requests.next().await {
            None => {
                self.requests = None;
                return std::future::pending().await;
            }
            Some(Err(status)) => {
                self.requests = None;
                return if status.code() == Code::Cancelled {
                    Event::StreamCancelled
                } else {
                    Event::Violation(status)
                };
            }
            Some(Ok(frame)) => frame,
        };
        if !frame.conversation_id.is_empty() && frame.conversation_id != self.conversation_id {
            return Event::Violation(Status::invalid_argument(format!(
                "a HarnessRequest for conversation {:?} on the stream of conversation {:?}",
                frame.conversation_id, self.conversation_id
            )));
        }
        match frame.r#type {
            Some(harness_request::Type::Cancel(cancel)) => Event::Cancel(cancel.reason()),
            Some(harness_request::Type::Start(_)) => Event::Violation(Status::invalid_argument(
                "a second `start` on one HarnessService stream: each stream runs one execution",
            )),
            None => Event::Violation(Status::invalid_argument(
                "a HarnessRequest with neither start nor cancel set",
            )),
        }
    }
}

/// A process-unique exec id: HarnessService has none on the wire. The prefix
/// (the process's start time) keeps ids apart across agent restarts.
fn new_exec_id() -> String {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| {
        let millis = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!("{millis:x}")
    });
    format!("harness-{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_ids_are_unique_within_the_process() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| new_exec_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id.starts_with("harness-")));
    }
}
