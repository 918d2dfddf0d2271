//! `cargo xtask bench`: speed and memory figures, measured side by side.
//!
//! Targets are checked here, never by timed assertions in tests: this machine
//! is shared and noisy, so only ratios measured in one run mean much.

use anyhow::Context as _;
use duct::cmd;

use crate::artifacts;

/// Build optimized binaries and run the benchmark suite (`tests/src/bin/bench.rs`): the
/// reference agent beside the transport floor and a grpcio peer it starts itself (the
/// peer's venv is made under `target/bench-python` the first time, from PyPI), first-output
/// latency, memory, readiness and a thousand claims at once on the fake cluster.
#[derive(clap::Args)]
pub struct Bench {
    /// Flags for the suite: `--quick` (under a minute), `--json PATH`, `--markdown PATH`,
    /// `--iterations N`, `--conversations N`, `--no-scale`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

impl Bench {
    pub fn run(self) -> anyhow::Result<()> {
        let root = super::workspace_root();
        let built = artifacts::build_bins(&[artifacts::AGENT_PACKAGE, "pipeline"], true)
            .context("building the release binaries")?;
        cmd(built.get("bench")?, &self.args)
            .dir(&root)
            .env(
                artifacts::AGENT_BIN_ENV,
                built.get(artifacts::AGENT_PACKAGE)?,
            )
            .run()
            .context("the benchmark suite failed")?;
        Ok(())
    }
}
