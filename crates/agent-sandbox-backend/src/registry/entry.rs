//! Reading one `agent_sandbox_agents` entry field by field: types, ranges,
//! choices and the fields that require each other, with every problem recorded
//! (not just the first) so a user fixes the file in one go.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use axp_transport::Protocol;
use sandbox_claim::VersionSelection;
use serde_json::Value;

use super::{AgentSandboxAgentConfig, Problem, RESERVED_IDS};
use crate::options::{ConnectionMode, ReleasePolicy, SandboxAgentOptions};

/// Reads entry number `index`; `None` (with `problems` recorded) when it is invalid.
pub(super) fn read(
    index: usize,
    map: BTreeMap<String, Value>,
    problems: &mut Vec<Problem>,
) -> Option<AgentSandboxAgentConfig> {
    EntryFields::new(index, map, problems).agent()
}

const KNOWN_FIELDS: [&str; 15] = [
    "id",
    "name",
    "description",
    "namespace",
    "template",
    "warm_pool",
    "port",
    "protocol",
    "api_version",
    "ready_timeout",
    "ttl",
    "call_timeout",
    "connection",
    "release",
    "token_file",
];

/// Why router mode is refused, in the problems for `connection: router` and `router_url`.
const NO_ROUTER: &str = "the upstream sandbox-router speaks HTTP/1 only to sandboxes and cannot carry AXP's gRPC (agent-sandbox#1597); use `connection: direct` from inside the cluster, or `connection: port-forward` from outside it";

/// One raw entry being read field by field, recording every problem.
struct EntryFields<'a> {
    entry: String,
    map: BTreeMap<String, Value>,
    problems: &'a mut Vec<Problem>,
    ok: bool,
}

impl<'a> EntryFields<'a> {
    fn new(index: usize, map: BTreeMap<String, Value>, problems: &'a mut Vec<Problem>) -> Self {
        let entry = match map.get("id").and_then(Value::as_str) {
            Some(id) => format!("agent_sandbox_agents[{index}] (id {id:?})"),
            None => format!("agent_sandbox_agents[{index}]"),
        };
        Self {
            entry,
            map,
            problems,
            ok: true,
        }
    }

    fn problem(&mut self, field: &str, message: impl Into<String>) {
        self.ok = false;
        self.problems.push(Problem {
            entry: self.entry.clone(),
            field: field.to_owned(),
            message: message.into(),
        });
    }

    /// A string field; `None` when absent (or wrongly typed, which is recorded).
    fn string(&mut self, field: &str) -> Option<String> {
        match self.map.get(field)? {
            Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            Value::String(_) => {
                self.problem(field, "must not be empty");
                None
            }
            Value::Null => None,
            other => {
                let found = type_name(other);
                self.problem(field, format!("must be a string, found {found}"));
                None
            }
        }
    }

    fn required(&mut self, field: &str) -> Option<String> {
        let value = self.string(field);
        if value.is_none() && !self.map.contains_key(field) {
            self.problem(field, "is required");
        }
        value
    }

    fn duration(&mut self, field: &str, default: Option<Duration>) -> Option<Duration> {
        let Some(value) = self.map.get(field) else {
            return default;
        };
        let parsed = match value {
            Value::String(s) => humantime::parse_duration(s.trim()).map_err(|e| e.to_string()),
            // A bare number means seconds, as in Go's YAML configs written by hand.
            Value::Number(n) => n
                .as_f64()
                .filter(|secs| *secs >= 0.0 && secs.is_finite())
                .map(Duration::from_secs_f64)
                .ok_or_else(|| "must not be negative".to_owned()),
            other => Err(format!(
                "must be a duration such as \"90s\" or \"2m\", found {}",
                type_name(other)
            )),
        };
        match parsed {
            Ok(d) if d.is_zero() => {
                self.problem(field, "must be longer than zero");
                default
            }
            Ok(d) => Some(d),
            Err(message) => {
                self.problem(
                    field,
                    format!("is not a duration ({message}); write e.g. \"90s\", \"2m\" or \"1h\""),
                );
                default
            }
        }
    }

    fn one_of<T: Copy>(&mut self, field: &str, choices: &[(&str, T)], default: T) -> T {
        let Some(value) = self.string(field) else {
            return default;
        };
        if let Some((_, choice)) = choices.iter().find(|(name, _)| *name == value) {
            return *choice;
        }
        let names: Vec<_> = choices.iter().map(|(name, _)| *name).collect();
        self.problem(
            field,
            format!("{value:?} is not one of {}", names.join(", ")),
        );
        default
    }

