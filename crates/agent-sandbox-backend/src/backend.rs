//! The agent-sandbox backend: runs an AXP agent in a sandbox checked out for
//! each conversation.
//!
//! # Expected flow
//!
//! 1. [`AgentSandboxAgent::connect`] for a conversation's first execution
//!    claims a sandbox (or adopts the claim this controller made before a
//!    restart), waits until it is Ready, and calls the agent at
//!    `podIP:port` (or through the agent-sandbox router).
//! 2. Later executions of the conversation reuse the endpoint without waiting
//!    again; the claim's lifetime is renewed while the conversation is active.
//! 3. [`AgentSandboxAgent::release`] gives the sandbox back when the
//!    conversation ends; [`AgentSandboxAgent::close`] gives back all of them.
//!
//! # Guarantees
//!
//! - Executions of one conversation are serialized: the agent in a sandbox
//!   runs one at a time, and its state carries from one to the next.
//! - If the call fails before any output arrived (pod restarted, IP changed,
//!   sandbox re-provisioned), the claim is re-resolved once and the call
//!   retried. Once output has started, nothing is retried: the error is
//!   reported, so side effects are never duplicated.
//! - Every claim made has a lifecycle (`shutdownTime`), so a crashed
//!   controller leaks nothing for longer than the TTL.
//!
//! # Errors
//!
//! [`SandboxAgentError`] says which step failed (claim, wait, connect,
//! stream, release) with the claim name and, for waits, the last condition.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex as StdMutex},
    time::Duration,
};

use futures::StreamExt;
use sandbox_claim::{ApiVersion, ClaimOptions, Claims, SandboxHandle, VersionSelection};
use tokio::{sync::Mutex, time::Instant};

use axp_transport::{
    client::{AxpClient, ClientError, ClientOptions},
    pb::{AgentStart, Message},
};

use crate::registry::{AgentSandboxAgentConfig, ApiVersionSetting, ConnectionMode, ReleasePolicy};

/// How an [`AgentSandboxAgent`] claims sandboxes and reaches its agents.
#[derive(Debug, Clone)]
pub struct SandboxAgentOptions {
    /// Claim lifecycle settings (namespace, pool or template, TTL, ready timeout, …).
    pub claims: ClaimOptions,
    /// The agent's AXP port in the pod.
    pub port: u16,
    /// Direct to the pod IP, or through the router.
    pub connection: ConnectionMode,
    /// Keep the sandbox for the conversation, or release after each execution.
    pub release: ReleasePolicy,
    /// Options of the AXP client (deadline, token, TLS, …).
    pub client: ClientOptions,
}

impl Default for SandboxAgentOptions {
    fn default() -> Self {
        Self {
            claims: ClaimOptions::default(),
            // The reference agent's port, as in AX's Go backend.
            port: crate::registry::DEFAULT_PORT,
            // In-cluster controllers reach pods directly where NetworkPolicy allows.
            connection: ConnectionMode::Direct,
            // Conversation-scoped: state survives between a conversation's turns.
            release: ReleasePolicy::PerConversation,
            client: ClientOptions::default(),
        }
    }
}

/// Why an execution (or a release) through the backend failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxAgentError {
    /// The configuration cannot be turned into a backend.
    #[error("invalid agent-sandbox backend configuration for agent {agent:?}: {message}")]
    Config { agent: String, message: String },
    /// Discovering the cluster's agent-sandbox API version failed.
    #[error("could not detect the agent-sandbox API version")]
    Detect(#[source] sandbox_claim::api_version::Error),
    /// Creating or adopting the claim failed.
    #[error("could not claim a sandbox (claim {claim})")]
    Claim {
        claim: String,
        #[source]
        source: Box<sandbox_claim::Error>,
    },
    /// The claimed sandbox did not become Ready.
    #[error("sandbox for claim {claim} did not become ready")]
    Wait {
        claim: String,
        #[source]
        source: Box<sandbox_claim::Error>,
    },
    /// The agent could not be reached, even after re-resolving the claim.
    #[error("could not reach the agent of claim {claim} at {endpoint}")]
    Connect {
        claim: String,
        endpoint: String,
        #[source]
        source: Box<ClientError>,
    },
    /// The call failed after it had started; it was not retried.
    #[error("agent of claim {claim} at {endpoint} failed after {outputs} output frame(s)")]
    Stream {
        claim: String,
        endpoint: String,
        outputs: usize,
        #[source]
        source: Box<ClientError>,
    },
    /// Giving the sandbox back failed.
    #[error("could not release the sandbox of conversation {conversation}")]
    Release {
        conversation: String,
        #[source]
        source: Box<sandbox_claim::Error>,
    },
}

