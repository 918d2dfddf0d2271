//! `cargo xtask e2e`: the whole pipeline on a real kind cluster, for contributors with Docker (or Podman) and kind.
//!
//! # Expected flow
//!
//! 1. Check the prerequisites: `kind`, `kubectl`, and `docker` or `podman` with a daemon that answers. When one is
//!    missing, say exactly which and exit 0 (a skip), or exit 1 with `--require` unless `CI=true`.
//! 2. `kind create cluster --name ax-sandbox-e2e` with its own kubeconfig under `<target>/e2e/` (never the user's
//!    `~/.kube/config`), or adopt the existing cluster with `--reuse`.
//! 3. Apply the agent-sandbox release (controller and CRDs; v1.0.3 unless `--agent-sandbox-manifest`), wait for the
//!    CRDs and the controller. `deploy/` uses `v1beta1`, the only API version that agent-sandbox v1.0 serves.
//! 4. Build the agent image and the demo image (`cargo xtask image --demo`: the same Debian base plus the `demo`
//!    binary) and `kind load image-archive` both.
//! 5. Apply `deploy/` through the `deploy/overlays/kind` overlay (namespaces, the AX controller's service account
//!    and RBAC, no gVisor runtimeClassName, imagePullPolicy Never) and wait until the warm pool has all its replicas
//!    ready.
//! 6. Run the whole-pipeline demo in the cluster as the Job `ax-system/ax-e2e-demo` (see [`job`]): `demo
//!    --in-cluster --namespace agent-platform --warm-pool python-sandbox-pool`. Wait until it completes or fails,
//!    print its logs, and fail naming the Job when it failed.
//! 7. `kind delete cluster`, unless `--keep-cluster` or `--reuse` (then delete the Job instead).
//!
//! Every step prints what it runs and how long it took, and has a timeout. When a step fails, the task says which,
//! dumps `kubectl get sandboxclaims,sandboxes,pods -A -o wide` and the controller's logs, then cleans up.
//!
//! # Reaching the pods
//!
//! An AX controller in direct mode speaks AXP to `podIP:8494` from inside the cluster, and so does the demo: its
//! Job's pod runs in `ax-system` as the `ax-controller` service account with the label
//! `app.kubernetes.io/name: ax-controller`, which is what the template's NetworkPolicy admits and what the claims
//! RoleBinding names. Nothing is routed from the host and nothing needs root, so the flow does not depend on
//! whether the host can reach the pod subnet (it cannot under Docker Desktop, Podman machine or a rootless
//! engine), and the NetworkPolicy under test is the production one, with no rule added for e2e.
//!
//! # Caveats
//!
//! - Ctrl-C kills the current step's process but leaves the cluster; `kind delete cluster --name ax-sandbox-e2e`
//!   removes it.

mod cluster;
mod job;
mod probe;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::image;
use cluster::{Cluster, step};
use probe::{choose_engine, missing_message, probe};
/// The cluster's default name.
const CLUSTER: &str = "ax-sandbox-e2e";
/// The agent-sandbox release: controller, RBAC and CRDs, with extensions (claims, templates, warm pools). v1.0.3
/// serves `v1beta1` only, which is what `deploy/` uses.
const AGENT_SANDBOX_MANIFEST: &str = "https://github.com/kubernetes-sigs/agent-sandbox/releases/download/v1.0.3/sandbox-with-extensions.yaml";
const CONTROLLER_NAMESPACE: &str = "agent-sandbox-system";
const CONTROLLER: &str = "deployment/agent-sandbox-controller";
/// Where `deploy/` puts the agents, and its warm pool (see `deploy/base/sandbox-warmpool.yaml`).
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
    /// The agent-sandbox release manifest (controller and CRDs; it must serve v1beta1, as v0.5 and later do): a file
    /// or an http(s) URL.
    #[arg(long, default_value = AGENT_SANDBOX_MANIFEST)]
    agent_sandbox_manifest: String,
    /// The kindest/node image (default: the one the kind binary defaults to).
    #[arg(long)]
    node_image: Option<String>,
    /// Load this agent image archive (from `cargo xtask image`) instead of building it.
    #[arg(long)]
    image_archive: Option<PathBuf>,
    /// Load this demo image archive (from `cargo xtask image --demo`, tagged agent-sandbox-demo:dev) instead of
    /// building it.
    #[arg(long)]
    demo_archive: Option<PathBuf>,
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

        let (agent_archive, demo_archive) = match (&self.image_archive, &self.demo_archive) {
            (Some(agent), Some(demo)) => (agent.clone(), demo.clone()),
            // Building one costs little more than building both: the base and the dependencies are shared.
            (agent, demo) => {
                println!("==> cargo xtask image --demo --tag {}", image::DEFAULT_TAG);
                let started = Instant::now();
                let built = image::Image {
                    demo: true,
                    ..image::Image::for_tag(image::DEFAULT_TAG)
                }
                .run()
                .context("step failed: cargo xtask image --demo")?;
                println!(
                    "<== cargo xtask image --demo: ok in {:.1?}",
                    started.elapsed()
                );
                (
                    agent.clone().unwrap_or(built.archive),
                    demo.clone()
                        .or(built.demo_archive)
                        .context("cargo xtask image --demo wrote no demo archive")?,
                )
            }
        };
        for (what, archive) in [
            (image::DEFAULT_TAG, &agent_archive),
            (image::DEMO_TAG, &demo_archive),
        ] {
            let archive = archive.display().to_string();
            step(
                &format!("kind load image-archive ({what})"),
                Duration::from_secs(300),
                cluster.kind(&["load", "image-archive", &archive, "--name", &cluster.name]),
            )?;
        }

        let overlay = root.join("deploy/overlays/kind").display().to_string();
        step(
            "kubectl apply -k deploy/overlays/kind",
            Duration::from_secs(120),
            cluster.kubectl(&["apply", "-k", &overlay]),
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

        cluster.run_demo_job(image::DEMO_TAG)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_archives_can_be_given() {
        use clap::Parser as _;
        let parse = |args: &[&str]| match crate::Cli::try_parse_from(args).unwrap().task {
            crate::Task::E2e(e2e) => e2e,
            _ => unreachable!("parsed as e2e"),
        };
        let e2e = parse(&[
            "cargo xtask",
            "e2e",
            "--image-archive",
            "a.tar",
            "--demo-archive",
            "d.tar",
        ]);
        assert_eq!(e2e.demo_archive.as_deref(), Some("d.tar".as_ref()));
        assert!(parse(&["cargo xtask", "e2e"]).demo_archive.is_none());
    }
}
