//! `cargo xtask cluster`: builds the reference agent and `fake-cluster`, then serves the fake
//! agent-sandbox cluster for kubectl and the official SDKs until Ctrl-C (see
//! `tests/src/bin/fake-cluster.rs`).

use crate::artifacts;

/// What the cluster's pods are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    /// No process: pods are Ready at once, at addresses nothing listens on.
    None,
    /// Local agent processes on loopback addresses.
    Local,
    /// Containers of the agent's image in the local Docker Engine (built and loaded first).
    Docker,
}

impl Runtime {
    fn flag(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Local => "local",
            Self::Docker => "docker",
        }
    }
}

/// Serve the fake cluster; every flag after `--` goes to `fake-cluster`.
#[derive(clap::Args)]
pub struct Cluster {
    /// Build optimized binaries (slower to build, faster to run).
    #[arg(long)]
    release: bool,
    /// The cluster's pods: nothing, local agent processes or Docker containers.
    #[arg(long, value_enum, default_value = "local")]
    runtime: Runtime,
    /// Flags for fake-cluster: `--kubeconfig PATH --namespace NS --warm-pool NAME --replicas N
    /// --port P` (the kubeconfig defaults to `<target>/fake-cluster/kubeconfig`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

impl Cluster {
    pub fn run(self) -> anyhow::Result<()> {
        let mut args = self.args;
        if !args
            .iter()
            .any(|a| a == "--kubeconfig" || a.starts_with("--kubeconfig="))
        {
            let path = super::target_dir()?.join("fake-cluster").join("kubeconfig");
            args.extend(["--kubeconfig".to_owned(), path.display().to_string()]);
        }
        args.extend(["--runtime".to_owned(), self.runtime.flag().to_owned()]);
        let docker = self.runtime == Runtime::Docker;
        let status = artifacts::run_pipeline_bin("fake-cluster", self.release, docker, &args)?;
        anyhow::ensure!(status.success(), "fake-cluster failed ({status})");
        Ok(())
    }
}
