//! The cluster under test: each step with its timeout, and the kind, kubectl and engine commands.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use duct::{Expression, cmd};

use super::{CONTROLLER, CONTROLLER_NAMESPACE, NAMESPACE, probe::Engine};

/// Runs `expression`, printing what and how long; kills it after `timeout`.
pub(super) fn step(what: &str, timeout: Duration, expression: Expression) -> anyhow::Result<()> {
    println!("==> {what}");
    let started = Instant::now();
    let result = run_with_timeout(&expression, timeout);
    println!(
        "<== {what}: {} in {:.1?}",
        if result.is_ok() { "ok" } else { "FAILED" },
        started.elapsed()
    );
    result.with_context(|| format!("step failed: {what}"))
}

pub(super) fn run_with_timeout(expression: &Expression, timeout: Duration) -> anyhow::Result<()> {
    let handle = expression.start()?;
    match handle.wait_timeout(timeout) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => {
            handle.kill()?;
            bail!("timed out after {timeout:?}")
        }
        Err(error) => Err(error.into()),
    }
}

/// The cluster under test.
#[derive(Debug)]
pub(super) struct Cluster {
    pub(super) name: String,
    /// Written by kind for this cluster only.
    pub(super) kubeconfig: PathBuf,
    pub(super) engine: Engine,
    /// Whether dropping this deletes the cluster (set once we created it, cleared once deleted).
    pub(super) delete_on_drop: bool,
}

impl Cluster {
    pub(super) fn kind(&self, args: &[&str]) -> Expression {
        let expression = cmd("kind", args);
        match self.engine {
            Engine::Docker => expression,
            Engine::Podman => expression.env("KIND_EXPERIMENTAL_PROVIDER", "podman"),
        }
    }

    pub(super) fn kubectl(&self, args: &[&str]) -> Expression {
        let mut argv = vec!["--kubeconfig", path_str(&self.kubeconfig)];
        argv.extend_from_slice(args);
        cmd("kubectl", argv)
    }

    /// What a failing step leaves behind: the objects of the lifecycle and the controller's logs.
    pub(super) fn diagnose(&self) {
        println!("---- kubectl get sandboxwarmpools,sandboxclaims,sandboxes,pods -A -o wide");
        let _ = run_with_timeout(
            &self
                .kubectl(&[
                    "get",
                    "sandboxwarmpools,sandboxclaims,sandboxes,pods",
                    "-A",
                    "-o",
                    "wide",
                ])
                .unchecked(),
            Duration::from_secs(60),
        );
        println!("---- kubectl get events -n {NAMESPACE}");
        let _ = run_with_timeout(
            &self
                .kubectl(&["-n", NAMESPACE, "get", "events", "--sort-by=.lastTimestamp"])
                .unchecked(),
            Duration::from_secs(60),
        );
        println!("---- controller logs ({CONTROLLER_NAMESPACE}/{CONTROLLER})");
        let _ = run_with_timeout(
            &self
                .kubectl(&[
                    "-n",
                    CONTROLLER_NAMESPACE,
                    "logs",
                    CONTROLLER,
                    "--all-containers",
                    "--tail=300",
                ])
                .unchecked(),
            Duration::from_secs(60),
        );
    }
}

impl Drop for Cluster {
    /// Deletes a cluster we created when an error unwinds past it.
    fn drop(&mut self) {
        if self.delete_on_drop {
            println!("==> kind delete cluster --name {} (cleaning up)", self.name);
            let _ = run_with_timeout(
                &self
                    .kind(&["delete", "cluster", "--name", &self.name])
                    .unchecked(),
                Duration::from_secs(180),
            );
        }
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("the target directory's path is UTF-8")
}
