//! `cargo xtask e2e`: the whole pipeline on a real kind cluster, for contributors with Docker (or Podman) and kind.
//!
//! # Expected flow
//!
//! 1. Check the prerequisites: `kind`, `kubectl`, and `docker` or `podman` with a daemon that answers. When one is
//!    missing, say exactly which and exit 0 (a skip), or exit 1 with `--require` unless `CI=true`.
//! 2. `kind create cluster --name ax-sandbox-e2e` with its own kubeconfig under `<target>/e2e/` (never the user's
//!    `~/.kube/config`), or adopt the existing cluster with `--reuse`.
//! 3. Apply the agent-sandbox release (controller and CRDs; `--agent-sandbox-manifest`), wait for the CRDs and the
//!    controller.
//! 4. Build the agent image with `cargo xtask image` and `kind load image-archive` it.
//! 5. Apply `deploy/` through the `deploy/kind` overlay (namespaces, no gVisor runtimeClassName, imagePullPolicy
//!    Never) and wait until the warm pool has all its replicas ready.
//! 6. Run the whole-pipeline demo against the cluster: `cargo run -p pipeline --bin demo -- --kubeconfig …
//!    --namespace agent-platform --warm-pool python-sandbox-pool`.
//! 7. `kind delete cluster`, unless `--keep-cluster` or `--reuse`.
//!
//! Every step prints what it runs and how long it took, and has a timeout. When a step fails, the task says which,
//! dumps `kubectl get sandboxclaims,sandboxes,pods -A -o wide` and the controller's logs, then cleans up.
//!
//! # Caveats
//!
//! - The demo speaks AXP to pod IPs. From the host, those are reachable only where the kind node's pod subnet is
//!   routed (Linux: `ip route add 10.244.0.0/16 via <node IP>`); that is the demo's business, not this task's.
//! - Ctrl-C kills the current step's process but leaves the cluster; `kind delete cluster --name ax-sandbox-e2e`
//!   removes it.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use duct::{Expression, cmd};

use crate::image;

/// The cluster's default name.
const CLUSTER: &str = "ax-sandbox-e2e";
/// The agent-sandbox release: controller, RBAC and CRDs, with extensions (claims, templates, warm pools).
const AGENT_SANDBOX_MANIFEST: &str = "https://github.com/kubernetes-sigs/agent-sandbox/releases/download/v0.5.6/sandbox-with-extensions.yaml";
const CONTROLLER_NAMESPACE: &str = "agent-sandbox-system";
const CONTROLLER: &str = "deployment/agent-sandbox-controller";
/// Where `deploy/` puts the agents, and its warm pool (see `deploy/sandbox-warmpool.yaml`).
const NAMESPACE: &str = "agent-platform";
const WARM_POOL: &str = "python-sandbox-pool";

/// Runs the whole pipeline on a kind cluster.
#[derive(clap::Args, Debug)]
pub struct E2e {
    /// Exit 1 when a prerequisite is missing, instead of skipping with exit 0 (CI=true always skips).
    #[arg(long)]
    require: bool,
    /// Leave the cluster running afterwards.
    #[arg(long)]
    keep_cluster: bool,
    /// Use the existing cluster of that name instead of creating one (and leave it running).
    #[arg(long)]
    reuse: bool,
    /// The kind cluster's name.
    #[arg(long, default_value = CLUSTER)]
    cluster_name: String,
    /// The agent-sandbox release manifest (controller and CRDs): a file or an http(s) URL.
    #[arg(long, default_value = AGENT_SANDBOX_MANIFEST)]
    agent_sandbox_manifest: String,
    /// The kindest/node image (default: the one the kind binary defaults to).
    #[arg(long)]
    node_image: Option<String>,
    /// Load this archive (from `cargo xtask image`) instead of building the image.
    #[arg(long)]
    image_archive: Option<PathBuf>,
}

