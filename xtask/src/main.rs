//! Contributor tasks, run as `cargo xtask <task>`.
//!
//! Each task lives in its own module and is plain Rust: no shell scripts to
//! keep in sync with CI.

mod artifacts;
mod bench;
mod cluster;
mod codegen;
mod crds;
mod demo;
mod e2e;
mod image;
mod publish;
mod test;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Contributor tasks for the agent-sandbox workspace"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// The main job: a scripted conversation on an embedded fake cluster (or, with
    /// `-- --kubeconfig …`, a real one).
    Demo(demo::Demo),
    /// Serve the fake cluster (API server + simulated controller) for kubectl and the SDKs
    /// until Ctrl-C: `-- --kubeconfig PATH --namespace NS --warm-pool NAME`.
    Cluster(cluster::Cluster),
    /// Build what the tests spawn, then run every test in the workspace.
    Test(test::Test),
    /// Regenerate deploy/crds/ from sandbox-claim's types (`--check`: fail when stale).
    Crds(crds::Crds),
    /// Speed and memory figures, measured side by side (release build).
    Bench(bench::Bench),
    /// Build the reference agent's image from Debian packages (reproducible OCI layout + docker-archive) and docker-load it.
    Image(image::Image),
    /// Run the whole pipeline on a real kind cluster (needs kind, docker or podman, kubectl).
    E2e(e2e::E2e),
    /// Package every publishable crate and build each from its package alone (a dry run).
    PublishCheck(publish::PublishCheck),
    /// Regenerate the protobuf code committed in axp-transport from `proto/` (`--check` only compares).
    Codegen(codegen::Codegen),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Demo(task) => task.run(),
        Task::Cluster(task) => task.run(),
        Task::Test(task) => task.run(),
        Task::Crds(task) => task.run(),
        Task::Bench(task) => task.run(),
        Task::Image(task) => task.run().map(drop),
        Task::E2e(task) => task.run(),
        Task::PublishCheck(task) => task.run(),
        Task::Codegen(task) => task.run(),
    }
}

/// The workspace root (xtask lives one level below it).
///
/// Read at run time from the `CARGO_MANIFEST_DIR` that `cargo run` (the `cargo xtask`
/// alias) sets, never baked in at build time: an xtask binary built in one checkout must
/// not act on another that shares its target directory.
fn workspace_root() -> std::path::PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::current_dir().unwrap_or_default().join("xtask"));
    manifest_dir
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or(manifest_dir)
}

/// Cargo's target directory, wherever `CARGO_TARGET_DIR` or a config file puts it.
fn target_dir() -> anyhow::Result<std::path::PathBuf> {
    let metadata = duct::cmd!("cargo", "metadata", "--format-version", "1", "--no-deps")
        .dir(workspace_root())
        .read()
        .context("running cargo metadata")?;
    let metadata: serde_json::Value =
        serde_json::from_str(&metadata).context("parsing cargo metadata")?;
    metadata["target_directory"]
        .as_str()
        .map(Into::into)
        .context("cargo metadata has no target_directory")
}
