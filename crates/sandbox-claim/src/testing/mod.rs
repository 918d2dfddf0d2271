//! A fake agent-sandbox cluster for tests and demos (feature `testing`).
//!
//! [`FakeCluster`] = the in-process fake API server (re-exported from `fake_apiserver`)
//! serving the CRDs generated from [`crate::types`] ([`crate::crds`]; no files on disk), plus
//! a [`SimulatedController`] that plays the agent-sandbox controller through a real
//! `kube::Client`, plus a pluggable [`PodRuntime`] that decides what a pod is.
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
//!
//! Other CRDs (an upstream release's, say) replace the generated ones with
//! [`FakeClusterOptions::crds`] or join them with [`FakeClusterOptions::extra_crd_yaml`]:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use sandbox_claim::testing::{CrdSource, FakeCluster, FakeClusterOptions};
//! let upstream = FakeClusterOptions::default().crds(CrdSource::Dir("path/to/agent-sandbox/crds".into()));
//! let cluster = FakeCluster::start(upstream).await?;
//! # Ok(()) }
//! ```

mod controller;
mod runtime;

pub use controller::{
    CLAIM_WORKERS, ForcedReason, POD_SWEEP_INTERVAL, ReadyMode, ReconcileError, ReplaceError,
    SANDBOX_WORKERS, SimulatedController, name_hash,
};
pub use fake_apiserver::*;
pub use runtime::{LoopbackRuntime, PodRequest, PodRuntime, PodRuntimeError, PodStarted};

use crate::api_version::{ApiVersion, EXTENSIONS_GROUP};
use crate::crds::{self, CrdVersions};
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::json;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Errors of the fake cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The fake API server did not start.
    #[error("failed to start the fake API server")]
    Start(#[source] fake_apiserver::Error),
    /// The CRDs could not be generated from the types.
    #[error("failed to generate the CRDs")]
    GenerateCrds(#[source] crds::Error),
    /// A generated CRD did not serialize to JSON.
    #[error("failed to serialize the generated CRD {name}")]
    SerializeCrd {
        /// `metadata.name` of the CRD.
        name: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A CRD file or directory could not be read.
    #[error("failed to read CRD file {path}")]
    ReadCrd {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A CRD could not be installed.
    #[error("failed to install CRDs from {origin}")]
    InstallCrd {
        /// Where the CRDs came from: a file, `YAML document N`, or `generated`.
        origin: String,
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

/// Which CRDs [`FakeCluster::start`] installs.
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CrdSource {
    /// Generated from [`crate::types`]: `v1beta1` (storage) and `v1alpha1` served
    /// ([`CrdVersions::Current`]). The default.
    #[default]
    Generated,
    /// Generated, `v1alpha1` only ([`CrdVersions::V1alpha1Only`]): a v0.4.x cluster.
    V1alpha1Only,
    /// These YAML streams, in order; each may hold several documents, and documents that are
    /// not CustomResourceDefinitions are ignored (an install manifest works as it is).
    Yaml(Vec<String>),
    /// Every `*.yaml` file directly inside this directory, sorted by name; subdirectories and
    /// documents that are not CRDs are ignored.
    Dir(PathBuf),
}

impl std::fmt::Debug for CrdSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Generated => f.write_str("Generated"),
            Self::V1alpha1Only => f.write_str("V1alpha1Only"),
            // The documents are thousands of lines long.
            Self::Yaml(streams) => write!(f, "Yaml({} streams)", streams.len()),
            Self::Dir(dir) => f.debug_tuple("Dir").field(dir).finish(),
        }
    }
}

impl CrdSource {
    /// Installs these CRDs into `server`; a CRD replaces an installed one of the same group
    /// and plural.
    ///
    /// # Errors
    /// [`ClusterError::GenerateCrds`], [`ClusterError::ReadCrd`] (with [`CrdSource::Dir`]) or
    /// [`ClusterError::InstallCrd`] (a document that does not parse or is not a servable CRD).
    pub fn install(&self, server: &FakeApiServer) -> Result<(), ClusterError> {
        match self {
            Self::Generated => install_generated(server, CrdVersions::Current),
            Self::V1alpha1Only => install_generated(server, CrdVersions::V1alpha1Only),
            Self::Yaml(streams) => {
                for (i, yaml) in streams.iter().enumerate() {
                    install_yaml(server, yaml, || format!("YAML document {}", i + 1))?;
                }
                Ok(())
            }
            Self::Dir(dir) => {
                let read_err = |source| ClusterError::ReadCrd {
                    path: dir.clone(),
                    source,
                };
                let mut files = Vec::new();
                for entry in std::fs::read_dir(dir).map_err(read_err)? {
                    let path = entry.map_err(read_err)?.path();
                    if path.is_file() && path.extension().is_some_and(|x| x == "yaml") {
                        files.push(path);
                    }
                }
                files.sort();
                for path in files {
                    let yaml =
                        std::fs::read_to_string(&path).map_err(|source| ClusterError::ReadCrd {
                            path: path.clone(),
                            source,
                        })?;
                    install_yaml(server, &yaml, || path.display().to_string())?;
                }
                Ok(())
            }
        }
    }
}

fn install_generated(server: &FakeApiServer, versions: CrdVersions) -> Result<(), ClusterError> {
    for (name, crd) in generated(versions)? {
        server
            .install_crd(crd.clone())
            .map_err(|source| ClusterError::InstallCrd {
                origin: format!("generated {name}"),
                source,
            })?;
    }
    Ok(())
}

/// The generated CRDs of `versions` as JSON, with their names; built once per process
/// (generating the PodSpec schemas takes a while in debug builds, and every test starts a
/// cluster).
fn generated(
    versions: CrdVersions,
) -> Result<&'static [(String, serde_json::Value)], ClusterError> {
    static CURRENT: OnceLock<Vec<(String, serde_json::Value)>> = OnceLock::new();
    static V1ALPHA1_ONLY: OnceLock<Vec<(String, serde_json::Value)>> = OnceLock::new();
    let cell = match versions {
        CrdVersions::V1alpha1Only => &V1ALPHA1_ONLY,
        _ => &CURRENT,
    };
    if let Some(done) = cell.get() {
        return Ok(done);
    }
    let mut out = Vec::new();
    for crd in crds::all(versions).map_err(ClusterError::GenerateCrds)? {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let value = serde_json::to_value(&crd).map_err(|source| ClusterError::SerializeCrd {
            name: name.clone(),
            source,
        })?;
        out.push((name, value));
    }
    Ok(cell.get_or_init(|| out))
}

fn install_yaml(
    server: &FakeApiServer,
    yaml: &str,
    origin: impl Fn() -> String,
) -> Result<(), ClusterError> {
    server
        .install_crd_yaml(yaml)
        .map_err(|source| ClusterError::InstallCrd {
            origin: origin(),
            source,
        })
}

/// Options of [`FakeCluster::start`].
#[derive(Clone)]
pub struct FakeClusterOptions {
    /// Namespace the controller serves and the client defaults to.
    pub namespace: String,
    /// The CRDs to serve.
    pub crds: CrdSource,
    /// More CRD YAML streams installed after [`FakeClusterOptions::crds`] (a CRD here
    /// replaces one of the same group and plural; non-CRD documents are ignored).
    pub extra_crd_yaml: Vec<String>,
    /// Version the simulated controller speaks (the fake server does not convert between
    /// versions, so use the version your client speaks, and CRDs that serve it).
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
            .field("crds", &self.crds)
            .field("extra_crd_yaml", &self.extra_crd_yaml.len())
            .field("version", &self.version)
            .field("ready_mode", &self.ready_mode)
            .finish_non_exhaustive()
    }
}

