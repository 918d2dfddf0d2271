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
//! 5. Apply the agent-sandbox release (controller and CRDs; `--agent-sandbox-manifest`), wait for the CRDs and the
//!    controller.
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

use std::{
    net::Ipv4Addr,
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
    /// The agent-sandbox release manifest (controller and CRDs): a file or an http(s) URL.
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

    /// `docker …` or `podman …`, whichever runs the nodes.
    fn engine_cmd(&self, args: &[&str]) -> Expression {
        cmd(self.engine.name(), args)
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

/// Runs `expression` quietly: `None` when its program would not start (not installed), else its stdout on success,
/// or the first line it wrote to stderr on failure (also when it did not finish within `timeout`, and was killed).
fn answer(expression: Expression, timeout: Duration) -> Option<Result<String, String>> {
    let handle = expression
        .stdout_capture()
        .stderr_capture()
        .stdin_null()
        .unchecked()
        .start();
    let Ok(handle) = handle else {
        return None; // not installed
    };
    match handle.wait_timeout(timeout) {
        Ok(Some(output)) if output.status.success() => {
            Some(Ok(String::from_utf8_lossy(&output.stdout).into_owned()))
        }
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
            Some(Err(format!("no answer in {timeout:?}")))
        }
        Err(error) => Some(Err(error.to_string())),
    }
}

/// [`answer`], for a lookup that must succeed: its stdout, or an error saying what it said.
fn ask(what: &str, expression: Expression) -> anyhow::Result<String> {
    match answer(expression, Duration::from_secs(60)) {
        Some(Ok(stdout)) => Ok(stdout),
        Some(Err(said)) => bail!("{what}: {said}"),
        None => bail!("{what}: the program is not installed"),
    }
}

fn probe() -> Probes {
    let answers =
        |program: &str, args: &[&str]| answer(cmd(program, args), Duration::from_secs(20));
    let engine = |program: &str| match answers(program, &["info"]) {
        None => EngineProbe::Absent,
        Some(Ok(_)) => EngineProbe::Ready,
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

// ---------------------------------------------------------------------------------------------------------------
// Reaching the pods from the host.

/// One line per node: its name (which is also its container's name under kind), a tab, its pod subnet.
const NODES_JSONPATH: &str =
    "jsonpath={range .items[*]}{.metadata.name}{\"\\t\"}{.spec.podCIDR}{\"\\n\"}{end}";
/// One line per network the node's container is on: the network's name, a tab, the container's IPv4 address.
const NETWORKS_FORMAT: &str = "{{range $name, $network := .NetworkSettings.Networks}}{{$name}}\t{{$network.IPAddress}}\n{{end}}";

/// What can stop this host from reaching a kind cluster's nodes and pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct EngineFacts {
    /// Docker Desktop: the engine, and so the nodes, run inside a VM.
    desktop: bool,
    /// A rootless engine: the nodes live in the engine's own network namespace.
    rootless: bool,
}

/// Asks the engine (Linux only: elsewhere the OS alone decides). An engine that does not say is taken as ordinary.
fn probe_engine(engine: Engine) -> EngineFacts {
    if std::env::consts::OS != "linux" {
        return EngineFacts::default();
    }
    let timeout = Duration::from_secs(20);
    match engine {
        Engine::Docker => answer(
            cmd!(
                "docker",
                "info",
                "--format",
                "{{.OperatingSystem}}|{{.SecurityOptions}}"
            ),
            timeout,
        )
        .and_then(Result::ok)
        .map(|info| docker_facts(&info))
        .unwrap_or_default(),
        Engine::Podman => EngineFacts {
            desktop: false,
            rootless: answer(
                cmd!("podman", "info", "--format", "{{.Host.Security.Rootless}}"),
                timeout,
            )
            .and_then(Result::ok)
            .is_some_and(|rootless| rootless.trim() == "true"),
        },
    }
}

/// Reads `docker info --format '{{.OperatingSystem}}|{{.SecurityOptions}}'`.
fn docker_facts(info: &str) -> EngineFacts {
    EngineFacts {
        desktop: info.contains("Docker Desktop"),
        rootless: info.contains("name=rootless"),
    }
}

/// Why this host cannot reach the pods of a kind cluster, if it cannot.
fn unreachable_pods(os: &str, engine: Engine, facts: &EngineFacts) -> Option<String> {
    let engine = engine.name();
    if os != "linux" {
        Some(format!(
            "on {os}, {engine} (Docker Desktop, Podman machine, colima…) runs kind's nodes inside a Linux VM, and \
             neither the nodes nor their pods' IPs are reachable from the host"
        ))
    } else if facts.desktop {
        Some(
            "Docker Desktop runs kind's nodes inside a VM, and neither the nodes nor their pods' IPs are reachable \
             from the host"
                .to_owned(),
        )
    } else if facts.rootless {
        Some(format!(
            "rootless {engine} keeps kind's nodes in its own network namespace, and neither the nodes nor their \
             pods' IPs are reachable from the host"
        ))
    } else {
        None
    }
}

fn unreachable_message(reason: &str) -> String {
    format!(
        "e2e cannot run here: {reason}.\n\
         The demo runs on this host and connects to each sandbox at podIP:{port} (like an AX controller in direct \
         mode), so it needs the pod subnet routed from here. Run e2e on a Linux host with rootful Docker or \
         Podman, or, if you have made the pod IPs reachable yourself, pass --no-route.",
        port = axp_transport::DEFAULT_PORT
    )
}

/// The kind network's name (kind's own override, else `kind`).
fn kind_network() -> String {
    std::env::var("KIND_EXPERIMENTAL_DOCKER_NETWORK")
        .ok()
        .filter(|network| !network.is_empty())
        .unwrap_or_else(|| "kind".to_owned())
}

/// Reads the output of `kubectl get nodes -o NODES_JSONPATH`: each node and its IPv4 pod subnet.
///
/// IPv6 subnets are left out (the demo dials the pod's first, IPv4, address); no IPv4 subnet at all is an error.
fn parse_node_pod_cidrs(output: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut nodes = Vec::new();
    for line in output.lines().filter(|line| !line.trim().is_empty()) {
        let (node, cidr) = line.split_once('\t').unwrap_or((line, ""));
        let (node, cidr) = (node.trim(), cidr.trim());
        if cidr.is_empty() {
            bail!("node {node} has no pod subnet (spec.podCIDR) yet");
        }
        if cidr.contains(':') {
            continue;
        }
        let valid = cidr.split_once('/').is_some_and(|(address, prefix)| {
            address.parse::<Ipv4Addr>().is_ok() && prefix.parse::<u8>().is_ok_and(|p| p <= 32)
        });
        if !valid {
            bail!("node {node} has a pod subnet that is not an IPv4 CIDR: {cidr:?}");
        }
        nodes.push((node.to_owned(), cidr.to_owned()));
    }
    if nodes.is_empty() {
        bail!(
            "the cluster's nodes have no IPv4 pod subnet (kubectl get nodes said {:?}); route the pods yourself and \
             pass --no-route",
            output.trim()
        );
    }
    Ok(nodes)
}

/// Reads the output of `<engine> inspect -f NETWORKS_FORMAT <node>`: the node's address on `network`, or its only
/// address when it is on one network.
fn node_ip(output: &str, network: &str) -> anyhow::Result<Ipv4Addr> {
    let addresses: Vec<(&str, Ipv4Addr)> = output
        .lines()
        .filter_map(|line| {
            let (name, address) = line.split_once('\t')?;
            Some((name.trim(), address.trim().parse().ok()?))
        })
        .collect();
    if let Some((_, address)) = addresses.iter().find(|(name, _)| *name == network) {
        return Ok(*address);
    }
    match addresses.as_slice() {
        [(_, address)] => Ok(*address),
        [] => bail!("no IPv4 address in {:?}", output.trim()),
        _ => bail!(
            "not on the {network} network, and on several others: {:?}",
            output.trim()
        ),
    }
}

/// A route from this host to one node's pods.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodRoute {
    cidr: String,
    via: Ipv4Addr,
}

/// How this task changes the routing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Privilege {
    Root,
    /// `sudo -n`: never asks for a password (and so fails without a cached or password-less sudo).
    Sudo,
}

