//! Pods as containers of the real image in the local Docker Engine, one per Sandbox.
//!
//! Each runtime makes its own bridge network with inter-container traffic disabled: the
//! host (the backend, as a controller) reaches every sandbox at its container IP and the
//! port its template names, and no sandbox reaches another's agent, the isolation the
//! template's NetworkPolicy gives in a cluster. Containers run as the Sandbox's pod
//! template says ([`translate`]), so a change to `deploy/` shows up in the tests.
//!
//! Addresses are handed out round-robin from the network's /24, as a CNI's host-local IPAM
//! does, rather than by the engine (which gives a freed address to the next container at
//! once): a replaced pod gets a new IP, so the tests see what a cluster shows.
//!
//! The engine is driven through its API (bollard), with the API version negotiated, so an
//! older engine (Debian's 20.10 speaks API 1.41) works as well as a current one.
//!
//! # Guarantees
//!
//! - A pod is reported started only once its agent answers SERVING on `grpc.health.v1`.
//! - Every container and network carries [`RUNTIME_LABEL`] (this runtime's id) and
//!   [`OWNER_PID_LABEL`]; [`DockerRuntime::shutdown`] and `Drop` remove what this runtime
//!   made, and [`DockerRuntime::connect`] first removes what runtimes of processes that no
//!   longer exist left behind (a test binary killed with SIGKILL cleans up on the next run).
//!
//! # Caveats
//!
//! - No gVisor: the engine's default runtime runs the containers.
//! - Stopping a pod kills its container at once (SIGKILL); Kubernetes would send SIGTERM
//!   and wait for the grace period. The container tests cover the drain.

pub mod translate;

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axp_transport::{AxpClient, ClientOptions, client::WaitOptions};
use bollard::{
    Docker,
    models::{
        ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, Ipam, IpamConfig,
        NetworkCreateRequest, NetworkingConfig,
    },
    query_parameters::{
        CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
        LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    },
};
use futures::{StreamExt as _, future::BoxFuture};
use sandbox_claim::testing::{PodRequest, PodRuntime, PodRuntimeError, PodStarted};

use self::translate::ContainerSpec;

/// Label on everything a runtime creates; its value is the runtime's id.
pub const RUNTIME_LABEL: &str = "agent-sandbox.pipeline/runtime";
/// Label with the process id of the process that created the object.
pub const OWNER_PID_LABEL: &str = "agent-sandbox.pipeline/owner-pid";
/// Label with `namespace/pod` of the sandbox a container serves.
pub const POD_LABEL: &str = "agent-sandbox.pipeline/pod";

/// How a [`DockerRuntime`] starts pods.
#[derive(Clone, Debug)]
pub struct DockerRuntimeOptions {
    /// Runs this image instead of the one the template names (a locally built tag).
    pub image: Option<String>,
    /// How long a container may take to answer SERVING.
    pub ready_timeout: Duration,
    /// Environment added to every container (after the template's).
    pub extra_env: Vec<String>,
}

impl Default for DockerRuntimeOptions {
    fn default() -> Self {
        Self {
            image: None,
            // The agent is SERVING ~100 ms after start when warm; a busy 2-core CI machine
            // starting many containers at once needs far longer.
            ready_timeout: Duration::from_secs(60),
            extra_env: Vec::new(),
        }
    }
}

