//! A Sandbox's pod template, as the container that the Docker pod runtime starts for it.
//!
//! The translation keeps what decides how the agent behaves and what it may do: image,
//! command and args, literal env, user and group, read-only root, capabilities,
//! no-new-privileges, memory and CPU limits, and `emptyDir` volumes as tmpfs mounts (with
//! their size limit). What a single Docker Engine cannot mean is refused with an error that
//! names the field (env from Secrets, other volume kinds, several containers), so a change
//! to `deploy/` that the tests could not honour fails loudly instead of being dropped.
//!
//! Not translated, on purpose: `runtimeClassName` (gVisor is the cluster's isolation; here
//! the engine's default runtime runs the container), probes (the runtime waits for
//! `grpc.health.v1` SERVING on the readiness probe's port itself), `fsGroup` (tmpfs mounts
//! are world-writable with the sticky bit, as an `emptyDir` is writable by the pod's group),
//! requests (only limits bound a container), and `seccompProfile: RuntimeDefault` (the
//! engine's default profile is the runtime default).

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};

/// The gRPC port the runtime probes when the template names none.
pub const DEFAULT_PROBE_PORT: u16 = axp_transport::DEFAULT_PORT;

/// Why a pod template cannot run as a container here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TranslateError {
    /// The template is not a `PodTemplateSpec`.
    #[error("the sandbox's podTemplate is not a valid PodTemplateSpec")]
    Parse(#[source] serde_json::Error),
    /// No `spec`, or not exactly one container.
    #[error("the Docker pod runtime runs pods of exactly one container; this template has {0}")]
    ContainerCount(usize),
    /// The container names no image.
    #[error("container {0:?} has no image")]
    MissingImage(String),
    /// A field the engine cannot honour.
    #[error("{field} is not supported by the Docker pod runtime: {why}")]
    Unsupported {
        /// The template field, as a path.
        field: String,
        /// What the runtime would need.
        why: &'static str,
    },
    /// A resource quantity that does not parse.
    #[error("{field}: {value:?} is not a Kubernetes quantity")]
    Quantity {
        /// The template field, as a path.
        field: String,
        /// The text found there.
        value: String,
    },
}

/// What the container gets, in the engine's terms.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerSpec {
    /// The image reference.
    pub image: String,
    /// Replaces the image's entrypoint (`command`).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's cmd (`args`).
    pub cmd: Option<Vec<String>>,
    /// `NAME=value` pairs.
    pub env: Vec<String>,
    /// `uid[:gid]`, when the template sets one.
    pub user: Option<String>,
    /// The working directory, when set.
    pub working_dir: Option<String>,
    /// `readOnlyRootFilesystem`.
    pub read_only_root: bool,
    /// Capabilities to drop (`ALL` included as written).
    pub cap_drop: Vec<String>,
    /// Capabilities to add.
    pub cap_add: Vec<String>,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privileges: bool,
    /// The memory limit, in bytes.
    pub memory_bytes: Option<i64>,
    /// The CPU limit, in billionths of a CPU.
    pub nano_cpus: Option<i64>,
    /// tmpfs mounts: path → mount options (`size=…`).
    pub tmpfs: HashMap<String, String>,
    /// The port the readiness probe checks with `grpc.health.v1`.
    pub probe_port: u16,
    /// `terminationGracePeriodSeconds`, when set.
    pub grace_period_seconds: Option<i64>,
}

impl ContainerSpec {
    /// Translates `spec.podTemplate` of a Sandbox.
    ///
    /// # Errors
    ///
    /// [`TranslateError`] naming the field that cannot be honoured.
    pub fn from_pod_template(template: &serde_json::Value) -> Result<Self, TranslateError> {
        let template: PodTemplateSpec =
            serde_json::from_value(template.clone()).map_err(TranslateError::Parse)?;
        let spec = template.spec.unwrap_or_default();
        let [container] = spec.containers.as_slice() else {
            return Err(TranslateError::ContainerCount(spec.containers.len()));
        };
        if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
            return Err(unsupported(
                "spec.initContainers",
                "one container per pod, started at once",
            ));
        }
        let image = container
            .image
            .clone()
            .filter(|image| !image.is_empty())
            .ok_or_else(|| TranslateError::MissingImage(container.name.clone()))?;
        let field = |rest: &str| format!("spec.containers[{}].{rest}", container.name);

