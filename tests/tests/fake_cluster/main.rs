//! The `fake-cluster` binary driven by real clients: kubectl (`kubectl.rs`) and the official
//! Python SDK and Kubernetes client (`python.rs`), each against its own cluster on a free port
//! of 127.0.0.1, through the kubeconfig the binary writes.
//!
//! kubectl and the Python packages (`tests/python/requirements.txt`, in the venv `.ci/run`
//! makes) are required under `CI`; elsewhere a test without them says so in one line and
//! skips.

mod kubectl;
mod python;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The warm pool (and template, namespace) every test cluster serves.
pub const POOL: &str = pipeline::WARM_POOL;
pub const NAMESPACE: &str = pipeline::NAMESPACE;

/// How long a cluster may take to write its kubeconfig (CRDs generated, pool filled).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopped cluster may take to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `fake-cluster` with a warm pool.
#[derive(Debug)]
pub struct Cluster {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Pods that are nothing (`--runtime none`), a warm pool of two.
    pub fn start() -> Self {
        Self::start_with("none", 2)
    }

    /// Pods of `runtime` (`none`, `local`, `docker`), a warm pool of `replicas`.
    pub fn start_with(runtime: &str, replicas: u32) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = std::fs::File::create(dir.path().join("fake-cluster.log")).expect("a log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_fake-cluster"));
        command
            .arg("--kubeconfig")
            .arg(dir.path().join("kubeconfig"))
            .args(["--warm-pool", POOL, "--runtime", runtime])
            .args(["--replicas", &replicas.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log);
        let child = command.spawn().expect("starting fake-cluster");
        let mut cluster = Self {
            child: Some(child),
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while !cluster.kubeconfig().exists() {
            assert!(
                Instant::now() < deadline,
                "fake-cluster wrote no kubeconfig within {START_TIMEOUT:?}: {}",
                cluster.log()
            );
            let exited = cluster
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                cluster.child = None;
                panic!(
                    "fake-cluster exited while starting ({status}): {}",
                    cluster.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        cluster
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the binary printed.
    pub fn log(&self) -> String {
        let mut text = String::new();
        let _ = std::fs::File::open(self.dir.path().join("fake-cluster.log"))
            .and_then(|mut f| f.read_to_string(&mut text));
        text
    }

    /// A command with this cluster's kubeconfig (and a kubectl cache of its own).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .env("KUBECONFIG", self.kubeconfig())
            .env("KUBECACHEDIR", self.dir.path().join("kube-cache"))
            .stdin(Stdio::null());
        command
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the cluster runs");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("a pid fits i32"));
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for fake-cluster") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("fake-cluster did not stop within {STOP_TIMEOUT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.child.is_some() && !std::thread::panicking() {
            self.stop();
        } else if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `output`'s stdout, or a panic with both streams when it failed.
pub fn succeeded(what: &str, output: &Output) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `true` when `program args…` (a version query that needs no server) succeeds; a missing
/// program fails under `CI` and is reported in one line otherwise.
pub fn present(program: &Path, args: &[&str], what: &str) -> bool {
    let found = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs this test, but {what} is missing ({})",
            program.display()
        );
        println!(
            "skipped: {what} is missing ({}); CI fails here",
            program.display()
        );
    }
    found
}

#[test]
fn the_cluster_writes_its_kubeconfig_when_ready_and_removes_it_on_sigterm() {
    let mut cluster = Cluster::start();
    let kubeconfig = std::fs::read_to_string(cluster.kubeconfig()).unwrap();
    assert!(
        kubeconfig.contains("server: \"http://127.0.0.1:"),
        "{kubeconfig}"
    );
    assert!(kubeconfig.contains(&format!("namespace: \"{NAMESPACE}\"")));
    let log = cluster.log();
    assert!(
        log.contains(&format!(
            "warm pool {POOL} (template {}): 2 sandboxes ready",
            pipeline::TEMPLATE
        )),
        "{log}"
    );
    let status = cluster.stop();
    assert!(status.success(), "{status}: {}", cluster.log());
    assert!(!cluster.kubeconfig().exists(), "the kubeconfig is removed");
    assert!(
        cluster.log().contains("fake cluster stopped"),
        "{}",
        cluster.log()
    );
}

#[test]
fn local_pods_are_agent_processes_that_serve_until_the_cluster_stops() {
    // kubectl reads the pod IP.
    if !present(Path::new("kubectl"), &["version", "--client"], "kubectl") {
        return;
    }
    let mut cluster = Cluster::start_with("local", 1);
    let output = cluster
        .command("kubectl")
        .args([
            "get",
            "sandboxes",
            "-o",
            "jsonpath={.items[*].status.podIPs[0]}",
        ])
        .output()
        .expect("running kubectl");
    let ip = succeeded("kubectl get sandboxes", &output)
        .trim()
        .to_owned();
    let agent: std::net::SocketAddr = format!("{ip}:{}", axp_transport::DEFAULT_PORT)
        .parse()
        .unwrap_or_else(|e| panic!("pod IP {ip:?}: {e}"));
    std::net::TcpStream::connect_timeout(&agent, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("the pool's agent does not answer at {agent}: {e}"));
    assert!(cluster.stop().success(), "{}", cluster.log());
    let refused = std::net::TcpStream::connect_timeout(&agent, Duration::from_secs(5));
    assert!(
        refused.is_err(),
        "the agent at {agent} outlived the cluster"
    );
}

#[test]
fn a_kubeconfig_the_cluster_did_not_write_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let theirs = dir.path().join("config");
    std::fs::write(
        &theirs,
        "apiVersion: v1\nkind: Config\ncurrent-context: production\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_fake-cluster"))
        .arg("--kubeconfig")
        .arg(&theirs)
        .args(["--runtime", "none"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is not a kubeconfig this cluster wrote"),
        "{stderr}"
    );
    assert!(
        std::fs::read_to_string(&theirs)
            .unwrap()
            .contains("production")
    );
}