impl E2e {
    pub fn run(self) -> anyhow::Result<()> {
        let started = Instant::now();
        let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
        let engine = match choose_engine(&probe()) {
            Ok(engine) => engine,
            Err(missing) => {
                let message = missing_message(&missing);
                return if self.require && !ci {
                    bail!("{message}")
                } else {
                    println!("{message}");
                    println!(
                        "e2e: SKIPPED ({})",
                        if ci {
                            "CI=true"
                        } else {
                            "pass --require to make this an error"
                        }
                    );
                    Ok(())
                };
            }
        };
        println!("e2e: using kind, kubectl and {}", engine.name());

        let work_dir = super::target_dir()?.join("e2e");
        std::fs::create_dir_all(&work_dir)?;
        let cluster = Cluster {
            name: self.cluster_name.clone(),
            kubeconfig: work_dir.join("kubeconfig"),
            engine,
            delete_on_drop: false,
        };
        let mut cluster = self.bring_up(cluster)?;
        let result = self.exercise(&cluster);
        if let Err(error) = &result {
            eprintln!("e2e: FAILED: {error:#}");
            cluster.diagnose();
        }
        if cluster.delete_on_drop {
            cluster.delete_on_drop = false;
            step(
                &format!("kind delete cluster --name {}", cluster.name),
                Duration::from_secs(180),
                cluster.kind(&["delete", "cluster", "--name", &cluster.name]),
            )?;
        } else {
            println!(
                "e2e: cluster {} kept; KUBECONFIG={} (delete: kind delete cluster --name {})",
                cluster.name,
                cluster.kubeconfig.display(),
                cluster.name
            );
        }
        result?;
        println!("e2e: passed in {:.1?}", started.elapsed());
        Ok(())
    }

    /// Creates (or adopts) the cluster and writes its kubeconfig.
    fn bring_up(&self, mut cluster: Cluster) -> anyhow::Result<Cluster> {
        let existing = cluster
            .kind(&["get", "clusters"])
            .stderr_null()
            .read()
            .context("kind get clusters")?;
        let exists = existing.lines().any(|line| line.trim() == cluster.name);
        if self.reuse {
            if !exists {
                bail!("--reuse: there is no kind cluster named {}", cluster.name);
            }
            let kubeconfig = cluster.kubeconfig.display().to_string();
            step(
                "kind export kubeconfig",
                Duration::from_secs(60),
                cluster.kind(&[
                    "export",
                    "kubeconfig",
                    "--name",
                    &cluster.name,
                    "--kubeconfig",
                    &kubeconfig,
                ]),
            )?;
            return Ok(cluster);
        }
        if exists {
            bail!(
                "a kind cluster named {0} exists already: pass --reuse, or delete it (kind delete cluster --name {0})",
                cluster.name
            );
        }
        let kubeconfig = cluster.kubeconfig.display().to_string();
        let mut args = vec![
            "create",
            "cluster",
            "--name",
            &cluster.name,
            "--kubeconfig",
            &kubeconfig,
            "--wait",
            "180s",
        ];
        if let Some(image) = &self.node_image {
            args.extend(["--image", image]);
        }
        // From here on the cluster is ours: delete it even if creation fails half-way.
        cluster.delete_on_drop = !self.keep_cluster;
        step(
            &format!("kind create cluster --name {}", cluster.name),
            Duration::from_secs(600),
            cluster.kind(&args),
        )?;
        Ok(cluster)
    }

