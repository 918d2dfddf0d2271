//! How the SandboxTemplate (`deploy/base/sandbox-template.yaml`) runs the agent, read from the
//! manifest itself so that the tests follow it when it changes.

use std::collections::HashMap;

use pipeline::docker::translate::ContainerSpec;

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
    /// `emptyDir` volumes as tmpfs mounts: path → mount options (with `size=` from `sizeLimit`).
    pub tmpfs: HashMap<String, String>,
    /// The AXP port.
    pub port: u16,
    /// `terminationGracePeriodSeconds`.
    pub grace_seconds: u32,
}

/// Reads the deployed template through the translation the Docker pod runtime uses
/// (`pipeline::docker::translate`), so both run the agent the same way.
///
/// # Errors
///
/// The template does not translate, or lacks a field the tests reproduce.
pub fn read() -> Result<RunSpec, String> {
    let origin = "deploy/base/sandbox-template.yaml";
    let pod_spec = pipeline::deployed_pod_spec().map_err(|e| format!("{e:#}"))?;
    let spec = ContainerSpec::from_pod_template(&serde_json::json!({ "spec": pod_spec }))
        .map_err(|e| format!("{origin}: {e}"))?;
    let missing = |what: &str| format!("{origin}: the agent container sets no {what}");
    Ok(RunSpec {
        args: spec.cmd.ok_or_else(|| missing("args"))?,
        user: spec.user.ok_or_else(|| missing("runAsUser"))?,
        memory_bytes: spec.memory_bytes.ok_or_else(|| missing("limits.memory"))?,
        nano_cpus: spec.nano_cpus.ok_or_else(|| missing("limits.cpu"))?,
        read_only_root: spec.read_only_root,
        no_new_privileges: spec.no_new_privileges,
        drop_capabilities: spec.cap_drop,
        tmpfs: spec.tmpfs,
        port: spec.probe_port,
        grace_seconds: spec
            .grace_period_seconds
            .and_then(|s| u32::try_from(s).ok())
            .ok_or_else(|| missing("terminationGracePeriodSeconds"))?,
    })
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
        let tmp = spec.tmpfs.get("/tmp").expect("/tmp is a tmpfs");
        assert!(tmp.ends_with(&format!("size={}", 256 << 20)), "{tmp}");
        assert_eq!(spec.port, 8494);
        assert_eq!(spec.grace_seconds, 30);
        assert!(spec.args.iter().any(|a| a == "--listen"), "{:?}", spec.args);
    }
}
