//! `cargo xtask test`: the one command CI and contributors run.

use anyhow::Context as _;
use duct::cmd;

use crate::artifacts;

/// Builds the binaries that tests spawn as real processes, then runs the tests.
#[derive(clap::Args)]
pub struct Test {
    /// Extra arguments for `cargo test` (e.g. a test-name filter).
    #[arg(trailing_var_arg = true)]
    args: Vec<String>,
}

impl Test {
    pub fn run(self) -> anyhow::Result<()> {
        let root = super::workspace_root();
        // Whole-pipeline tests start the reference agent binary, which `cargo test`
        // does not build for other crates' tests; they find it through the variable.
        let built = artifacts::build_bins(&[artifacts::AGENT_PACKAGE], false)
            .context("building the reference agent binary")?;
        let agent = built.get(artifacts::AGENT_PACKAGE)?;
        let mut args = vec!["test", "--workspace", "--all-features", "--no-fail-fast"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        if !self.args.is_empty() {
            args.push("--".into());
            args.extend(self.args);
        }
        cmd("cargo", &args)
            .dir(&root)
            .env(artifacts::AGENT_BIN_ENV, agent)
            .run()
            .context("tests failed")?;
        Ok(())
    }
}
