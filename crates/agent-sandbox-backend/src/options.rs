//! How an [`AgentSandboxAgent`](crate::AgentSandboxAgent) claims sandboxes and
//! reaches their agents, and how an `ax.yaml` entry becomes those options.

use std::path::PathBuf;

use axp_transport::{ClientOptions, DEFAULT_PORT, Protocol};
use sandbox_claim::{ApiVersion, ClaimOptions, VersionSelection};

use crate::{metrics::BackendMetrics, registry::AgentSandboxAgentConfig};

/// How an [`AgentSandboxAgent`](crate::AgentSandboxAgent) claims sandboxes and reaches its agents.
#[derive(Debug, Clone)]
pub struct SandboxAgentOptions {
    /// Claim lifecycle settings (namespace, pool or template, TTL, ready timeout, …).
    pub claims: ClaimOptions,
    /// The agent's AXP port in the pod.
    pub port: u16,
    /// Which AXP dialect the agent is spoken to in.
    pub protocol: Protocol,
    /// How the agent is reached: direct to the pod IP, or through a port-forward to the pod.
    pub connection: ConnectionMode,
    /// Keep the sandbox for the conversation, or release after each execution.
    pub release: ReleasePolicy,
    /// Options of the AXP client (deadline, token, TLS, …).
    pub client: ClientOptions,
    /// Where the backend counts what it does; register it in the host's registry to serve it.
    pub metrics: BackendMetrics,
}

impl Default for SandboxAgentOptions {
    fn default() -> Self {
        Self {
            // sandbox-claim's defaults: v1beta1 unless discovery says otherwise,
            // a two-minute ready timeout, an hour's TTL.
            claims: ClaimOptions::default(),
            // The reference agent's port, as in AX's Go backend.
            port: DEFAULT_PORT,
            // The AX fork's dialect, which this backend was first written for;
            // upstream AX (HarnessService) is one registry line away.
            protocol: Protocol::AgentService,
            // In-cluster controllers reach pods directly where NetworkPolicy allows.
            connection: ConnectionMode::Direct,
            // Conversation-scoped: state survives between a conversation's turns.
            release: ReleasePolicy::PerConversation,
            // No bound on a call unless the configuration sets one: the planner
            // puts its own deadline on sub-agent calls.
            client: ClientOptions::default(),
            // Counted always (a few atomics); served only once registered.
            metrics: BackendMetrics::default(),
        }
    }
}

/// How the controller reaches a sandbox's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionMode {
    /// Straight to `podIP:port` (in-cluster, where NetworkPolicy allows it).
    ///
    /// There is no router mode: the upstream sandbox-router speaks HTTP/1 to
    /// sandboxes and cannot carry AXP's gRPC (agent-sandbox#1597).
    Direct,
    /// Through a Kubernetes port-forward to the agent's port in the sandbox's pod
    /// (`pods/{name}/portforward` on the API server), for controllers outside the cluster
    /// (a laptop against GKE) where pod IPs are not routable. One local listener on
    /// `127.0.0.1` per conversation, reused across its executions and closed on release;
    /// each connection the AXP client makes to it is its own port-forward. Needs RBAC
    /// `create` and `get` on `pods/portforward` and `get` on `pods` in the namespace.
    PortForward,
}

impl ConnectionMode {
    /// The name `ax.yaml` gives the mode (`direct`, `port-forward`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::PortForward => "port-forward",
        }
    }
}

/// When a conversation's sandbox is given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleasePolicy {
    /// Keep the sandbox (and the agent's state) for the conversation's next
    /// execution; release on `release(conversation)` or when its TTL passes.
    PerConversation,
    /// Release after every execution, as the Go backend did.
    PerExecution,
}

/// Why an `ax.yaml` entry cannot configure a backend for the cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The entry does not name what claims need on the cluster's API version.
    #[error(
        "agent {agent:?}: the cluster speaks {api_version}, where claims name a {needs}: set `{field}`"
    )]
    MissingSource {
        /// The entry's id.
        agent: String,
        /// The API version claims are made in.
        api_version: ApiVersion,
        /// What claims of that version name (`warm pool`, `template`).
        needs: &'static str,
        /// The `ax.yaml` field to set.
        field: &'static str,
    },
    /// `token_file` cannot be read.
    #[error("agent {agent:?}: cannot read token_file {path}")]
    ReadTokenFile {
        /// The entry's id.
        agent: String,
        /// The file named.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// `token_file` holds nothing but whitespace.
    #[error("agent {agent:?}: token_file {path} is empty")]
    EmptyTokenFile {
        /// The entry's id.
        agent: String,
        /// The file named.
        path: PathBuf,
    },
}

