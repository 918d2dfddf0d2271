//! Python on the bench: the grpcio peer in a venv under `target/`, and the `python3 -c`
//! baseline, both on the interpreter binary itself (a version manager's shim resolved).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use super::report::Series;

/// What the venv gets from PyPI, pinned: grpcio, its code generator, and the protobuf
/// runtime the generator's output needs.
const PINS: [&str; 3] = ["grpcio==1.85.1", "grpcio-tools==1.85.1", "protobuf==7.36.2"];

/// The peer's source, relative to the workspace root.
const PEER_SCRIPT: &str = "tests/bench/grpcio_peer.py";

/// The real interpreter behind `python3` on `PATH` (pyenv's shim resolved to the binary).
///
/// # Errors
/// When `python3` cannot be run.
pub async fn interpreter() -> anyhow::Result<PathBuf> {
    let out = Command::new("python3")
        .args(["-I", "-S", "-c", "import sys; print(sys.executable)"])
        .output()
        .await
        .context("running python3 to find its executable")?;
    anyhow::ensure!(out.status.success(), "python3 -c failed");
    let path = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    Ok(std::fs::canonicalize(&path).unwrap_or(path))
}

/// A `python3 -I -S -c 'print(7*6)'` process per request: the Go reference agent's way,
/// without site-packages (which carry a slow `.pth` file on some machines).
pub async fn python_c(python: &Path, spawns: usize) -> anyhow::Result<Series> {
    let mut samples = Vec::with_capacity(spawns);
    for _ in 0..spawns.max(5) {
        let begun = Instant::now();
        let output = Command::new(python)
            .args(["-I", "-S", "-c", "print(7*6)"])
            .output()
            .await?;
        samples.push(begun.elapsed());
        anyhow::ensure!(output.status.success() && output.stdout.starts_with(b"42"));
    }
    Ok(Series::new(
        "python3 -I -S -c per request (process only, no RPC)",
        samples,
    ))
}

/// The venv of the peer: its interpreter and the generated stubs.
#[derive(Debug)]
pub struct Venv {
    dir: PathBuf,
    python: PathBuf,
    stubs: PathBuf,
}

impl Venv {
    /// The venv's directory: the reference agent's worker runs in it too (`--python-venv`), so
    /// both sides import the same site-packages and neither pays for the `.pth` files of
    /// this machine's base interpreter.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

async fn run(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = command
        .output()
        .await
        .with_context(|| format!("running {what}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Makes (once) a venv in `dir` with [`PINS`] installed, and generates the stubs from
/// `proto/` into it (every run, so they follow the protos).
///
/// # Errors
/// When the venv cannot be made, PyPI cannot be reached the first time, or generation fails.
pub async fn venv(base: &Path, root: &Path, dir: &Path) -> anyhow::Result<Venv> {
    let python = dir.join("bin/python");
    let marker = dir.join(format!("installed {}", PINS.join(" ")));
    if !marker.exists() {
        println!(
            "  making the grpcio peer's venv in {} (once)",
            dir.display()
        );
        run(
            Command::new(base)
                .args(["-I", "-m", "venv", "--clear"])
                .arg(dir),
            "python -m venv",
        )
        .await?;
        run(
            Command::new(&python)
                .args([
                    "-I",
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                ])
                .args(PINS),
            "pip install",
        )
        .await?;
        std::fs::write(&marker, b"")?;
    }
    let stubs = dir.join("stubs");
    std::fs::create_dir_all(&stubs)?;
    let proto = root.join("proto");
    run(
        Command::new(&python)
            .args(["-I", "-m", "grpc_tools.protoc"])
            .arg(format!("-I{}", proto.display()))
            .arg(format!("--python_out={}", stubs.display()))
            .arg(format!("--grpc_python_out={}", stubs.display()))
            .arg(proto.join("ax.proto"))
            .arg(proto.join("content.proto")),
        "grpc_tools.protoc",
    )
    .await?;
    Ok(Venv {
        dir: dir.to_owned(),
        python,
        stubs,
    })
}

/// A running grpcio peer; killed on drop.
#[derive(Debug)]
pub struct Peer {
    child: Child,
    port: u16,
}

impl Peer {
    /// Starts the peer and waits for its port.
    ///
    /// # Errors
    /// When it does not start or say where it listens within 30 s.
    pub async fn start(venv: &Venv, root: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(&venv.python)
            // `-I`: no user site, no environment; the venv's own site-packages only.
            .arg("-I")
            .arg(root.join(PEER_SCRIPT))
            .arg(&venv.stubs)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting the grpcio peer")?;
        let stdout = child.stdout.take().context("the peer's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("the grpcio peer did not start in 30 s")??
            .context("the grpcio peer exited at start")?;
        let port = line
            .strip_prefix("listening on ")
            .and_then(|p| p.trim().parse().ok())
            .with_context(|| format!("unexpected first line from the peer: {line:?}"))?;
        Ok(Self { child, port })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The peer's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
}
