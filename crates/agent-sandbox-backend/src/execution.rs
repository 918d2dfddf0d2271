//! One execution: resolve the conversation's sandbox, call its agent, and
//! re-resolve and retry once when the call failed before any output.

use std::time::Duration;

use axp_transport::{
    ClientError,
    pb::{AgentStart, Message},
    remote::ExecutionSummary,
    trace_context,
};
use futures::StreamExt;
use sandbox_claim::{AcquireOptions, SandboxHandle};
use tokio::time::Instant;
use tonic::Code;
use tracing::Instrument as _;

use crate::{
    AgentSandboxAgent,
    conversations::Endpoint,
    error::{SandboxAgentError, claim_error},
    metrics::ClaimEnd,
};

/// The claim annotation that records the trace context of the execution that created the
/// claim: a JSON object of W3C headers (`{"traceparent": "00-…-…-01"}`), as the
/// agent-sandbox SDKs write it and its controller reads it.
pub const TRACE_CONTEXT_ANNOTATION: &str = "opentelemetry.io/trace-context";

/// What one execution did, for callers that report timings.
#[derive(Debug, Clone)]
pub struct ExecutionReport {
    /// Where it ran.
    pub sandbox: SandboxHandle,
    /// Time spent claiming and waiting for readiness (zero when the endpoint was known).
    pub claim_to_ready: Duration,
    /// From the call to the first output frame, if any arrived.
    pub first_output: Option<Duration>,
    /// The whole execution, claim included.
    pub total: Duration,
    /// Output frames received.
    pub frames: usize,
    /// Whether the agent sent `end` (rather than closing without it).
    pub ended: bool,
    /// Whether the claim had to be re-resolved because the known endpoint failed.
    pub re_resolved: bool,
    /// How the agent was reached (the connection mode, and for a port-forward its local end).
    pub reached: Reached,
    /// The address the AXP client called (`http://podIP:port`, or the port-forward's
    /// `http://127.0.0.1:port`).
    pub endpoint: String,
}

/// How an execution reached the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reached {
    /// At `podIP:port` (connection `direct`).
    Direct,
    /// Through the conversation's port-forward to the pod (connection `port-forward`),
    /// whose local listener the client dialled.
    PortForward {
        /// The listener on `127.0.0.1`; it stops accepting when the conversation is released.
        local: std::net::SocketAddr,
    },
}

impl Reached {
    /// The connection mode's `ax.yaml` name (`direct`, `port-forward`).
    pub fn mode(&self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::PortForward { .. } => "port-forward",
        }
    }
}

impl ExecutionReport {
    /// The protocol-neutral part, as [`RemoteAgent`](axp_transport::remote::RemoteAgent) reports it.
    pub fn summary(&self) -> ExecutionSummary {
        ExecutionSummary {
            frames: self.frames,
            ended: self.ended,
            first_output: self.first_output,
            total: self.total,
        }
    }
}

/// How one call to the agent failed.
enum CallFailure {
    /// Before the agent delivered anything: safe to try again.
    BeforeOutput(ClientError),
    /// After `frames` output frames: retrying could repeat side effects.
    AfterOutput { frames: usize, source: ClientError },
}

/// Failures worth one re-resolve: the agent could not be reached, or its
/// connection broke before it said anything. On a reused endpoint,
/// PERMISSION_DENIED also means "wrong sandbox": the pod IP now belongs to
/// another conversation's pinned agent. Any other refusal of the agent's
/// (INVALID_ARGUMENT, …) is final.
fn retryable_before_output(error: &ClientError, reused_endpoint: bool) -> bool {
    error.is_connect_failure()
        || matches!(
            error.code(),
            Some(Code::Unavailable | Code::Unknown | Code::Cancelled)
        )
        || (reused_endpoint && error.code() == Some(Code::PermissionDenied))
}