/// `[sudo -n] ip route <verb> <cidr> via <node IP>`, as a program and its arguments.
fn ip_route_argv(privilege: Privilege, verb: &str, route: &PodRoute) -> Vec<String> {
    let sudo = match privilege {
        Privilege::Root => &[][..],
        Privilege::Sudo => &["sudo", "-n"][..],
    };
    sudo.iter()
        .copied()
        .chain(["ip", "route", verb, &route.cidr, "via"])
        .map(str::to_owned)
        .chain([route.via.to_string()])
        .collect()
}

/// The same, as a contributor would type it.
fn route_command(privilege: Privilege, verb: &str, route: &PodRoute) -> String {
    let argv = ip_route_argv(Privilege::Root, verb, route).join(" ");
    match privilege {
        Privilege::Root => argv,
        Privilege::Sudo => format!("sudo {argv}"),
    }
}

/// Whether `ip route show exact <cidr>` printed a route via `via`.
fn routed_via(shown: &str, via: Ipv4Addr) -> bool {
    let via = via.to_string();
    shown.lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words
            .windows(2)
            .any(|pair| pair[0] == "via" && pair[1] == via)
    })
}

/// What to do when this task could not add the routes itself.
fn route_failure_message(
    privilege: Privilege,
    routes: &[PodRoute],
    said: &str,
    cluster: &str,
    created: bool,
) -> String {
    let why = match privilege {
        Privilege::Sudo => {
            "Changing routes needs root, and `sudo -n` did not get it without a password: run `sudo -v` first, or \
             run as root, or add the route yourself"
        }
        Privilege::Root => {
            "Adding it failed even as root: fix what `ip` said, or add the route yourself"
        }
    };
    let mut message = format!(
        "could not route the pod subnet from this host ({said}).\n\
         The demo runs here and connects to podIP:{port}, so the pod subnet must be routed via the kind node. \
         {why}:\n",
        port = axp_transport::DEFAULT_PORT
    );
    for route in routes {
        message.push_str(&format!(
            "    {}\n",
            route_command(Privilege::Sudo, "replace", route)
        ));
    }
    let name = if cluster == CLUSTER {
        String::new()
    } else {
        format!(" --cluster-name {cluster}")
    };
    message.push_str(&format!(
        "and then run: cargo xtask e2e --reuse --no-route{name}\n"
    ));
    if created {
        message.push_str(&format!(
            "The cluster {cluster} is kept so that these commands stay right. "
        ));
    }
    message.push_str("Afterwards, clean up with:\n");
    for route in routes {
        message.push_str(&format!(
            "    {}\n",
            route_command(Privilege::Sudo, "del", route)
        ));
    }
    message.push_str(&format!("    kind delete cluster --name {cluster}"));
    message
}