impl SandboxAgentError {
    /// The gRPC code the agent answered with, if the failure was the agent's.
    pub fn agent_code(&self) -> Option<tonic::Code> {
        match self {
            Self::Connect { source, .. } | Self::Stream { source, .. } => source.code(),
            _ => None,
        }
    }
}

/// What one execution did, for callers that report timings.
#[derive(Debug, Clone)]
pub struct ExecutionReport {
    /// Where it ran.
    pub sandbox: SandboxHandle,
    /// Time spent claiming and waiting for readiness (zero when the endpoint was known).
    pub claim_to_ready: Duration,
    /// From the call to the first output frame, if any arrived.
    pub first_output: Option<Duration>,
    /// The whole execution, claim included.
    pub total: Duration,
    /// Output frames received.
    pub frames: usize,
    /// Whether the agent sent `end` (rather than closing without it).
    pub ended: bool,
    /// Whether the claim had to be re-resolved because the known endpoint failed.
    pub re_resolved: bool,
}

/// A conversation's sandbox, once resolved.
struct Endpoint {
    handle: SandboxHandle,
    client: AxpClient,
    address: String,
    renewed_at: Instant,
}

/// One conversation: its lock serializes executions; `None` until resolved.
type Slot = Arc<Mutex<Option<Endpoint>>>;

/// An AXP agent that runs in agent-sandbox sandboxes, one per conversation.
///
/// # Example
///
/// ```no_run
/// use agent_sandbox_backend::backend::{AgentSandboxAgent, SandboxAgentOptions};
/// use axp_transport::{content, pb::AgentStart};
/// use sandbox_claim::ClaimOptions;
///
/// # async fn run(kube: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let options = SandboxAgentOptions {
///     claims: ClaimOptions::default().namespace("agent-platform").source("python-sandbox-pool"),
///     ..SandboxAgentOptions::default()
/// };
/// let agent = AgentSandboxAgent::new(kube, options).await?;
/// let start = AgentStart { subagent_prompt: "x = 6 * 7\nx".into(), ..Default::default() };
/// agent.connect("conversation-1", "exec-1", start, |batch| {
///     println!("{}", content::planner_view(&batch));
/// }).await?;
/// agent.release("conversation-1").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AgentSandboxAgent {
    inner: Arc<Inner>,
}

struct Inner {
    claims: Claims,
    options: SandboxAgentOptions,
    conversations: StdMutex<HashMap<String, Slot>>,
}

impl std::fmt::Debug for AgentSandboxAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSandboxAgent")
            .field("options", &self.inner.options)
            .field("api_version", &self.inner.claims.api_version())
            .finish_non_exhaustive()
    }
}

impl AgentSandboxAgent {
    /// A backend on `kube`. With `VersionSelection::Auto` the cluster's
    /// discovery is asked once, here.
    ///
    /// # Errors
    ///
    /// [`SandboxAgentError::Detect`] when discovery fails or agent-sandbox is not installed.
    pub async fn new(
        kube: kube::Client,
        options: SandboxAgentOptions,
    ) -> Result<Self, SandboxAgentError> {
        let claims =
            Claims::detect(kube, options.claims.clone())
                .await
                .map_err(|error| match error {
                    sandbox_claim::Error::Detect(source) => SandboxAgentError::Detect(source),
                    other => SandboxAgentError::Claim {
                        claim: "-".into(),
                        source: Box::new(other),
                    },
                })?;
        Ok(Self::with_claims(claims, options))
    }

