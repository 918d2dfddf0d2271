//! `demo`: one scripted conversation through the agent-sandbox backend.
//!
//! By default everything runs on this machine: a fake Kubernetes API server
//! with a simulated agent-sandbox controller, and a warm pool whose "pods"
//! are real `python-sandbox-agent` processes on their own loopback addresses
//! (or, with `--runtime docker`, containers of the agent's image in the local
//! Docker Engine). With `--kubeconfig` it runs against a real cluster instead,
//! and with `--in-cluster` from a pod in one (its service account's token), as
//! `cargo xtask e2e` runs it: dialling pod IPs as an AX controller does.
//!
//! Run it through `cargo xtask demo`, which builds the agent first.

use std::{
    io::Write as _,
    time::{Duration, Instant},
};

use agent_sandbox_backend::{AgentSandboxAgent, ExecutionReport, Registry};
use anyhow::Context as _;
use axp_transport::{
    DEFAULT_PORT, content,
    pb::{AgentStart, Message, content::Type},
};
use clap::Parser;
use pipeline::{Pipeline, RuntimeKind, WARM_POOL};

#[derive(Parser)]
#[command(about = "Run a scripted AX conversation in an agent-sandbox sandbox")]
// A real cluster comes from a kubeconfig or from the pod the demo runs in, never both.
#[command(group = clap::ArgGroup::new("cluster").args(["kubeconfig", "in_cluster"]))]
struct Cli {
    /// Use this cluster instead of the embedded fake one.
    #[arg(long)]
    kubeconfig: Option<std::path::PathBuf>,
    /// Use the cluster this runs in (a pod's service account), instead of the embedded fake one.
    #[arg(long)]
    in_cluster: bool,
    /// Namespace of the claims (and of the warm pool).
    #[arg(long, default_value = pipeline::NAMESPACE, requires = "cluster")]
    namespace: String,
    /// Warm pool to claim from.
    #[arg(long, default_value = pipeline::WARM_POOL, requires = "cluster")]
    warm_pool: String,
    /// Template of the warm pool (and of claims on v1alpha1 clusters).
    #[arg(long, default_value = pipeline::TEMPLATE, requires = "cluster")]
    template: String,
    /// Ready sandboxes kept in the embedded warm pool.
    #[arg(long, default_value_t = 2)]
    replicas: i32,
    /// What the embedded cluster's pods are: local agent processes, or containers of the
    /// agent's image (`PYTHON_SANDBOX_AGENT_IMAGE`, else the template's) in the local
    /// Docker Engine.
    #[arg(long, value_enum, default_value = "local", conflicts_with = "cluster")]
    runtime: RuntimeKind,
    /// How the backend reaches the agents: `direct` to podIP:8494, `port-forward` through
    /// the API server, or `auto`: direct inside a cluster and on the embedded one; with
    /// `--kubeconfig`, direct only when a pod of the namespace answers on its IP from here.
    #[arg(long, value_enum, default_value = "auto")]
    connection: Connection,
}

/// The demo's `--connection`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Connection {
    Auto,
    Direct,
    PortForward,
}

impl Connection {
    /// The `ax.yaml` value.
    fn yaml(self) -> &'static str {
        match self {
            Self::Direct | Self::Auto => "direct",
            Self::PortForward => "port-forward",
        }
    }
}

/// What the embedded cluster's pods are called in the demo's lines.
fn pods_word(kind: RuntimeKind) -> &'static str {
    match kind {
        RuntimeKind::Local => "agent processes",
        RuntimeKind::Docker => "agent containers",
    }
}

const TURN_ONE: &str = r#"import time
primes = [n for n in range(2, 60) if all(n % d for d in range(2, n))]
for i, p in enumerate(primes[:5]):
    print(f"prime #{i + 1}: {p}")
    time.sleep(0.1)
total = sum(primes)
f"{len(primes)} primes below 60, summing to {total}"
"#;