/// Why the runtime could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DockerRuntimeError {
    /// No engine at `DOCKER_HOST` (or the default socket).
    #[error("no Docker Engine reachable (DOCKER_HOST or /var/run/docker.sock)")]
    Connect(#[source] bollard::errors::Error),
    /// The image to run is not in the engine.
    #[error("image {0} is not in the local Docker Engine (build it with `cargo xtask image`)")]
    MissingImage(String),
    /// The runtime's network could not be made (every candidate subnet was refused).
    #[error("creating the sandbox network {0}")]
    CreateNetwork(String, #[source] bollard::errors::Error),
}

/// Pods as Docker containers; see the module docs.
#[derive(Debug)]
pub struct DockerRuntime {
    docker: Docker,
    id: String,
    network: String,
    addresses: Mutex<Addresses>,
    options: DockerRuntimeOptions,
    /// `(namespace, pod)` → container id and address.
    pods: Mutex<HashMap<(String, String), (String, Ipv4Addr)>>,
    started: AtomicU32,
    /// Create requests in flight, including abandoned ones still being cleaned up.
    creating: Arc<AtomicUsize>,
}

impl DockerRuntime {
    /// Connects to the engine, removes what dead processes' runtimes left, checks the
    /// image is there (when one is given) and creates this runtime's network.
    ///
    /// # Errors
    ///
    /// [`DockerRuntimeError`] naming the step.
    pub async fn connect(options: DockerRuntimeOptions) -> Result<Self, DockerRuntimeError> {
        let docker = connect_engine()
            .await
            .map_err(DockerRuntimeError::Connect)?;
        remove_leftovers(&docker).await;
        if let Some(image) = &options.image
            && docker.inspect_image(image).await.is_err()
        {
            return Err(DockerRuntimeError::MissingImage(image.clone()));
        }
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT_RUNTIME.fetch_add(1, Ordering::Relaxed)
        );
        let network = format!("agent-sandbox-pipeline-{id}");
        let subnet = create_network(&docker, &network, &id).await?;
        Ok(Self {
            docker,
            id,
            network,
            addresses: Mutex::new(Addresses::new(subnet)),
            options,
            pods: Mutex::new(HashMap::new()),
            started: AtomicU32::new(0),
            creating: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// This runtime's id (the value of [`RUNTIME_LABEL`] on what it creates).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The bridge network its containers share.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// Containers running now.
    pub fn running(&self) -> usize {
        self.pods.lock().expect("pod map poisoned").len()
    }

    /// Containers started so far.
    pub fn started(&self) -> u32 {
        self.started.load(Ordering::SeqCst)
    }

    /// Kills a pod's container as a crash would (SIGKILL), leaving the Sandbox as it is.
    /// Returns whether the pod was running.
    pub async fn crash(&self, pod_name: &str) -> bool {
        let found = {
            let pods = self.pods.lock().expect("pod map poisoned");
            pods.iter()
                .find(|((_, pod), _)| pod == pod_name)
                .map(|(key, (container, _))| (key.clone(), container.clone()))
        };
        match found {
            Some((key, container)) => {
                let _ = self.docker.kill_container(&container, None).await;
                remove_container(&self.docker, &container).await;
                self.forget(&key, &container);
                true
            }
            None => false,
        }
    }

    /// Drops a removed container from the pod map and frees its address, once: only the
    /// caller that finds it still mapped to `container` frees the address, so a concurrent
    /// stop never frees an address a newer pod holds.
    fn forget(&self, key: &(String, String), container: &str) {
        let mut pods = self.pods.lock().expect("pod map poisoned");
        if pods.get(key).is_some_and(|(id, _)| id == container)
            && let Some((_, ip)) = pods.remove(key)
        {
            self.addresses
                .lock()
                .expect("address pool poisoned")
                .free(ip);
        }
    }

    /// Removes every container and the network of this runtime, once the create requests
    /// in flight (those of an abandoned start included) have landed or been given up.
    pub async fn shutdown(&self) {
        let deadline = tokio::time::Instant::now() + CANCELLED_CREATE_WINDOW;
        while self.creating.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let containers: Vec<String> = self
            .pods
            .lock()
            .expect("pod map poisoned")
            .drain()
            .map(|(_, (id, _))| id)
            .collect();
        futures::future::join_all(containers.iter().map(|c| remove_container(&self.docker, c)))
            .await;
        remove_labelled(&self.docker, &format!("{RUNTIME_LABEL}={}", self.id)).await;
    }

    async fn start_pod(&self, request: &PodRequest) -> Result<PodStarted, String> {
        let spec =
            ContainerSpec::from_pod_template(&request.pod_template).map_err(|e| format!("{e}"))?;
        let image = self.options.image.clone().unwrap_or(spec.image.clone());
        let name = container_name(&request.namespace, &request.pod_name, &self.id);
        let mut env = spec.env.clone();
        env.extend(self.options.extra_env.iter().cloned());
        let mut security_opt = Vec::new();
        if spec.no_new_privileges {
            security_opt.push("no-new-privileges".to_owned());
        }
        let ip = self
            .addresses
            .lock()
            .expect("address pool poisoned")
            .take()
            .ok_or_else(|| {
                format!(
                    "no free address left in the sandbox network {}",
                    self.network
                )
            })?;
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            entrypoint: spec.entrypoint.clone(),
            cmd: spec.cmd.clone(),
            env: Some(env),
            user: spec.user.clone(),
            working_dir: spec.working_dir.clone(),
            labels: Some(labels(
                &self.id,
                Some(&format!("{}/{}", request.namespace, request.pod_name)),
            )),
            host_config: Some(HostConfig {
                network_mode: Some(self.network.clone()),
                readonly_rootfs: Some(spec.read_only_root),
                cap_drop: Some(spec.cap_drop.clone()),
                cap_add: Some(spec.cap_add.clone()),
                security_opt: Some(security_opt),
                memory: spec.memory_bytes,
                // No swap beyond the limit, as a pod's memory limit.
                memory_swap: spec.memory_bytes,
                nano_cpus: spec.nano_cpus,
                tmpfs: Some(spec.tmpfs.clone()),
                ..HostConfig::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    self.network.clone(),
                    EndpointSettings {
                        ipam_config: Some(EndpointIpamConfig {
                            ipv4_address: Some(ip.to_string()),
                            ..EndpointIpamConfig::default()
                        }),
                        ..EndpointSettings::default()
                    },
                )])),
            }),
            ..ContainerCreateBody::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        // The simulated controller drops this future when the cluster shuts down; the
        // engine may still create the container, which the guard then removes.
        let guard = CancelledCreate::new(name.clone(), self.creating.clone());
        let created = match self.docker.create_container(Some(options), body).await {
            Ok(created) => created,
            Err(error) => {
                self.addresses
                    .lock()
                    .expect("address pool poisoned")
                    .free(ip);
                return Err(format!("creating container {name} from {image}: {error}"));
            }
        };
        guard.disarm();
        // Recorded before starting, so a failure below still removes it.
        let key = (request.namespace.clone(), request.pod_name.clone());
        self.pods
            .lock()
            .expect("pod map poisoned")
            .insert(key.clone(), (created.id.clone(), ip));
        if let Err(error) = self.run_until_serving(&created.id, &name, ip, &spec).await {
            self.pods.lock().expect("pod map poisoned").remove(&key);
            remove_container(&self.docker, &created.id).await;
            self.addresses
                .lock()
                .expect("address pool poisoned")
                .free(ip);
            return Err(error);
        }
        self.started.fetch_add(1, Ordering::SeqCst);
        Ok(PodStarted {
            ip: IpAddr::V4(ip),
            pod_name: request.pod_name.clone(),
        })
    }

    async fn run_until_serving(
        &self,
        id: &str,
        name: &str,
        ip: Ipv4Addr,
        spec: &ContainerSpec,
    ) -> Result<(), String> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(|e| format!("starting container {name}: {e}"))?;
        let url = format!(
            "http://{}",
            SocketAddr::new(IpAddr::V4(ip), spec.probe_port)
        );
        let client = AxpClient::new(&url, ClientOptions::default()).map_err(|e| e.to_string())?;
        let wait = WaitOptions {
            timeout: self.options.ready_timeout,
            ..WaitOptions::default()
        };
        if let Err(error) = client.wait_until_serving(wait).await {
            let logs = self.logs_tail(id).await;
            return Err(format!(
                "container {name} never answered SERVING at {url}: {error}; its last output:\n{logs}"
            ));
        }
        Ok(())
    }

    /// The last lines a container wrote, for an error message.
    async fn logs_tail(&self, id: &str) -> String {
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail("20")
            .build();
        let mut logs = self.docker.logs(id, Some(options));
        let mut text = String::new();
        while let Some(Ok(chunk)) = logs.next().await {
            text.push_str(&chunk.to_string());
        }
        text
    }
}

