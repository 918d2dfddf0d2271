//! `fake-cluster`: the fake agent-sandbox cluster as a server that kubectl, the official SDKs
//! and any kube client can use: the fake Kubernetes API server (the agent-sandbox CRDs
//! generated from sandbox-claim's types) with the simulated agent-sandbox controller, on a
//! port of 127.0.0.1, until Ctrl-C or SIGTERM.
//!
//! With `--warm-pool NAME` it creates a SandboxTemplate (the pod spec of
//! `deploy/base/sandbox-template.yaml`) and a SandboxWarmPool of `--replicas` sandboxes. Their
//! pods (`--runtime`) are nothing (`none`: Ready at once, at loopback addresses nothing listens
//! on), local reference-agent processes (`local`) or containers of the agent's image in the
//! local Docker Engine (`docker`).
//!
//! # Guarantees
//!
//! - The kubeconfig is written (atomically) only once the server answers and the warm pool, if
//!   any, is full: a client that sees the file can claim at once.
//! - On Ctrl-C or SIGTERM every pod it started is stopped and the kubeconfig is removed; agent
//!   processes also die with this process if it is killed outright.
//!
//! # Errors
//!
//! It refuses to overwrite a kubeconfig that it did not write (one whose context is not
//! `fake-apiserver`), so `--kubeconfig ~/.kube/config` cannot clobber a real one.
//!
//! Run it through `cargo xtask cluster`, which builds the agent (and the image) first.

use std::{path::Path, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use pipeline::{Pods, RuntimeKind};
use sandbox_claim::testing::{
    FakeApiServerOptions, FakeCluster, FakeClusterOptions, LoopbackRuntime, ReadyMode,
};

/// What the cluster's pods are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Runtime {
    /// No process: a pod is Ready at once, at a loopback address where nothing listens.
    None,
    /// A reference-agent process per pod, on its own loopback address.
    Local,
    /// A container of the agent's image per pod (`PYTHON_SANDBOX_AGENT_IMAGE`, else the
    /// template's), in the local Docker Engine.
    Docker,
}

#[derive(Parser)]
#[command(
    name = "fake-cluster",
    about = "Serve the fake agent-sandbox cluster (API server + simulated controller) until Ctrl-C"
)]
struct Cli {
    /// Where to write the kubeconfig once the cluster is ready (removed on exit).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// The namespace the simulated controller serves (and the kubeconfig's default).
    #[arg(long, default_value = pipeline::NAMESPACE)]
    namespace: String,
    /// Create a SandboxTemplate and a SandboxWarmPool of this name.
    #[arg(long)]
    warm_pool: Option<String>,
    /// The template of the warm pool.
    #[arg(long, default_value = pipeline::TEMPLATE, requires = "warm_pool")]
    template: String,
    /// Sandboxes the warm pool keeps ready.
    #[arg(long, default_value_t = 2, requires = "warm_pool")]
    replicas: i32,
    /// The port on 127.0.0.1 (0: any free port; the kubeconfig says which).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// What a pod is.
    #[arg(long, value_enum, default_value = "local")]
    runtime: Runtime,
}

/// The context name `FakeApiServer::kubeconfig_yaml` writes: how a kubeconfig of ours is told.
const OUR_CONTEXT: &str = "current-context: fake-apiserver";
/// How long a warm pool may take to fill (agent processes or containers starting).
const FILL_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    refuse_foreign_kubeconfig(&cli.kubeconfig)?;
    let stop = stop_signal()?;
    tokio::pin!(stop);
    let pods = match cli.runtime {
        Runtime::None => None,
        Runtime::Local => Some(Pods::start(RuntimeKind::Local).await?),
        Runtime::Docker => Some(Pods::start(RuntimeKind::Docker).await?),
    };
    // `None`: stopped before the cluster was ready (the abandoned start may have left pods).
    let started = tokio::select! {
        served = serve(&cli, pods.as_ref()) => Some(served),
        () = &mut stop => None,
    };
    let cluster = match started {
        Some(Ok(cluster)) => {
            (&mut stop).await;
            Some(cluster)
        }
        Some(Err(e)) => {
            shut_down(&cli.kubeconfig, pods.as_ref()).await;
            return Err(e);
        }
        None => None,
    };
    shut_down(&cli.kubeconfig, pods.as_ref()).await;
    // The controller stops before the server (field order of `FakeCluster`).
    drop(cluster);
    println!("fake cluster stopped; kubeconfig removed");
    Ok(())
}

/// Resolves at Ctrl-C or SIGTERM.
fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    })
}

fn refuse_foreign_kubeconfig(path: &Path) -> anyhow::Result<()> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.lines().any(|l| l.trim() == OUR_CONTEXT) => anyhow::bail!(
            "{} exists and is not a kubeconfig this cluster wrote; name another file",
            path.display()
        ),
        _ => Ok(()),
    }
}

async fn shut_down(kubeconfig: &Path, pods: Option<&Pods>) {
    let _ = std::fs::remove_file(kubeconfig);
    if let Some(pods) = pods {
        pods.shutdown().await;
    }
}

