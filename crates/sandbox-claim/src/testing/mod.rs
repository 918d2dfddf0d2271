//! A fake agent-sandbox cluster for tests and demos (feature `testing`).
//!
//! [`FakeCluster`] = the in-process fake API server (re-exported from `fake_apiserver`)
//! with the upstream CRDs installed, plus a [`SimulatedController`] that plays the
//! agent-sandbox controller through a real `kube::Client`, plus a pluggable
//! [`PodRuntime`] that decides what a pod is.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use sandbox_claim::testing::{FakeCluster, FakeClusterOptions};
//! use sandbox_claim::{ClaimOptions, Claims};
//! let cluster = FakeCluster::start(FakeClusterOptions::default()).await?;
//! cluster.create_template("python", None).await?;
//! cluster.create_warm_pool("python-pool", "python", 2).await?;
//! let claims = Claims::detect(cluster.client(), ClaimOptions::default().source("python-pool")).await?;
//! let handle = claims.acquire("conversation-1").await?;
//! # Ok(()) }
//! ```

mod controller;
mod runtime;

pub use controller::{ForcedReason, ReadyMode, ReplaceError, SimulatedController, name_hash};
pub use fake_apiserver::*;
pub use runtime::{LoopbackRuntime, PodRequest, PodRuntime, PodRuntimeError, PodStarted};

use crate::api_version::{ApiVersion, EXTENSIONS_GROUP};
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Errors of the fake cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The fake API server did not start.
    #[error("failed to start the fake API server")]
    Start(#[source] fake_apiserver::Error),
    /// A CRD file could not be read.
    #[error("failed to read CRD file {path}")]
    ReadCrd {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A CRD could not be installed.
    #[error("failed to install CRDs from {path}")]
    InstallCrd {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: fake_apiserver::Error,
    },
    /// Creating a fixture object failed.
    #[error("failed to create {kind} {name}")]
    Create {
        /// Kind.
        kind: &'static str,
        /// Name.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

/// The upstream CRDs in this workspace's `../shared` checkout (both versions served).
pub fn upstream_crd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/agent-sandbox/crds")
}

/// The v0.4.6 release CRDs (v1alpha1 only).
pub fn v0_4_6_crd_dir() -> PathBuf {
    upstream_crd_dir().join("release-v0.4.6")
}

/// Options of [`FakeCluster::start`].
#[derive(Clone)]
pub struct FakeClusterOptions {
    /// Namespace the controller serves and the client defaults to.
    pub namespace: String,
    /// Directory whose `*.yaml` files hold the CRDs (non-CRD documents are ignored).
    pub crd_dir: PathBuf,
    /// Version the simulated controller speaks (the fake server does not convert between
    /// versions, so use the version your client speaks).
    pub version: ApiVersion,
    /// When cold sandboxes turn Ready.
    pub ready_mode: ReadyMode,
    /// What a pod is.
    pub runtime: Arc<dyn PodRuntime>,
    /// Options of the fake API server.
    pub server: FakeApiServerOptions,
}

impl std::fmt::Debug for FakeClusterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeClusterOptions")
            .field("namespace", &self.namespace)
            .field("crd_dir", &self.crd_dir)
            .field("version", &self.version)
            .field("ready_mode", &self.ready_mode)
            .finish_non_exhaustive()
    }
}

impl Default for FakeClusterOptions {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            crd_dir: upstream_crd_dir(),
            version: ApiVersion::V1beta1,
            // Fast enough for tests, slow enough that a wait really waits.
            ready_mode: ReadyMode::After(Duration::from_millis(50)),
            runtime: Arc::new(LoopbackRuntime::new()),
            server: FakeApiServerOptions::default(),
        }
    }
}

impl FakeClusterOptions {
    /// A v0.4.6 cluster: v1alpha1 CRDs only, controller speaking v1alpha1.
    #[must_use]
    pub fn v0_4_6() -> Self {
        Self {
            crd_dir: v0_4_6_crd_dir(),
            version: ApiVersion::V1alpha1,
            ..Self::default()
        }
    }

    /// Sets [`FakeClusterOptions::ready_mode`].
    #[must_use]
    pub fn ready_mode(mut self, mode: ReadyMode) -> Self {
        self.ready_mode = mode;
        self
    }

    /// Sets [`FakeClusterOptions::runtime`].
    #[must_use]
    pub fn runtime(mut self, runtime: Arc<dyn PodRuntime>) -> Self {
        self.runtime = runtime;
        self
    }

    /// Sets [`FakeClusterOptions::namespace`].
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }
}

/// A fake agent-sandbox cluster: fake API server + CRDs + simulated controller.
#[derive(Debug)]
pub struct FakeCluster {
    // Field order: the controller stops before the server.
    controller: SimulatedController,
    server: FakeApiServer,
    namespace: String,
    version: ApiVersion,
}