const TURN_TWO: &str = "```python\nprint(f\"largest: {primes[-1]}, total from turn one: {total}\")\nmax(primes) * 2\n```";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    use tracing_subscriber::{Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _};
    // Spans go to a collector when OTEL_EXPORTER_OTLP_ENDPOINT names one (docs/observability.md).
    let export = axp_transport::telemetry::OtlpExport::from_env("agent-sandbox-demo")?;
    tracing_subscriber::registry()
        .with(export.as_ref().map(|export| export.layer()))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "warn".into()),
                ),
        )
        .init();
    let result = run_demo(cli).await;
    if let Some(export) = export {
        tokio::task::spawn_blocking(move || export.shutdown()).await?;
    }
    result
}

async fn run_demo(cli: Cli) -> anyhow::Result<()> {
    // One listener for Ctrl-C, read by each phase: while starting, `run` stops
    // (dropping the fake cluster kills every agent process or container); during the
    // conversation, it stops the conversation and still releases the claim.
    let (interrupt, interrupted) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = interrupt.send(true);
        }
    });
    let result = run(cli, interrupted.clone()).await;
    if *interrupted.borrow() {
        eprintln!("interrupted; everything the demo started was cleaned up");
        std::process::exit(130);
    }
    result
}

/// Resolves once Ctrl-C was pressed.
async fn on_interrupt(mut interrupted: tokio::sync::watch::Receiver<bool>) {
    let _ = interrupted.wait_for(|pressed| *pressed).await;
}

async fn run(cli: Cli, interrupted: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<()> {
    let clock = Instant::now();

    // The embedded cluster lives until the end of main; dropping it stops the
    // controller, and dropping the runtime kills every agent process.
    let mut embedded = None;
    let kube = match &cli.kubeconfig {
        None if cli.in_cluster => {
            step(&clock, "using the cluster this pod runs in");
            let config = kube::Config::incluster().context(
                "--in-cluster: no in-cluster environment (KUBERNETES_SERVICE_HOST/PORT and the service \
                 account token under /var/run/secrets/kubernetes.io/serviceaccount); run this in a pod, \
                 or pass --kubeconfig",
            )?;
            kube::Client::try_from(config).context("building a Kubernetes client")?
        }
        Some(path) => {
            step(&clock, &format!("using the cluster in {}", path.display()));
            let kubeconfig =
                kube::config::Kubeconfig::read_from(path).context("reading --kubeconfig")?;
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .context("loading --kubeconfig")?;
            kube::Client::try_from(config).context("building a Kubernetes client")?
        }
        None => {
            let pipeline = start_embedded(&cli, &clock, interrupted.clone()).await?;
            let client = pipeline.cluster.client();
            embedded = Some(pipeline);
            client
        }
    };

    let connection = match cli.connection {
        Connection::Auto if cli.kubeconfig.is_some() => {
            let probe = pipeline::reach::probe_pod_network(&kube, &cli.namespace).await;
            let chosen = if probe.reachable {
                Connection::Direct
            } else {
                Connection::PortForward
            };
            step(
                &clock,
                &format!("connection {}: {}", chosen.yaml(), probe.why),
            );
            chosen
        }
        other => other,
    };
    let yaml = format!(
        "registry:\n  agent_sandbox_agents:\n    - id: py\n      name: Python Sandbox Agent\n      namespace: {}\n      warm_pool: {}\n      template: {}\n      port: {}\n      protocol: axp\n      connection: {}\n      ready_timeout: 2m\n      ttl: 30m\n      call_timeout: 60s\n",
        cli.namespace,
        cli.warm_pool,
        cli.template,
        DEFAULT_PORT,
        connection.yaml()
    );
    let registry = Registry::from_yaml(&yaml)?;
    let metrics = agent_sandbox_backend::BackendMetrics::default();
    let mut metrics_registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut metrics_registry);
    let agent = AgentSandboxAgent::from_config_with_metrics(
        kube,
        registry.get("py").expect("registered above"),
        metrics,
    )
    .await?;
    step(
        &clock,
        &format!(
            "agent `py` ready to dispatch (agent-sandbox API {})",
            agent.claims().api_version()
        ),
    );

    let conversation = format!("demo-{}", std::process::id());
    let outcome = tokio::select! {
        outcome = converse(&agent, &conversation, &clock) => outcome,
        () = on_interrupt(interrupted) => Err(anyhow::anyhow!("interrupted during the conversation")),
    };

    step(&clock, "releasing the conversation's sandbox");
    agent.close().await.context("releasing the sandbox")?;
    step(
        &clock,
        "the backend's metrics (what a controller would serve):",
    );
    let text = axp_transport::metrics_http::render(&metrics_registry)?;
    for line in text.lines().filter(|l| {
        !l.starts_with('#') && !l.contains("_bucket{") && !l.ends_with(" 0") && !l.ends_with(" 0.0")
    }) {
        println!("    {line}");
    }
    if let Some(pipeline) = embedded {
        // The controller stops the released sandbox's pod right after the claim goes.
        let pool = usize::try_from(cli.replicas).unwrap_or(0);
        let _ = pipeline
            .wait_until(Duration::from_secs(5), |p| {
                p.claims() == 0 && p.runtime.running() <= pool
            })
            .await;
        let pods = pods_word(pipeline.runtime.kind());
        step(
            &clock,
            &format!(
                "claims left: {}; {pods} running: {} (the warm pool's), started in all: {}",
                pipeline.claims(),
                pipeline.runtime.running(),
                pipeline.runtime.started()
            ),
        );
        pipeline.runtime.shutdown().await;
        drop(pipeline);
        step(&clock, &format!("fake cluster stopped, {pods} removed"));
    }
    outcome
}