/// Starts the cluster, fills the warm pool and writes the kubeconfig.
async fn serve(cli: &Cli, pods: Option<&Pods>) -> anyhow::Result<FakeCluster> {
    let runtime = match pods {
        Some(pods) => pods.as_pod_runtime(),
        None => std::sync::Arc::new(LoopbackRuntime::new()),
    };
    let options = FakeClusterOptions::default()
        .namespace(cli.namespace.clone())
        .runtime(runtime)
        // The runtime reports a pod once it serves; with no runtime there is nothing to wait for.
        .ready_mode(ReadyMode::After(Duration::ZERO));
    let options = FakeClusterOptions {
        // Unknown fields warn and are dropped, as on a real API server.
        server: FakeApiServerOptions::default()
            .strict_unknown_fields(false)
            .port(cli.port),
        ..options
    };
    let cluster = FakeCluster::start(options)
        .await
        .context("starting the fake cluster")?;
    // Namespaced objects need none, but kubectl looks the namespace up, and so do people.
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(cluster.client());
    let mut names = vec!["default", cli.namespace.as_str()];
    names.dedup();
    for name in names {
        let namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
        let active = kube::api::Patch::Merge(serde_json::json!({"status": {"phase": "Active"}}));
        namespaces
            .create(&Default::default(), &namespace)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        namespaces
            .patch_status(name, &Default::default(), &active)
            .await
            .with_context(|| format!("activating namespace {name}"))?;
    }
    if let Some(pool) = &cli.warm_pool {
        cluster
            .create_template(&cli.template, Some(pipeline::deployed_pod_spec()?))
            .await?;
        cluster
            .create_warm_pool(pool, &cli.template, cli.replicas)
            .await?;
        wait_for_pool(&cluster, pool, cli.replicas).await?;
    }
    write_kubeconfig(&cluster, &cli.kubeconfig, &cli.namespace)?;
    let pods_are = match cli.runtime {
        Runtime::None => "nothing (no runtime)",
        Runtime::Local => "local agent processes",
        Runtime::Docker => "Docker containers",
    };
    println!(
        "fake cluster at {} (namespace {}; pods are {pods_are})",
        cluster.server().url(),
        cli.namespace
    );
    if let Some(pool) = &cli.warm_pool {
        println!(
            "warm pool {pool} (template {}): {} sandboxes ready",
            cli.template, cli.replicas
        );
    }
    println!(
        "kubeconfig written: export KUBECONFIG={}   (Ctrl-C stops the cluster)",
        cli.kubeconfig.display()
    );
    Ok(cluster)
}

/// Waits until `replicas` members of the pool (by the pool's label) report `Ready=True`.
async fn wait_for_pool(cluster: &FakeCluster, pool: &str, replicas: i32) -> anyhow::Result<()> {
    let hash = sandbox_claim::testing::name_hash(pool);
    let deadline = tokio::time::Instant::now() + FILL_TIMEOUT;
    loop {
        let ready = cluster
            .server()
            .objects("agents.x-k8s.io", "sandboxes", Some(cluster.namespace()))
            .into_iter()
            .filter(|s| {
                s.pointer("/metadata/labels/agents.x-k8s.io~1warm-pool-sandbox")
                    .and_then(|h| h.as_str())
                    == Some(hash.as_str())
            })
            .filter(|s| {
                s.pointer("/status/conditions")
                    .and_then(|c| c.as_array())
                    .is_some_and(|conditions| {
                        conditions
                            .iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
            })
            .count();
        if ready >= usize::try_from(replicas).unwrap_or(0) {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the warm pool {pool} had {ready} of {replicas} sandboxes ready after {FILL_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes the kubeconfig beside its final place first, so a reader never sees half a file.
fn write_kubeconfig(cluster: &FakeCluster, path: &Path, namespace: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let partial = path.with_extension("partial");
    cluster
        .server()
        .write_kubeconfig(&partial, namespace)
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_and_replicas_need_a_warm_pool() {
        let kind = |args: &[&str]| Cli::try_parse_from(args).err().map(|e| e.kind());
        assert_eq!(
            kind(&["fake-cluster", "--kubeconfig", "k", "--replicas", "3"]),
            Some(clap::error::ErrorKind::MissingRequiredArgument)
        );
        let cli = Cli::try_parse_from([
            "fake-cluster",
            "--kubeconfig",
            "k",
            "--warm-pool",
            "p",
            "--runtime",
            "none",
        ])
        .unwrap();
        assert_eq!((cli.replicas, cli.runtime), (2, Runtime::None));
        assert_eq!(cli.namespace, pipeline::NAMESPACE);
    }

    #[test]
    fn a_kubeconfig_this_cluster_did_not_write_is_never_overwritten() {
        let dir = std::env::temp_dir().join(format!("fake-cluster-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let theirs = dir.join("config");
        std::fs::write(&theirs, "apiVersion: v1\ncurrent-context: prod\n").unwrap();
        assert!(refuse_foreign_kubeconfig(&theirs).is_err());
        std::fs::write(&theirs, "apiVersion: v1\ncurrent-context: fake-apiserver\n").unwrap();
        assert!(refuse_foreign_kubeconfig(&theirs).is_ok());
        assert!(refuse_foreign_kubeconfig(&dir.join("absent")).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
