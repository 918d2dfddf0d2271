//! Serves an [`Agent`] over AXP, with `grpc.health.v1` and server reflection on
//! the same port.
//!
//! # Guarantees
//!
//! For every `Connect` call the server:
//! - rejects a request without `start` with `INVALID_ARGUMENT` before the agent sees it;
//! - echoes the request's `conversation_id` and `exec_id` on every frame and
//!   never sends a frame with its oneof unset;
//! - sends exactly one `end` after the agent's output stream finishes, and
//!   nothing after it; an agent error instead ends the call with its status;
//! - cancels the execution (its [`CancellationToken`] fires and its output
//!   stream is dropped) when the client cancels or the deadline passes.
//!
//! On shutdown it reports `NOT_SERVING`, refuses new calls with `UNAVAILABLE`,
//! lets running executions finish within [`ServerOptions::grace_period`], and
//! then cancels the rest, which end with `UNAVAILABLE`.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{Stream, StreamExt};
use subtle::ConstantTimeEq;
use tokio::{net::TcpListener, sync::Semaphore, time::Instant};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{
    Request, Response, Status, codec::CompressionEncoding, metadata::MetadataMap, transport::Server,
};
use tonic_health::{ServingStatus, server::HealthReporter};
use tracing::Instrument;

use crate::{
    agent::{Agent, Execution, OutputStream},
    pb::{
        self, AgentEnd, AgentOutputs, AgentRequest, AgentResponse, HealthCheckRequest,
        HealthCheckResponse, agent_response,
        agent_service_server::{AgentService, AgentServiceServer},
    },
};

/// The gRPC service name of AXP, as the health service reports it.
pub const AGENT_SERVICE_NAME: &str = "ax.AgentService";

/// How an [`AgentServer`] serves.
#[derive(Clone)]
pub struct ServerOptions {
    /// Executions running at once, across connections; further calls are
    /// refused with `RESOURCE_EXHAUSTED` rather than queued behind a deadline.
    pub max_concurrent_executions: usize,
    /// HTTP/2 streams one connection may have open.
    pub max_concurrent_streams: Option<u32>,
    /// Largest request or response message, in bytes.
    pub max_message_size: usize,
    /// How long running executions may take to finish once shutdown starts.
    pub grace_period: Duration,
    /// When set, `ax.AgentService` calls must carry `authorization: Bearer <token>`.
    /// Health and reflection stay open so probes work.
    pub bearer_token: Option<String>,
    /// Accept gzip-compressed requests and compress responses for clients that accept gzip.
    pub gzip: bool,
    /// Serve TLS instead of plaintext h2c.
    pub tls: Option<ServerTls>,
}

/// The server's TLS identity and, for mutual TLS, the CA its clients must present.
#[derive(Clone)]
pub struct ServerTls {
    /// PEM certificate chain.
    pub cert_pem: Vec<u8>,
    /// PEM private key.
    pub key_pem: Vec<u8>,
    /// PEM CA bundle; when set, clients must present a certificate it signed.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mutual", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            // Plenty for one sandbox; a bound so a stuck caller cannot pile up work.
            max_concurrent_executions: 64,
            max_concurrent_streams: Some(256),
            // gRPC's 4 MiB default is small for code and its output; 16 MiB matches
            // what AX sends in practice with room to spare.
            max_message_size: 16 * 1024 * 1024,
            // Kubernetes waits 30 s (terminationGracePeriodSeconds) before SIGKILL;
            // finish inside it.
            grace_period: Duration::from_secs(25),
            bearer_token: None,
            gzip: true,
            tls: None,
        }
    }
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("max_concurrent_executions", &self.max_concurrent_executions)
            .field("max_concurrent_streams", &self.max_concurrent_streams)
            .field("max_message_size", &self.max_message_size)
            .field("grace_period", &self.grace_period)
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("gzip", &self.gzip)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The reflection service could not load the AXP descriptors.
    #[error("could not build the gRPC reflection service")]
    Reflection(#[source] tonic_reflection::server::Error),
    /// The TLS settings were rejected.
    #[error("invalid server TLS settings")]
    Tls(#[source] tonic::transport::Error),
    /// The gRPC server stopped with an error.
    #[error("the gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
}

/// Turns the server's readiness on and off, for `grpc.health.v1` (services
/// `""` and `ax.AgentService`) and AXP `HealthCheck`.
#[derive(Clone)]
pub struct HealthControl {
    reporter: HealthReporter,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for HealthControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthControl")
            .field("serving", &self.shared.serving.load(Ordering::Relaxed))
            .finish()
    }
}

