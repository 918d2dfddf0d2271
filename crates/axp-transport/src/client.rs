//! Calls an AXP agent: `Connect` streams its outputs, `HealthCheck` asks if it
//! is up.
//!
//! Unlike AX's Go client, which dials a new connection per call, one
//! [`AxpClient`] keeps one HTTP/2 channel and multiplexes every call over it;
//! clone it freely (clones share the channel).
//!
//! # Guarantees
//!
//! - Every frame is checked: a frame whose ids differ from the request's is
//!   [`ClientError::MismatchedIds`], a frame with no oneof set is
//!   [`ClientError::EmptyFrame`]; either ends the stream.
//! - [`Outputs`] ends after `end` (the rest of the stream is not read, as in
//!   AX) or on a clean close without `end` (older agents).
//! - The call's deadline covers the whole stream, not just its start: a
//!   server that stalls mid-stream yields [`ClientError::DeadlineExceeded`].
//! - Dropping [`Outputs`] cancels the call; the server sees the cancel.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures::{Stream, StreamExt};
use tokio::time::{Instant, Sleep};
use tonic::{
    Code, Request, Status, Streaming,
    codec::CompressionEncoding,
    metadata::{Ascii, MetadataKey, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tonic_health::pb::{
    HealthCheckRequest as GrpcHealthRequest, health_check_response::ServingStatus,
    health_client::HealthClient,
};

use crate::pb::{
    AgentRequest, AgentResponse, AgentStart, HealthCheckRequest, HealthCheckResponse, Message,
    agent_response, agent_service_client::AgentServiceClient,
};

/// How an [`AxpClient`] connects and calls.
#[derive(Clone)]
pub struct ClientOptions {
    /// Bound on establishing the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Bound on a whole `Connect` call, from request to `end`; `None` leaves
    /// it to the caller (AX's planner gives a sub-agent about 30–60 s).
    pub timeout: Option<Duration>,
    /// Largest message accepted from the agent, in bytes.
    pub max_decoding_message_size: usize,
    /// Largest message sent to the agent, in bytes.
    pub max_encoding_message_size: usize,
    /// Compress requests with gzip and ask for gzip-compressed responses.
    /// Off by default: most frames are a line of output, where compressing
    /// costs more time than it saves bytes (measured by `cargo xtask bench`).
    pub gzip: bool,
    /// TLS instead of plaintext h2c.
    pub tls: Option<TlsOptions>,
    /// Sent as `authorization: Bearer <token>` on AXP calls.
    pub bearer_token: Option<String>,
    /// HTTP/2 keep-alive pings, so a dead peer is noticed on an idle channel.
    pub keepalive: Option<Duration>,
    /// Extra metadata sent on every call, e.g. the agent-sandbox router's
    /// `x-sandbox-id` headers. Names are lower-case ASCII.
    pub metadata: Vec<(String, String)>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            // A pod on the cluster network answers in milliseconds; 5 s covers a
            // busy node without hiding a wrong address for long.
            connect_timeout: Duration::from_secs(5),
            timeout: None,
            // Matches the server's default so large outputs are not refused.
            max_decoding_message_size: 16 * 1024 * 1024,
            max_encoding_message_size: 16 * 1024 * 1024,
            gzip: false,
            tls: None,
            bearer_token: None,
            keepalive: Some(Duration::from_secs(30)),
            metadata: Vec::new(),
        }
    }
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("max_decoding_message_size", &self.max_decoding_message_size)
            .field("max_encoding_message_size", &self.max_encoding_message_size)
            .field("gzip", &self.gzip)
            .field("tls", &self.tls)
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("keepalive", &self.keepalive)
            .field("metadata", &self.metadata)
            .finish()
    }
}

/// TLS settings: a custom CA and, for mutual TLS, a client certificate.
#[derive(Clone, Default)]
pub struct TlsOptions {
    /// PEM CA bundle to trust instead of the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate and key, for mutual TLS.
    pub client_identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Name to verify the server certificate against, if not the host.
    pub domain: Option<String>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .field(
                "client_identity",
                &self.client_identity.as_ref().map(|_| "<pem>"),
            )
            .field("domain", &self.domain)
            .finish()
    }
}

