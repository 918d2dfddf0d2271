//! Contributor tasks, run as `cargo xtask <task>`.
//!
//! Each task lives in its own module and is plain Rust: no shell scripts to
//! keep in sync with CI.

mod test;

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
    /// Build what the tests spawn, then run every test in the workspace.
    Test(test::Test),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Test(task) => task.run(),
    }
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_path_buf()
}