        let mut env = Vec::new();
        for var in container.env.iter().flatten() {
            if var.value_from.is_some() {
                return Err(unsupported(
                    &field(&format!("env[{}].valueFrom", var.name)),
                    "literal values only (no Secrets, ConfigMaps or the downward API)",
                ));
            }
            env.push(format!(
                "{}={}",
                var.name,
                var.value.as_deref().unwrap_or_default()
            ));
        }
        if container.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
            return Err(unsupported(&field("envFrom"), "literal env values only"));
        }

        let security = container.security_context.clone().unwrap_or_default();
        let pod_security = spec.security_context.clone().unwrap_or_default();
        let uid = security.run_as_user.or(pod_security.run_as_user);
        let gid = security.run_as_group.or(pod_security.run_as_group);
        let user = match (uid, gid) {
            (Some(uid), Some(gid)) => Some(format!("{uid}:{gid}")),
            (Some(uid), None) => Some(uid.to_string()),
            // A group without a user: the image's user with that group.
            (None, Some(_)) => {
                return Err(unsupported(
                    &field("securityContext.runAsGroup"),
                    "runAsGroup needs runAsUser",
                ));
            }
            (None, None) => None,
        };
        let capabilities = security.capabilities.clone().unwrap_or_default();

        let limits = container
            .resources
            .as_ref()
            .and_then(|r| r.limits.clone())
            .unwrap_or_default();
        let memory_bytes = limits
            .get("memory")
            .map(|q| {
                parse_quantity(&q.0)
                    .and_then(|v| i64::try_from(v.ceil() as i128).ok())
                    .ok_or_else(|| TranslateError::Quantity {
                        field: field("resources.limits.memory"),
                        value: q.0.clone(),
                    })
            })
            .transpose()?;
        let nano_cpus = limits
            .get("cpu")
            .map(|q| {
                parse_quantity(&q.0)
                    .map(|cpus| (cpus * 1e9).round() as i64)
                    .ok_or_else(|| TranslateError::Quantity {
                        field: field("resources.limits.cpu"),
                        value: q.0.clone(),
                    })
            })
            .transpose()?;

        Ok(Self {
            image,
            entrypoint: container.command.clone(),
            cmd: container.args.clone(),
            env,
            user,
            working_dir: container.working_dir.clone(),
            read_only_root: security.read_only_root_filesystem.unwrap_or(false),
            cap_drop: capabilities.drop.unwrap_or_default(),
            cap_add: capabilities.add.unwrap_or_default(),
            no_new_privileges: security.allow_privilege_escalation == Some(false),
            memory_bytes,
            nano_cpus,
            tmpfs: tmpfs_mounts(&spec, container)?,
            probe_port: probe_port(container),
            grace_period_seconds: spec.termination_grace_period_seconds,
        })
    }
}

/// `emptyDir` volumes mounted by the container, as tmpfs mounts.
fn tmpfs_mounts(
    spec: &PodSpec,
    container: &Container,
) -> Result<HashMap<String, String>, TranslateError> {
    let mut mounts = HashMap::new();
    for mount in container.volume_mounts.iter().flatten() {
        let field = format!(
            "spec.containers[{}].volumeMounts[{}]",
            container.name, mount.name
        );
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .ok_or_else(|| unsupported(&field, "it names no volume of the pod"))?;
        let Some(empty_dir) = &volume.empty_dir else {
            return Err(unsupported(
                &format!("spec.volumes[{}]", volume.name),
                "emptyDir volumes only",
            ));
        };
        // Sticky and world-writable, as /tmp: the pod's user (any uid) can write, as to an
        // emptyDir owned by its fsGroup.
        let mut options = ["rw", "nosuid", "nodev", "mode=1777"]
            .map(String::from)
            .to_vec();
        if let Some(limit) = &empty_dir.size_limit {
            let bytes = parse_quantity(&limit.0).ok_or_else(|| TranslateError::Quantity {
                field: format!("spec.volumes[{}].emptyDir.sizeLimit", volume.name),
                value: limit.0.clone(),
            })?;
            options.push(format!("size={}", bytes.ceil() as u64));
        }
        mounts.insert(mount.mount_path.clone(), options.join(","));
    }
    Ok(mounts)
}

/// The readiness probe's gRPC port, else the first container port, else AXP's.
fn probe_port(container: &Container) -> u16 {
    let from_probe = container
        .readiness_probe
        .as_ref()
        .and_then(|p| p.grpc.as_ref())
        .and_then(|g| u16::try_from(g.port).ok());
    let from_ports = container
        .ports
        .iter()
        .flatten()
        .find_map(|p| u16::try_from(p.container_port).ok());
    from_probe.or(from_ports).unwrap_or(DEFAULT_PROBE_PORT)
}

fn unsupported(field: &str, why: &'static str) -> TranslateError {
    TranslateError::Unsupported {
        field: field.to_owned(),
        why,
    }
}

