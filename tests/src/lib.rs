//! The whole pipeline on one machine: the fake cluster from `sandbox-claim`
//! (feature `testing`), "pods" that are real `python-sandbox-agent`
//! processes, and the agent-sandbox backend from `agent-sandbox-backend`.
//!
//! - [`LocalAgentRuntime`] is the pod runtime: each Sandbox gets its own
//!   agent process bound to its own loopback address `127.x.y.z` and the AXP
//!   port ([`axp_transport::DEFAULT_PORT`]), so
//!   the backend connects to a "pod IP" and a fixed port exactly as in a
//!   cluster.
//! - [`docker::DockerRuntime`] is the other pod runtime: each Sandbox is a
//!   container of the reference agent's image in the local Docker Engine, on a
//!   network of its own, started as the Sandbox's pod template says.
//!   [`Pipeline`] picks one by [`RuntimeKind::from_env`] (`PIPELINE_RUNTIME`).
//! - [`agent_binary`] finds the agent binary that `cargo xtask test` (or the
//!   demo) built.
//!
//! The tests in `tests/`, the `demo` binary and the `fake-cluster` binary (the fake cluster
//! as a server for kubectl and the SDKs, whose pods are these runtimes) stand on this.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use agent_sandbox_backend::testing::next_loopback_ip;
use axp_transport::{AxpClient, ClientOptions, DEFAULT_PORT, client::WaitOptions};
use futures::future::BoxFuture;
use python_sandbox_agent::LocalAgent;

pub mod bench;
pub mod calls;
pub mod docker;
pub mod otlp;
pub mod reach;
use sandbox_claim::testing::{PodRequest, PodRuntime, PodRuntimeError, PodStarted};

/// The reference agent binary: `$PYTHON_SANDBOX_AGENT_BIN`, else beside the
/// running executable (or one directory up, for test binaries in `deps/`).
pub fn agent_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PYTHON_SANDBOX_AGENT_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("the running executable has a path");
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    for _ in 0..2 {
        let candidate = dir.join("python-sandbox-agent");
        if candidate.exists() {
            return candidate;
        }
        dir.pop();
    }
    // Not built yet: name the expected place so the error says what to build.
    exe.parent().unwrap_or(&dir).join("python-sandbox-agent")
}

/// Pods as local processes of the reference agent, one per Sandbox.
///
/// # Guarantees
///
/// - A pod is reported started only once its agent says SERVING on
///   `grpc.health.v1`, so a Ready sandbox can run code at once.
/// - Stopping a pod (Sandbox deleted or expired) kills its process; dropping
///   the runtime kills every process it started.
///
/// # Caveats
///
/// Addresses come from [`next_loopback_ip`], offset by the process id so that
/// test binaries running side by side rarely pick the same ones; an address
/// that is taken is skipped.
#[derive(Debug)]
pub struct LocalAgentRuntime {
    binary: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pods: Mutex<HashMap<(String, String), LocalAgent>>,
    started: AtomicU32,
}

impl LocalAgentRuntime {
    /// A runtime that starts [`agent_binary`] with `args` after `--listen`.
    pub fn new(args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self::with_binary(agent_binary(), args)
    }