/// Why a call to an agent failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The endpoint is not a valid URI.
    #[error("invalid agent endpoint {endpoint:?}")]
    InvalidEndpoint {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The TLS settings were rejected.
    #[error("invalid TLS settings for {endpoint}")]
    Tls {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The agent could not be reached.
    #[error("could not connect to agent at {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// A request id, the token or an extra header cannot be sent as gRPC metadata.
    #[error("{what} cannot be sent as gRPC metadata (it must be visible ASCII)")]
    InvalidMetadata { what: String },
    /// The connection for the call could not be made (refused, unreachable,
    /// TLS handshake failed): the agent never saw the request. Sent as
    /// `UNAVAILABLE` by gRPC.
    #[error("could not reach the agent: {message}")]
    Unreachable { message: String },
    /// The agent (or the connection) ended the call with a gRPC status.
    #[error("agent returned {code:?}: {message}")]
    Status { code: Code, message: String },
    /// A frame carried ids other than the request's.
    #[error(
        "agent sent a frame for conversation {got_conversation:?} / exec {got_exec:?}, \
         expected {expected_conversation:?} / {expected_exec:?}"
    )]
    MismatchedIds {
        expected_conversation: String,
        expected_exec: String,
        got_conversation: String,
        got_exec: String,
    },
    /// A frame had neither `outputs` nor `end` set.
    #[error("agent sent a frame with neither outputs nor end set")]
    EmptyFrame,
    /// The call's deadline passed before `end`.
    #[error("agent call exceeded its deadline of {timeout:?}")]
    DeadlineExceeded { timeout: Duration },
    /// The agent did not report SERVING in time.
    #[error("agent at {endpoint} was not serving after {waited:?} (last: {last})")]
    NotServing {
        endpoint: String,
        waited: Duration,
        last: String,
    },
}

impl ClientError {
    /// The gRPC code the call ended with, when it had one.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Status { code, .. } => Some(*code),
            Self::Unreachable { .. } => Some(Code::Unavailable),
            Self::DeadlineExceeded { .. } => Some(Code::DeadlineExceeded),
            _ => None,
        }
    }

    /// Whether the failure happened before the agent could have done anything:
    /// the connection was never made or was refused. Safe to retry elsewhere.
    pub fn is_connect_failure(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Unreachable { .. })
    }
}

/// Whether tonic built `status` from a failure to connect: its source chain
/// holds the connector's [`tonic::ConnectError`] (the type, not the wording,
/// says so).
fn is_connect_error(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        if cause.is::<tonic::ConnectError>() {
            return true;
        }
        source = cause.source();
    }
    false
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        let unreachable = is_connect_error(&status);
        // Transport failures arrive as a terse status ("tcp connect error") with the
        // reason ("Connection refused") only in the source chain: keep both.
        let mut message = status.message().to_owned();
        let mut source = std::error::Error::source(&status);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !message.contains(&cause_text) {
                message = format!("{message}: {cause_text}");
            }
            source = cause.source();
        }
        if unreachable {
            Self::Unreachable { message }
        } else {
            Self::Status {
                code: status.code(),
                message,
            }
        }
    }
}

/// A client of one AXP agent.
///
/// # Example
///
/// ```no_run
/// use axp_transport::{client::{AxpClient, ClientOptions}, content, pb::AgentStart};
/// use futures::StreamExt;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = AxpClient::new("http://10.0.0.7:8494", ClientOptions::default())?;
/// let start = AgentStart { subagent_prompt: "print(6 * 7)".into(), ..Default::default() };
/// let mut outputs = client.connect("conversation-1", "exec-1", start).await?;
/// while let Some(batch) = outputs.next().await {
///     for message in batch? {
///         println!("{}", content::text_of(&message).unwrap_or("<non-text>"));
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AxpClient {
    endpoint: String,
    channel: Channel,
    options: ClientOptions,
    bearer: Option<MetadataValue<Ascii>>,
    metadata: Vec<(MetadataKey<Ascii>, MetadataValue<Ascii>)>,
}