/// Installs every `*.yaml` file of `dir` (sorted; non-CRD documents are ignored).
///
/// # Errors
/// [`ClusterError::ReadCrd`] / [`ClusterError::InstallCrd`].
pub fn install_crds(server: &FakeApiServer, dir: &Path) -> Result<(), ClusterError> {
    let read_err = |source| ClusterError::ReadCrd {
        path: dir.to_owned(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for path in files {
        let yaml = std::fs::read_to_string(&path).map_err(|source| ClusterError::ReadCrd {
            path: path.clone(),
            source,
        })?;
        server
            .install_crd_yaml(&yaml)
            .map_err(|source| ClusterError::InstallCrd { path, source })?;
    }
    Ok(())
}

impl FakeCluster {
    /// Starts the server, installs the CRDs and starts the controller.
    ///
    /// # Errors
    /// When the server does not start or the CRDs cannot be read or installed.
    pub async fn start(options: FakeClusterOptions) -> Result<Self, ClusterError> {
        let server = FakeApiServer::start_with(options.server.clone())
            .await
            .map_err(ClusterError::Start)?;
        install_crds(&server, &options.crd_dir)?;
        let controller = SimulatedController::start(
            server.client(&options.namespace),
            &options.namespace,
            options.version,
            options.runtime,
            options.ready_mode,
        );
        Ok(Self {
            controller,
            server,
            namespace: options.namespace,
            version: options.version,
        })
    }

    /// A new client for the cluster (default namespace = the cluster's).
    pub fn client(&self) -> kube::Client {
        self.server.client(&self.namespace)
    }

    /// The fake API server (requests, faults, raw objects).
    pub fn server(&self) -> &FakeApiServer {
        &self.server
    }

    /// The simulated controller (ready gate, forced reasons).
    pub fn controller(&self) -> &SimulatedController {
        &self.controller
    }

    /// Replaces the pod of `sandbox_name` as a node failure or eviction would; see
    /// [`SimulatedController::replace_pod`].
    ///
    /// # Errors
    /// As [`SimulatedController::replace_pod`].
    pub async fn replace_pod(&self, sandbox_name: &str) -> Result<PodStarted, ReplaceError> {
        self.controller.replace_pod(sandbox_name).await
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The version the controller speaks.
    pub fn api_version(&self) -> ApiVersion {
        self.version
    }

    fn api(&self, kind: &str, plural: &str) -> (Api<DynamicObject>, ApiResource) {
        let ar = ApiResource {
            group: EXTENSIONS_GROUP.into(),
            version: self.version.as_str().into(),
            api_version: format!("{EXTENSIONS_GROUP}/{}", self.version.as_str()),
            kind: kind.into(),
            plural: plural.into(),
        };
        (
            Api::namespaced_with(self.client(), &self.namespace, &ar),
            ar,
        )
    }

    /// Creates a SandboxTemplate; `pod_spec` defaults to one `agent` container.
    ///
    /// # Errors
    /// [`ClusterError::Create`].
    pub async fn create_template(
        &self,
        name: &str,
        pod_spec: Option<serde_json::Value>,
    ) -> Result<(), ClusterError> {
        let (api, ar) = self.api("SandboxTemplate", "sandboxtemplates");
        let mut obj = DynamicObject::new(name, &ar);
        let spec = pod_spec.unwrap_or_else(|| {
            json!({ "containers": [{ "name": "agent", "image": "example.com/agent:latest", "ports": [{ "containerPort": 8494 }] }] })
        });
        obj.data = json!({ "spec": { "podTemplate": { "spec": spec } } });
        api.create(&PostParams::default(), &obj)
            .await
            .map(drop)
            .map_err(|source| ClusterError::Create {
                kind: "SandboxTemplate",
                name: name.into(),
                source,
            })
    }

    /// Creates a SandboxWarmPool of `replicas` members stamped from `template`.
    ///
    /// # Errors
    /// [`ClusterError::Create`].
    pub async fn create_warm_pool(
        &self,
        name: &str,
        template: &str,
        replicas: i32,
    ) -> Result<(), ClusterError> {
        let (api, ar) = self.api("SandboxWarmPool", "sandboxwarmpools");
        let mut obj = DynamicObject::new(name, &ar);
        obj.data =
            json!({ "spec": { "replicas": replicas, "sandboxTemplateRef": { "name": template } } });
        api.create(&PostParams::default(), &obj)
            .await
            .map(drop)
            .map_err(|source| ClusterError::Create {
                kind: "SandboxWarmPool",
                name: name.into(),
                source,
            })
    }
}