    /// A runtime that starts `binary`.
    pub fn with_binary(binary: PathBuf, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            binary,
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            pods: Mutex::new(HashMap::new()),
            started: AtomicU32::new(0),
        }
    }

    /// Also sets `key=value` in every agent's environment (`OTEL_EXPORTER_OTLP_ENDPOINT`, say).
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Agent processes running now.
    pub fn running(&self) -> usize {
        self.pods.lock().expect("pod map poisoned").len()
    }

    /// Agent processes started so far.
    pub fn started(&self) -> u32 {
        self.started.load(Ordering::SeqCst)
    }

    /// Process ids of the running agents, by pod name.
    pub fn pids(&self) -> HashMap<String, u32> {
        self.pods
            .lock()
            .expect("pod map poisoned")
            .iter()
            .map(|((_, pod), agent)| (pod.clone(), agent.pid()))
            .collect()
    }

    /// Kills every agent process this runtime started.
    pub async fn stop_all(&self) {
        let agents: Vec<LocalAgent> = self
            .pods
            .lock()
            .expect("pod map poisoned")
            .drain()
            .map(|(_, agent)| agent)
            .collect();
        for mut agent in agents {
            let _ = agent.child().kill().await;
        }
    }

    /// Kills a pod's process as a crash would (SIGKILL), leaving the Sandbox
    /// as it is. Returns whether the pod was running.
    pub async fn crash(&self, pod_name: &str) -> bool {
        let agent = {
            let mut pods = self.pods.lock().expect("pod map poisoned");
            let key = pods.keys().find(|(_, pod)| pod == pod_name).cloned();
            key.and_then(|key| pods.remove(&key))
        };
        match agent {
            Some(mut agent) => {
                let _ = agent.child().kill().await;
                true
            }
            None => false,
        }
    }

    async fn spawn(&self, request: &PodRequest) -> Result<PodStarted, PodRuntimeError> {
        let mut last_error = String::new();
        // A few addresses, in case another process holds one.
        for _ in 0..4 {
            let ip = next_loopback_ip();
            let listen = SocketAddr::new(ip, DEFAULT_PORT);
            let mut command = tokio::process::Command::new(&self.binary);
            command
                .arg("--listen")
                .arg(listen.to_string())
                .args(&self.args)
                .stderr(Stdio::null())
                .env("RUST_LOG", "warn")
                .envs(self.env.iter().map(|(k, v)| (k, v)));
            // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
            // An agent must not outlive the test or demo that started it, even
            // when that process is killed before it can clean up.
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let agent = match LocalAgent::from_command(command).await {
                Ok(agent) => agent,
                Err(error) => {
                    last_error = format!("{} at {listen}: {error}", self.binary.display());
                    continue;
                }
            };
            let client = AxpClient::new(&agent.url(), ClientOptions::default()).map_err(|e| {
                PodRuntimeError {
                    message: e.to_string(),
                }
            })?;
            let wait = WaitOptions {
                timeout: Duration::from_secs(30),
                ..WaitOptions::default()
            };
            client
                .wait_until_serving(wait)
                .await
                .map_err(|e| PodRuntimeError {
                    message: format!("agent for {} never became SERVING: {e}", request.pod_name),
                })?;
            self.started.fetch_add(1, Ordering::SeqCst);
            self.pods
                .lock()
                .expect("pod map poisoned")
                .insert((request.namespace.clone(), request.pod_name.clone()), agent);
            return Ok(PodStarted {
                ip,
                pod_name: request.pod_name.clone(),
            });
        }
        Err(PodRuntimeError {
            message: last_error,
        })
    }
}

impl PodRuntime for LocalAgentRuntime {
    fn start<'a>(
        &'a self,
        request: &'a PodRequest,
    ) -> BoxFuture<'a, Result<PodStarted, PodRuntimeError>> {
        Box::pin(self.spawn(request))
    }

    fn stop<'a>(&'a self, namespace: &'a str, pod_name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let agent = self
                .pods
                .lock()
                .expect("pod map poisoned")
                .remove(&(namespace.to_owned(), pod_name.to_owned()));
            if let Some(mut agent) = agent {
                let _ = agent.child().kill().await;
            }
        })
    }
}

/// Names the pipeline uses, as in `deploy/`.
pub const NAMESPACE: &str = "agent-platform";
/// The warm pool of the reference agent.
pub const WARM_POOL: &str = "python-sandbox-pool";
/// The template of the reference agent.
pub const TEMPLATE: &str = "python-sandbox-template";

/// A fake cluster whose pods are real agent processes, with the reference
/// agent's template and warm pool created.
#[derive(Debug)]
pub struct Pipeline {
    /// The fake cluster (API server, simulated controller).
    pub cluster: sandbox_claim::testing::FakeCluster,
    /// The pods: agent processes or containers.
    pub runtime: Pods,
}

impl Pipeline {
    /// Starts a v1beta1 cluster with a warm pool of `replicas` and waits until
    /// the pool's agents are SERVING.
    ///
    /// # Errors
    ///
    /// When the agent binary is missing, or the cluster or pool does not start.
    pub async fn start(replicas: i32) -> anyhow::Result<Self> {
        Self::start_with(
            sandbox_claim::testing::FakeClusterOptions::default(),
            replicas,
        )
        .await
    }

    /// Like [`Pipeline::start`] with cluster options (API version, faults, …).
    ///
    /// # Errors
    ///
    /// As [`Pipeline::start`].
    pub async fn start_with(
        options: sandbox_claim::testing::FakeClusterOptions,
        replicas: i32,
    ) -> anyhow::Result<Self> {
        Self::start_on(RuntimeKind::from_env()?, options, replicas).await
    }

