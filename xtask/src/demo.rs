//! `cargo xtask demo`: the main job. Builds the reference agent and the demo,
//! then runs one scripted conversation (see `tests/src/bin/demo.rs`).

use crate::artifacts;

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
        let mut args = self.args;
        let docker = self.runtime == Runtime::Docker;
        if docker {
            args.extend(["--runtime".to_owned(), "docker".to_owned()]);
        }
        // The demo's own exit status (130 on Ctrl-C) becomes ours.
        let status = artifacts::run_pipeline_bin("demo", self.release, docker, &args)?;
        anyhow::ensure!(status.success(), "the demo failed ({status})");
        Ok(())
    }
}