async fn start_embedded(
    cli: &Cli,
    clock: &Instant,
    interrupted: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Pipeline> {
    let noun = pods_word(cli.runtime);
    let what = match cli.runtime {
        RuntimeKind::Local => pipeline::agent_binary().display().to_string(),
        RuntimeKind::Docker => {
            std::env::var(pipeline::IMAGE_ENV).unwrap_or_else(|_| "the template's image".to_owned())
        }
    };
    step(
        clock,
        &format!(
            "starting a fake cluster and a warm pool of {} {noun} ({what})",
            cli.replicas,
        ),
    );
    let pods = pipeline::Pods::start(cli.runtime).await?;
    let started = tokio::select! {
        started = Pipeline::start_with_pods(
            pods.clone(),
            sandbox_claim::testing::FakeClusterOptions::default(),
            cli.replicas,
        ) => started,
        () = on_interrupt(interrupted) => {
            // The abandoned start may have left pods (or creates in flight) behind.
            pods.shutdown().await;
            anyhow::bail!("interrupted while starting");
        }
    };
    let pipeline = started?;
    step(
        clock,
        &format!(
            "fake Kubernetes API server at {} (the agent-sandbox CRDs generated from sandbox-claim's types)",
            pipeline.cluster.server().url()
        ),
    );
    step(
        clock,
        &format!(
            "warm pool {WARM_POOL} ready: {} {noun} SERVING",
            pipeline.runtime.running()
        ),
    );
    Ok(pipeline)
}

async fn converse(
    agent: &AgentSandboxAgent,
    conversation: &str,
    clock: &Instant,
) -> anyhow::Result<()> {
    step(
        clock,
        &format!("conversation {conversation}, turn 1: structured prompt (subagent_prompt)"),
    );
    let start = AgentStart {
        agent_id: "py".into(),
        ..content::planner_start(TURN_ONE, "")
    };
    let report = turn(agent, conversation, "turn-1", start, clock).await?;
    println!(
        "        sandbox {} (claim {}) at {}:{}",
        report.sandbox.sandbox_name,
        report.sandbox.claim_name,
        report.sandbox.pod_ip,
        agent.options().port
    );
    timings(&report);

    step(
        clock,
        "turn 2: legacy envelope only, using state from turn 1",
    );
    let start = AgentStart {
        agent_id: "py".into(),
        messages: vec![content::user_text(content::planner_envelope(
            "user asked for primes below 60",
            TURN_TWO,
        ))],
        ..AgentStart::default()
    };
    let report = turn(agent, conversation, "turn-2", start, clock).await?;
    timings(&report);
    Ok(())
}

async fn turn(
    agent: &AgentSandboxAgent,
    conversation: &str,
    exec: &str,
    start: AgentStart,
    clock: &Instant,
) -> anyhow::Result<ExecutionReport> {
    let mut planner_view = Vec::new();
    let report = agent
        .connect(conversation, exec, start, |batch| {
            for message in batch {
                show(&message, clock);
                planner_view.push(message);
            }
        })
        .await
        .with_context(|| format!("execution {exec} failed"))?;
    anyhow::ensure!(report.ended, "the agent closed the stream without `end`");
    let view = content::planner_view(&planner_view);
    println!(
        "        the planner reads {} line(s) of text",
        view.lines().count()
    );
    Ok(report)
}

fn show(message: &Message, clock: &Instant) {
    let at = clock.elapsed().as_secs_f64();
    match message.content.as_ref().and_then(|c| c.r#type.as_ref()) {
        Some(Type::Text(text)) => {
            for line in text.text.lines() {
                println!("{at:7.3}s   │ {line}");
            }
        }
        Some(Type::ToolResult(_)) => {
            if let Some(result) = content::tool_result_json(message) {
                println!(
                    "{at:7.3}s   └ result: ok={} value={} python {:.2} ms",
                    result["ok"],
                    result["value"],
                    result["python_duration_ms"].as_f64().unwrap_or_default()
                );
            }
        }
        _ => {}
    }
    let _ = std::io::stdout().flush();
}

fn timings(report: &ExecutionReport) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "        {} · claim → ready {:.1} ms · first output {} · total {:.1} ms · {} frame(s)",
        report.reached.mode(),
        ms(report.claim_to_ready),
        report
            .first_output
            .map_or_else(|| "-".to_owned(), |d| format!("{:.1} ms", ms(d))),
        ms(report.total),
        report.frames
    );
}