    /// Like [`Pipeline::start_with`] on the runtime `kind`.
    ///
    /// # Errors
    ///
    /// As [`Pipeline::start`]; for Docker also when no engine is reachable or
    /// the image is missing.
    pub async fn start_on(
        kind: RuntimeKind,
        options: sandbox_claim::testing::FakeClusterOptions,
        replicas: i32,
    ) -> anyhow::Result<Self> {
        Self::start_with_pods(Pods::start(kind).await?, options, replicas).await
    }

    /// Like [`Pipeline::start_on`] with pods already started, so that a caller that
    /// may abandon the start (Ctrl-C) keeps a handle to shut them down.
    ///
    /// # Errors
    ///
    /// As [`Pipeline::start`].
    pub async fn start_with_pods(
        runtime: Pods,
        options: sandbox_claim::testing::FakeClusterOptions,
        replicas: i32,
    ) -> anyhow::Result<Self> {
        let options = options
            .namespace(NAMESPACE)
            .runtime(runtime.as_pod_runtime())
            // The runtime reports a pod only once its agent is SERVING.
            .ready_mode(sandbox_claim::testing::ReadyMode::After(Duration::ZERO));
        let cluster = sandbox_claim::testing::FakeCluster::start(options).await?;
        cluster
            .create_template(TEMPLATE, Some(deployed_pod_spec()?))
            .await?;
        cluster
            .create_warm_pool(WARM_POOL, TEMPLATE, replicas)
            .await?;
        let pipeline = Self { cluster, runtime };
        let fill = Duration::from_secs(120);
        pipeline
            .wait_until(fill, |p| {
                p.runtime.running() >= usize::try_from(replicas).unwrap_or(0)
            })
            .await
            .map_err(|()| anyhow::anyhow!("the warm pool did not fill within {fill:?}"))?;
        Ok(pipeline)
    }

    /// The `ax.yaml` for this cluster, with `extra` lines appended to the entry
    /// (each indented like the others: `"      ttl: 5s\n"`).
    pub fn ax_yaml(&self, extra: &str) -> String {
        format!(
            "registry:\n  agent_sandbox_agents:\n    - id: py\n      namespace: {NAMESPACE}\n      warm_pool: {WARM_POOL}\n      template: {TEMPLATE}\n      port: {DEFAULT_PORT}\n      protocol: axp\n      ready_timeout: 60s\n{extra}"
        )
    }

    /// A backend configured by [`Pipeline::ax_yaml`] with `extra`.
    ///
    /// # Errors
    ///
    /// When the registry or the backend cannot be built.
    pub async fn backend(
        &self,
        extra: &str,
    ) -> anyhow::Result<agent_sandbox_backend::AgentSandboxAgent> {
        let registry = agent_sandbox_backend::Registry::from_yaml(&self.ax_yaml(extra))?;
        let entry = registry.get("py").expect("the entry above");
        Ok(
            agent_sandbox_backend::AgentSandboxAgent::from_config(self.cluster.client(), entry)
                .await?,
        )
    }

    /// SandboxClaims in the namespace now.
    pub fn claims(&self) -> usize {
        self.cluster
            .server()
            .objects(
                "extensions.agents.x-k8s.io",
                "sandboxclaims",
                Some(NAMESPACE),
            )
            .len()
    }

    /// Sandboxes in the namespace now (claimed and pooled).
    pub fn sandboxes(&self) -> usize {
        self.cluster
            .server()
            .objects("agents.x-k8s.io", "sandboxes", Some(NAMESPACE))
            .len()
    }