impl PodRuntime for DockerRuntime {
    fn start<'a>(
        &'a self,
        request: &'a PodRequest,
    ) -> BoxFuture<'a, Result<PodStarted, PodRuntimeError>> {
        Box::pin(async move {
            self.start_pod(request)
                .await
                .map_err(|message| PodRuntimeError { message })
        })
    }

    fn stop<'a>(&'a self, namespace: &'a str, pod_name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let key = (namespace.to_owned(), pod_name.to_owned());
            let container = self
                .pods
                .lock()
                .expect("pod map poisoned")
                .get(&key)
                .cloned();
            if let Some((container, _)) = container {
                // Counted as running until the engine has removed it: a test that waits for
                // `running() == 0` must not then reach a container that still answers.
                remove_container(&self.docker, &container).await;
                self.forget(&key, &container);
            }
        })
    }
}

impl Drop for DockerRuntime {
    /// Removes what is left (a test that did not call [`DockerRuntime::shutdown`], a panic).
    /// The engine is reached from a thread of its own: `Drop` may run inside an async
    /// runtime, which must not be blocked on.
    fn drop(&mut self) {
        let selector = format!("{RUNTIME_LABEL}={}", self.id);
        let cleanup = std::thread::spawn(move || {
            if let Some(runtime) = cleanup_runtime() {
                runtime.block_on(async {
                    if let Ok(docker) = connect_engine().await {
                        remove_labelled(&docker, &selector).await;
                    }
                });
            }
        });
        let _ = cleanup.join();
    }
}