    fn agent(&mut self) -> Option<AgentSandboxAgentConfig> {
        // Whatever an entry leaves out is what the backend does by default.
        let defaults = SandboxAgentOptions::default();
        let unknown: Vec<String> = self
            .map
            .keys()
            .filter(|k| !KNOWN_FIELDS.contains(&k.as_str()) && k.as_str() != "router_url")
            .cloned()
            .collect();
        for key in unknown {
            self.problem(
                &key,
                format!(
                    "unknown field; known fields are {}",
                    KNOWN_FIELDS.join(", ")
                ),
            );
        }

        let id = self.required("id");
        if let Some(id) = &id {
            if RESERVED_IDS.contains(&id.as_str()) {
                self.problem("id", format!("{id:?} is reserved by AX"));
            } else if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                let hint = if id.contains('_') {
                    " (`_` is not allowed: the planner cannot dispatch to it; use `-`)"
                } else {
                    ""
                };
                self.problem("id", format!("{id:?} must match ^[A-Za-z0-9-]+${hint}"));
            }
        }
        let name = self.string("name");
        let description = self.string("description").unwrap_or_default();
        let namespace = self.required("namespace");
        let template = self.string("template");
        let warm_pool = self.string("warm_pool");
        if template.is_none()
            && warm_pool.is_none()
            && !self.map.contains_key("template")
            && !self.map.contains_key("warm_pool")
        {
            self.problem(
                "template",
                "one of `template` (v1alpha1 clusters) or `warm_pool` (v1beta1 clusters) is required",
            );
        }
        let port = match self.map.get("port") {
            None => defaults.port,
            Some(Value::Number(n)) => match n
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
            {
                Some(port) => port,
                None => {
                    self.problem("port", format!("{n} is not a port (1–65535)"));
                    defaults.port
                }
            },
            Some(other) => {
                let found = type_name(other);
                self.problem("port", format!("must be a number 1–65535, found {found}"));
                defaults.port
            }
        };
        let protocol = match self.string("protocol").as_deref() {
            None => defaults.protocol,
            Some("axp") => Protocol::AgentService,
            Some("harness") => Protocol::HarnessService,
            Some("a2a") => {
                self.problem(
                    "protocol",
                    "\"a2a\" is not supported by agent-sandbox agents; use \"axp\" (ax.AgentService) or \"harness\" (ax.HarnessService)",
                );
                defaults.protocol
            }
            Some(other) => {
                self.problem(
                    "protocol",
                    format!("{other:?} is not supported; use \"axp\" (ax.AgentService, the AX fork) or \"harness\" (ax.HarnessService, upstream AX)"),
                );
                defaults.protocol
            }
        };
        let api_version = self.one_of(
            "api_version",
            &[
                ("auto", VersionSelection::Auto),
                ("v1beta1", VersionSelection::V1beta1),
                ("v1alpha1", VersionSelection::V1alpha1),
            ],
            defaults.claims.api_version,
        );
        match (api_version, &template, &warm_pool) {
            (VersionSelection::V1beta1, _, None) => self.problem(
                "warm_pool",
                "is required with api_version v1beta1 (claims name a warm pool)",
            ),
            (VersionSelection::V1alpha1, None, _) => self.problem(
                "template",
                "is required with api_version v1alpha1 (claims name a template)",
            ),
            _ => {}
        }
        let ready_timeout = self.duration("ready_timeout", Some(defaults.claims.ready_timeout));
        let ttl = self.duration("ttl", Some(defaults.claims.ttl));
        let call_timeout = self.duration("call_timeout", defaults.client.timeout);
        #[derive(Clone, Copy)]
        enum Mode {
            Direct,
            PortForward,
        }
        let default_mode = match defaults.connection {
            ConnectionMode::Direct => Mode::Direct,
            ConnectionMode::PortForward => Mode::PortForward,
        };
        let mode = if self.map.get("connection").and_then(Value::as_str) == Some("router") {
            self.problem(
                "connection",
                format!("\"router\" is not supported: {NO_ROUTER}"),
            );
            default_mode
        } else {
            self.one_of(
                "connection",
                &[
                    ("direct", Mode::Direct),
                    ("port-forward", Mode::PortForward),
                ],
                default_mode,
            )
        };
        let connection = match mode {
            Mode::Direct => ConnectionMode::Direct,
            Mode::PortForward => ConnectionMode::PortForward,
        };
        if self.map.contains_key("router_url") {
            self.problem("router_url", format!("is not supported: {NO_ROUTER}"));
        }
        let release = self.one_of(
            "release",
            &[
                ("conversation", ReleasePolicy::PerConversation),
                ("execution", ReleasePolicy::PerExecution),
            ],
            defaults.release,
        );
        let token_file = self.string("token_file").map(PathBuf::from);

        if !self.ok {
            return None;
        }
        let id = id?;
        Some(AgentSandboxAgentConfig {
            name: name.unwrap_or_else(|| id.clone()),
            id,
            description,
            namespace: namespace?,
            template,
            warm_pool,
            port,
            protocol,
            api_version,
            ready_timeout: ready_timeout?,
            ttl: ttl?,
            call_timeout,
            connection,
            release,
            token_file,
        })
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}
