//! The `agent_sandbox_agents` section of AX's `ax.yaml`: which agents run in
//! agent-sandbox sandboxes, and how to reach them.
//!
//! Compatible with the Go fork's format, plus tunables of our own:
//!
//! ```yaml
//! registry:
//!   agent_sandbox_agents:
//!     - id: py
//!       name: Python Sandbox Agent
//!       description: Executes Python in a gVisor sandbox
//!       namespace: agent-platform
//!       template: python-sandbox-template   # v1alpha1 clusters
//!       warm_pool: python-sandbox-pool      # v1beta1 clusters
//!       port: 8494
//!       protocol: axp
//!       # Optional, with their defaults:
//!       api_version: auto                   # auto | v1beta1 | v1alpha1
//!       ready_timeout: 2m
//!       ttl: 1h
//!       call_timeout: 5m                    # bound on one execution; unset = the caller's
//!       connection: direct                  # direct (pod IP); no router: it cannot carry gRPC
//!       release: conversation               # conversation | execution
//!       token_file: /var/run/secrets/axp/token
//! ```
//!
//! Validation follows AX: ids match `^[A-Za-z0-9-]+$` (the planner cannot
//! dispatch `_`), `__planner` and `gemini` are reserved, ids are unique,
//! `namespace` and one of `template`/`warm_pool` are required, the port is
//! 1–65535 and the protocol is `axp` or `harness`. Every problem is reported at once, each
//! naming its entry and field. Keys outside `registry.agent_sandbox_agents`
//! belong to the rest of AX's configuration and are ignored.

use std::{collections::BTreeMap, fmt, path::PathBuf, time::Duration};

use axp_transport::Protocol;
use sandbox_claim::VersionSelection;
use serde::Deserialize;
use serde_json::Value;

use crate::options::{ConnectionMode, ReleasePolicy};

mod entry;

/// Ids the AX planner keeps for itself.
pub const RESERVED_IDS: [&str; 2] = ["__planner", "gemini"];

/// One validated `agent_sandbox_agents` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSandboxAgentConfig {
    /// The id the planner dispatches to.
    pub id: String,
    /// Display name (defaults to the id).
    pub name: String,
    /// What the planner is told the agent does.
    pub description: String,
    /// Namespace of the claims.
    pub namespace: String,
    /// SandboxTemplate name (v1alpha1 claims).
    pub template: Option<String>,
    /// SandboxWarmPool name (v1beta1 claims; v1alpha1 `spec.warmpool`).
    pub warm_pool: Option<String>,
    /// The agent's AXP port in the pod.
    pub port: u16,
    /// `protocol: axp` (`ax.AgentService`, the AX fork) or `protocol: harness`
    /// (`ax.HarnessService`, upstream AX).
    pub protocol: Protocol,
    /// Which agent-sandbox API to speak.
    pub api_version: VersionSelection,
    /// How long to wait for a claimed sandbox to become Ready.
    pub ready_timeout: Duration,
    /// How long a claim lives without renewal.
    pub ttl: Duration,
    /// Bound on one execution, if any.
    pub call_timeout: Option<Duration>,
    /// How to reach the agent.
    pub connection: ConnectionMode,
    /// When to give the sandbox back.
    pub release: ReleasePolicy,
    /// File holding the agent's bearer token, if it requires one.
    pub token_file: Option<PathBuf>,
}

/// Why the registry could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The file could not be read.
    #[error("could not read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// The text is not YAML of the expected shape.
    #[error("ax.yaml is not valid YAML for the registry")]
    Parse(#[source] serde_saphyr::Error),
    /// One or more entries are invalid; each problem names its entry and field.
    #[error("invalid agent_sandbox_agents: {}", Problems(.0))]
    Invalid(Vec<Problem>),
}

