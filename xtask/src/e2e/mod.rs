//! `cargo xtask e2e`: the whole pipeline on a real kind cluster, for contributors with Docker (or Podman) and kind.
//!
//! # Expected flow
//!
//! 1. Check the prerequisites: `kind`, `kubectl`, and `docker` or `podman` with a daemon that answers. When one is
//!    missing, say exactly which and exit 0 (a skip), or exit 1 with `--require` unless `CI=true`.
//! 2. Check that this host can reach pod IPs at all (see below): on macOS, Windows, Docker Desktop or a rootless
//!    engine it cannot, so fail before creating anything (unless `--no-route`).
//! 3. `kind create cluster --name ax-sandbox-e2e` with its own kubeconfig under `<target>/e2e/` (never the user's
//!    `~/.kube/config`), or adopt the existing cluster with `--reuse`.
//! 4. Route each node's pod subnet via that node's container (`ip route replace <podCIDR> via <node IP>`, as root
//!    or through `sudo -n`), unless `--no-route`. Without root, stop with the exact commands to run by hand and keep
//!    the cluster so that they stay right.
//! 5. Apply the agent-sandbox release (controller and CRDs; v1.0.3 unless `--agent-sandbox-manifest`), wait for the
//!    CRDs and the controller. `deploy/` uses `v1beta1`, the only API version that agent-sandbox v1.0 serves.
//! 6. Build the agent image with `cargo xtask image` and `kind load image-archive` it.
//! 7. Apply `deploy/` through the `deploy/overlays/kind` overlay (namespaces, no gVisor runtimeClassName, imagePullPolicy
//!    Never, and a NetworkPolicy rule that admits the host on 8494) and wait until the warm pool has all its
//!    replicas ready.
//! 8. Run the whole-pipeline demo against the cluster: `cargo run -p pipeline --bin demo -- --kubeconfig …
//!    --namespace agent-platform --warm-pool python-sandbox-pool`.
//! 9. Remove the routes this task added (also when a step failed), then `kind delete cluster`, unless
//!    `--keep-cluster` or `--reuse`.
//!
//! Every step prints what it runs and how long it took, and has a timeout. When a step fails, the task says which,
//! dumps `kubectl get sandboxclaims,sandboxes,pods -A -o wide` and the controller's logs, then cleans up.
//!
//! # Reaching the pods
//!
//! The demo runs on the host and, like an AX controller in direct mode, speaks AXP to `podIP:8494`. A kind node is
//! a container on the engine's `kind` network and the pod subnet lives behind it, so on Linux with a rootful engine
//! a route to the pod subnet via the node's address is all it takes; the packets then arrive from the host's
//! address on that network, which the overlay's extra ingress rule admits. Docker Desktop and Podman machine (macOS,
//! Windows, Docker Desktop for Linux) run the nodes inside a VM, and rootless engines inside their own network
//! namespace: there the host cannot reach the nodes, let alone the pods.
//!
//! # Caveats
//!
//! - Ctrl-C kills the current step's process but leaves the cluster and the routes; `kind delete cluster --name
//!   ax-sandbox-e2e` removes the cluster, and the `ip route del` command printed when the route was added removes
//!   the route.

mod cluster;
mod probe;
mod routes;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use duct::cmd;

