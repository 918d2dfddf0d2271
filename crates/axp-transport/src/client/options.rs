//! How a client connects and calls: one [`ClientOptions`] for both protocols.

use std::time::Duration;

/// How an [`AxpClient`](super::AxpClient) or [`HarnessClient`](super::HarnessClient)
/// connects and calls.
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
    /// Sent as `authorization: Bearer <token>` on agent calls.
    pub bearer_token: Option<String>,
    /// HTTP/2 keep-alive pings, so a dead peer is noticed on an idle channel.
    pub keepalive: Option<Duration>,
    /// Extra metadata sent on every call. Names are lower-case ASCII.
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

/// How long and how often `wait_until_serving` asks.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_options_debug_redacts_the_bearer_token() {
        let options = ClientOptions {
            bearer_token: Some("s3cret".into()),
            ..ClientOptions::default()
        };
        assert!(!format!("{options:?}").contains("s3cret"));
    }
}
