//! The fake cluster with in-process AXP agents as its "pods", shared by the
//! backend's tests: the real kube client over HTTP, the simulated
//! agent-sandbox controller, and an AXP server at each pod's loopback address.

#![allow(dead_code)]

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use agent_sandbox_backend::{
    AgentSandboxAgent, SandboxAgentError, SandboxAgentOptions, testing::next_loopback_ip,
};
use axp_transport::{
    Agent, AgentError, AgentServer, DEFAULT_PORT, Execution, OutputStream, ServerOptions, content,
    pb::AgentStart,
};
use futures::future::BoxFuture;
use sandbox_claim::{
    ClaimOptions, RetryPolicy,
    testing::{
        FakeCluster, FakeClusterOptions, PodRequest, PodRuntime, PodRuntimeError, PodStarted,
        ReadyMode,
    },
};
use tokio::sync::oneshot;

pub const POOL: &str = "python-pool";
pub const TEMPLATE: &str = "python";
/// The agents' port in every "pod", as in a cluster.
pub const PORT: u16 = DEFAULT_PORT;

/// What the agents in the "pods" do: count turns per conversation and say where they run.
#[derive(Clone, Copy)]
pub enum Behaviour {
    Count,
    /// One output, then a failure: the call broke after output started.
    FailAfterOutput,
    /// Refuse: an agent's own error before any output.
    Refuse,
    /// Take this long before answering.
    Slow(Duration),
}

pub struct PodAgent {
    address: SocketAddr,
    turns: Mutex<HashMap<String, u32>>,
    behaviour: Behaviour,
    executions: Arc<AtomicU32>,
    metadata: Arc<Mutex<Vec<HashMap<String, String>>>>,
}

impl Agent for PodAgent {
    async fn execute(&self, execution: Execution) -> Result<OutputStream, AgentError> {
        self.executions.fetch_add(1, Ordering::SeqCst);
        let headers = execution
            .metadata
            .iter()
            .filter_map(|entry| match entry {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.to_string(), v.to_str().ok()?.to_owned()))
                }
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .collect();
        self.metadata.lock().unwrap().push(headers);
        let turn = {
            let mut turns = self.turns.lock().unwrap();
            let turn = turns.entry(execution.conversation_id.clone()).or_default();
            *turn += 1;
            *turn
        };
        let text = format!("turn {turn} at {}", self.address.ip());
        match self.behaviour {
            Behaviour::Count => Ok(Box::pin(futures::stream::iter([Ok(vec![
                content::model_text(text),
            ])]))),
            Behaviour::Slow(pause) => Ok(Box::pin(async_stream::stream! {
                tokio::time::sleep(pause).await;
                yield Ok(vec![content::model_text(text)]);
            })),
            Behaviour::FailAfterOutput => Ok(Box::pin(futures::stream::iter([
                Ok(vec![content::model_text(text)]),
                Err(AgentError::Unavailable("worker crashed mid-way".into())),
            ]))),
            Behaviour::Refuse => Err(AgentError::PermissionDenied(
                "pinned to another conversation".into(),
            )),
        }
    }
}

/// Pods are in-process AXP servers, each on its own loopback address
/// ([`next_loopback_ip`]: never reused within the test binary, so a stale
/// endpoint of one test cannot reach another test's agent).
pub struct ServingRuntime {
    behaviour: Behaviour,
    pods: Mutex<HashMap<String, (IpAddr, oneshot::Sender<()>)>>,
    /// Pods started so far.
    pub started: AtomicU32,
    /// Executions the pods' agents were asked to run.
    pub executions: Arc<AtomicU32>,
    /// The metadata of every execution, in order.
    pub metadata: Arc<Mutex<Vec<HashMap<String, String>>>>,
}

impl ServingRuntime {
    pub fn new(behaviour: Behaviour) -> Arc<Self> {
        Arc::new(Self {
            behaviour,
            pods: Mutex::new(HashMap::new()),
            started: AtomicU32::new(0),
            executions: Arc::new(AtomicU32::new(0)),
            metadata: Arc::new(Mutex::new(Vec::new())),
        })
    }

    pub fn running(&self) -> usize {
        self.pods.lock().unwrap().len()
    }

    /// Stops a pod's server as a crash would.
    fn crash(&self, pod: &str) {
        if let Some((_, stop)) = self.pods.lock().unwrap().remove(pod) {
            let _ = stop.send(());
        }
    }

