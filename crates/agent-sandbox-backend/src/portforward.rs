//! The port-forward connection mode ([`ConnectionMode::PortForward`](crate::ConnectionMode)):
//! for controllers outside the cluster, where pod IPs are not routable.
//!
//! Each conversation gets one [`Tunnel`]: a TCP listener on `127.0.0.1:0` that the AXP client
//! dials. Every connection it accepts opens its own Kubernetes port-forward
//! (`pods/{name}/portforward`, kube's WebSocket client) to the agent's port in the sandbox's
//! pod and copies bytes both ways, since each gRPC connection needs a byte stream of its own.
//! The client keeps its HTTP/2 connection across the conversation's executions, so one
//! port-forward usually carries them all. The tunnel stops accepting when the conversation is
//! released, the backend closed, or the tunnel dropped.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::{
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
};

/// Why a port-forward to a sandbox's pod failed, by step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PortForwardError {
    /// The local listener the AXP client dials could not be bound.
    #[error("could not listen on 127.0.0.1 for the port-forward")]
    Bind(#[source] std::io::Error),
    /// The API server refused or failed the port-forward request (`pods/{pod}/portforward`).
    #[error("could not open a port-forward to pod {namespace}/{pod} port {port}")]
    Open {
        /// The pod's namespace.
        namespace: String,
        /// The pod.
        pod: String,
        /// The agent's port in the pod.
        port: u16,
        /// What kube reported (an API `Status` such as 403 or 404, or the WebSocket upgrade).
        #[source]
        source: kube::Error,
    },
    /// The port-forward came up without a stream for the port.
    #[error("the port-forward to pod {namespace}/{pod} gave no stream for port {port}")]
    NoStream {
        /// The pod's namespace.
        namespace: String,
        /// The pod.
        pod: String,
        /// The agent's port in the pod.
        port: u16,
    },
    /// The kubelet could not connect to the port in the pod (nothing listens there, say).
    #[error("pod {namespace}/{pod} port {port} refused the forwarded connection: {message}")]
    Refused {
        /// The pod's namespace.
        namespace: String,
        /// The pod.
        pod: String,
        /// The agent's port in the pod.
        port: u16,
        /// The message of the port-forward's error channel.
        message: String,
    },
}

/// Where a tunnel forwards to.
#[derive(Debug, Clone)]
struct Target {
    pods: Api<Pod>,
    namespace: String,
    pod: String,
    port: u16,
}

/// One conversation's port-forward: a local listener whose connections are forwarded to
/// `pod:port`. Dropping it stops the listener and the connections it carries.
#[derive(Debug)]
pub(crate) struct Tunnel {
    local: SocketAddr,
    /// The last failure of a forwarded connection, for the execution's error.
    last_error: Arc<Mutex<Option<PortForwardError>>>,
    task: JoinHandle<()>,
}

impl Tunnel {
    /// Listens on `127.0.0.1:0` and forwards each accepted connection to `port` of `pod`.
    /// Nothing is asked of the API server until the first connection.
    ///
    /// Must be called inside a tokio runtime.
    pub(crate) fn open(
        kube: kube::Client,
        namespace: &str,
        pod: &str,
        port: u16,
    ) -> Result<Self, PortForwardError> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(TcpListener::from_std)
            .map_err(PortForwardError::Bind)?;
        let local = listener.local_addr().map_err(PortForwardError::Bind)?;
        let target = Target {
            pods: Api::namespaced(kube, namespace),
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
            port,
        };
        let last_error = Arc::new(Mutex::new(None));
        let task = tokio::spawn(serve(listener, target, last_error.clone()));
        tracing::debug!(%local, namespace, pod, port, "port-forward tunnel listening");
        Ok(Self {
            local,
            last_error,
            task,
        })
    }

    /// The local address the AXP client dials.
    pub(crate) fn local(&self) -> SocketAddr {
        self.local
    }

    /// The last failure of a forwarded connection, taken (so it is reported once).
    pub(crate) fn take_error(&self) -> Option<PortForwardError> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Stops accepting, ends the forwarded connections and waits until the listener is closed.
    pub(crate) async fn close(mut self) {
        self.task.abort();
        // Aborted (or already ended): either way the listener has been dropped.
        let _ = (&mut self.task).await;
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts connections until aborted; each is forwarded on its own port-forward.
async fn serve(
    listener: TcpListener,
    target: Target,
    last_error: Arc<Mutex<Option<PortForwardError>>>,
) {
    // Dropped with this task: aborting the tunnel ends its forwarded connections too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((socket, _)) = accepted else { continue };
                let target = target.clone();
                let last_error = last_error.clone();
                connections.spawn(async move {
                    if let Err(error) = forward(socket, &target).await {
                        tracing::warn!(pod = %target.pod, port = target.port, error = %error, "port-forward connection failed");
                        *last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Forwards one local connection over a new port-forward until either side closes.
async fn forward(mut socket: TcpStream, target: &Target) -> Result<(), PortForwardError> {
    let (namespace, pod, port) = (&target.namespace, &target.pod, target.port);
    let mut forwarder = target
        .pods
        .portforward(pod, &[port])
        .await
        .map_err(|source| PortForwardError::Open {
            namespace: namespace.clone(),
            pod: pod.clone(),
            port,
            source,
        })?;
    let Some(mut upstream) = forwarder.take_stream(port) else {
        forwarder.abort();
        return Err(PortForwardError::NoStream {
            namespace: namespace.clone(),
            pod: pod.clone(),
            port,
        });
    };
    let refused = forwarder.take_error(port);
    let refused = async move {
        match refused {
            Some(message) => message.await,
            None => None,
        }
    };
    let result = tokio::select! {
        // Either side closing ends the connection; the AXP client sees it and reconnects.
        _ = tokio::io::copy_bidirectional(&mut socket, &mut upstream) => Ok(()),
        Some(message) = refused => Err(PortForwardError::Refused {
            namespace: namespace.clone(),
            pod: pod.clone(),
            port,
            message,
        }),
    };
    forwarder.abort();
    result
}