    /// Everything between creating the cluster and deleting it.
    fn exercise(&self, cluster: &Cluster) -> anyhow::Result<()> {
        let root = super::workspace_root();
        step(
            &format!(
                "kubectl apply agent-sandbox ({})",
                self.agent_sandbox_manifest
            ),
            Duration::from_secs(180),
            // Server-side: the CRDs are too large for the last-applied annotation.
            cluster.kubectl(&["apply", "--server-side", "-f", &self.agent_sandbox_manifest]),
        )?;
        step(
            "kubectl wait for the agent-sandbox CRDs",
            Duration::from_secs(120),
            cluster.kubectl(&[
                "wait",
                "--for=condition=Established",
                "crd/sandboxes.agents.x-k8s.io",
                "crd/sandboxclaims.extensions.agents.x-k8s.io",
                "crd/sandboxtemplates.extensions.agents.x-k8s.io",
                "crd/sandboxwarmpools.extensions.agents.x-k8s.io",
                "--timeout=100s",
            ]),
        )?;
        step(
            "kubectl rollout status the agent-sandbox controller",
            Duration::from_secs(330),
            cluster.kubectl(&[
                "-n",
                CONTROLLER_NAMESPACE,
                "rollout",
                "status",
                CONTROLLER,
                "--timeout=300s",
            ]),
        )?;

        let archive = match &self.image_archive {
            Some(archive) => archive.clone(),
            None => {
                println!("==> cargo xtask image --tag {}", image::DEFAULT_TAG);
                let started = Instant::now();
                let built = image::Image::for_tag(image::DEFAULT_TAG)
                    .run()
                    .context("step failed: cargo xtask image")?;
                println!("<== cargo xtask image: ok in {:.1?}", started.elapsed());
                built.archive
            }
        };
        let archive = archive.display().to_string();
        step(
            "kind load image-archive",
            Duration::from_secs(300),
            cluster.kind(&["load", "image-archive", &archive, "--name", &cluster.name]),
        )?;

        let overlay = root.join("deploy/kind").display().to_string();
        step(
            "kubectl apply deploy/ through the deploy/kind overlay",
            Duration::from_secs(120),
            cluster
                .kubectl(&[
                    "kustomize",
                    "--load-restrictor=LoadRestrictionsNone",
                    &overlay,
                ])
                .pipe(cluster.kubectl(&["apply", "-f", "-"])),
        )?;
        let replicas = cluster
            .kubectl(&[
                "-n",
                NAMESPACE,
                "get",
                &format!("sandboxwarmpool/{WARM_POOL}"),
                "-o",
                "jsonpath={.spec.replicas}",
            ])
            .read()
            .context("reading the warm pool's replicas")?;
        step(
            &format!("kubectl wait until warm pool {WARM_POOL} has {replicas} ready"),
            Duration::from_secs(330),
            cluster.kubectl(&[
                "-n",
                NAMESPACE,
                "wait",
                &format!("sandboxwarmpool/{WARM_POOL}"),
                &format!(
                    "--for=jsonpath={{.status.readyReplicas}}={}",
                    replicas.trim()
                ),
                "--timeout=300s",
            ]),
        )?;

        let kubeconfig = cluster.kubeconfig.display().to_string();
        step(
            "cargo run -p pipeline --bin demo (the whole pipeline on the cluster)",
            Duration::from_secs(900),
            cmd(
                "cargo",
                [
                    "run",
                    "--package",
                    "pipeline",
                    "--bin",
                    "demo",
                    "--",
                    "--kubeconfig",
                    &kubeconfig,
                    "--namespace",
                    NAMESPACE,
                    "--warm-pool",
                    WARM_POOL,
                ],
            )
            .dir(&root),
        )?;
        Ok(())
    }
}

/// Runs `expression`, printing what and how long; kills it after `timeout`.
fn step(what: &str, timeout: Duration, expression: Expression) -> anyhow::Result<()> {
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

fn run_with_timeout(expression: &Expression, timeout: Duration) -> anyhow::Result<()> {
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
struct Cluster {
    name: String,
    /// Written by kind for this cluster only.
    kubeconfig: PathBuf,
    engine: Engine,
    /// Whether dropping this deletes the cluster (set once we created it, cleared once deleted).
    delete_on_drop: bool,
}

impl Cluster {
    fn kind(&self, args: &[&str]) -> Expression {
        let expression = cmd("kind", args);
        match self.engine {
            Engine::Docker => expression,
            Engine::Podman => expression.env("KIND_EXPERIMENTAL_PROVIDER", "podman"),
        }
    }

    fn kubectl(&self, args: &[&str]) -> Expression {
        let mut argv = vec!["--kubeconfig", path_str(&self.kubeconfig)];
        argv.extend_from_slice(args);
        cmd("kubectl", argv)
    }

    /// What a failing step leaves behind: the objects of the lifecycle and the controller's logs.
    fn diagnose(&self) {
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

// ---------------------------------------------------------------------------------------------------------------
// Prerequisites.

/// The container engine kind runs its nodes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Docker,
    Podman,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Podman => "podman",
        }
    }
}

/// What looking for one engine found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum EngineProbe {
    /// No such command.
    #[default]
    Absent,
    /// The CLI is there but `<engine> info` failed; the first line of what it said.
    NoDaemon(String),
    Ready,
}

/// What is installed.
#[derive(Debug, Clone, Default)]
struct Probes {
    kind: bool,
    kubectl: bool,
    docker: EngineProbe,
    podman: EngineProbe,
}