/// The routes this task added; dropping this removes them.
#[derive(Debug)]
struct PodRoutes {
    privilege: Privilege,
    routes: Vec<PodRoute>,
}

impl Drop for PodRoutes {
    fn drop(&mut self) {
        for route in self.routes.drain(..) {
            let argv = ip_route_argv(self.privilege, "del", &route);
            println!("==> {}", argv.join(" "));
            match answer(cmd(&argv[0], &argv[1..]), Duration::from_secs(30)) {
                Some(Ok(_)) => println!("<== {}: ok", argv.join(" ")),
                failed => eprintln!(
                    "<== {}: FAILED ({}); remove it yourself: {}",
                    argv.join(" "),
                    match failed {
                        Some(Err(said)) => said,
                        _ => format!("{}: not found", argv[0]),
                    },
                    route_command(Privilege::Sudo, "del", &route)
                ),
            }
        }
    }
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

#[cfg(test)]
mod route_tests {
    use super::*;

    fn route(cidr: &str, via: [u8; 4]) -> PodRoute {
        PodRoute {
            cidr: cidr.to_owned(),
            via: Ipv4Addr::from(via),
        }
    }

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

    /// What `kubectl get nodes -o NODES_JSONPATH` printed for a two-node list served to kubectl v1.32.
    #[test]
    fn each_node_and_its_ipv4_pod_subnet_are_read() {
        let output =
            "ax-sandbox-e2e-control-plane\t10.244.0.0/24\nax-sandbox-e2e-worker\t10.244.1.0/24\n";
        assert_eq!(
            parse_node_pod_cidrs(output).unwrap(),
            [
                (
                    "ax-sandbox-e2e-control-plane".to_owned(),
                    "10.244.0.0/24".to_owned()
                ),
                (
                    "ax-sandbox-e2e-worker".to_owned(),
                    "10.244.1.0/24".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn ipv6_subnets_are_skipped_but_no_ipv4_subnet_is_an_error() {
        let mixed = "a\tfd00:10:244::/64\nb\t10.244.1.0/24\n";
        assert_eq!(
            parse_node_pod_cidrs(mixed).unwrap(),
            [("b".to_owned(), "10.244.1.0/24".to_owned())]
        );
        let error = parse_node_pod_cidrs("a\tfd00:10:244::/64\n").unwrap_err();
        assert!(error.to_string().contains("--no-route"), "{error}");
        assert!(parse_node_pod_cidrs("").is_err());
    }

    #[test]
    fn a_missing_or_malformed_pod_subnet_is_an_error() {
        let missing = parse_node_pod_cidrs("ax-sandbox-e2e-control-plane\t\n").unwrap_err();
        assert_eq!(
            missing.to_string(),
            "node ax-sandbox-e2e-control-plane has no pod subnet (spec.podCIDR) yet"
        );
        for bad in [
            "n\t10.244.0.0",
            "n\t10.244.0.0/33",
            "n\t10.244.0/24",
            "n\tnonsense/8",
        ] {
            assert!(parse_node_pod_cidrs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_node_address_on_the_kind_network_wins() {
        let inspect = "bridge\t172.17.0.5\nkind\t172.18.0.2\n";
        assert_eq!(
            node_ip(inspect, "kind").unwrap(),
            Ipv4Addr::new(172, 18, 0, 2)
        );
        assert_eq!(
            node_ip(inspect, "my-net").unwrap_err().to_string(),
            "not on the my-net network, and on several others: \"bridge\\t172.17.0.5\\nkind\\t172.18.0.2\""
        );
        // On one network only, whatever its name: that one.
        assert_eq!(
            node_ip("podman-kind\t10.89.0.3\n", "kind").unwrap(),
            Ipv4Addr::new(10, 89, 0, 3)
        );
        // A stopped container has no address.
        assert!(node_ip("kind\t\n", "kind").is_err());
        assert!(node_ip("", "kind").is_err());
    }

    #[test]
    fn route_commands_with_and_without_sudo() {
        let route = route("10.244.0.0/24", [172, 18, 0, 2]);
        assert_eq!(
            ip_route_argv(Privilege::Root, "replace", &route),
            [
                "ip",
                "route",
                "replace",
                "10.244.0.0/24",
                "via",
                "172.18.0.2"
            ]
        );
        assert_eq!(
            ip_route_argv(Privilege::Sudo, "del", &route),
            [
                "sudo",
                "-n",
                "ip",
                "route",
                "del",
                "10.244.0.0/24",
                "via",
                "172.18.0.2"
            ]
        );
        assert_eq!(
            route_command(Privilege::Sudo, "replace", &route),
            "sudo ip route replace 10.244.0.0/24 via 172.18.0.2"
        );
        assert_eq!(
            route_command(Privilege::Root, "del", &route),
            "ip route del 10.244.0.0/24 via 172.18.0.2"
        );
    }

    #[test]
    fn an_existing_route_is_recognised_only_via_the_same_node() {
        let via = Ipv4Addr::new(172, 18, 0, 2);
        assert!(routed_via(
            "10.244.0.0/24 via 172.18.0.2 dev br-0d2a8c1e3f4b \n",
            via
        ));
        assert!(!routed_via(
            "10.244.0.0/24 via 172.18.0.3 dev br-0d2a8c1e3f4b \n",
            via
        ));
        assert!(!routed_via(
            "10.244.0.0/24 via 172.18.0.22 dev br-0d2a8c1e3f4b \n",
            via
        ));
        assert!(!routed_via("", via));
    }

    #[test]
    fn without_root_the_message_gives_the_exact_commands() {
        let routes = [route("10.244.0.0/24", [172, 18, 0, 2])];
        assert_eq!(
            route_failure_message(
                Privilege::Sudo,
                &routes,
                "sudo: a password is required",
                CLUSTER,
                true
            ),
            "could not route the pod subnet from this host (sudo: a password is required).\n\
             The demo runs here and connects to podIP:8494, so the pod subnet must be routed via the kind node. \
             Changing routes needs root, and `sudo -n` did not get it without a password: run `sudo -v` first, or \
             run as root, or add the route yourself:\n    \
             sudo ip route replace 10.244.0.0/24 via 172.18.0.2\n\
             and then run: cargo xtask e2e --reuse --no-route\n\
             The cluster ax-sandbox-e2e is kept so that these commands stay right. Afterwards, clean up with:\n    \
             sudo ip route del 10.244.0.0/24 via 172.18.0.2\n    \
             kind delete cluster --name ax-sandbox-e2e"
        );
        let reused = route_failure_message(Privilege::Root, &routes, "x", "mine", false);
        assert!(reused.contains("Adding it failed even as root"));
        assert!(reused.contains("cargo xtask e2e --reuse --no-route --cluster-name mine\n"));
        assert!(!reused.contains("is kept"));
    }

    #[test]
    fn pods_are_unreachable_off_linux_on_docker_desktop_and_rootless() {
        let ordinary = EngineFacts::default();
        assert_eq!(unreachable_pods("linux", Engine::Docker, &ordinary), None);
        assert_eq!(unreachable_pods("linux", Engine::Podman, &ordinary), None);
        let mac = unreachable_pods("macos", Engine::Docker, &ordinary).unwrap();
        assert!(mac.starts_with("on macos, docker (Docker Desktop"), "{mac}");
        assert!(unreachable_pods("windows", Engine::Podman, &ordinary).is_some());

        let desktop =
            docker_facts("Docker Desktop|[name=seccomp,profile=unconfined name=cgroupns]\n");
        assert_eq!(
            desktop,
            EngineFacts {
                desktop: true,
                rootless: false
            }
        );
        assert!(
            unreachable_pods("linux", Engine::Docker, &desktop)
                .unwrap()
                .contains("VM")
        );
        let rootless = docker_facts(
            "Ubuntu 24.04.1 LTS|[name=seccomp,profile=builtin name=rootless name=cgroupns]\n",
        );
        assert!(rootless.rootless && !rootless.desktop);
        assert_eq!(
            docker_facts(
                "Ubuntu 24.04.1 LTS|[name=apparmor name=seccomp,profile=builtin name=cgroupns]"
            ),
            ordinary
        );
        let podman = EngineFacts {
            desktop: false,
            rootless: true,
        };
        assert!(
            unreachable_pods("linux", Engine::Podman, &podman)
                .unwrap()
                .starts_with("rootless podman keeps")
        );
        assert!(unreachable_message("x").contains("pass --no-route"));
    }
}