impl AgentSandboxAgent {
    /// Runs the execution on the conversation's endpoint (resolving it first
    /// when unknown), with at most one re-resolve.
    pub(crate) async fn run(
        &self,
        endpoint: &mut Option<Endpoint>,
        conversation_id: &str,
        exec_id: &str,
        start: AgentStart,
        outputs: &mut (impl FnMut(Vec<Message>) + Send),
        started: Instant,
    ) -> Result<ExecutionReport, SandboxAgentError> {
        let mut claim_to_ready = Duration::ZERO;
        // A known endpoint may be stale: its pod may be gone, and in a real cluster
        // its IP may already belong to another conversation's sandbox.
        let reused = endpoint.is_some();
        let mut current = match endpoint.take() {
            Some(mut known) => {
                self.renew_if_due(&mut known, conversation_id).await;
                known
            }
            None => {
                let handle = self.acquire(conversation_id).await?;
                claim_to_ready = started.elapsed();
                Endpoint::new(handle, &self.inner.options, self.inner.claims.client())?
            }
        };

        let mut re_resolved = false;
        loop {
            let attempt = self
                .call(&current, conversation_id, exec_id, start.clone(), outputs)
                .await;
            match attempt {
                Ok(mut report) => {
                    tracing::debug!(
                        conversation_id,
                        exec_id,
                        connection = report.reached.mode(),
                        endpoint = %report.endpoint,
                        "execution reached the agent"
                    );
                    report.claim_to_ready = claim_to_ready;
                    report.total = started.elapsed();
                    report.re_resolved = re_resolved;
                    *endpoint = Some(current);
                    return Ok(report);
                }
                Err(CallFailure::BeforeOutput(source))
                    if !re_resolved && retryable_before_output(&source, reused) =>
                {
                    tracing::warn!(
                        conversation_id,
                        claim = %current.handle.claim_name,
                        endpoint = %current.address,
                        error = %source,
                        "agent unreachable before any output; re-resolving the claim once"
                    );
                    re_resolved = true;
                    let resolve_started = Instant::now();
                    let handle = self.re_resolve(conversation_id).await?;
                    claim_to_ready += resolve_started.elapsed();
                    current.close().await;
                    current =
                        Endpoint::new(handle, &self.inner.options, self.inner.claims.client())?;
                }
                // Either way the endpoint is forgotten: the next execution re-resolves.
                Err(CallFailure::BeforeOutput(source)) => {
                    return Err(current.connect_error(source));
                }
                Err(CallFailure::AfterOutput { frames, source }) => {
                    return Err(SandboxAgentError::Stream {
                        claim: current.handle.claim_name,
                        endpoint: current.address,
                        outputs: frames,
                        source: Box::new(source),
                    });
                }
            }
        }
    }

    /// Creates or adopts the conversation's claim and waits until it is Ready. A claim it
    /// creates records the current trace context, as the agent-sandbox SDKs do.
    async fn acquire(&self, conversation_id: &str) -> Result<SandboxHandle, SandboxAgentError> {
        let metrics = &self.inner.options.metrics;
        let mut options = AcquireOptions::default();
        let trace = trace_context::headers(&tracing::Span::current());
        if !trace.is_empty()
            && let Ok(json) = serde_json::to_string(&trace)
        {
            options = options.annotation(TRACE_CONTEXT_ANNOTATION, json);
        }
        let started = Instant::now();
        match self
            .inner
            .claims
            .acquire_with(conversation_id, &options)
            .await
        {
            Ok(acquired) => {
                metrics.acquired(
                    acquired.path,
                    started.elapsed().as_secs_f64(),
                    acquired.ready_wait.as_secs_f64(),
                );
                tracing::debug!(path = acquired.path.as_str(), "claim acquired");
                Ok(acquired.handle)
            }
            Err(source) => {
                let timed_out = matches!(
                    source.wait_error(),
                    Some(sandbox_claim::wait::Error::Timeout { .. })
                );
                metrics.acquire_failed(timed_out, started.elapsed().as_secs_f64());
                Err(claim_error(self.claim_name(conversation_id), source))
            }
        }
    }