fn probe() -> Probes {
    let answers = |program: &str, args: &[&str]| {
        let handle = cmd(program, args)
            .stdout_capture()
            .stderr_capture()
            .stdin_null()
            .unchecked()
            .start();
        let Ok(handle) = handle else {
            return None; // not installed
        };
        match handle.wait_timeout(Duration::from_secs(20)) {
            Ok(Some(output)) if output.status.success() => Some(Ok(())),
            Ok(Some(output)) => {
                let said = String::from_utf8_lossy(&output.stderr);
                let said = said
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("no output");
                Some(Err(said.trim().to_owned()))
            }
            Ok(None) => {
                let _ = handle.kill();
                Some(Err("no answer in 20 s".to_owned()))
            }
            Err(error) => Some(Err(error.to_string())),
        }
    };
    let engine = |program: &str| match answers(program, &["info"]) {
        None => EngineProbe::Absent,
        Some(Ok(())) => EngineProbe::Ready,
        Some(Err(said)) => EngineProbe::NoDaemon(said),
    };
    Probes {
        kind: answers("kind", &["version"]).is_some(),
        kubectl: answers("kubectl", &["version", "--client"]).is_some(),
        docker: engine("docker"),
        podman: engine("podman"),
    }
}

/// The engine to use, or what is missing, one line each.
fn choose_engine(probes: &Probes) -> Result<Engine, Vec<String>> {
    let mut missing = Vec::new();
    if !probes.kind {
        missing.push(
            "kind: not on PATH (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
                .to_owned(),
        );
    }
    if !probes.kubectl {
        missing.push("kubectl: not on PATH (https://kubernetes.io/docs/tasks/tools/)".to_owned());
    }
    let engine = match (&probes.docker, &probes.podman) {
        (EngineProbe::Ready, _) => Some(Engine::Docker),
        (_, EngineProbe::Ready) => Some(Engine::Podman),
        (docker, podman) => {
            let line = match (docker, podman) {
                (EngineProbe::Absent, EngineProbe::Absent) => {
                    "a container engine: neither docker nor podman is on PATH".to_owned()
                }
                (EngineProbe::NoDaemon(said), _) => {
                    format!(
                        "a container engine: docker is installed but its daemon does not answer (`docker info`: {said})"
                    )
                }
                (_, EngineProbe::NoDaemon(said)) => {
                    format!(
                        "a container engine: podman is installed but does not answer (`podman info`: {said})"
                    )
                }
                _ => unreachable!("Ready is handled above"),
            };
            missing.push(line);
            None
        }
    };
    match engine {
        Some(engine) if missing.is_empty() => Ok(engine),
        _ => Err(missing),
    }
}

fn missing_message(missing: &[String]) -> String {
    let mut message = String::from("e2e needs what this machine lacks:");
    for line in missing {
        message.push_str("\n  - ");
        message.push_str(line);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn everything() -> Probes {
        Probes {
            kind: true,
            kubectl: true,
            docker: EngineProbe::Ready,
            podman: EngineProbe::Absent,
        }
    }

    #[test]
    fn docker_is_preferred_and_podman_is_the_fallback() {
        assert_eq!(choose_engine(&everything()), Ok(Engine::Docker));
        let podman = Probes {
            docker: EngineProbe::NoDaemon("Cannot connect".into()),
            podman: EngineProbe::Ready,
            ..everything()
        };
        assert_eq!(choose_engine(&podman), Ok(Engine::Podman));
    }

    #[test]
    fn the_message_names_each_missing_prerequisite_and_why() {
        let this_machine = Probes {
            kind: false,
            kubectl: true,
            docker: EngineProbe::NoDaemon(
                "Cannot connect to the Docker daemon at unix:///var/run/docker.sock.".into(),
            ),
            podman: EngineProbe::Absent,
        };
        let missing = choose_engine(&this_machine).unwrap_err();
        assert_eq!(
            missing_message(&missing),
            "e2e needs what this machine lacks:\n  \
             - kind: not on PATH (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)\n  \
             - a container engine: docker is installed but its daemon does not answer \
             (`docker info`: Cannot connect to the Docker daemon at unix:///var/run/docker.sock.)"
        );
    }

    #[test]
    fn nothing_installed_lists_all_three() {
        let missing = choose_engine(&Probes::default()).unwrap_err();
        assert_eq!(missing.len(), 3);
        assert!(missing[2].contains("neither docker nor podman"));
    }

    #[test]
    fn a_ready_engine_does_not_excuse_a_missing_kubectl() {
        let probes = Probes {
            kubectl: false,
            ..everything()
        };
        assert_eq!(choose_engine(&probes).unwrap_err().len(), 1);
    }
}
