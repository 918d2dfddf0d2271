//! `cargo xtask demo`: the main job. Builds the reference agent and the demo,
//! then runs one scripted conversation (see `tests/src/bin/demo.rs`).

use anyhow::Context as _;
use duct::cmd;

use crate::{artifacts, image};

/// What the embedded cluster's pods are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    /// Local agent processes on loopback addresses.
    Local,
    /// Containers of the agent's image in the local Docker Engine (built and loaded first).
    Docker,
}

/// Build and run the demo; every flag after `--` goes to it.
#[derive(clap::Args)]
pub struct Demo {
    /// Build optimized binaries (slower to build, faster to run).
    #[arg(long)]
    release: bool,
    /// The embedded cluster's pods: local agent processes or Docker containers.
    #[arg(long, value_enum, default_value = "local")]
    runtime: Runtime,
    /// Flags for the demo: `--kubeconfig PATH --namespace NS --warm-pool POOL --replicas N`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

impl Demo {
    pub fn run(self) -> anyhow::Result<()> {
        let root = super::workspace_root();
        let built = artifacts::build_bins(&[artifacts::AGENT_PACKAGE, "pipeline"], self.release)
            .context("building the reference agent and the demo")?;
        let demo = built.get("demo")?;
        let mut args = self.args;
        if self.runtime == Runtime::Docker {
            image::Image {
                no_load: false,
                ..image::Image::for_tag(image::DEFAULT_TAG)
            }
            .run()
            .context("building the agent's image for the Docker runtime")?;
            args.extend(["--runtime".to_owned(), "docker".to_owned()]);
        }
        // The demo's own exit status (130 on Ctrl-C) becomes ours.
        let status = cmd(demo, &args)
            .dir(&root)
            .env(
                artifacts::AGENT_BIN_ENV,
                built.get(artifacts::AGENT_PACKAGE)?,
            )
            .env(artifacts::AGENT_IMAGE_ENV, image::DEFAULT_TAG)
            .unchecked()
            .run()
            .with_context(|| format!("running {}", demo.display()))?
            .status;
        anyhow::ensure!(status.success(), "the demo failed ({status})");
        Ok(())
    }
}
