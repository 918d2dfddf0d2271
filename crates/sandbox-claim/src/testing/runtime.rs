//! What a "pod" is in the fake cluster.

use futures::future::BoxFuture;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};

/// What the simulated controller asks a runtime to start.
#[derive(Clone, Debug)]
pub struct PodRequest {
    /// Namespace of the sandbox.
    pub namespace: String,
    /// Name of the Sandbox object.
    pub sandbox_name: String,
    /// Name the pod gets (the sandbox name, as upstream).
    pub pod_name: String,
    /// The template the sandbox was stamped from.
    pub template: Option<String>,
    /// The warm pool it was created for, if any.
    pub warm_pool: Option<String>,
    /// `spec.podTemplate` of the Sandbox, as JSON.
    pub pod_template: serde_json::Value,
}

/// A started pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodStarted {
    /// Its IP (what `status.podIPs` reports).
    pub ip: IpAddr,
    /// Its name.
    pub pod_name: String,
}

/// A pod runtime failed to start a pod; the sandbox reports `PodFailed`.
#[derive(Debug, thiserror::Error)]
#[error("pod runtime failed to start pod: {message}")]
pub struct PodRuntimeError {
    /// What went wrong.
    pub message: String,
}

/// Decides what a pod is: nothing (tests that bring their own server), a local process,
/// a container…
pub trait PodRuntime: Send + Sync + 'static {
    /// Starts the pod for a sandbox and returns where it listens.
    fn start<'a>(
        &'a self,
        request: &'a PodRequest,
    ) -> BoxFuture<'a, Result<PodStarted, PodRuntimeError>>;

    /// Stops a pod (sandbox deleted, expired or its claim released). Must tolerate unknown
    /// pods.
    fn stop<'a>(&'a self, namespace: &'a str, pod_name: &'a str) -> BoxFuture<'a, ()>;
}

/// Starts nothing; hands out `127.0.0.2`, `127.0.0.3`, … (then `127.0.1.x`, …).
#[derive(Debug, Default)]
pub struct LoopbackRuntime {
    next: AtomicU32,
}

impl LoopbackRuntime {
    /// A runtime whose first address is `127.0.0.2`.
    pub fn new() -> Self {
        Self::default()
    }

    fn next_ip(&self) -> IpAddr {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // Skip .0, .1 and .255 in each /24.
        let host = n % 253 + 2;
        let net = (n / 253) % 65536;
        IpAddr::V4(Ipv4Addr::new(
            127,
            (net >> 8) as u8,
            (net & 0xff) as u8,
            host as u8,
        ))
    }
}

impl PodRuntime for LoopbackRuntime {
    fn start<'a>(
        &'a self,
        request: &'a PodRequest,
    ) -> BoxFuture<'a, Result<PodStarted, PodRuntimeError>> {
        let started = PodStarted {
            ip: self.next_ip(),
            pod_name: request.pod_name.clone(),
        };
        Box::pin(async move { Ok(started) })
    }

    fn stop<'a>(&'a self, _namespace: &'a str, _pod_name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_are_distinct_and_valid() {
        let r = LoopbackRuntime::new();
        let ips: Vec<IpAddr> = (0..600).map(|_| r.next_ip()).collect();
        assert_eq!(ips[0], "127.0.0.2".parse::<IpAddr>().unwrap());
        let set: std::collections::HashSet<_> = ips.iter().collect();
        assert_eq!(set.len(), 600);
    }
}