    async fn serve(&self, request: &PodRequest) -> Result<PodStarted, PodRuntimeError> {
        for _ in 0..8 {
            let ip = next_loopback_ip();
            let Some(stop) = self
                .serve_at(SocketAddr::new(ip, PORT), self.behaviour)
                .await
            else {
                continue;
            };
            self.started.fetch_add(1, Ordering::SeqCst);
            self.pods
                .lock()
                .unwrap()
                .insert(request.pod_name.clone(), (ip, stop));
            return Ok(PodStarted {
                ip,
                pod_name: request.pod_name.clone(),
            });
        }
        Err(PodRuntimeError {
            message: "no free loopback address".into(),
        })
    }

    /// Serves an agent at `address`; `None` when the address is taken.
    pub async fn serve_at(
        &self,
        address: SocketAddr,
        behaviour: Behaviour,
    ) -> Option<oneshot::Sender<()>> {
        let listener = tokio::net::TcpListener::bind(address).await.ok()?;
        let agent = PodAgent {
            address,
            turns: Mutex::new(HashMap::new()),
            behaviour,
            executions: self.executions.clone(),
            metadata: self.metadata.clone(),
        };
        let server = AgentServer::new(
            agent,
            ServerOptions {
                grace_period: Duration::from_millis(100),
                ..ServerOptions::default()
            },
        );
        server.health().set_serving().await;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.serve(listener, async move {
            let _ = stopped.await;
        }));
        Some(stop)
    }
}

impl PodRuntime for ServingRuntime {
    fn start<'a>(
        &'a self,
        request: &'a PodRequest,
    ) -> BoxFuture<'a, Result<PodStarted, PodRuntimeError>> {
        Box::pin(self.serve(request))
    }

    fn stop<'a>(&'a self, _namespace: &'a str, pod_name: &'a str) -> BoxFuture<'a, ()> {
        self.crash(pod_name);
        Box::pin(async {})
    }
}

pub struct Setup {
    pub cluster: FakeCluster,
    pub runtime: Arc<ServingRuntime>,
}

pub async fn setup(behaviour: Behaviour, replicas: i32) -> Setup {
    setup_with(behaviour, replicas, FakeClusterOptions::default()).await
}

pub async fn setup_with(behaviour: Behaviour, replicas: i32, options: FakeClusterOptions) -> Setup {
    let runtime = ServingRuntime::new(behaviour);
    let cluster = FakeCluster::start(
        options
            .runtime(runtime.clone())
            .ready_mode(ReadyMode::After(Duration::from_millis(30))),
    )
    .await
    .unwrap();
    cluster.create_template(TEMPLATE, None).await.unwrap();
    cluster
        .create_warm_pool(POOL, TEMPLATE, replicas)
        .await
        .unwrap();
    Setup { cluster, runtime }
}

pub fn options(cluster: &FakeCluster) -> SandboxAgentOptions {
    SandboxAgentOptions {
        claims: ClaimOptions::default()
            .namespace(cluster.namespace())
            .source(POOL)
            .ready_timeout(Duration::from_secs(10))
            .retry(RetryPolicy {
                initial_backoff: Duration::from_millis(10),
                ..RetryPolicy::default()
            }),
        ..SandboxAgentOptions::default()
    }
}

pub async fn backend(setup: &Setup) -> AgentSandboxAgent {
    AgentSandboxAgent::new(setup.cluster.client(), options(&setup.cluster))
        .await
        .unwrap()
}

pub fn start() -> AgentStart {
    AgentStart {
        subagent_prompt: "print(1)".into(),
        ..AgentStart::default()
    }
}

/// Runs one execution and returns the planner's view of its outputs.
pub async fn run(
    agent: &AgentSandboxAgent,
    conversation: &str,
    exec: &str,
) -> Result<String, SandboxAgentError> {
    let mut seen = Vec::new();
    agent
        .connect(conversation, exec, start(), |batch| seen.extend(batch))
        .await?;
    Ok(content::planner_view(&seen))
}

pub fn claims_left(setup: &Setup) -> usize {
    setup
        .cluster
        .server()
        .objects(
            "extensions.agents.x-k8s.io",
            "sandboxclaims",
            Some(setup.cluster.namespace()),
        )
        .len()
}
