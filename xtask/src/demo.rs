//! `cargo xtask demo`: the main job. Builds the reference agent and the demo,
//! then runs one scripted conversation (see `tests/src/bin/demo.rs`).

use anyhow::Context as _;
use duct::cmd;

use crate::artifacts;

/// Build and run the demo; every flag after `--` goes to it.
#[derive(clap::Args)]
pub struct Demo {
    /// Build optimized binaries (slower to build, faster to run).
    #[arg(long)]
    release: bool,
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
        // The demo's own exit status (130 on Ctrl-C) becomes ours.
        let status = cmd(demo, &self.args)
            .dir(&root)
            .env(
                artifacts::AGENT_BIN_ENV,
                built.get(artifacts::AGENT_PACKAGE)?,
            )
            .unchecked()
            .run()
            .with_context(|| format!("running {}", demo.display()))?
            .status;
        anyhow::ensure!(status.success(), "the demo failed ({status})");
        Ok(())
    }
}