impl std::fmt::Debug for AxpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AxpClient")
            .field("endpoint", &self.endpoint)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl AxpClient {
    /// A client for `endpoint` (`http://host:port`, or `https://…` with
    /// [`ClientOptions::tls`]; a bare `host:port` means `http://`). Connects
    /// lazily, on the first call, and reconnects after failures.
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidEndpoint`], [`ClientError::Tls`] or
    /// [`ClientError::InvalidMetadata`] (a token that is not ASCII).
    pub fn new(endpoint: &str, options: ClientOptions) -> Result<Self, ClientError> {
        let endpoint = normalize_endpoint(endpoint, options.tls.is_some());
        let builder = Self::endpoint(&endpoint, &options)?;
        let bearer = options
            .bearer_token
            .as_deref()
            .map(|token| {
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| ClientError::InvalidMetadata {
                        what: "the bearer token".into(),
                    })
            })
            .transpose()?;
        let metadata = options
            .metadata
            .iter()
            .map(|(name, value)| {
                let invalid = || ClientError::InvalidMetadata {
                    what: format!("header {name:?}"),
                };
                let key = MetadataKey::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
                let value = value.parse().map_err(|_| invalid())?;
                Ok((key, value))
            })
            .collect::<Result<_, ClientError>>()?;
        Ok(Self {
            channel: builder.connect_lazy(),
            endpoint,
            options,
            bearer,
            metadata,
        })
    }

    /// Like [`AxpClient::new`], but connects now.
    ///
    /// # Errors
    ///
    /// As [`AxpClient::new`], plus [`ClientError::Connect`] when the agent
    /// cannot be reached within [`ClientOptions::connect_timeout`].
    pub async fn dial(endpoint: &str, options: ClientOptions) -> Result<Self, ClientError> {
        let mut client = Self::new(endpoint, options)?;
        let builder = Self::endpoint(&client.endpoint, &client.options)?;
        client.channel = builder
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                endpoint: client.endpoint.clone(),
                source,
            })?;
        Ok(client)
    }

    fn endpoint(endpoint: &str, options: &ClientOptions) -> Result<Endpoint, ClientError> {
        let mut builder = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|source| ClientError::InvalidEndpoint {
                endpoint: endpoint.to_owned(),
                source,
            })?
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(options.keepalive.unwrap_or(Duration::from_secs(3600)))
            .keep_alive_while_idle(options.keepalive.is_some());
        if let Some(tls) = &options.tls {
            let mut config = ClientTlsConfig::new();
            config = match &tls.ca_pem {
                Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
                None => config.with_native_roots(),
            };
            if let Some((cert, key)) = &tls.client_identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            if let Some(domain) = &tls.domain {
                config = config.domain_name(domain.clone());
            }
            builder = builder
                .tls_config(config)
                .map_err(|source| ClientError::Tls {
                    endpoint: endpoint.to_owned(),
                    source,
                })?;
        }
        Ok(builder)
    }

    /// The agent's address, as normalized.
    pub fn endpoint_uri(&self) -> &str {
        &self.endpoint
    }

    fn agent(&self) -> AgentServiceClient<Channel> {
        let mut client = AgentServiceClient::new(self.channel.clone())
            .max_decoding_message_size(self.options.max_decoding_message_size)
            .max_encoding_message_size(self.options.max_encoding_message_size);
        if self.options.gzip {
            client = client
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        client
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(bearer) = &self.bearer {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
        for (key, value) in &self.metadata {
            request.metadata_mut().insert(key.clone(), value.clone());
        }
        request
    }

    /// Runs one execution: sends `start` for `conversation_id`/`exec_id` and
    /// returns the agent's outputs as they arrive.
    ///
    /// # Errors
    ///
    /// [`ClientError::Status`] when the agent refuses the call (the code says
    /// why: `INVALID_ARGUMENT`, `PERMISSION_DENIED`, …) or cannot be reached
    /// (`UNAVAILABLE`); [`ClientError::InvalidMetadata`] for an exec id that
    /// cannot travel as metadata; [`ClientError::DeadlineExceeded`].
    pub async fn connect(
        &self,
        conversation_id: &str,
        exec_id: &str,
        start: AgentStart,
    ) -> Result<Outputs, ClientError> {
        let deadline = self.options.timeout.map(|t| (t, Instant::now() + t));
        let mut request = self.request(AgentRequest {
            conversation_id: conversation_id.to_owned(),
            exec_id: exec_id.to_owned(),
            start: Some(start),
        });
        let exec_header = exec_id.parse().map_err(|_| ClientError::InvalidMetadata {
            what: format!("exec id {exec_id:?}"),
        })?;
        request.metadata_mut().insert("execution-id", exec_header);
        if let Some((timeout, _)) = deadline {
            request.set_timeout(timeout);
        }
        let mut agent = self.agent();
        let call = agent.connect(request);
        let response = match deadline {
            Some((timeout, at)) => tokio::time::timeout_at(at, call)
                .await
                .map_err(|_| ClientError::DeadlineExceeded { timeout })??,
            None => call.await?,
        };
        Ok(Outputs {
            inner: Some(response.into_inner()),
            conversation_id: conversation_id.to_owned(),
            exec_id: exec_id.to_owned(),
            deadline: deadline
                .map(|(timeout, at)| (timeout, Box::pin(tokio::time::sleep_until(at)))),
            ended: false,
        })
    }

    /// Runs one execution to its end and returns every output message.
    ///
    /// # Errors
    ///
    /// As [`AxpClient::connect`], plus any error of the stream.
    pub async fn run(
        &self,
        conversation_id: &str,
        exec_id: &str,
        start: AgentStart,
    ) -> Result<Vec<Message>, ClientError> {
        let mut outputs = self.connect(conversation_id, exec_id, start).await?;
        let mut messages = Vec::new();
        while let Some(batch) = outputs.next().await {
            messages.extend(batch?);
        }
        Ok(messages)
    }

    /// AXP `HealthCheck`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Status`] when the call fails.
    pub async fn health_check(&self) -> Result<HealthCheckResponse, ClientError> {
        let mut request = self.request(HealthCheckRequest {});
        request.set_timeout(self.options.connect_timeout);
        Ok(self.agent().health_check(request).await?.into_inner())
    }

    /// Waits until the agent reports SERVING on `grpc.health.v1` (service
    /// `""`), or healthy on AXP `HealthCheck` for agents without the standard
    /// health service. Retries with bounded backoff.
    ///
    /// # Errors
    ///
    /// [`ClientError::NotServing`] with the last answer seen when `timeout`
    /// passes first.
    pub async fn wait_until_serving(&self, options: WaitOptions) -> Result<(), ClientError> {
        let started = Instant::now();
        let give_up = started + options.timeout;
        let mut backoff = options.initial_backoff;
        let mut use_axp = false;
        let mut health = HealthClient::new(self.channel.clone());
        loop {
            let last = if use_axp {
                match self.health_check().await {
                    Ok(answer) if answer.healthy => return Ok(()),
                    Ok(answer) => format!("AXP HealthCheck unhealthy: {}", answer.message),
                    Err(error) => error.to_string(),
                }
            } else {
                let mut request = Request::new(GrpcHealthRequest {
                    service: String::new(),
                });
                request.set_timeout(self.options.connect_timeout);
                match health.check(request).await {
                    Ok(answer) if answer.get_ref().status == ServingStatus::Serving as i32 => {
                        return Ok(());
                    }
                    Ok(answer) => format!("grpc.health.v1 status {:?}", answer.get_ref().status()),
                    Err(status) if status.code() == Code::Unimplemented => {
                        // No standard health service: older agents only have AXP's.
                        use_axp = true;
                        continue;
                    }
                    Err(status) => ClientError::from(status).to_string(),
                }
            };
            let now = Instant::now();
            if now >= give_up {
                return Err(ClientError::NotServing {
                    endpoint: self.endpoint.clone(),
                    waited: now - started,
                    last,
                });
            }
            tokio::time::sleep(backoff.min(give_up - now)).await;
            backoff = (backoff * 2).min(options.max_backoff);
        }
    }
}