impl SandboxAgentOptions {
    /// The options one validated `ax.yaml` entry describes, for a cluster that
    /// speaks `api_version` (which decides whether claims name the warm pool or
    /// the template). Reads the entry's `token_file`, if any.
    ///
    /// # Errors
    ///
    /// [`ConfigError::MissingSource`] when the entry lacks the warm pool
    /// (v1beta1) or the template (v1alpha1); [`ConfigError::ReadTokenFile`] or
    /// [`ConfigError::EmptyTokenFile`] for a token file that gives no token.
    pub fn from_config(
        config: &AgentSandboxAgentConfig,
        api_version: ApiVersion,
    ) -> Result<Self, ConfigError> {
        let missing = |needs, field| ConfigError::MissingSource {
            agent: config.id.clone(),
            api_version,
            needs,
            field,
        };
        let claims = ClaimOptions::default()
            .namespace(&config.namespace)
            .ttl(config.ttl)
            .ready_timeout(config.ready_timeout);
        let claims = match api_version {
            ApiVersion::V1beta1 => {
                let pool = config
                    .warm_pool
                    .as_ref()
                    .ok_or_else(|| missing("warm pool", "warm_pool"))?;
                claims.source(pool).api_version(VersionSelection::V1beta1)
            }
            ApiVersion::V1alpha1 => {
                let template = config
                    .template
                    .as_ref()
                    .ok_or_else(|| missing("template", "template"))?;
                let claims = claims
                    .source(template)
                    .api_version(VersionSelection::V1alpha1);
                match &config.warm_pool {
                    Some(pool) => claims.v1alpha1_warmpool(pool),
                    None => claims,
                }
            }
        };
        let bearer_token = config
            .token_file
            .as_ref()
            .map(|path| read_token(&config.id, path))
            .transpose()?;
        Ok(Self {
            claims,
            port: config.port,
            protocol: config.protocol,
            connection: config.connection.clone(),
            release: config.release,
            client: ClientOptions {
                timeout: config.call_timeout,
                bearer_token,
                ..ClientOptions::default()
            },
            metrics: BackendMetrics::default(),
        })
    }
}

fn read_token(agent: &str, path: &std::path::Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadTokenFile {
        agent: agent.to_owned(),
        path: path.to_owned(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ConfigError::EmptyTokenFile {
            agent: agent.to_owned(),
            path: path.to_owned(),
        });
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::registry::Registry;

    fn entry(extra: &str) -> AgentSandboxAgentConfig {
        let yaml = format!(
            "registry:\n  agent_sandbox_agents:\n    - id: py\n      namespace: agents\n{extra}"
        );
        Registry::from_yaml(&yaml).unwrap().agents.remove(0)
    }

    #[test]
    fn a_v1beta1_cluster_claims_from_the_warm_pool() {
        let config = entry(
            "      warm_pool: pool\n      template: tpl\n      ttl: 5m\n      call_timeout: 30s\n",
        );
        let options = SandboxAgentOptions::from_config(&config, ApiVersion::V1beta1).unwrap();
        assert_eq!(options.claims.source, "pool");
        assert_eq!(options.claims.namespace, "agents");
        assert_eq!(options.claims.api_version, VersionSelection::V1beta1);
        assert_eq!(options.claims.v1alpha1_warmpool, None);
        assert_eq!(options.claims.ttl, Duration::from_secs(300));
        assert_eq!(options.client.timeout, Some(Duration::from_secs(30)));
        assert_eq!(options.port, DEFAULT_PORT);
    }

    #[test]
    fn a_v1alpha1_cluster_claims_from_the_template_and_names_the_pool() {
        let config = entry("      warm_pool: pool\n      template: tpl\n");
        let options = SandboxAgentOptions::from_config(&config, ApiVersion::V1alpha1).unwrap();
        assert_eq!(options.claims.source, "tpl");
        assert_eq!(options.claims.api_version, VersionSelection::V1alpha1);
        assert_eq!(options.claims.v1alpha1_warmpool.as_deref(), Some("pool"));
    }

    #[test]
    fn an_entry_without_the_source_the_version_needs_names_the_field() {
        let config = entry("      template: tpl\n");
        let error = SandboxAgentOptions::from_config(&config, ApiVersion::V1beta1).unwrap_err();
        assert!(
            matches!(
                error,
                ConfigError::MissingSource {
                    field: "warm_pool",
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("`warm_pool`"), "{error}");
    }

    #[test]
    fn connection_port_forward_is_read_and_a_router_url_beside_it_is_refused() {
        let config = entry("      warm_pool: pool\n      connection: port-forward\n");
        assert_eq!(config.connection, ConnectionMode::PortForward);
        let options = SandboxAgentOptions::from_config(&config, ApiVersion::V1beta1).unwrap();
        assert_eq!(options.connection.name(), "port-forward");

        let yaml = "registry:\n  agent_sandbox_agents:\n    - id: py\n      namespace: agents\n      warm_pool: pool\n      connection: port-forward\n      router_url: http://router:8080\n";
        let error = Registry::from_yaml(yaml).unwrap_err().to_string();
        assert!(
            error.contains("router_url") && error.contains("port-forward"),
            "{error}"
        );
        let yaml = "registry:\n  agent_sandbox_agents:\n    - id: py\n      namespace: agents\n      warm_pool: pool\n      connection: portforward\n";
        let error = Registry::from_yaml(yaml).unwrap_err().to_string();
        assert!(error.contains("port-forward"), "{error}");
    }

    #[test]
    fn the_token_file_is_read_trimmed_and_an_empty_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let config = entry(&format!(
            "      warm_pool: pool\n      token_file: {}\n",
            token.display()
        ));
        let options = SandboxAgentOptions::from_config(&config, ApiVersion::V1beta1).unwrap();
        assert_eq!(options.client.bearer_token.as_deref(), Some("s3cret"));

        std::fs::write(&token, " \n").unwrap();
        let error = SandboxAgentOptions::from_config(&config, ApiVersion::V1beta1).unwrap_err();
        assert!(
            matches!(error, ConfigError::EmptyTokenFile { .. }),
            "{error:?}"
        );
        drop(dir);

        let error = SandboxAgentOptions::from_config(&config, ApiVersion::V1beta1).unwrap_err();
        assert!(
            matches!(error, ConfigError::ReadTokenFile { .. }),
            "{error:?}"
        );
    }
}
