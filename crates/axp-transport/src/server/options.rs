//! How an [`AgentServer`](super::AgentServer) serves: limits, drain, auth, TLS.

use std::time::Duration;

/// How an [`AgentServer`](super::AgentServer) serves.
#[derive(Clone)]
pub struct ServerOptions {
    /// Executions running at once, across connections and protocols; further
    /// calls are refused with `RESOURCE_EXHAUSTED` rather than queued behind a deadline.
    pub max_concurrent_executions: usize,
    /// HTTP/2 streams one connection may have open.
    pub max_concurrent_streams: Option<u32>,
    /// Largest request or response message, in bytes.
    pub max_message_size: usize,
    /// How long running executions may take to finish once shutdown starts.
    pub grace_period: Duration,
    /// How long an execution stopped by a HarnessService `cancel` frame may
    /// take to wind down (its outputs are still forwarded) before
    /// `end{CANCELED}` is sent regardless.
    pub cancel_grace: Duration,
    /// When set, `ax.AgentService` and `ax.HarnessService` calls must carry
    /// `authorization: Bearer <token>`. Health and reflection stay open so probes work.
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
            // A cancel should be acknowledged promptly; an agent that honours its
            // token stops well within this (the reference agent interrupts at once
            // and kills a stuck cell after 500 ms).
            cancel_grace: Duration::from_secs(1),
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
            .field("cancel_grace", &self.cancel_grace)
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("gzip", &self.gzip)
            .field("tls", &self.tls)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