fn step(clock: &Instant, what: &str) {
    println!("{:7.3}s ▸ {what}", clock.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_comes_from_a_kubeconfig_or_the_pod_but_not_both() {
        let cli = Cli::try_parse_from([
            "demo",
            "--in-cluster",
            "--namespace",
            "x",
            "--warm-pool",
            "y",
        ])
        .unwrap();
        assert!(cli.in_cluster && cli.kubeconfig.is_none());
        assert_eq!((cli.namespace.as_str(), cli.warm_pool.as_str()), ("x", "y"));
        let both = Cli::try_parse_from(["demo", "--in-cluster", "--kubeconfig", "p"]);
        assert_eq!(
            both.err().map(|e| e.kind()),
            Some(clap::error::ErrorKind::ArgumentConflict)
        );
        let kubeconfig =
            Cli::try_parse_from(["demo", "--kubeconfig", "p", "--template", "t"]).unwrap();
        assert_eq!(kubeconfig.template, "t");
    }

    #[test]
    fn cluster_options_need_a_cluster_and_the_embedded_runtime_needs_none() {
        let kind = |args: &[&str]| Cli::try_parse_from(args).err().map(|e| e.kind());
        assert_eq!(
            kind(&["demo", "--namespace", "x"]),
            Some(clap::error::ErrorKind::MissingRequiredArgument)
        );
        assert_eq!(
            kind(&["demo", "--in-cluster", "--runtime", "docker"]),
            Some(clap::error::ErrorKind::ArgumentConflict)
        );
        assert_eq!(kind(&["demo", "--runtime", "docker"]), None);
    }
}