impl Default for FakeClusterOptions {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            // The CRDs this crate generates, embedded: no files on disk.
            crds: CrdSource::Generated,
            extra_crd_yaml: Vec::new(),
            // v1beta1 is what agent-sandbox v0.5+ stores and v1.0 serves.
            version: ApiVersion::V1beta1,
            // Fast enough for tests, slow enough that a wait really waits.
            ready_mode: ReadyMode::After(Duration::from_millis(50)),
            runtime: Arc::new(LoopbackRuntime::new()),
            server: FakeApiServerOptions::default(),
        }
    }
}

impl FakeClusterOptions {
    /// A v0.4.6 cluster: v1alpha1 CRDs only ([`CrdSource::V1alpha1Only`]), controller
    /// speaking v1alpha1.
    #[must_use]
    pub fn v0_4_6() -> Self {
        Self {
            crds: CrdSource::V1alpha1Only,
            version: ApiVersion::V1alpha1,
            ..Self::default()
        }
    }

    /// Sets [`FakeClusterOptions::crds`].
    #[must_use]
    pub fn crds(mut self, crds: CrdSource) -> Self {
        self.crds = crds;
        self
    }

    /// Adds one YAML stream to [`FakeClusterOptions::extra_crd_yaml`].
    #[must_use]
    pub fn extra_crd_yaml(mut self, yaml: impl Into<String>) -> Self {
        self.extra_crd_yaml.push(yaml.into());
        self
    }

    /// Sets [`FakeClusterOptions::version`].
    #[must_use]
    pub fn version(mut self, version: ApiVersion) -> Self {
        self.version = version;
        self
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

impl FakeCluster {
    /// Starts the server, installs the CRDs and starts the controller.
    ///
    /// # Errors
    /// When the server does not start or the CRDs cannot be read or installed.
    pub async fn start(options: FakeClusterOptions) -> Result<Self, ClusterError> {
        let server = FakeApiServer::start_with(options.server.clone())
            .await
            .map_err(ClusterError::Start)?;
        options.crds.install(&server)?;
        CrdSource::Yaml(options.extra_crd_yaml).install(&server)?;
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

    /// Restarts the simulated controller: see [`SimulatedController::restart`].
    pub fn restart_controller(&mut self) {
        self.controller.restart();
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
