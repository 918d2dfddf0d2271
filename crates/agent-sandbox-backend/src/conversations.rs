//! What the backend remembers per conversation: a lock that serializes its
//! executions, and the endpoint of its sandbox once resolved.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex as StdMutex, MutexGuard, PoisonError},
};

use sandbox_claim::SandboxHandle;
use tokio::{sync::Mutex, time::Instant};

use crate::{
    client::AgentClient,
    error::SandboxAgentError,
    execution::Reached,
    metrics::BackendMetrics,
    options::{ConnectionMode, SandboxAgentOptions},
    portforward::Tunnel,
};

/// A conversation's sandbox, once resolved.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) handle: SandboxHandle,
    pub(crate) client: AgentClient,
    pub(crate) address: String,
    pub(crate) renewed_at: Instant,
    /// How the agent is reached.
    pub(crate) reached: Reached,
    /// The conversation's port-forward (connection `port-forward`); stops when dropped.
    pub(crate) tunnel: Option<Tunnel>,
}

impl Endpoint {
    /// A client for the agent of `handle`: at `podIP:port`, or at the local end of a
    /// port-forward to its pod.
    ///
    /// With `port-forward`, the tunnel's local listener is opened here (on `kube`).
    pub(crate) fn new(
        handle: SandboxHandle,
        options: &SandboxAgentOptions,
        kube: &kube::Client,
    ) -> Result<Self, SandboxAgentError> {
        let pod = SocketAddr::new(handle.pod_ip, options.port);
        let mut tunnel = None;
        let mut reached = Reached::Direct;
        let (address, client_options) = match &options.connection {
            ConnectionMode::Direct => (format!("http://{pod}"), options.client.clone()),
            ConnectionMode::PortForward => {
                let opened = Tunnel::open(
                    kube.clone(),
                    &handle.namespace,
                    &handle.pod_name,
                    options.port,
                )
                .map_err(|source| SandboxAgentError::PortForward {
                    claim: handle.claim_name.clone(),
                    pod: format!("{}/{}", handle.namespace, handle.pod_name),
                    source: Box::new(source),
                })?;
                let local = opened.local();
                reached = Reached::PortForward { local };
                tunnel = Some(opened);
                (format!("http://{local}"), options.client.clone())
            }
        };
        let client =
            AgentClient::new(options.protocol, &address, client_options).map_err(|source| {
                SandboxAgentError::Connect {
                    claim: handle.claim_name.clone(),
                    endpoint: address.clone(),
                    source: Box::new(source),
                }
            })?;
        Ok(Self {
            handle,
            client,
            address,
            renewed_at: Instant::now(),
            reached,
            tunnel,
        })
    }

    /// Forgets the endpoint; a port-forward stops accepting before this returns.
    pub(crate) async fn close(self) {
        if let Some(tunnel) = self.tunnel {
            tunnel.close().await;
        }
    }

    /// The step a call that failed before any output failed in: the port-forward, when it
    /// recorded a failure, else reaching the agent.
    pub(crate) fn connect_error(self, source: axp_transport::ClientError) -> SandboxAgentError {
        if let Some(error) = self.tunnel.as_ref().and_then(Tunnel::take_error) {
            return SandboxAgentError::PortForward {
                claim: self.handle.claim_name.clone(),
                pod: format!("{}/{}", self.handle.namespace, self.handle.pod_name),
                source: Box::new(error),
            };
        }
        SandboxAgentError::Connect {
            claim: self.handle.claim_name.clone(),
            endpoint: self.address.clone(),
            source: Box::new(source),
        }
    }
}

/// One conversation: its lock serializes executions; `None` until resolved.
pub(crate) type Slot = Arc<Mutex<Option<Endpoint>>>;

/// The conversations a backend holds, by id.
#[derive(Debug)]
pub(crate) struct Conversations {
    slots: StdMutex<HashMap<String, Slot>>,
    /// `active_conversations` follows the map.
    metrics: BackendMetrics,
}

impl Conversations {
    pub(crate) fn new(metrics: BackendMetrics) -> Self {
        Self {
            slots: StdMutex::default(),
            metrics,
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        // Every critical section is one map operation: a panic elsewhere cannot
        // leave the map half-updated, so a poisoned lock is still consistent.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The conversation's slot, created empty on first use.
    pub(crate) fn slot(&self, conversation_id: &str) -> Slot {
        self.map()
            .entry(conversation_id.to_owned())
            .or_insert_with(|| {
                self.metrics.conversation_opened();
                Slot::default()
            })
            .clone()
    }

    /// Drops the conversation, unless its slot was replaced meanwhile (a new
    /// execution of the same conversation already started over).
    pub(crate) fn forget(&self, conversation_id: &str, slot: &Slot) {
        let mut map = self.map();
        if map
            .get(conversation_id)
            .is_some_and(|current| Arc::ptr_eq(current, slot))
        {
            map.remove(conversation_id);
            self.metrics.conversation_closed();
        }
    }

    /// The ids of the conversations held now.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }
}

impl Drop for Conversations {
    fn drop(&mut self) {
        // A backend dropped without `close` holds its conversations no longer.
        for _ in 0..self.map().len() {
            self.metrics.conversation_closed();
        }
    }
}