/// A Kubernetes quantity (`1Gi`, `512Mi`, `250m`, `1.5`, `2k`, `1e3`) as a number of units.
pub fn parse_quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    // Binary suffixes first: "Mi" must not be read as "M" followed by junk.
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Pi", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Ei", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let (number, factor) = SUFFIXES
        .iter()
        .find_map(|(suffix, factor)| text.strip_suffix(suffix).map(|n| (n, *factor)))
        .unwrap_or((text, 1.0));
    // A sign, digits and one optional point or exponent; `f64::from_str` also takes "inf"/"NaN".
    if number.is_empty()
        || !number
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '+' | '-' | 'e' | 'E'))
    {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some(value * factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(container: serde_json::Value, extra_spec: serde_json::Value) -> serde_json::Value {
        let mut spec = json!({ "containers": [container] });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
            spec.extend(extra.clone());
        }
        json!({ "metadata": {}, "spec": spec })
    }

    #[test]
    fn the_reference_agent_template_becomes_a_locked_down_container() {
        let manifest: serde_json::Value =
            serde_saphyr::from_str(include_str!("../../../deploy/base/sandbox-template.yaml"))
                .expect("the template parses");
        let spec = ContainerSpec::from_pod_template(&manifest["spec"]["podTemplate"])
            .expect("the template translates");
        assert_eq!(spec.image, "python-sandbox-agent:dev");
        assert_eq!(spec.user.as_deref(), Some("65532:65532"));
        assert!(spec.read_only_root);
        assert!(spec.no_new_privileges);
        assert_eq!(spec.cap_drop, ["ALL"]);
        assert_eq!(spec.memory_bytes, Some(1 << 30));
        assert_eq!(spec.nano_cpus, Some(1_000_000_000));
        assert_eq!(spec.probe_port, 8494);
        let tmp = spec.tmpfs.get("/tmp").expect("/tmp is a tmpfs");
        assert!(tmp.contains(&format!("size={}", 256 << 20)), "{tmp}");
        let args = spec.cmd.expect("the template passes args");
        assert!(args.iter().any(|a| a == "--listen"), "{args:?}");
    }

    #[test]
    fn container_settings_override_the_pods_user() {
        let spec = ContainerSpec::from_pod_template(&template(
            json!({"name": "a", "image": "i", "securityContext": {"runAsUser": 7}}),
            json!({"securityContext": {"runAsUser": 1, "runAsGroup": 2}}),
        ))
        .unwrap();
        assert_eq!(spec.user.as_deref(), Some("7:2"));
    }

    #[test]
    fn env_from_a_secret_is_refused_with_the_field_named() {
        let error = ContainerSpec::from_pod_template(&template(
            json!({"name": "agent", "image": "i", "env": [
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
            ]}),
            json!({}),
        ))
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("spec.containers[agent].env[TOKEN].valueFrom"),
            "{error}"
        );
    }

    #[test]
    fn volumes_other_than_empty_dir_are_refused() {
        let error = ContainerSpec::from_pod_template(&template(
            json!({"name": "a", "image": "i", "volumeMounts": [{"name": "cfg", "mountPath": "/etc/x"}]}),
            json!({"volumes": [{"name": "cfg", "configMap": {"name": "x"}}]}),
        ))
        .unwrap_err();
        assert!(
            matches!(error, TranslateError::Unsupported { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("spec.volumes[cfg]"), "{error}");
    }

    #[test]
    fn two_containers_and_no_image_are_refused() {
        let two = json!({"spec": {"containers": [{"name": "a", "image": "i"}, {"name": "b", "image": "i"}]}});
        assert!(matches!(
            ContainerSpec::from_pod_template(&two),
            Err(TranslateError::ContainerCount(2))
        ));
        let none = template(json!({"name": "a"}), json!({}));
        assert!(matches!(
            ContainerSpec::from_pod_template(&none),
            Err(TranslateError::MissingImage(name)) if name == "a"
        ));
    }

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        assert_eq!(parse_quantity("1Gi"), Some(1073741824.0));
        assert_eq!(parse_quantity("512Mi"), Some(536870912.0));
        assert_eq!(parse_quantity("250m"), Some(0.25));
        assert_eq!(parse_quantity("1.5"), Some(1.5));
        assert_eq!(parse_quantity("2k"), Some(2000.0));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        for bad in ["", "Gi", "lots", "inf", "NaN", "-1", "1Zi"] {
            assert_eq!(parse_quantity(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_bad_memory_limit_names_its_field() {
        let error = ContainerSpec::from_pod_template(&template(
            json!({"name": "a", "image": "i", "resources": {"limits": {"memory": "lots"}}}),
            json!({}),
        ))
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("spec.containers[a].resources.limits.memory"),
            "{error}"
        );
    }
}
