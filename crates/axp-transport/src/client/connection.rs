//! What every client shares: one lazily connected HTTP/2 channel with its TLS,
//! credentials and metadata, the `grpc.health.v1` wait, and the deadline that
//! covers a whole response stream.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::{Instant, Sleep};
use tonic::{
    Code, Request, Status,
    codec::CompressionEncoding,
    metadata::{Ascii, MetadataKey, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tonic_health::pb::{
    HealthCheckRequest as GrpcHealthRequest, health_check_response::ServingStatus,
    health_client::HealthClient,
};

use super::{ClientError, ClientOptions, WaitOptions};

/// One agent's channel and what every call on it carries. Clones share the channel.
#[derive(Clone)]
pub(super) struct Connection {
    pub(super) endpoint: String,
    pub(super) channel: Channel,
    pub(super) options: ClientOptions,
    bearer: Option<MetadataValue<Ascii>>,
    metadata: Vec<(MetadataKey<Ascii>, MetadataValue<Ascii>)>,
}

impl Connection {
    /// A lazily connecting channel to `endpoint` (a bare `host:port` gets a scheme).
    pub(super) fn new(endpoint: &str, options: ClientOptions) -> Result<Self, ClientError> {
        let endpoint = normalize_endpoint(endpoint, options.tls.is_some());
        let builder = Self::builder(&endpoint, &options)?;
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

    /// Like [`Connection::new`], but connects now.
    pub(super) async fn dial(endpoint: &str, options: ClientOptions) -> Result<Self, ClientError> {
        let mut connection = Self::new(endpoint, options)?;
        let builder = Self::builder(&connection.endpoint, &connection.options)?;
        connection.channel = builder
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                endpoint: connection.endpoint.clone(),
                source,
            })?;
        Ok(connection)
    }

    fn builder(endpoint: &str, options: &ClientOptions) -> Result<Endpoint, ClientError> {
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

    /// Applies the message limits and compression of the options to a generated client.
    pub(super) fn configure<C>(&self, client: C) -> C
    where
        C: Configurable,
    {
        let client = client
            .max_decoding(self.options.max_decoding_message_size)
            .max_encoding(self.options.max_encoding_message_size);
        if self.options.gzip {
            client.gzip()
        } else {
            client
        }
    }

    /// A request carrying the bearer token, the extra metadata and the current span's
    /// trace context.
    pub(super) fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        crate::trace_context::inject(&tracing::Span::current(), request.metadata_mut());
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

    /// The deadline of a call starting now, from [`ClientOptions::timeout`].
    pub(super) fn call_deadline(&self) -> Option<CallDeadline> {
        self.options.timeout.map(|timeout| CallDeadline {
            timeout,
            at: Instant::now() + timeout,
        })
    }

    /// `grpc.health.v1.Health/Check` for service `""`.
    pub(super) async fn serving_status(&self) -> Result<ServingStatus, Status> {
        let mut request = Request::new(GrpcHealthRequest {
            service: String::new(),
        });
        request.set_timeout(self.options.connect_timeout);
        let answer = HealthClient::new(self.channel.clone())
            .check(request)
            .await?;
        Ok(answer.get_ref().status())
    }

    /// Asks `grpc.health.v1` (service `""`) until SERVING, with bounded
    /// backoff. An agent without the health service (`UNIMPLEMENTED`) is
    /// asked through `without_grpc_health` from then on: `Ok` means ready,
    /// `Err` carries what it said.
    pub(super) async fn wait_until_serving<F, Fut>(
        &self,
        options: WaitOptions,
        mut without_grpc_health: F,
    ) -> Result<(), ClientError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let started = Instant::now();
        let give_up = started + options.timeout;
        let mut backoff = options.initial_backoff;
        let mut unimplemented = false;
        loop {
            let last = if unimplemented {
                match without_grpc_health().await {
                    Ok(()) => return Ok(()),
                    Err(last) => last,
                }
            } else {
                match self.serving_status().await {
                    Ok(ServingStatus::Serving) => return Ok(()),
                    Ok(status) => format!("grpc.health.v1 status {status:?}"),
                    Err(status) if status.code() == Code::Unimplemented => {
                        unimplemented = true;
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

/// The generated clients' builder methods, so [`Connection::configure`]
/// applies the options to each protocol's client alike.
pub(super) trait Configurable: Sized {
    fn max_decoding(self, limit: usize) -> Self;
    fn max_encoding(self, limit: usize) -> Self;
    fn gzip(self) -> Self;
}

macro_rules! configurable {
    ($client:ty) => {
        impl Configurable for $client {
            fn max_decoding(self, limit: usize) -> Self {
                self.max_decoding_message_size(limit)
            }
            fn max_encoding(self, limit: usize) -> Self {
                self.max_encoding_message_size(limit)
            }
            fn gzip(self) -> Self {
                self.send_compressed(CompressionEncoding::Gzip)
                    .accept_compressed(CompressionEncoding::Gzip)
            }
        }
    };
}

configurable!(crate::pb::agent_service_client::AgentServiceClient<Channel>);
configurable!(crate::pb::harness_service_client::HarnessServiceClient<Channel>);

/// A call's deadline: [`ClientOptions::timeout`] from the moment it started.
#[derive(Debug, Clone, Copy)]
pub(super) struct CallDeadline {
    pub(super) timeout: Duration,
    pub(super) at: Instant,
}

impl CallDeadline {
    /// Awaits `call` (the request, up to the response headers) within the deadline.
    pub(super) async fn bound<T>(
        deadline: Option<Self>,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, ClientError> {
        match deadline {
            Some(Self { timeout, at }) => tokio::time::timeout_at(at, call)
                .await
                .map_err(|_| ClientError::DeadlineExceeded { timeout })?
                .map_err(ClientError::from),
            None => call.await.map_err(ClientError::from),
        }
    }
}

/// The rest of a call's deadline, watched while its response stream is read.
pub(super) struct StreamDeadline {
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl StreamDeadline {
    pub(super) fn new(deadline: Option<CallDeadline>) -> Option<Self> {
        deadline.map(|d| Self {
            timeout: d.timeout,
            sleep: Box::pin(tokio::time::sleep_until(d.at)),
        })
    }

    /// [`ClientError::DeadlineExceeded`] once the deadline has passed.
    pub(super) fn poll_expired(
        deadline: &mut Option<Self>,
        cx: &mut Context<'_>,
    ) -> Option<ClientError> {
        let this = deadline.as_mut()?;
        match this.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Some(ClientError::DeadlineExceeded {
                timeout: this.timeout,
            }),
            Poll::Pending => None,
        }
    }

    /// A status that ended the stream; `DEADLINE_EXCEEDED` under our own
    /// deadline is reported as that deadline.
    pub(super) fn status_error(deadline: &Option<Self>, status: Status) -> ClientError {
        match deadline {
            Some(this) if status.code() == Code::DeadlineExceeded => {
                ClientError::DeadlineExceeded {
                    timeout: this.timeout,
                }
            }
            _ => ClientError::from(status),
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
}