    /// Polls `condition` every 20 ms until it holds or `within` passes.
    ///
    /// # Errors
    ///
    /// `Err(())` when it never held.
    pub async fn wait_until(
        &self,
        within: Duration,
        condition: impl Fn(&Self) -> bool,
    ) -> Result<(), ()> {
        let deadline = tokio::time::Instant::now() + within;
        while !condition(self) {
            if tokio::time::Instant::now() >= deadline {
                return Err(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// The pod spec of `deploy/base/sandbox-template.yaml`, the template the
/// pipeline's cluster serves (so a change to `deploy/` shows up in the tests).
///
/// # Errors
///
/// When the manifest does not parse or has no `spec.podTemplate.spec`.
pub fn deployed_pod_spec() -> anyhow::Result<serde_json::Value> {
    let manifest: serde_json::Value = serde_saphyr::from_str(DEPLOYED_TEMPLATE)
        .map_err(|e| anyhow::anyhow!("deploy/base/sandbox-template.yaml: {e}"))?;
    manifest
        .pointer("/spec/podTemplate/spec")
        .cloned()
        .ok_or_else(|| {
            anyhow::anyhow!("deploy/base/sandbox-template.yaml has no spec.podTemplate.spec")
        })
}

/// `deploy/base/sandbox-template.yaml`, compiled in.
const DEPLOYED_TEMPLATE: &str = include_str!("../../deploy/base/sandbox-template.yaml");

/// The variable that chooses the pipeline's pod runtime: `local` (the default) or `docker`.
pub const RUNTIME_ENV: &str = "PIPELINE_RUNTIME";
/// The variable naming the image the Docker runtime runs instead of the template's.
pub const IMAGE_ENV: &str = "PYTHON_SANDBOX_AGENT_IMAGE";

/// Which pod runtime a [`Pipeline`] runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// Agent processes on loopback addresses.
    Local,
    /// Containers of the agent's image in the local Docker Engine.
    Docker,
}

impl RuntimeKind {
    /// From [`RUNTIME_ENV`]; `local` when unset.
    ///
    /// # Errors
    ///
    /// When the variable holds anything else.
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var(RUNTIME_ENV).ok().as_deref() {
            None | Some("" | "local") => Ok(Self::Local),
            Some("docker") => Ok(Self::Docker),
            Some(other) => anyhow::bail!("{RUNTIME_ENV}={other:?}: expected `local` or `docker`"),
        }
    }
}

/// The pods of a [`Pipeline`].
#[derive(Debug, Clone)]
pub enum Pods {
    /// Agent processes.
    Local(std::sync::Arc<LocalAgentRuntime>),
    /// Agent containers.
    Docker(std::sync::Arc<docker::DockerRuntime>),
}

impl Pods {
    /// Starts a runtime of `kind` (for Docker: the image from [`IMAGE_ENV`],
    /// else the template's).
    ///
    /// # Errors
    ///
    /// When the agent binary is missing, or no Docker Engine or image is there.
    pub async fn start(kind: RuntimeKind) -> anyhow::Result<Self> {
        match kind {
            RuntimeKind::Local => {
                let binary = agent_binary();
                anyhow::ensure!(
                    binary.exists(),
                    "the reference agent is not built at {} (`cargo xtask test` and `cargo xtask demo` build it)",
                    binary.display()
                );
                Ok(Self::Local(std::sync::Arc::new(
                    LocalAgentRuntime::with_binary(binary, Vec::<String>::new()),
                )))
            }
            RuntimeKind::Docker => {
                // The deployed template's image unless a local tag is named, checked up front
                // so a missing image is one clear error, not a pool that never fills.
                let image = match std::env::var(IMAGE_ENV).ok().filter(|i| !i.is_empty()) {
                    Some(image) => image,
                    None => {
                        docker::translate::ContainerSpec::from_pod_template(
                            &serde_json::json!({ "spec": deployed_pod_spec()? }),
                        )?
                        .image
                    }
                };
                let options = docker::DockerRuntimeOptions {
                    image: Some(image),
                    ..docker::DockerRuntimeOptions::default()
                };
                Ok(Self::Docker(std::sync::Arc::new(
                    docker::DockerRuntime::connect(options).await?,
                )))
            }
        }
    }

    /// Which runtime this is.
    pub fn kind(&self) -> RuntimeKind {
        match self {
            Self::Local(_) => RuntimeKind::Local,
            Self::Docker(_) => RuntimeKind::Docker,
        }
    }

    /// The runtime, for the simulated controller.
    pub fn as_pod_runtime(&self) -> std::sync::Arc<dyn PodRuntime> {
        match self {
            Self::Local(runtime) => runtime.clone(),
            Self::Docker(runtime) => runtime.clone(),
        }
    }

    /// Pods running now.
    pub fn running(&self) -> usize {
        match self {
            Self::Local(runtime) => runtime.running(),
            Self::Docker(runtime) => runtime.running(),
        }
    }

    /// Pods started so far.
    pub fn started(&self) -> u32 {
        match self {
            Self::Local(runtime) => runtime.started(),
            Self::Docker(runtime) => runtime.started(),
        }
    }

    /// Kills a pod as a crash would, leaving its Sandbox; whether it ran.
    pub async fn crash(&self, pod_name: &str) -> bool {
        match self {
            Self::Local(runtime) => runtime.crash(pod_name).await,
            Self::Docker(runtime) => runtime.crash(pod_name).await,
        }
    }

    /// Stops every pod (for Docker: removes its containers and network).
    pub async fn shutdown(&self) {
        match self {
            Self::Local(runtime) => runtime.stop_all().await,
            Self::Docker(runtime) => runtime.shutdown().await,
        }
    }
}
