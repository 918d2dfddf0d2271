//! `cargo xtask publish-check`: package every publishable crate and build it from its
//! package alone, in dependency order, as crates.io and docs.rs would.

use anyhow::Context as _;
use duct::cmd;

/// The Kubernetes API version the library crates are verified against. Libraries leave the
/// choice to the binary that uses them (k8s-openapi's rule), so a crate built alone names one
/// through this variable, as docs.rs does through `package.metadata.docs.rs`.
const K8S_OPENAPI_VERSION: &str = "1.37";

/// Runs `cargo publish --workspace --dry-run`: nothing is uploaded.
#[derive(clap::Args)]
pub struct PublishCheck {
    /// Package uncommitted changes too (by default cargo refuses a dirty tree).
    #[arg(long)]
    allow_dirty: bool,
}

impl PublishCheck {
    pub fn run(self) -> anyhow::Result<()> {
        let mut args = vec!["publish", "--workspace", "--dry-run"];
        if self.allow_dirty {
            args.push("--allow-dirty");
        }
        cmd("cargo", &args)
            .dir(super::workspace_root())
            .env("K8S_OPENAPI_ENABLED_VERSION", K8S_OPENAPI_VERSION)
            .run()
            .context("a crate does not package or does not build from its package alone")?;
        Ok(())
    }
}