/// One thing wrong with one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Which entry: its index, and its id when it has one.
    pub entry: String,
    /// Which field (`-` when the entry as a whole is wrong).
    pub field: String,
    /// What is wrong, and what is expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: field `{}`: {}",
            self.entry, self.field, self.message
        )
    }
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// The agents of the `agent_sandbox_agents` section, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    /// In file order.
    pub agents: Vec<AgentSandboxAgentConfig>,
}

impl Registry {
    /// Reads and validates `path`.
    ///
    /// # Errors
    ///
    /// [`RegistryError::Read`], or as [`Registry::from_yaml`].
    pub fn from_file(path: impl Into<PathBuf>) -> Result<Self, RegistryError> {
        let path = path.into();
        let text = std::fs::read_to_string(&path).map_err(|source| RegistryError::Read {
            path: path.clone(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    /// Parses and validates an `ax.yaml` document.
    ///
    /// # Errors
    ///
    /// [`RegistryError::Parse`] for YAML that is not a mapping with a list of
    /// entries; [`RegistryError::Invalid`] listing every invalid field.
    ///
    /// # Example
    ///
    /// ```
    /// use agent_sandbox_backend::Registry;
    ///
    /// let yaml = "registry:\n  agent_sandbox_agents:\n    - id: py\n      namespace: agents\n      warm_pool: python-pool\n";
    /// let registry = Registry::from_yaml(yaml).unwrap();
    /// assert_eq!(registry.agents[0].port, axp_transport::DEFAULT_PORT);
    ///
    /// let bad = "registry:\n  agent_sandbox_agents:\n    - id: my_agent\n      namespace: agents\n      warm_pool: p\n";
    /// let error = Registry::from_yaml(bad).unwrap_err().to_string();
    /// assert!(error.contains("`id`"), "{error}");
    /// ```
    pub fn from_yaml(text: &str) -> Result<Self, RegistryError> {
        let document: Document = serde_saphyr::from_str(text).map_err(RegistryError::Parse)?;
        let entries = document
            .registry
            .and_then(|r| r.agent_sandbox_agents)
            .unwrap_or_default();

        let mut problems = Vec::new();
        let mut agents = Vec::new();
        for (index, fields) in entries.into_iter().enumerate() {
            if let Some(agent) = entry::read(index, fields, &mut problems) {
                agents.push(agent);
            }
        }
        check_unique_ids(&agents, &mut problems);
        if problems.is_empty() {
            Ok(Self { agents })
        } else {
            Err(RegistryError::Invalid(problems))
        }
    }

    /// The agent with this id.
    pub fn get(&self, id: &str) -> Option<&AgentSandboxAgentConfig> {
        self.agents.iter().find(|a| a.id == id)
    }
}

#[derive(Deserialize)]
struct Document {
    registry: Option<RegistrySection>,
}

#[derive(Deserialize)]
struct RegistrySection {
    agent_sandbox_agents: Option<Vec<BTreeMap<String, Value>>>,
}

fn check_unique_ids(agents: &[AgentSandboxAgentConfig], problems: &mut Vec<Problem>) {
    let mut seen = BTreeMap::new();
    for (position, agent) in agents.iter().enumerate() {
        if let Some(first) = seen.insert(agent.id.as_str(), position) {
            problems.push(Problem {
                entry: format!("agent (id {:?})", agent.id),
                field: "id".into(),
                message: format!(
                    "duplicate id: agent number {} of the valid entries has it too",
                    first + 1
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(body: &str) -> String {
        let indented: String = body.lines().map(|l| format!("      {l}\n")).collect();
        format!("registry:\n  agent_sandbox_agents:\n    -\n{indented}")
    }

    fn problems(body: &str) -> Vec<Problem> {
        match Registry::from_yaml(&entries(body)) {
            Err(RegistryError::Invalid(problems)) => problems,
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    #[test]
    fn the_go_fork_example_parses_with_its_values() {
        let yaml = r#"
registry:
  agent_sandbox_agents:
    - id: py
      name: Python Sandbox Agent
      description: Executes Python in a gVisor sandbox
      namespace: agent-platform
      template: python-sandbox-template
      warm_pool: python-sandbox-pool
      port: 8494
      protocol: axp
"#;
        let registry = Registry::from_yaml(yaml).unwrap();
        let agent = registry.get("py").unwrap();
        assert_eq!(agent.name, "Python Sandbox Agent");
        assert_eq!(agent.description, "Executes Python in a gVisor sandbox");
        assert_eq!(agent.namespace, "agent-platform");
        assert_eq!(agent.template.as_deref(), Some("python-sandbox-template"));
        assert_eq!(agent.warm_pool.as_deref(), Some("python-sandbox-pool"));
        assert_eq!(agent.port, 8494);
        assert_eq!(agent.api_version, VersionSelection::Auto);
        assert_eq!(agent.ready_timeout, Duration::from_secs(120));
        assert_eq!(agent.ttl, Duration::from_secs(3600));
        assert_eq!(agent.connection, ConnectionMode::Direct);
        assert_eq!(agent.release, ReleasePolicy::PerConversation);
    }

    #[test]
    fn tunables_parse_durations_modes_and_policies() {
        let registry = Registry::from_yaml(&entries(
            "id: py\nnamespace: ns\nwarm_pool: pool\napi_version: v1beta1\nready_timeout: 90s\nttl: 2h\ncall_timeout: 45\nconnection: direct\nrelease: execution\ntoken_file: /run/token",
        ))
        .unwrap();
        let agent = &registry.agents[0];
        assert_eq!(agent.api_version, VersionSelection::V1beta1);
        assert_eq!(agent.ready_timeout, Duration::from_secs(90));
        assert_eq!(agent.ttl, Duration::from_secs(7200));
        assert_eq!(agent.call_timeout, Some(Duration::from_secs(45)));
        assert_eq!(agent.connection, ConnectionMode::Direct);
        assert_eq!(agent.release, ReleasePolicy::PerExecution);
        assert_eq!(agent.token_file, Some(PathBuf::from("/run/token")));
    }

    #[test]
    fn other_sections_of_ax_yaml_are_ignored() {
        let yaml = "server:\n  port: 8080\nregistry:\n  remote_agents:\n    - id: x\n  agent_sandbox_agents: []\n";
        assert_eq!(Registry::from_yaml(yaml).unwrap().agents.len(), 0);
        assert_eq!(Registry::from_yaml("other: 1\n").unwrap().agents.len(), 0);
    }

    #[test]
    fn an_underscore_in_an_id_is_rejected_with_the_reason() {
        let found = problems("id: my_agent\nnamespace: ns\nwarm_pool: p");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].field, "id");
        assert!(found[0].entry.contains("\"my_agent\""));
        assert!(
            found[0].message.contains("planner cannot dispatch"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn reserved_ids_are_rejected() {
        for id in RESERVED_IDS {
            let found = problems(&format!("id: {id}\nnamespace: ns\nwarm_pool: p"));
            assert!(found[0].message.contains("reserved"), "{}", found[0]);
        }
    }

    #[test]
    fn duplicate_ids_are_rejected() {
        let yaml = "registry:\n  agent_sandbox_agents:\n    - {id: py, namespace: a, warm_pool: p}\n    - {id: py, namespace: b, warm_pool: q}\n";
        let Err(RegistryError::Invalid(found)) = Registry::from_yaml(yaml) else {
            panic!("duplicates must be rejected")
        };
        assert_eq!(found.len(), 1);
        assert!(found[0].message.contains("duplicate id"), "{}", found[0]);
    }

    #[test]
    fn missing_namespace_and_source_are_each_named() {
        let found = problems("id: py");
        let fields: Vec<_> = found.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["namespace", "template"]);
        assert!(found[1].message.contains("warm_pool"));
    }

    #[test]
    fn ports_outside_1_to_65535_are_rejected() {
        for port in ["0", "65536", "-1", "\"http\""] {
            let found = problems(&format!(
                "id: py\nnamespace: ns\nwarm_pool: p\nport: {port}"
            ));
            assert_eq!(found[0].field, "port", "{port}");
        }
    }

    #[test]
    fn axp_and_harness_pick_the_protocol_and_anything_else_names_both() {
        let parse = |protocol: &str| {
            Registry::from_yaml(&format!(
                "registry:\n  agent_sandbox_agents:\n    - id: py\n      namespace: ns\n      warm_pool: p\n{protocol}"
            ))
        };
        let protocol_of = |line: &str| parse(line).unwrap().agents[0].protocol;
        assert_eq!(protocol_of(""), Protocol::AgentService);
        assert_eq!(protocol_of("      protocol: axp\n"), Protocol::AgentService);
        assert_eq!(
            protocol_of("      protocol: harness\n"),
            Protocol::HarnessService
        );
        let found = problems("id: py\nnamespace: ns\nwarm_pool: p\nprotocol: grpc");
        assert_eq!(found[0].field, "protocol");
        assert!(
            found[0].message.contains("\"axp\"") && found[0].message.contains("\"harness\""),
            "{}",
            found[0]
        );
    }

    #[test]
    fn a2a_is_refused_as_not_supported() {
        let found = problems("id: py\nnamespace: ns\nwarm_pool: p\nprotocol: a2a");
        assert_eq!(found[0].field, "protocol");
        assert!(found[0].message.contains("not supported"), "{}", found[0]);
    }

    #[test]
    fn unknown_keys_name_the_entry_and_the_field() {
        let found = problems("id: py\nnamespace: ns\nwarm_pool: p\nwarmpool: typo");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].field, "warmpool");
        assert!(found[0].entry.contains("[0]") && found[0].entry.contains("py"));
        assert!(found[0].message.contains("unknown field"));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let found = problems("id: bad_id\nport: 0\nprotocol: a2a\nttl: soon\nconnection: router");
        let fields: Vec<_> = found.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "id",
                "namespace",
                "template",
                "port",
                "protocol",
                "ttl",
                "connection"
            ]
        );
        let message = RegistryError::Invalid(found).to_string();
        assert!(message.contains("field `ttl`"), "{message}");
    }

    #[test]
    fn router_mode_and_router_url_are_refused_with_the_reason() {
        let found = problems(
            "id: py\nnamespace: ns\nwarm_pool: p\nconnection: router\nrouter_url: http://sandbox-router-svc:8080",
        );
        let fields: Vec<_> = found.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["connection", "router_url"]);
        for problem in &found {
            let text = problem.to_string();
            assert!(text.contains("\"py\""), "{text}");
            assert!(text.contains("HTTP/1"), "{text}");
            assert!(text.contains("connection: direct"), "{text}");
            assert!(text.contains("port-forward"), "{text}");
        }
        // `router_url` alone (with the default mode) is refused too, once.
        let found = problems("id: py\nnamespace: ns\nwarm_pool: p\nrouter_url: http://r:8080");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].field, "router_url");
        assert!(!found[0].message.contains("unknown field"), "{}", found[0]);
    }

    #[test]
    fn an_explicit_api_version_requires_its_source() {
        let found = problems("id: py\nnamespace: ns\ntemplate: t\napi_version: v1beta1");
        assert_eq!(found[0].field, "warm_pool");
        let found = problems("id: py\nnamespace: ns\nwarm_pool: p\napi_version: v1alpha1");
        assert_eq!(found[0].field, "template");
    }

    #[test]
    fn broken_yaml_is_a_parse_error_not_a_panic() {
        for text in [
            "registry: [",
            "registry:\n  agent_sandbox_agents: 5\n",
            "\t- x",
        ] {
            assert!(
                matches!(Registry::from_yaml(text), Err(RegistryError::Parse(_))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let error = Registry::from_file("/nonexistent/ax.yaml").unwrap_err();
        assert!(error.to_string().contains("/nonexistent/ax.yaml"));
    }
}