static NEXT_RUNTIME: AtomicU32 = AtomicU32::new(0);

/// The local engine (`DOCKER_HOST` or the default socket), at the API version both sides
/// speak: Debian's 20.10 speaks 1.41, older than bollard's default.
///
/// # Errors
///
/// No engine answers.
pub async fn connect_engine() -> Result<Docker, bollard::errors::Error> {
    Docker::connect_with_local_defaults()?
        .negotiate_version()
        .await
}

/// A runtime for cleanup on a thread of its own, which must not block (or depend on) the
/// async runtime of the caller, which may be dropping; `None` when none can be built.
fn cleanup_runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()
}

/// How long after an abandoned create request the engine may still create the container.
const CANCELLED_CREATE_WINDOW: Duration = Duration::from_secs(3);

/// Removes a container whose create request was dropped in flight.
///
/// The engine finishes a create whose client went away; without this, a cluster that shuts
/// down while a warm pool fills would leave a created, never-started container behind.
/// Counts itself in `creating` until it is disarmed or its cleanup is over.
struct CancelledCreate {
    name: Option<String>,
    creating: Arc<AtomicUsize>,
}

impl CancelledCreate {
    fn new(name: String, creating: Arc<AtomicUsize>) -> Self {
        creating.fetch_add(1, Ordering::SeqCst);
        Self {
            name: Some(name),
            creating,
        }
    }

    fn disarm(mut self) {
        self.name = None;
    }
}