/// How long and how often [`AxpClient::wait_until_serving`] asks.
#[derive(Debug, Clone, Copy)]
pub struct WaitOptions {
    /// Give up after this long.
    pub timeout: Duration,
    /// First pause between attempts; doubles each time.
    pub initial_backoff: Duration,
    /// Longest pause between attempts.
    pub max_backoff: Duration,
}

impl Default for WaitOptions {
    fn default() -> Self {
        Self {
            // A freshly started agent needs its interpreter up; 30 s is generous.
            timeout: Duration::from_secs(30),
            // Start fast: on loopback the agent is often ready within milliseconds.
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(1),
        }
    }
}

/// The outputs of one `Connect` call: one item per `outputs` frame.
///
/// Ends (`None`) after `end` or a clean close; [`Outputs::ended`] tells which.
#[must_use = "dropping Outputs cancels the call"]
pub struct Outputs {
    inner: Option<Streaming<AgentResponse>>,
    conversation_id: String,
    exec_id: String,
    deadline: Option<(Duration, Pin<Box<Sleep>>)>,
    ended: bool,
}

impl std::fmt::Debug for Outputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outputs")
            .field("conversation_id", &self.conversation_id)
            .field("exec_id", &self.exec_id)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Outputs {
    /// Whether the agent sent `end` (rather than closing without it).
    pub fn ended(&self) -> bool {
        self.ended
    }

    fn fail(&mut self, error: ClientError) -> Poll<Option<Result<Vec<Message>, ClientError>>> {
        // Dropping the stream resets the HTTP/2 stream: the server sees a cancel.
        self.inner = None;
        Poll::Ready(Some(Err(error)))
    }
}