    /// A backend over an existing [`Claims`] (its options win over `options.claims`).
    pub fn with_claims(claims: Claims, options: SandboxAgentOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                claims,
                options,
                conversations: StdMutex::new(HashMap::new()),
            }),
        }
    }

    /// A backend for one `ax.yaml` entry. The API version is detected first
    /// when the entry says `auto`, because it decides whether claims name the
    /// warm pool or the template.
    ///
    /// # Errors
    ///
    /// [`SandboxAgentError::Detect`], or [`SandboxAgentError::Config`] when
    /// the entry lacks what the cluster's API version needs, or its token file
    /// cannot be read.
    pub async fn from_config(
        kube: kube::Client,
        config: &AgentSandboxAgentConfig,
    ) -> Result<Self, SandboxAgentError> {
        let version = match config.api_version {
            ApiVersionSetting::V1beta1 => ApiVersion::V1beta1,
            ApiVersionSetting::V1alpha1 => ApiVersion::V1alpha1,
            ApiVersionSetting::Auto => sandbox_claim::api_version::detect(&kube)
                .await
                .map_err(SandboxAgentError::Detect)?,
        };
        let config_error = |message: String| SandboxAgentError::Config {
            agent: config.id.clone(),
            message,
        };
        let mut claims = ClaimOptions::default()
            .namespace(&config.namespace)
            .ttl(config.ttl)
            .ready_timeout(config.ready_timeout);
        claims = match version {
            ApiVersion::V1beta1 => {
                let pool = config.warm_pool.as_ref().ok_or_else(|| {
                    config_error("the cluster speaks v1beta1, where claims name a warm pool: set `warm_pool`".into())
                })?;
                claims.source(pool)
            }
            ApiVersion::V1alpha1 => {
                let template = config.template.as_ref().ok_or_else(|| {
                    config_error(
                        "the cluster speaks v1alpha1, where claims name a template: set `template`"
                            .into(),
                    )
                })?;
                let claims = claims.source(template);
                match &config.warm_pool {
                    Some(pool) => claims.v1alpha1_warmpool(pool),
                    None => claims,
                }
            }
        };
        claims.api_version = match version {
            ApiVersion::V1beta1 => VersionSelection::V1beta1,
            ApiVersion::V1alpha1 => VersionSelection::V1alpha1,
        };
        let bearer_token = match &config.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        config_error(format!("cannot read token_file {}: {e}", path.display()))
                    })?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let options = SandboxAgentOptions {
            claims: claims.clone(),
            port: config.port,
            connection: config.connection.clone(),
            release: config.release,
            client: ClientOptions {
                timeout: config.call_timeout,
                bearer_token,
                ..ClientOptions::default()
            },
        };
        Ok(Self::with_claims(Claims::new(kube, claims), options))
    }

    /// The claim lifecycle this backend uses.
    pub fn claims(&self) -> &Claims {
        &self.inner.claims
    }

    /// Conversations that currently hold a resolved sandbox in this backend.
    pub fn active_conversations(&self) -> Vec<String> {
        self.inner
            .conversations
            .lock()
            .expect("conversation map poisoned")
            .keys()
            .cloned()
            .collect()
    }

    fn slot(&self, conversation_id: &str) -> Slot {
        self.inner
            .conversations
            .lock()
            .expect("conversation map poisoned")
            .entry(conversation_id.to_owned())
            .or_default()
            .clone()
    }

    /// Runs one execution of `conversation_id` in its sandbox, handing each
    /// output batch to `outputs` as it arrives.
    ///
    /// # Errors
    ///
    /// See [`SandboxAgentError`]. A failed execution leaves the claim in place
    /// (the conversation may go on) unless the release policy is per execution.
    pub async fn connect(
        &self,
        conversation_id: &str,
        exec_id: &str,
        start: AgentStart,
        mut outputs: impl FnMut(Vec<Message>) + Send,
    ) -> Result<ExecutionReport, SandboxAgentError> {
        let started = Instant::now();
        let slot = self.slot(conversation_id);
        let mut endpoint = slot.lock().await;
        let result = self
            .run(
                &mut endpoint,
                conversation_id,
                exec_id,
                start,
                &mut outputs,
                started,
            )
            .await;
        if self.inner.options.release == ReleasePolicy::PerExecution {
            *endpoint = None;
            drop(endpoint);
            self.forget(conversation_id, &slot);
            let released = self.release_claim(conversation_id).await;
            return match (result, released) {
                (Err(error), _) => Err(error),
                (Ok(_), Err(error)) => Err(error),
                (Ok(report), Ok(())) => Ok(report),
            };
        }
        result
    }

    async fn run(
        &self,
        endpoint: &mut Option<Endpoint>,
        conversation_id: &str,
        exec_id: &str,
        start: AgentStart,
        outputs: &mut (impl FnMut(Vec<Message>) + Send),
        started: Instant,
    ) -> Result<ExecutionReport, SandboxAgentError> {
        let mut claim_to_ready = Duration::ZERO;
        // A known endpoint may be stale: its pod may be gone, and in a real cluster
        // its IP may already belong to another conversation's sandbox.
        let reused = endpoint.is_some();
        if endpoint.is_none() {
            let handle = self.acquire(conversation_id).await?;
            claim_to_ready = started.elapsed();
            *endpoint = Some(self.endpoint(handle)?);
        } else {
            self.renew_if_due(endpoint.as_mut().expect("checked above"), conversation_id)
                .await;
        }

        let mut re_resolved = false;
        loop {
            let current = endpoint.as_ref().expect("resolved above");
            let attempt = self
                .call(current, conversation_id, exec_id, start.clone(), outputs)
                .await;
            match attempt {
                Ok(mut report) => {
                    report.claim_to_ready = claim_to_ready;
                    report.total = started.elapsed();
                    report.re_resolved = re_resolved;
                    return Ok(report);
                }
                Err(CallFailure::BeforeOutput(source))
                    if !re_resolved && retryable_before_output(&source, reused) =>
                {
                    tracing::warn!(
                        conversation_id,
                        claim = %current.handle.claim_name,
                        endpoint = %current.address,
                        error = %source,
                        "agent unreachable before any output; re-resolving the claim once"
                    );
                    re_resolved = true;
                    let resolve_started = Instant::now();
                    let handle = self.re_resolve(conversation_id).await?;
                    claim_to_ready += resolve_started.elapsed();
                    *endpoint = Some(self.endpoint(handle)?);
                }
                Err(CallFailure::BeforeOutput(source)) => {
                    let current = endpoint.take().expect("resolved above");
                    return Err(SandboxAgentError::Connect {
                        claim: current.handle.claim_name,
                        endpoint: current.address,
                        source: Box::new(source),
                    });
                }
                Err(CallFailure::AfterOutput { frames, source }) => {
                    // The sandbox may be gone; the next execution re-resolves.
                    let current = endpoint.take().expect("resolved above");
                    return Err(SandboxAgentError::Stream {
                        claim: current.handle.claim_name,
                        endpoint: current.address,
                        outputs: frames,
                        source: Box::new(source),
                    });
                }
            }
        }
    }

    async fn acquire(&self, conversation_id: &str) -> Result<SandboxHandle, SandboxAgentError> {
        let claims = &self.inner.claims;
        let claim = claims
            .claim_name(conversation_id)
            .unwrap_or_else(|_| "-".into());
        claims
            .acquire(conversation_id)
            .await
            .map_err(|source| claim_error(claim, source))
    }

    /// After a failed call: read the claim again (its sandbox or IP may have
    /// changed); if it is gone, claim a new sandbox.
    async fn re_resolve(&self, conversation_id: &str) -> Result<SandboxHandle, SandboxAgentError> {
        let claims = &self.inner.claims;
        match claims.resolve(conversation_id).await {
            Ok(handle) => Ok(handle),
            Err(sandbox_claim::Error::NotFound { .. }) => {
                tracing::warn!(
                    conversation_id,
                    "claim is gone; claiming a new sandbox (agent state is lost)"
                );
                self.acquire(conversation_id).await
            }
            Err(source) => {
                let claim = claims
                    .claim_name(conversation_id)
                    .unwrap_or_else(|_| "-".into());
                Err(claim_error(claim, source))
            }
        }
    }

    fn endpoint(&self, handle: SandboxHandle) -> Result<Endpoint, SandboxAgentError> {
        let options = &self.inner.options;
        let pod = std::net::SocketAddr::new(handle.pod_ip, options.port);
        let (address, client_options) = match &options.connection {
            ConnectionMode::Direct => (format!("http://{pod}"), options.client.clone()),
            ConnectionMode::Router { url } => {
                let mut client = options.client.clone();
                // The router picks the sandbox from these headers (REFERENCE §3.5);
                // the pod IP matters because warm sandboxes have no Service.
                client.metadata.extend([
                    ("x-sandbox-id".to_owned(), handle.sandbox_name.clone()),
                    ("x-sandbox-namespace".to_owned(), handle.namespace.clone()),
                    ("x-sandbox-port".to_owned(), options.port.to_string()),
                    ("x-sandbox-pod-ip".to_owned(), handle.pod_ip.to_string()),
                ]);
                (url.clone(), client)
            }
        };
        let client = AxpClient::new(&address, client_options).map_err(|source| {
            SandboxAgentError::Connect {
                claim: handle.claim_name.clone(),
                endpoint: address.clone(),
                source: Box::new(source),
            }
        })?;
        Ok(Endpoint {
            handle,
            client,
            address,
            renewed_at: Instant::now(),
        })
    }

    async fn call(
        &self,
        endpoint: &Endpoint,
        conversation_id: &str,
        exec_id: &str,
        start: AgentStart,
        outputs: &mut (impl FnMut(Vec<Message>) + Send),
    ) -> Result<ExecutionReport, CallFailure> {
        let call_started = Instant::now();
        // Keep the claim alive for as long as the execution runs.
        let _renewal = self.renew_while_running(conversation_id);
        let mut stream = endpoint
            .client
            .connect(conversation_id, exec_id, start)
            .await
            .map_err(CallFailure::BeforeOutput)?;
        let mut frames = 0;
        let mut first_output = None;
        while let Some(batch) = stream.next().await {
            match batch {
                Ok(messages) => {
                    frames += 1;
                    first_output.get_or_insert_with(|| call_started.elapsed());
                    outputs(messages);
                }
                Err(source) if frames == 0 => return Err(CallFailure::BeforeOutput(source)),
                Err(source) => return Err(CallFailure::AfterOutput { frames, source }),
            }
        }
        Ok(ExecutionReport {
            sandbox: endpoint.handle.clone(),
            claim_to_ready: Duration::ZERO,
            first_output,
            total: Duration::ZERO,
            frames,
            ended: stream.ended(),
            re_resolved: false,
        })
    }

    /// Renews the claim at the start of an execution when a tenth of the TTL
    /// has passed since the last renewal: one patch, not one per call.
    async fn renew_if_due(&self, endpoint: &mut Endpoint, conversation_id: &str) {
        let ttl = self.inner.claims.options().ttl;
        if endpoint.renewed_at.elapsed() < ttl / 10 {
            return;
        }
        match self.inner.claims.renew(conversation_id).await {
            Ok(()) => endpoint.renewed_at = Instant::now(),
            Err(error) => {
                tracing::warn!(conversation_id, %error, "could not renew the claim's lifetime")
            }
        }
    }

    /// A task that renews the claim every third of the TTL until dropped.
    fn renew_while_running(&self, conversation_id: &str) -> AbortOnDrop {
        let claims = self.inner.claims.clone();
        let conversation_id = conversation_id.to_owned();
        let period = (claims.options().ttl / 3).max(Duration::from_secs(1));
        AbortOnDrop(tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
            loop {
                ticks.tick().await;
                if let Err(error) = claims.renew(&conversation_id).await {
                    tracing::warn!(%conversation_id, %error, "could not renew the claim during a long execution");
                }
            }
        }))
    }

    /// Gives the conversation's sandbox back. Idempotent.
    ///
    /// # Errors
    ///
    /// [`SandboxAgentError::Release`] when the claim could not be deleted.
    pub async fn release(&self, conversation_id: &str) -> Result<(), SandboxAgentError> {
        let slot = self.slot(conversation_id);
        // Wait for a running execution of the conversation to finish first.
        let mut endpoint = slot.lock().await;
        *endpoint = None;
        drop(endpoint);
        self.forget(conversation_id, &slot);
        self.release_claim(conversation_id).await
    }

    async fn release_claim(&self, conversation_id: &str) -> Result<(), SandboxAgentError> {
        self.inner
            .claims
            .release(conversation_id)
            .await
            .map_err(|source| SandboxAgentError::Release {
                conversation: conversation_id.to_owned(),
                source: Box::new(source),
            })
    }

    fn forget(&self, conversation_id: &str, slot: &Slot) {
        let mut conversations = self
            .inner
            .conversations
            .lock()
            .expect("conversation map poisoned");
        if conversations
            .get(conversation_id)
            .is_some_and(|s| Arc::ptr_eq(s, slot))
        {
            conversations.remove(conversation_id);
        }
    }

    /// Releases every conversation this backend holds, waiting for running
    /// executions to finish.
    ///
    /// # Errors
    ///
    /// The first [`SandboxAgentError::Release`]; every conversation is still attempted.
    pub async fn close(&self) -> Result<(), SandboxAgentError> {
        let conversations = self.active_conversations();
        let results =
            futures::future::join_all(conversations.iter().map(|c| self.release(c))).await;
        results.into_iter().collect()
    }
}

enum CallFailure {
    BeforeOutput(ClientError),
    AfterOutput { frames: usize, source: ClientError },
}

/// Failures worth one re-resolve: the agent could not be reached, or its
/// connection broke before it said anything. On a reused endpoint,
/// PERMISSION_DENIED also means "wrong sandbox": the pod IP now belongs to
/// another conversation's pinned agent. Any other refusal of the agent's
/// (INVALID_ARGUMENT, …) is final.
fn retryable_before_output(error: &ClientError, reused_endpoint: bool) -> bool {
    error.is_connect_failure()
        || matches!(
            error.code(),
            Some(tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled)
        )
        || (reused_endpoint && error.code() == Some(tonic::Code::PermissionDenied))
}

fn claim_error(claim: String, source: sandbox_claim::Error) -> SandboxAgentError {
    if source.wait_error().is_some() {
        SandboxAgentError::Wait {
            claim,
            source: Box::new(source),
        }
    } else {
        SandboxAgentError::Claim {
            claim,
            source: Box::new(source),
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