impl Drop for CancelledCreate {
    fn drop(&mut self) {
        let creating = self.creating.clone();
        let Some(name) = self.name.take() else {
            creating.fetch_sub(1, Ordering::SeqCst);
            return;
        };
        // A thread of its own: the async runtime that dropped the future may be shutting down.
        std::thread::spawn(move || {
            if let Some(runtime) = cleanup_runtime() {
                runtime.block_on(remove_when_created(&name));
            }
            creating.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Removes `name` once it shows up (the request landed), or gives up after the window.
async fn remove_when_created(name: &str) {
    let Ok(docker) = connect_engine().await else {
        return;
    };
    let deadline = tokio::time::Instant::now() + CANCELLED_CREATE_WINDOW;
    while tokio::time::Instant::now() < deadline {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        if docker.remove_container(name, Some(options)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Candidate subnets `10.213.X.0/24`, X starting from the process id so that test binaries
/// running side by side rarely try the same one first.
const SUBNET_CANDIDATES: u32 = 32;

/// Creates the bridge network on the first free candidate /24 and returns that subnet.
async fn create_network(
    docker: &Docker,
    network: &str,
    runtime: &str,
) -> Result<Ipv4Addr, DockerRuntimeError> {
    let start = std::process::id() + NEXT_RUNTIME.load(Ordering::Relaxed) * 7;
    let mut last_error = None;
    for attempt in 0..SUBNET_CANDIDATES {
        let subnet = Ipv4Addr::new(10, 213, ((start + attempt * 37) % 256) as u8, 0);
        let [a, b, c, _] = subnet.octets();
        let request = NetworkCreateRequest {
            name: network.to_owned(),
            driver: Some("bridge".into()),
            // What the template's NetworkPolicy does in a cluster: sandboxes cannot reach
            // each other; the host still reaches every one of them.
            options: Some(HashMap::from([(
                "com.docker.network.bridge.enable_icc".to_owned(),
                "false".to_owned(),
            )])),
            ipam: Some(Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some(format!("{subnet}/24")),
                    gateway: Some(Ipv4Addr::new(a, b, c, 1).to_string()),
                    ..IpamConfig::default()
                }]),
                ..Ipam::default()
            }),
            labels: Some(labels(runtime, None)),
            ..NetworkCreateRequest::default()
        };
        match docker.create_network(request).await {
            Ok(_) => return Ok(subnet),
            // Most likely "Pool overlaps with other one on this address space": try the next.
            Err(error) => last_error = Some(error),
        }
    }
    Err(DockerRuntimeError::CreateNetwork(
        network.to_owned(),
        last_error.expect("at least one attempt"),
    ))
}

/// Round-robin addresses in a /24 (`.2` to `.254`; `.1` is the gateway).
#[derive(Debug)]
struct Addresses {
    subnet: [u8; 3],
    next: u8,
    taken: HashSet<u8>,
}

impl Addresses {
    fn new(subnet: Ipv4Addr) -> Self {
        let [a, b, c, _] = subnet.octets();
        Self {
            subnet: [a, b, c],
            next: 2,
            taken: HashSet::new(),
        }
    }

    /// The next free address after the last one handed out.
    fn take(&mut self) -> Option<Ipv4Addr> {
        for _ in 2..=254 {
            let host = self.next;
            self.next = if host >= 254 { 2 } else { host + 1 };
            if self.taken.insert(host) {
                let [a, b, c] = self.subnet;
                return Some(Ipv4Addr::new(a, b, c, host));
            }
        }
        None
    }

    fn free(&mut self, ip: Ipv4Addr) {
        self.taken.remove(&ip.octets()[3]);
    }
}

fn labels(runtime: &str, pod: Option<&str>) -> HashMap<String, String> {
    let mut labels = HashMap::from([
        (RUNTIME_LABEL.to_owned(), runtime.to_owned()),
        (OWNER_PID_LABEL.to_owned(), std::process::id().to_string()),
    ]);
    if let Some(pod) = pod {
        labels.insert(POD_LABEL.to_owned(), pod.to_owned());
    }
    labels
}

/// A container name the engine accepts: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, unique per runtime.
fn container_name(namespace: &str, pod: &str, runtime: &str) -> String {
    format!("{namespace}.{pod}.{runtime}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

async fn remove_container(docker: &Docker, id: &str) {
    let options = RemoveContainerOptionsBuilder::new().force(true).build();
    let _ = docker.remove_container(id, Some(options)).await;
}

/// What the engine holds that matches a label selector (`key` or `key=value`).
#[derive(Debug, Default)]
pub struct Labelled {
    /// Containers, stopped ones included.
    pub containers: Vec<bollard::models::ContainerSummary>,
    /// Networks.
    pub networks: Vec<bollard::models::Network>,
}

/// Lists the containers and networks that match `selector`; an engine error lists nothing.
pub async fn list_labelled(docker: &Docker, selector: &str) -> Labelled {
    let filters = HashMap::from([("label", vec![selector])]);
    let containers = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap_or_default();
    let networks = docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::new().filters(&filters).build(),
        ))
        .await
        .unwrap_or_default();
    Labelled {
        containers,
        networks,
    }
}

/// Removes containers, then networks, that match a label selector.
async fn remove_labelled(docker: &Docker, selector: &str) {
    let found = list_labelled(docker, selector).await;
    futures::future::join_all(
        found
            .containers
            .iter()
            .filter_map(|c| c.id.as_deref())
            .map(|id| remove_container(docker, id)),
    )
    .await;
    for network in found.networks.iter().filter_map(|n| n.id.as_deref()) {
        let _ = docker.remove_network(network).await;
    }
}

/// Removes what runtimes of processes that no longer exist left behind.
async fn remove_leftovers(docker: &Docker) {
    let Labelled {
        containers,
        networks,
    } = list_labelled(docker, OWNER_PID_LABEL).await;
    let mut dead: Vec<String> = containers
        .iter()
        .filter_map(|c| c.labels.as_ref())
        .chain(networks.iter().filter_map(|n| n.labels.as_ref()))
        .filter(|labels| {
            labels
                .get(OWNER_PID_LABEL)
                .is_some_and(|pid| !process_exists(pid))
        })
        .filter_map(|labels| labels.get(RUNTIME_LABEL).cloned())
        .collect();
    dead.sort();
    dead.dedup();
    for runtime in dead {
        remove_labelled(docker, &format!("{RUNTIME_LABEL}={runtime}")).await;
    }
}

fn process_exists(pid: &str) -> bool {
    std::path::Path::new("/proc").join(pid).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_address_is_handed_out_again_only_after_the_others() {
        let mut pool = Addresses::new(Ipv4Addr::new(10, 213, 7, 0));
        let first = pool.take().unwrap();
        assert_eq!(first, Ipv4Addr::new(10, 213, 7, 2));
        pool.free(first);
        assert_eq!(pool.take(), Some(Ipv4Addr::new(10, 213, 7, 3)));
        let all: Vec<_> = std::iter::from_fn(|| pool.take()).collect();
        assert_eq!(all.len(), 252, "253 hosts in all, one already taken");
        assert_eq!(
            all.last(),
            Some(&Ipv4Addr::new(10, 213, 7, 2)),
            "wrapped around to the freed one"
        );
        assert_eq!(pool.take(), None);
    }

    #[test]
    fn container_names_are_valid_for_the_engine() {
        assert_eq!(
            container_name("agent-platform", "py-abc", "12-0"),
            "agent-platform.py-abc.12-0"
        );
        assert_eq!(container_name("ns", "a/b:c", "1"), "ns.a-b-c.1");
    }
}
