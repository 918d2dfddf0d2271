//! Serves an [`Agent`] over both AX agent protocols on one port, with
//! `grpc.health.v1` and server reflection (v1 and v1alpha) beside them.
//!
//! | Service | AX lineage | Shape |
//! |---|---|---|
//! | `ax.AgentService` | the fork with `subagent_prompt` (the AgentService era) | one `AgentRequest` in, `AgentResponse` frames out |
//! | `ax.HarnessService` | upstream google/ax since June 2026 (AgentService was removed there) | bidirectional: `start` / `cancel` in, `outputs` then one `end` out |
//!
//! The same [`Agent`] answers both; [`Execution::protocol`](crate::Execution::protocol)
//! says which one a call came on.
//!
//! # Guarantees
//!
//! On both protocols the server:
//! - echoes the request's ids on every frame (AgentService: `conversation_id`
//!   and `exec_id`; HarnessService: `conversation_id`) and never sends a frame
//!   with its oneof unset;
//! - sends exactly one `end` and nothing after it;
//! - cancels the execution (its [`CancellationToken`] fires and its output
//!   stream is dropped) when the client cancels or the caller's
//!   `grpc-timeout` passes;
//! - applies the same bearer-token check, execution limit
//!   ([`ServerOptions::max_concurrent_executions`]) and drain.
//!
//! ## AgentService
//!
//! A request without `start` is refused with `INVALID_ARGUMENT` before the
//! agent sees it. An agent error ends the call with its status instead of `end`.
//!
//! ## HarnessService
//!
//! The first request must be `start`; the server makes an exec id for it
//! (there is none on this wire). Outputs stream as `outputs` frames and one
//! `end` closes the stream: `COMPLETED` when the agent's outputs finish,
//! `FAILED` with `Error{code, description}` (the gRPC code number the same
//! failure gets on AgentService, and its message), or `CANCELED` after a
//! `cancel` frame (any reason) or a cancelled request stream. A client may
//! half-close right after `start`, as AX's does; a `cancel` after `end` is
//! never read.
//!
//! **The in-band rule:** once the server has decoded a first `HarnessRequest`
//! it knows the conversation to answer for, and every outcome from then on,
//! refusals included, is an `end` frame: a first request other than `start`,
//! a second `start`, a frame for another conversation, a bad
//! `harness_config`, the execution limit (`RESOURCE_EXHAUSTED`), a draining
//! server (`UNAVAILABLE`), a passed deadline (`DEADLINE_EXCEEDED`) and every
//! agent error all end `FAILED` with their code. Before that there is no
//! conversation id to echo, so the call ends with a gRPC status instead:
//! a caller without the bearer token (`UNAUTHENTICATED`, checked before
//! anything is read), a request stream that closes (`INVALID_ARGUMENT`) or
//! breaks before its first request, an undecodable or oversized first frame,
//! and a deadline or drain that comes while still waiting for it.
//!
//! # Shutdown
//!
//! On shutdown the server reports `NOT_SERVING`, refuses new calls with
//! `UNAVAILABLE`, lets running executions finish within
//! [`ServerOptions::grace_period`], and then cancels the rest, which end with
//! `UNAVAILABLE` (a status on AgentService, `end{FAILED}` on HarnessService).

mod agent_service;
mod execution;
mod harness_service;
mod health;
mod options;

use std::{future::Future, sync::Arc, time::Duration};

use futures::StreamExt;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{codec::CompressionEncoding, transport::Server};
use tonic_health::server::HealthReporter;

pub use health::HealthControl;
pub use options::{ServerOptions, ServerTls};

use crate::{agent::Agent, pb};
use agent_service::AxpService;
use execution::Shared;
use harness_service::HarnessServer;

/// The gRPC service name of AXP's AgentService, as the health service reports it.
pub const AGENT_SERVICE_NAME: &str = "ax.AgentService";

/// The gRPC service name of AXP's HarnessService, as the health service reports it.
pub const HARNESS_SERVICE_NAME: &str = "ax.HarnessService";

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
        let shared = Arc::new(Shared::new(&options));
        Self {
            agent: Arc::new(agent),
            options,
            health: HealthControl {
                reporter: HealthReporter::new(),
                shared,
            },
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

        // grpcurl before 1.8 and grpcio's client speak only v1alpha reflection.
        let reflection = reflection_builder()
            .build_v1()
            .map_err(ServeError::Reflection)?;
        let reflection_v1alpha = reflection_builder()
            .build_v1alpha()
            .map_err(ServeError::Reflection)?;

        let mut agent_service = pb::agent_service_server::AgentServiceServer::new(AxpService {
            agent: agent.clone(),
            shared: shared.clone(),
        })
        .max_decoding_message_size(options.max_message_size)
        .max_encoding_message_size(options.max_message_size);
        let mut harness_service =
            pb::harness_service_server::HarnessServiceServer::new(HarnessServer {
                agent,
                shared: shared.clone(),
                cancel_grace: options.cancel_grace,
            })
            .max_decoding_message_size(options.max_message_size)
            .max_encoding_message_size(options.max_message_size);
        if options.gzip {
            agent_service = agent_service
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip);
            harness_service = harness_service
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
            .add_service(reflection_v1alpha)
            .add_service(agent_service)
            .add_service(harness_service)
            .serve_with_incoming_shutdown(incoming, stop_accepting.clone().cancelled_owned());
        tokio::pin!(server);

        tokio::select! {
            result = &mut server => return result.map_err(ServeError::Serve),
            () = shutdown => {}
        }

        tracing::info!(grace = ?options.grace_period, "shutting down: draining executions");
        shared.draining.cancel();
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

/// Reflection over the AXP and health descriptors (one builder per version:
/// building consumes it).
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
