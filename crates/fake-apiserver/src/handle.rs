//! [`FakeApiServer`]: the handle tests hold.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::crd::{self, Registry, Resource};
use crate::fault::{Fault, FaultCounts, FaultId, Faults};
use crate::kubeconfig;
use crate::observe::{WatchCount, Write};
use crate::options::FakeApiServerOptions;
use crate::requests::RequestLog;
use crate::server::{self, Shared, State};
use crate::store::Store;

/// Starting the server or installing a CRD failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding `127.0.0.1:PORT` failed (the port is taken, say).
    #[error("binding 127.0.0.1:{port}")]
    Bind {
        /// The port asked for ([`FakeApiServerOptions::port`]; 0 = any).
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CRD could not be parsed or served.
    #[error("installing CRD")]
    InstallCrd(#[source] crd::Error),
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// A fake Kubernetes API server listening on `127.0.0.1`, serving installed CRDs.
///
/// Cloning is cheap; the server stops when [`shutdown`](Self::shutdown) is called or the last
/// clone is dropped. Open watches end at that point.
#[derive(Debug, Clone)]
pub struct FakeApiServer {
    inner: Arc<Inner>,
}

impl FakeApiServer {
    /// Starts a server with default [options](FakeApiServerOptions) on an ephemeral port.
    ///
    /// # Errors
    ///
    /// [`Error::Bind`] when no port can be bound.
    pub async fn start() -> Result<Self, Error> {
        Self::start_with(FakeApiServerOptions::default()).await
    }

    /// Starts a server with the given options, on [`FakeApiServerOptions::port`] (an
    /// ephemeral port by default).
    ///
    /// # Errors
    ///
    /// [`Error::Bind`] when the port cannot be bound.
    pub async fn start_with(options: FakeApiServerOptions) -> Result<Self, Error> {
        let port = options.port;
        let bind = |source| Error::Bind { port, source };
        let listener = TcpListener::bind(("127.0.0.1", port)).await.map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                crds: Registry::with_builtins(),
                store: Store::new(options.event_history),
                faults: Faults::default(),
                requests: RequestLog::default(),
            }),
            options,
            addr,
            shutdown: shutdown_rx.clone(),
            observer: Default::default(),
        });
        let task = tokio::spawn(server::serve(listener, shared.clone(), shutdown_rx));
        tracing::debug!(%addr, "fake API server listening");
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                shutdown,
                task: Mutex::new(Some(task)),
            }),
        })
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.shared.addr)
    }

    /// A kubeconfig whose current context points at this server with `namespace` as default.
    pub fn kubeconfig_yaml(&self, namespace: &str) -> String {
        kubeconfig::render(&self.url(), namespace)
    }

    /// Writes [`kubeconfig_yaml`](Self::kubeconfig_yaml) to `path`.
    ///
    /// # Errors
    ///
    /// When the file cannot be written.
    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml(namespace))
    }

    /// A kube client for this server with `namespace` as its default namespace.
    ///
    /// Must be called inside a tokio runtime (the client spawns its buffer worker).
    ///
    /// # Errors
    ///
    /// When kube cannot build its HTTP stack.
    pub fn try_client(&self, namespace: &str) -> Result<kube::Client, kube::Error> {
        let url = self
            .url()
            .parse::<http::Uri>()
            .map_err(|e| kube::Error::Service(Box::new(e)))?;
        let mut config = kube::Config::new(url);
        config.default_namespace = namespace.to_owned();
        kube::Client::try_from(config)
    }

    /// A kube client for this server with `namespace` as its default namespace.
    ///
    /// Must be called inside a tokio runtime (the client spawns its buffer worker).
    ///
    /// # Panics
    ///
    /// When kube cannot build its HTTP stack for a plain `http://127.0.0.1` URL, which does not
    /// happen in practice; use [`try_client`](Self::try_client) to handle it.
    pub fn client(&self, namespace: &str) -> kube::Client {
        #[allow(clippy::expect_used)]
        self.try_client(namespace)
            .expect("kube builds a client for a plain http URL")
    }

    /// Installs every CRD in a (multi-document) YAML stream; other documents are ignored.
    ///
    /// # Errors
    ///
    /// [`Error::InstallCrd`] when the YAML does not parse or a CRD lacks required fields; CRDs
    /// before the bad one stay installed.
    pub fn install_crd_yaml(&self, yaml: &str) -> Result<(), Error> {
        for crd in crd::crds_from_yaml(yaml).map_err(Error::InstallCrd)? {
            self.install_crd(crd)?;
        }
        Ok(())
    }

    /// Installs one CRD (as JSON) and serves each of its served versions.
    ///
    /// # Errors
    ///
    /// [`Error::InstallCrd`] when it is not an `apiextensions.k8s.io/v1` CRD or lacks fields.
    pub fn install_crd(&self, crd: Value) -> Result<(), Error> {
        let resource = Resource::from_crd(&crd).map_err(Error::InstallCrd)?;
        tracing::debug!(group = %resource.group, plural = %resource.plural, "CRD installed");
        self.inner.shared.lock().crds.install(resource);
        Ok(())
    }

    /// A snapshot of the request counts.
    pub fn requests(&self) -> RequestLog {
        self.inner.shared.lock().requests.clone()
    }

    /// Forgets all counted requests, their latencies and the watch peaks.
    pub fn reset_requests(&self) {
        self.inner.shared.lock().requests = RequestLog::default();
        self.inner.shared.observer.reset();
    }

    /// Watch connections of `resource` (a plural, `sandboxclaims`): open now, and the most
    /// open at once.
    pub fn watches(&self, resource: &str) -> WatchCount {
        self.inner.shared.observer.watches(resource)
    }

    /// How long each request since the start (or [`FakeApiServer::reset_requests`]) took,
    /// from its arrival to its response head (for a watch: until its stream began).
    pub fn request_latencies(&self) -> Vec<Duration> {
        self.inner.shared.observer.latencies()
    }

    /// Calls `hook` with every later write, at the moment it is committed (under the
    /// store's lock, before any watcher or client sees it), e.g. to timestamp the write that
    /// made a claim ready. The hook must be quick and must not call back into the server.
    pub fn on_write(&self, hook: impl Fn(&Write<'_>) + Send + Sync + 'static) {
        self.inner.shared.lock().store.on_write(Arc::new(hook));
    }

    /// Injects a fault; see [`Fault`].
    pub fn inject(&self, fault: Fault) -> FaultId {
        self.inner.shared.lock().faults.inject(fault)
    }

    /// Removes one injected fault.
    pub fn remove_fault(&self, id: FaultId) {
        self.inner.shared.lock().faults.remove(id);
    }

    /// Removes all injected faults (what fired stays counted).
    pub fn clear_faults(&self) {
        self.inner.shared.lock().faults.clear();
    }

    /// How many injected faults fired so far, by kind.
    pub fn faults_fired(&self) -> FaultCounts {
        self.inner.shared.lock().faults.counts()
    }

    /// The stored objects of a resource (in one namespace, or all), without going through HTTP
    /// and without being counted. `apiVersion` is whatever version last wrote each object.
    pub fn objects(&self, group: &str, plural: &str, namespace: Option<&str>) -> Vec<Value> {
        let state = self.inner.shared.lock();
        state
            .store
            .list(&(group.to_owned(), plural.to_owned()), namespace)
            .into_iter()
            .cloned()
            .collect()
    }

    /// Stops accepting connections, closes open ones, and waits for the accept loop to end.
    pub async fn shutdown(self) {
        let _ = self.inner.shutdown.send(true);
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}
