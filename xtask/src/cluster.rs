//! `cargo xtask cluster`: builds the reference agent and `fake-cluster`, then serves the fake
//! agent-sandbox cluster for kubectl and the official SDKs until Ctrl-C (see
//! `tests/src/bin/fake-cluster.rs`).

use anyhow::Context as _;
use duct::cmd;

use crate::{artifacts, image};

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
        let root = super::workspace_root();
        let built = artifacts::build_bins(&[artifacts::AGENT_PACKAGE, "pipeline"], self.release)
            .context("building the reference agent and fake-cluster")?;
        let binary = built.get("fake-cluster")?;
        let mut args = self.args;
        if !args
            .iter()
            .any(|a| a == "--kubeconfig" || a.starts_with("--kubeconfig="))
        {
            let path = super::target_dir()?.join("fake-cluster").join("kubeconfig");
            args.extend(["--kubeconfig".to_owned(), path.display().to_string()]);
        }
        if self.runtime == Runtime::Docker {
            image::Image {
                no_load: false,
                ..image::Image::for_tag(image::DEFAULT_TAG)
            }
            .run()
            .context("building the agent's image for the Docker runtime")?;
        }
        args.extend(["--runtime".to_owned(), self.runtime.flag().to_owned()]);
        let status = cmd(binary, &args)
            .dir(&root)
            .env(
                artifacts::AGENT_BIN_ENV,
                built.get(artifacts::AGENT_PACKAGE)?,
            )
            .env(artifacts::AGENT_IMAGE_ENV, image::DEFAULT_TAG)
            .unchecked()
            .run()
            .with_context(|| format!("running {}", binary.display()))?
            .status;
        anyhow::ensure!(status.success(), "fake-cluster failed ({status})");
        Ok(())
    }
}
