//! Building the binaries a task runs, and finding them without guessing.
//!
//! A target directory can be shared by several checkouts (`CARGO_TARGET_DIR`, git
//! worktrees), and `target/<profile>/<bin>` is whichever checkout built it last. So a task
//! asks cargo where the executables it just built are (`--message-format=json`) and copies
//! them into a folder private to this checkout, before anything runs them.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sha2::Digest as _;

/// The environment variable through which tests and the demo find the reference agent.
pub const AGENT_BIN_ENV: &str = "PYTHON_SANDBOX_AGENT_BIN";
/// The variable the Docker pod runtime (tests and demo) reads: the image its sandboxes run.
pub const AGENT_IMAGE_ENV: &str = "PYTHON_SANDBOX_AGENT_IMAGE";
/// The variable the container tests read: the images to run, comma-separated.
pub const CONTAINER_IMAGES_ENV: &str = "PYTHON_SANDBOX_AGENT_IMAGES";

/// The reference agent's package and binary name.
pub const AGENT_PACKAGE: &str = "python-sandbox-agent";

/// Executables that one `cargo build` produced, by binary name, copied where no other
/// checkout writes.
#[derive(Debug)]
pub struct Built {
    executables: BTreeMap<String, PathBuf>,
}

impl Built {
    /// The path of binary `name`.
    pub fn get(&self, name: &str) -> anyhow::Result<&Path> {
        self.executables
            .get(name)
            .map(PathBuf::as_path)
            .with_context(|| format!("cargo built no binary named {name}"))
    }
}

/// Builds the `--bins` of `packages` (optimized when `release`) and returns their
/// executables, copied into `<target>/checkouts/<hash of this checkout's path>/<profile>/`.
///
/// # Errors
/// When the build fails, cargo's messages do not parse, or a copy fails.
pub fn build_bins(packages: &[&str], release: bool) -> anyhow::Result<Built> {
    let root = super::workspace_root();
    let mut args = vec![
        "build",
        "--bins",
        "--message-format=json-render-diagnostics",
    ];
    for package in packages {
        args.extend(["--package", package]);
    }
    if release {
        args.push("--release");
    }
    let output = duct::cmd("cargo", &args)
        .dir(&root)
        .stdout_capture()
        .run()
        .with_context(|| format!("building {}", packages.join(", ")))?;
    let profile = if release { "release" } else { "debug" };
    let private = private_dir(&root)?.join(profile);
    std::fs::create_dir_all(&private).with_context(|| format!("creating {}", private.display()))?;
    let mut executables = BTreeMap::new();
    for line in output.stdout.lines() {
        let line = line.context("reading cargo's messages")?;
        let message: serde_json::Value =
            serde_json::from_str(&line).context("parsing a cargo message")?;
        let (Some(executable), Some(name)) = (
            message["executable"].as_str(),
            message["target"]["name"].as_str(),
        ) else {
            continue;
        };
        let copy = private.join(name);
        // Copy through a temporary name: a running demo may still hold the old file open.
        let partial = private.join(format!(".{name}.partial"));
        std::fs::copy(executable, &partial)
            .with_context(|| format!("copying {executable} to {}", partial.display()))?;
        std::fs::rename(&partial, &copy)
            .with_context(|| format!("moving {} into place", copy.display()))?;
        executables.insert(name.to_owned(), copy);
    }
    Ok(Built { executables })
}

/// `<target>/checkouts/<first 16 hex digits of SHA-256 of the checkout's path>`.
fn private_dir(root: &Path) -> anyhow::Result<PathBuf> {
    let digest = sha2::Sha256::digest(root.as_os_str().as_encoded_bytes());
    Ok(super::target_dir()?
        .join("checkouts")
        .join(&hex::encode(digest)[..16]))
}

/// Builds the reference agent and the `pipeline` package's binaries (optimized when
/// `release`), and the agent's image when `with_image` (the Docker pod runtime runs it), then
/// runs binary `name` with `args` from the workspace root, the agent's binary and image named
/// in its environment. Returns its exit status, so that a child's own code (130 on Ctrl-C)
/// can become the task's.
///
/// # Errors
/// When a build fails or the binary cannot be started.
pub fn run_pipeline_bin(
    name: &str,
    release: bool,
    with_image: bool,
    args: &[String],
) -> anyhow::Result<std::process::ExitStatus> {
    let built = build_bins(&[AGENT_PACKAGE, "pipeline"], release)
        .with_context(|| format!("building the reference agent and {name}"))?;
    let binary = built.get(name)?;
    if with_image {
        crate::image::Image {
            no_load: false,
            ..crate::image::Image::for_tag(crate::image::DEFAULT_TAG)
        }
        .run()
        .context("building the agent's image for the Docker runtime")?;
    }
    Ok(duct::cmd(binary, args)
        .dir(super::workspace_root())
        .env(AGENT_BIN_ENV, built.get(AGENT_PACKAGE)?)
        .env(AGENT_IMAGE_ENV, crate::image::DEFAULT_TAG)
        .unchecked()
        .run()
        .with_context(|| format!("running {}", binary.display()))?
        .status)
}