use crate::image;
use cluster::{Cluster, step};
use probe::{
    answer, ask, choose_engine, missing_message, probe, probe_engine, unreachable_message,
    unreachable_pods,
};
use routes::{
    NETWORKS_FORMAT, NODES_JSONPATH, PodRoute, PodRoutes, Privilege, ip_route_argv, kind_network,
    node_ip, parse_node_pod_cidrs, route_command, route_failure_message, routed_via,
};

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
    /// Load this archive (from `cargo xtask image`) instead of building the image.
    #[arg(long)]
    image_archive: Option<PathBuf>,
    /// Do not route the pod subnet from this host (no root needed): for when pod IPs are reachable already,
    /// e.g. because you ran `ip route replace <podCIDR> via <node IP>` yourself.
    #[arg(long)]
    no_route: bool,
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
        if self.no_route {
            println!("e2e: --no-route: assuming this host reaches the pods' IPs by itself");
        } else if let Some(reason) =
            unreachable_pods(std::env::consts::OS, engine, &probe_engine(engine))
        {
            bail!("{}", unreachable_message(&reason));
        }

        let work_dir = super::target_dir()?.join("e2e");
        std::fs::create_dir_all(&work_dir)?;
        let cluster = Cluster {
            name: self.cluster_name.clone(),
            kubeconfig: work_dir.join("kubeconfig"),
            engine,
            delete_on_drop: false,
        };
        let mut cluster = self.bring_up(cluster)?;
        let result = match self.route_pods(&mut cluster) {
            Ok(routes) => {
                let result = self.exercise(&cluster);
                if let Err(error) = &result {
                    eprintln!("e2e: FAILED: {error:#}");
                    cluster.diagnose();
                }
                // Removes the routes this task added, whatever happened (also when unwinding).
                drop(routes);
                result
            }
            Err(error) => Err(error),
        };
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

    /// Routes each node's pod subnet from this host via the node's container, so that the demo reaches `podIP:8494`.
    ///
    /// Returns what to undo; dropping it removes the routes. When adding a route fails (no root, and `sudo -n`
    /// would ask for a password), the cluster is kept so that the commands in the error stay right.
    fn route_pods(&self, cluster: &mut Cluster) -> anyhow::Result<Option<PodRoutes>> {
        if self.no_route {
            return Ok(None);
        }
        let nodes = ask(
            "kubectl get nodes (their pod subnets)",
            cluster.kubectl(&["get", "nodes", "-o", NODES_JSONPATH]),
        )?;
        let nodes = parse_node_pod_cidrs(&nodes)?;
        let network = kind_network();
        let mut routes = Vec::new();
        for (node, cidr) in nodes {
            let networks = ask(
                &format!("{} inspect {node}", cluster.engine.name()),
                cluster.engine_cmd(&["inspect", "-f", NETWORKS_FORMAT, &node]),
            )?;
            let via = node_ip(&networks, &network)
                .with_context(|| format!("the address of node {node} on the {network} network"))?;
            routes.push(PodRoute { cidr, via });
        }

        let privilege = if nix::unistd::geteuid().is_root() {
            Privilege::Root
        } else {
            Privilege::Sudo
        };
        let mut added = PodRoutes {
            privilege,
            routes: Vec::new(),
        };
        for route in &routes {
            let shown = answer(
                cmd!("ip", "route", "show", "exact", &route.cidr),
                Duration::from_secs(20),
            );
            if let Some(Ok(shown)) = shown
                && routed_via(&shown, route.via)
            {
                println!(
                    "e2e: {} is routed via {} already (left as it is)",
                    route.cidr, route.via
                );
                continue;
            }
            let argv = ip_route_argv(privilege, "replace", route);
            let what = argv.join(" ");
            println!("==> {what}");
            let started = Instant::now();
            let said = match answer(cmd(&argv[0], &argv[1..]), Duration::from_secs(30)) {
                Some(Ok(_)) => {
                    println!("<== {what}: ok in {:.1?}", started.elapsed());
                    println!(
                        "e2e: if interrupted, remove the route with: {}",
                        route_command(Privilege::Sudo, "del", route)
                    );
                    added.routes.push(route.clone());
                    continue;
                }
                Some(Err(said)) => said,
                None => format!("{}: not found", argv[0]),
            };
            println!("<== {what}: FAILED in {:.1?}", started.elapsed());
            // Keep the cluster: the commands in the message name its node's address.
            let created = std::mem::take(&mut cluster.delete_on_drop);
            bail!(
                "{}",
                route_failure_message(privilege, &routes, &said, &cluster.name, created)
            );
        }
        Ok(Some(added))
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_no_route_flag_parses() {
        use clap::Parser as _;
        let parse = |args: &[&str]| match crate::Cli::try_parse_from(args).unwrap().task {
            crate::Task::E2e(e2e) => e2e,
            _ => unreachable!("parsed as e2e"),
        };
        assert!(parse(&["cargo xtask", "e2e", "--no-route", "--reuse"]).no_route);
        assert!(!parse(&["cargo xtask", "e2e"]).no_route);
    }
}
