//! [`AgentSandboxAgent`]: the backend's handle, its constructors and its
//! entry point for executions.

use std::sync::Arc;

use axp_transport::pb::{AgentStart, Message};
use sandbox_claim::{ApiVersion, Claims, VersionSelection};
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::{
    conversations::Conversations,
    error::SandboxAgentError,
    execution::ExecutionReport,
    metrics::BackendMetrics,
    options::{ReleasePolicy, SandboxAgentOptions},
    registry::AgentSandboxAgentConfig,
};

/// An AXP agent that runs in agent-sandbox sandboxes, one per conversation.
///
/// Clones share the same conversations and claims.
///
/// # Guarantees
///
/// - Executions of one conversation are serialized: the agent in a sandbox
///   runs one at a time, and its state carries from one to the next.
/// - If the call fails before any output arrived (pod restarted, IP changed,
///   sandbox re-provisioned), the claim is re-resolved once and the call
///   retried. Once output has started, nothing is retried: the error is
///   reported, so side effects are never duplicated.
/// - Every claim made has a lifecycle (`shutdownTime`), renewed while the
///   conversation is active, so a crashed controller leaks nothing for longer
///   than the TTL.
///
/// # Errors
///
/// [`SandboxAgentError`] says which step failed (claim, wait, connect,
/// stream, release) with the claim name and, for waits, the last condition.
///
/// # Example
///
/// ```no_run
/// use agent_sandbox_backend::{AgentSandboxAgent, SandboxAgentOptions};
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
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) claims: Claims,
    pub(crate) options: SandboxAgentOptions,
    pub(crate) conversations: Conversations,
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
        mut options: SandboxAgentOptions,
    ) -> Result<Self, SandboxAgentError> {
        options.claims.retry.observer = Some(options.metrics.retry_observer());
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

    /// A backend over an existing [`Claims`] (its options win over `options.claims`; its
    /// API retries are counted only if its retry policy has
    /// [`BackendMetrics::retry_observer`](crate::BackendMetrics::retry_observer)).
    pub fn with_claims(claims: Claims, options: SandboxAgentOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                claims,
                conversations: Conversations::new(options.metrics.clone()),
                options,
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
    /// gives no token.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use agent_sandbox_backend::{AgentSandboxAgent, Registry};
    ///
    /// # async fn run(kube: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let registry = Registry::from_file("config/ax.yaml")?;
    /// let entry = registry.get("py").ok_or("ax.yaml registers no agent `py`")?;
    /// let agent = AgentSandboxAgent::from_config(kube, entry).await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_config(
        kube: kube::Client,
        config: &AgentSandboxAgentConfig,
    ) -> Result<Self, SandboxAgentError> {
        Self::from_config_with_metrics(kube, config, BackendMetrics::default()).await
    }

    /// [`AgentSandboxAgent::from_config`], counting in `metrics` (which the host has
    /// registered and serves; see [`crate::metrics`]).
    ///
    /// # Errors
    ///
    /// As [`AgentSandboxAgent::from_config`].
    pub async fn from_config_with_metrics(
        kube: kube::Client,
        config: &AgentSandboxAgentConfig,
        metrics: BackendMetrics,
    ) -> Result<Self, SandboxAgentError> {
        let version = match config.api_version {
            VersionSelection::V1beta1 => ApiVersion::V1beta1,
            VersionSelection::V1alpha1 => ApiVersion::V1alpha1,
            VersionSelection::Auto => sandbox_claim::api_version::detect(&kube)
                .await
                .map_err(SandboxAgentError::Detect)?,
        };
        let mut options =
            SandboxAgentOptions::from_config(config, version).map_err(SandboxAgentError::Config)?;
        options.claims.retry.observer = Some(metrics.retry_observer());
        options.metrics = metrics;
        let claims = Claims::new(kube, options.claims.clone());
        Ok(Self::with_claims(claims, options))
    }

    /// The claim lifecycle this backend uses.
    pub fn claims(&self) -> &Claims {
        &self.inner.claims
    }

    /// The options this backend was built with.
    pub fn options(&self) -> &SandboxAgentOptions {
        &self.inner.options
    }

    /// Conversations that currently hold a resolved sandbox in this backend.
    pub fn active_conversations(&self) -> Vec<String> {
        self.inner.conversations.ids()
    }

    /// Runs one execution of `conversation_id` in its sandbox, handing each
    /// output batch to `outputs` as it arrives.
    ///
    /// The execution is the span `execution` (see the crate's Tracing section), a child of
    /// the caller's current span; its W3C trace context travels to the agent.
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
        outputs: impl FnMut(Vec<Message>) + Send,
    ) -> Result<ExecutionReport, SandboxAgentError> {
        let span = tracing::info_span!(
            "execution",
            conversation_id,
            exec_id,
            protocol = %self.inner.options.protocol,
            outcome = tracing::field::Empty,
            re_resolved = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = self
            .execute(conversation_id, exec_id, start, outputs, started)
            .instrument(span.clone())
            .await;
        let outcome = match &result {
            Ok(report) => {
                span.record("re_resolved", report.re_resolved);
                "ok"
            }
            Err(error) => error.step(),
        };
        span.record("outcome", outcome);
        self.inner
            .options
            .metrics
            .executed(outcome, started.elapsed().as_secs_f64());
        result
    }

    async fn execute(
        &self,
        conversation_id: &str,
        exec_id: &str,
        start: AgentStart,
        mut outputs: impl FnMut(Vec<Message>) + Send,
        started: Instant,
    ) -> Result<ExecutionReport, SandboxAgentError> {
        let slot = self.inner.conversations.slot(conversation_id);
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
            if let Some(known) = endpoint.take() {
                known.close().await;
            }
            drop(endpoint);
            self.inner.conversations.forget(conversation_id, &slot);
            let released = self.release_claim(conversation_id).await;
            // The execution's own failure says more than a failed clean-up after it.
            return match (result, released) {
                (Err(error), _) | (Ok(_), Err(error)) => Err(error),
                (Ok(report), Ok(())) => Ok(report),
            };
        }
        result
    }
}