impl HealthControl {
    /// Reports SERVING: the agent is ready to run work.
    pub async fn set_serving(&self) {
        self.set(true).await;
    }

    /// Reports NOT_SERVING: probes fail, so Kubernetes stops sending traffic.
    pub async fn set_not_serving(&self) {
        self.set(false).await;
    }

    /// Whether SERVING is being reported.
    pub fn is_serving(&self) -> bool {
        self.shared.serving.load(Ordering::SeqCst)
    }

    async fn set(&self, serving: bool) {
        self.shared.serving.store(serving, Ordering::SeqCst);
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in ["", AGENT_SERVICE_NAME] {
            self.reporter.set_service_status(service, status).await;
        }
    }
}

/// State shared by the service, the health control and the serve loop.
struct Shared {
    serving: AtomicBool,
    shutting_down: AtomicBool,
    /// Parent of every execution's token: cancelled when the grace period ends.
    executions: CancellationToken,
    permits: Arc<Semaphore>,
    bearer: Option<Vec<u8>>,
}

/// An [`Agent`] ready to be served.
///
/// # Example
///
/// ```no_run
/// # use axp_transport::{Agent, AgentError, Execution, OutputStream};
/// # struct MyAgent;
/// # impl Agent for MyAgent {
/// #     async fn execute(&self, _: Execution) -> Result<OutputStream, AgentError> { todo!() }
/// # }
/// use axp_transport::server::{AgentServer, ServerOptions};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let server = AgentServer::new(MyAgent, ServerOptions::default());
/// let health = server.health();
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:8494").await?;
/// tokio::spawn(async move { health.set_serving().await });
/// server.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
pub struct AgentServer<A: Agent> {
    agent: Arc<A>,
    options: ServerOptions,
    health: HealthControl,
}

impl<A: Agent> std::fmt::Debug for AgentServer<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentServer")
            .field("options", &self.options)
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

impl<A: Agent> AgentServer<A> {
    /// Wraps `agent`. Health starts NOT_SERVING until [`HealthControl::set_serving`].
    pub fn new(agent: A, options: ServerOptions) -> Self {
        let reporter = HealthReporter::new();
        let shared = Arc::new(Shared {
            serving: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            executions: CancellationToken::new(),
            permits: Arc::new(Semaphore::new(options.max_concurrent_executions)),
            bearer: options.bearer_token.as_ref().map(|t| t.as_bytes().to_vec()),
        });
        Self {
            agent: Arc::new(agent),
            options,
            health: HealthControl { reporter, shared },
        }
    }

    /// The switch for this server's health status.
    pub fn health(&self) -> HealthControl {
        self.health.clone()
    }

    /// Serves on `listener` until `shutdown` resolves, then drains.
    ///
    /// # Errors
    ///
    /// [`ServeError`] when the services cannot be built or the server fails.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Self {
            agent,
            options,
            health,
        } = self;
        let health_service = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(health.reporter.clone()),
        );
        // Start NOT_SERVING explicitly: the reporter knows nothing of "" until told.
        if !health.is_serving() {
            health.set_not_serving().await;
        }
        let shared = health.shared.clone();

        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(ServeError::Reflection)?;

        let mut agent_service = AgentServiceServer::new(AxpService {
            agent,
            shared: shared.clone(),
        })
        .max_decoding_message_size(options.max_message_size)
        .max_encoding_message_size(options.max_message_size);
        if options.gzip {
            agent_service = agent_service
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip);
        }

        // Small frames are the norm (a line of output); Nagle would add up to 40 ms.
        let incoming = TcpListenerStream::new(listener).map(|conn| {
            if let Ok(stream) = &conn {
                let _ = stream.set_nodelay(true);
            }
            conn
        });

        let stop_accepting = CancellationToken::new();
        let mut builder = Server::builder();
        if let Some(tls) = &options.tls {
            let mut config = tonic::transport::ServerTlsConfig::new().identity(
                tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem),
            );
            if let Some(ca) = &tls.client_ca_pem {
                config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
            }
            builder = builder.tls_config(config).map_err(ServeError::Tls)?;
        }
        let server = builder
            .max_concurrent_streams(options.max_concurrent_streams)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(agent_service)
            .serve_with_incoming_shutdown(incoming, stop_accepting.clone().cancelled_owned());
        tokio::pin!(server);

        tokio::select! {
            result = &mut server => return result.map_err(ServeError::Serve),
            () = shutdown => {}
        }

        tracing::info!(grace = ?options.grace_period, "shutting down: draining executions");
        shared.shutting_down.store(true, Ordering::SeqCst);
        health.set_not_serving().await;
        stop_accepting.cancel();
        if let Ok(result) = tokio::time::timeout(options.grace_period, &mut server).await {
            return result.map_err(ServeError::Serve);
        }
        tracing::warn!("grace period over: cancelling running executions");
        shared.executions.cancel();
        // Cancelled streams end with a status at once; this only bounds a stuck peer.
        match tokio::time::timeout(Duration::from_secs(5), &mut server).await {
            Ok(result) => result.map_err(ServeError::Serve),
            Err(_) => Ok(()),
        }
    }
}