    /// After a failed call: read the claim again (its sandbox or IP may have
    /// changed); if it is gone, claim a new sandbox.
    async fn re_resolve(&self, conversation_id: &str) -> Result<SandboxHandle, SandboxAgentError> {
        let metrics = &self.inner.options.metrics;
        let resolved = match self.inner.claims.resolve(conversation_id).await {
            Ok(handle) => Ok(handle),
            Err(sandbox_claim::Error::NotFound { .. }) => {
                tracing::warn!(
                    conversation_id,
                    "claim is gone; claiming a new sandbox (agent state is lost)"
                );
                metrics.released(ClaimEnd::Expired, 1);
                self.acquire(conversation_id).await
            }
            Err(source) => Err(claim_error(self.claim_name(conversation_id), source)),
        };
        metrics.re_resolved(resolved.is_ok());
        resolved
    }

    /// The claim's name for error messages; `-` when the id makes none.
    fn claim_name(&self, conversation_id: &str) -> String {
        self.inner
            .claims
            .claim_name(conversation_id)
            .unwrap_or_else(|_| "-".into())
    }

    /// One `Connect` call, its outputs handed to `outputs` as they arrive.
    async fn call(
        &self,
        endpoint: &Endpoint,
        conversation_id: &str,
        exec_id: &str,
        start: AgentStart,
        outputs: &mut (impl FnMut(Vec<Message>) + Send),
    ) -> Result<ExecutionReport, CallFailure> {
        let call_started = Instant::now();
        // Keep the claim alive for as long as the execution runs.
        let _renewal = self.renew_while_running(conversation_id);
        // The call's trace context (this span's) is what the agent's span continues.
        let connect_span = tracing::info_span!(
            "connect",
            otel.kind = "client",
            endpoint = %endpoint.address,
            connection = endpoint.reached.mode(),
        );
        let mut stream = endpoint
            .client
            .connect(conversation_id, exec_id, start)
            .instrument(connect_span)
            .await
            .map_err(CallFailure::BeforeOutput)?;
        let stream_span = tracing::info_span!(
            "stream",
            frames = tracing::field::Empty,
            ended = tracing::field::Empty
        );
        let mut frames = 0;
        let mut first_output = None;
        let read = async {
            while let Some(batch) = stream.next().await {
                match batch {
                    Ok(messages) => {
                        frames += 1;
                        first_output.get_or_insert_with(|| call_started.elapsed());
                        outputs(messages);
                    }
                    Err(source) if frames == 0 => return Err(CallFailure::BeforeOutput(source)),
                    Err(source) => return Err(CallFailure::AfterOutput { frames, source }),
                }
            }
            Ok(())
        }
        .instrument(stream_span.clone())
        .await;
        stream_span.record("frames", frames);
        stream_span.record("ended", stream.ended());
        read?;
        Ok(ExecutionReport {
            sandbox: endpoint.handle.clone(),
            claim_to_ready: Duration::ZERO,
            first_output,
            total: Duration::ZERO,
            frames,
            ended: stream.ended(),
            re_resolved: false,
            reached: endpoint.reached,
            endpoint: endpoint.address.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code) -> ClientError {
        ClientError::from(tonic::Status::new(code, "connection refused"))
    }

    #[test]
    fn only_transport_failures_and_a_stale_pinned_agent_are_retried() {
        for code in [Code::Unavailable, Code::Unknown, Code::Cancelled] {
            assert!(retryable_before_output(&status(code), false), "{code:?}");
        }
        // The message says "connection refused", but the agent answered: final.
        for code in [
            Code::InvalidArgument,
            Code::ResourceExhausted,
            Code::DeadlineExceeded,
            Code::Unauthenticated,
        ] {
            assert!(!retryable_before_output(&status(code), true), "{code:?}");
        }
        assert!(retryable_before_output(
            &status(Code::PermissionDenied),
            true
        ));
        assert!(
            !retryable_before_output(&status(Code::PermissionDenied), false),
            "a fresh sandbox that refuses us is not someone else's"
        );
    }
}
