//! `cargo xtask bench`: speed and memory figures, measured side by side.
//!
//! Targets are checked here, never by timed assertions in tests: this machine
//! is shared and noisy, so only ratios measured in one run mean much.

use anyhow::Context as _;
use duct::cmd;

/// Build optimized binaries and run the benchmark suite (`tests/src/bin/bench.rs`).
#[derive(clap::Args)]
pub struct Bench {
    /// Flags for the suite: `--iterations N --spawns N --claims N --json PATH`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

impl Bench {
    pub fn run(self) -> anyhow::Result<()> {
        let root = super::workspace_root();
        cmd!(
            "cargo",
            "build",
            "--release",
            "--package",
            "python-sandbox-agent",
            "--package",
            "pipeline",
            "--bins"
        )
        .dir(&root)
        .run()
        .context("building the release binaries")?;
        cmd(
            super::target_dir()?.join("release").join("bench"),
            &self.args,
        )
        .dir(&root)
        .run()
        .context("the benchmark suite failed")?;
        Ok(())
    }
}
