//! How the SandboxTemplate (`deploy/base/sandbox-template.yaml`) runs the agent, read from the
//! manifest itself so that the tests follow it when it changes.

use std::path::PathBuf;

use serde_json::Value;

/// The parts of the template's agent container that `docker run` can reproduce.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    /// The container's args (the image's entrypoint is the agent).
    pub args: Vec<String>,
    /// `runAsUser:runAsGroup`.
    pub user: String,
    /// `limits.memory` in bytes.
    pub memory_bytes: i64,
    /// `limits.cpu` in nano-CPUs.
    pub nano_cpus: i64,
    /// `readOnlyRootFilesystem`.
    pub read_only_root: bool,
    /// `allowPrivilegeEscalation: false` (docker's `no-new-privileges`).
    pub no_new_privileges: bool,
    /// `capabilities.drop`.
    pub drop_capabilities: Vec<String>,
    /// Mount paths of `emptyDir` volumes, with their `sizeLimit` in bytes (tmpfs here).
    pub scratch: Vec<(String, Option<i64>)>,
    /// The AXP port.
    pub port: u16,
    /// `terminationGracePeriodSeconds`.
    pub grace_seconds: u32,
}

/// The template's path in the workspace.
pub fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/base/sandbox-template.yaml")
}

/// Reads the template.
///
/// # Errors
///
/// The file is missing, or lacks a field the tests reproduce.
pub fn read() -> Result<RunSpec, String> {
    let path = path();
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc: Value =
        serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&doc).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse(doc: &Value) -> Result<RunSpec, String> {
    let pod = &doc["spec"]["podTemplate"]["spec"];
    let container = &pod["containers"][0];
    let strings = |v: &Value, what: &str| -> Result<Vec<String>, String> {
        v.as_array()
            .ok_or_else(|| format!("{what} is not a list"))?
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{what} holds a non-string"))
            })
            .collect()
    };
    let number = |v: &Value, what: &str| v.as_u64().ok_or_else(|| format!("{what} is missing"));
    let limits = &container["resources"]["limits"];
    let quantity = |v: &Value, what: &str| {
        v.as_str()
            .map(str::to_owned)
            .or_else(|| v.as_u64().map(|n| n.to_string()))
            .ok_or_else(|| format!("{what} is missing"))
    };
    let security = &container["securityContext"];
    let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
    let mut scratch = Vec::new();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .ok_or_else(|| format!("volume {} is not declared", mount["name"]))?;
        let Some(empty_dir) = volume.get("emptyDir") else {
            return Err(format!("volume {} is not an emptyDir", mount["name"]));
        };
        let size = match empty_dir["sizeLimit"].as_str() {
            Some(q) => Some(bytes(q)?),
            None => None,
        };
        let path = mount["mountPath"]
            .as_str()
            .ok_or("a volumeMount has no mountPath")?;
        scratch.push((path.to_owned(), size));
    }
    Ok(RunSpec {
        args: strings(&container["args"], "args")?,
        user: format!(
            "{}:{}",
            number(&pod["securityContext"]["runAsUser"], "runAsUser")?,
            number(&pod["securityContext"]["runAsGroup"], "runAsGroup")?
        ),
        memory_bytes: bytes(&quantity(&limits["memory"], "limits.memory")?)?,
        nano_cpus: nano_cpus(&quantity(&limits["cpu"], "limits.cpu")?)?,
        read_only_root: security["readOnlyRootFilesystem"] == true,
        no_new_privileges: security["allowPrivilegeEscalation"] == false,
        drop_capabilities: strings(&security["capabilities"]["drop"], "capabilities.drop")?,
        scratch,
        port: u16::try_from(number(
            &container["ports"][0]["containerPort"],
            "containerPort",
        )?)
        .map_err(|e| format!("containerPort: {e}"))?,
        grace_seconds: u32::try_from(number(
            &pod["terminationGracePeriodSeconds"],
            "terminationGracePeriodSeconds",
        )?)
        .map_err(|e| format!("terminationGracePeriodSeconds: {e}"))?,
    })
}

/// A Kubernetes memory quantity (`1Gi`, `512Mi`, `1000000`) in bytes.
fn bytes(quantity: &str) -> Result<i64, String> {
    const SUFFIXES: [(&str, i64); 6] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    let (digits, unit) = SUFFIXES
        .iter()
        .find_map(|(suffix, unit)| quantity.strip_suffix(suffix).map(|d| (d, *unit)))
        .unwrap_or((quantity, 1));
    digits
        .parse::<i64>()
        .map(|n| n * unit)
        .map_err(|e| format!("memory quantity {quantity:?}: {e}"))
}

/// A Kubernetes CPU quantity (`1`, `250m`, `1.5`) in nano-CPUs.
fn nano_cpus(quantity: &str) -> Result<i64, String> {
    let parsed = match quantity.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().map(|m| m * 1e6),
        None => quantity.parse::<f64>().map(|c| c * 1e9),
    };
    // Whole nano-CPUs: the rounding is intended.
    #[allow(clippy::cast_possible_truncation)]
    parsed
        .map(|n| n.round() as i64)
        .map_err(|e| format!("cpu quantity {quantity:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deployed_template_reads_as_a_run_spec() {
        let spec = read().expect("the template reads");
        assert_eq!(spec.user, "65532:65532");
        assert_eq!(spec.memory_bytes, 1 << 30);
        assert_eq!(spec.nano_cpus, 1_000_000_000);
        assert!(spec.read_only_root && spec.no_new_privileges);
        assert_eq!(spec.drop_capabilities, ["ALL"]);
        assert_eq!(spec.scratch, [("/tmp".to_owned(), Some(256 << 20))]);
        assert_eq!(spec.port, 8494);
        assert!(spec.args.iter().any(|a| a == "--listen"), "{:?}", spec.args);
    }

    #[test]
    fn quantities_read_as_kubernetes_writes_them() {
        assert_eq!(bytes("512Mi"), Ok(512 << 20));
        assert_eq!(bytes("2G"), Ok(2_000_000_000));
        assert_eq!(nano_cpus("250m"), Ok(250_000_000));
        assert_eq!(nano_cpus("1.5"), Ok(1_500_000_000));
    }
}