/// The tonic service: checks the request, runs the agent, frames its outputs.
struct AxpService<A> {
    agent: Arc<A>,
    shared: Arc<Shared>,
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<AgentResponse, Status>> + Send>>;

impl<A> AxpService<A> {
    fn authorize(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let Some(expected) = &self.shared.bearer else {
            return Ok(());
        };
        let presented = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>`"))?;
        if bool::from(presented.as_bytes().ct_eq(expected)) {
            Ok(())
        } else {
            Err(Status::unauthenticated("bearer token does not match"))
        }
    }
}

#[tonic::async_trait]
impl<A: Agent> AgentService for AxpService<A> {
    type ConnectStream = FrameStream;

    async fn connect(
        &self,
        request: Request<AgentRequest>,
    ) -> Result<Response<FrameStream>, Status> {
        self.authorize(request.metadata())?;
        if self.shared.shutting_down.load(Ordering::SeqCst) {
            return Err(Status::unavailable("agent server is shutting down"));
        }
        let permit = self
            .shared
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Status::resource_exhausted("agent is at its execution limit; retry later")
            })?;
        let deadline = grpc_timeout(request.metadata()).map(|d| Instant::now() + d);
        let (metadata, _, request) = request.into_parts();
        let AgentRequest {
            conversation_id,
            exec_id,
            start,
        } = request;
        let start = start.ok_or_else(|| {
            Status::invalid_argument("AgentRequest.start is missing: send exactly one AgentStart")
        })?;

        let span = tracing::info_span!("axp.connect", %conversation_id, %exec_id);
        let cancelled = self.shared.executions.child_token();
        let execution = Execution {
            conversation_id: conversation_id.clone(),
            exec_id: exec_id.clone(),
            start,
            metadata,
            cancelled: cancelled.clone(),
            deadline,
        };
        let started = {
            let agent = self.agent.clone();
            let execute = async move { agent.execute(execution).await }.instrument(span.clone());
            let guard = cancelled.clone().drop_guard();
            let result = tokio::select! {
                result = execute => result.map_err(Status::from),
                () = sleep_until(deadline) => Err(Status::deadline_exceeded("the call's deadline passed before the agent started")),
                () = cancelled.cancelled() => Err(Status::unavailable("agent server is shutting down")),
            };
            // The guard cancels the token if this future is dropped (client went away).
            guard.disarm();
            result
        };
        let outputs = match started {
            Ok(outputs) => outputs,
            Err(status) => {
                cancelled.cancel();
                tracing::info!(parent: &span, code = ?status.code(), "execution refused");
                return Err(status);
            }
        };
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
        self.authorize(request.metadata())?;
        if !self.shared.serving.load(Ordering::SeqCst) {
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

/// What one running execution holds until its stream ends.
struct Run {
    cancelled: CancellationToken,
    deadline: Option<Instant>,
    permit: tokio::sync::OwnedSemaphorePermit,
    span: tracing::Span,
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

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Parses the `grpc-timeout` header (`<digits><unit>`, unit one of `HMSmun`).
fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_timeout(value: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", value.parse().unwrap());
        metadata
    }

    #[test]
    fn grpc_timeout_understands_every_unit() {
        assert_eq!(
            grpc_timeout(&with_timeout("2H")),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(
            grpc_timeout(&with_timeout("3M")),
            Some(Duration::from_secs(180))
        );
        assert_eq!(
            grpc_timeout(&with_timeout("5S")),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            grpc_timeout(&with_timeout("250m")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            grpc_timeout(&with_timeout("7u")),
            Some(Duration::from_micros(7))
        );
        assert_eq!(
            grpc_timeout(&with_timeout("9n")),
            Some(Duration::from_nanos(9))
        );
    }

    #[test]
    fn grpc_timeout_ignores_malformed_values() {
        for bad in ["", "S", "10", "10x", "-5S", "1234567890S"] {
            assert_eq!(grpc_timeout(&with_timeout(bad)), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&MetadataMap::new()), None);
    }

    #[test]
    fn server_options_debug_redacts_the_bearer_token() {
        let options = ServerOptions {
            bearer_token: Some("s3cret".into()),
            ..ServerOptions::default()
        };
        let shown = format!("{options:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }
}