impl Stream for Outputs {
    type Item = Result<Vec<Message>, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some((timeout, sleep)) = this.deadline.as_mut()
            && sleep.as_mut().poll(cx).is_ready()
        {
            let timeout = *timeout;
            return this.fail(ClientError::DeadlineExceeded { timeout });
        }
        let frame = match inner.poll_next_unpin(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                this.inner = None;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(status))) => {
                let error = match this.deadline.as_ref() {
                    Some((timeout, _)) if status.code() == Code::DeadlineExceeded => {
                        ClientError::DeadlineExceeded { timeout: *timeout }
                    }
                    _ => ClientError::from(status),
                };
                return this.fail(error);
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        if frame.conversation_id != this.conversation_id || frame.exec_id != this.exec_id {
            let error = ClientError::MismatchedIds {
                expected_conversation: this.conversation_id.clone(),
                expected_exec: this.exec_id.clone(),
                got_conversation: frame.conversation_id,
                got_exec: frame.exec_id,
            };
            return this.fail(error);
        }
        match frame.r#type {
            Some(agent_response::Type::Outputs(outputs)) => Poll::Ready(Some(Ok(outputs.messages))),
            Some(agent_response::Type::End(_)) => {
                this.ended = true;
                this.inner = None;
                Poll::Ready(None)
            }
            None => this.fail(ClientError::EmptyFrame),
        }
    }
}

/// Adds `http://` (or `https://`) to a bare `host:port`.
fn normalize_endpoint(endpoint: &str, tls: bool) -> String {
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else if tls {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_host_port_gets_a_scheme() {
        assert_eq!(
            normalize_endpoint("10.0.0.7:8494", false),
            "http://10.0.0.7:8494"
        );
        assert_eq!(normalize_endpoint("agent:443", true), "https://agent:443");
        assert_eq!(normalize_endpoint("http://a:1", true), "http://a:1");
    }

    #[test]
    fn a_refused_connection_counts_as_a_connect_failure_but_an_agent_status_does_not() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let refused = ClientError::from(Status::from_error(Box::new(tonic::ConnectError(
            Box::new(io),
        ))));
        assert!(refused.is_connect_failure(), "{refused:?}");
        assert_eq!(refused.code(), Some(Code::Unavailable));
        // Whatever an agent's status says, it came from the agent.
        let agent_says = ClientError::from(Status::unavailable(
            "tcp connect error: Connection refused (os error 111)",
        ));
        assert!(!agent_says.is_connect_failure(), "{agent_says:?}");
        assert_eq!(agent_says.code(), Some(Code::Unavailable));
    }

    #[test]
    fn an_invalid_endpoint_is_a_typed_error() {
        let error = AxpClient::new("http://bad host:1", ClientOptions::default()).unwrap_err();
        assert!(
            matches!(error, ClientError::InvalidEndpoint { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn client_options_debug_redacts_the_bearer_token() {
        let options = ClientOptions {
            bearer_token: Some("s3cret".into()),
            ..ClientOptions::default()
        };
        assert!(!format!("{options:?}").contains("s3cret"));
    }
}
