//! `bench`: the speed and memory figures, measured side by side on this
//! machine. Run it through `cargo xtask bench` (release build).
//!
//! Every comparison runs its two sides in the same process, one after the
//! other, so that the ratio means something on a shared, noisy machine.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use axp_transport::{AxpClient, ClientOptions, pb::AgentStart};
use clap::Parser;
use python_sandbox_agent::LocalAgent;
use sandbox_claim::{
    ClaimOptions, Claims,
    testing::{FakeCluster, FakeClusterOptions, LoopbackRuntime, ReadyMode, Verb},
};
use serde_json::json;
use tokio::process::Command;

#[derive(Parser)]
#[command(about = "Measure AXP, agent and claim-lifecycle speed and memory")]
struct Cli {
    /// Round trips per AXP measurement.
    #[arg(long, default_value_t = 2000)]
    iterations: usize,
    /// Processes spawned for the `python3 -c` baseline.
    #[arg(long, default_value_t = 40)]
    spawns: usize,
    /// Claims per claim-lifecycle measurement.
    #[arg(long, default_value_t = 40)]
    claims: usize,
    /// Write the figures as JSON here too.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Latency figures of one series, in microseconds.
struct Series {
    name: &'static str,
    samples: Vec<Duration>,
}

impl Series {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.samples.clone();
        sorted.sort();
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[index]
    }

    fn median(&self) -> Duration {
        self.percentile(0.5)
    }

    fn print(&self) {
        println!(
            "  {:<44} n={:<5} p50 {:>9.1} µs   p90 {:>9.1} µs   p99 {:>9.1} µs",
            self.name,
            self.samples.len(),
            micros(self.median()),
            micros(self.percentile(0.9)),
            micros(self.percentile(0.99)),
        );
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "n": self.samples.len(),
            "p50_us": micros(self.median()),
            "p90_us": micros(self.percentile(0.9)),
            "p99_us": micros(self.percentile(0.99)),
        })
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn start(code: &str) -> AgentStart {
    AgentStart {
        subagent_prompt: code.into(),
        ..AgentStart::default()
    }
}

// One thread, as a latency-sensitive client would run its hot path: on two
// cores, cross-thread wake-ups of a multi-threaded runtime cost more than the
// work being measured.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let binary = pipeline::agent_binary();
    anyhow::ensure!(
        binary.exists(),
        "build the agent first: {} is missing",
        binary.display()
    );
    println!("python-sandbox-agent: {}", binary.display());
    let mut report = serde_json::Map::new();

    println!("\n1. One trivial execution, print(7*6), end to end");
    let axp = axp_round_trip(&binary, cli.iterations).await?;
    let harness = harness_round_trip(&binary, cli.iterations).await?;
    let dial = dial_per_call(&binary, cli.iterations / 10).await?;
    let spawn = python_c(cli.spawns).await?;
    for series in [&axp, &harness, &dial, &spawn] {
        series.print();
    }
    let vs_spawn = micros(spawn.median()) / micros(axp.median());
    let vs_dial = micros(dial.median()) / micros(axp.median());
    println!(
        "  → embedded agent over one channel is {vs_spawn:.1}× faster than a python3 -c process per request"
    );
    println!(
        "  → reusing the HTTP/2 channel is {vs_dial:.1}× faster than dialling per call (AX's Go client)"
    );
    report.insert("axp_round_trip".into(), axp.json());
    report.insert("harness_round_trip".into(), harness.json());
    report.insert("axp_dial_per_call".into(), dial.json());
    report.insert("python3_c_per_request".into(), spawn.json());
    report.insert("speedup_vs_python3_c".into(), json!(vs_spawn));
    report.insert("speedup_vs_dial_per_call".into(), json!(vs_dial));

    println!("\n2. Claim lifecycle on the fake cluster (create → watch until Ready → release)");
    let fast = claim_lifecycle(cli.claims, Duration::from_millis(10)).await?;
    let slow = claim_lifecycle(cli.claims / 4, Duration::from_millis(1000)).await?;
    for (label, (series, requests)) in [("ready after 10 ms", &fast), ("ready after 1 s", &slow)] {
        series.print();
        println!(
            "    {label}: {requests:.1} API requests per claim on sandboxclaims (create, watch, get, delete)"
        );
    }
    println!(
        "  → requests per claim do not grow with time to readiness: {:.1} vs {:.1}",
        fast.1, slow.1
    );
    report.insert(
        "claim_ready_10ms".into(),
        json!({"latency": fast.0.json(), "requests_per_claim": fast.1}),
    );
    report.insert(
        "claim_ready_1s".into(),
        json!({"latency": slow.0.json(), "requests_per_claim": slow.1}),
    );

    println!(
        "\n3. Agent memory under heavy output (each execution prints 4 MiB; the cap keeps 1 MiB)"
    );
    let (before, after) = memory_under_output(&binary, 30).await?;
    println!(
        "  agent + worker RSS: {:.1} MiB before, {:.1} MiB after 30 executions ({:+.1} MiB)",
        before,
        after,
        after - before
    );
    report.insert("rss_mib_before".into(), json!(before));
    report.insert("rss_mib_after_30_big_outputs".into(), json!(after));

    if let Some(path) = cli.json {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&serde_json::Value::Object(report))?,
        )
        .with_context(|| format!("writing {}", path.display()))?;
        println!("\nfigures written to {}", path.display());
    }
    Ok(())
}

async fn spawn_agent(binary: &Path) -> anyhow::Result<LocalAgent> {
    let mut command = tokio::process::Command::new(binary);
    command
        .args(["--listen", "127.0.0.1:0", "--unpinned"])
        .env("RUST_LOG", "error")
        .stderr(std::process::Stdio::null());
    Ok(LocalAgent::from_command(command).await?)
}

/// Sequential `print(7*6)` executions over one channel.
async fn axp_round_trip(binary: &Path, iterations: usize) -> anyhow::Result<Series> {
    let agent = spawn_agent(binary).await?;
    let client = AxpClient::dial(&agent.url(), ClientOptions::default()).await?;
    for i in 0..100 {
        client
            .run("bench", &format!("warm-{i}"), start("print(7*6)"))
            .await?;
    }
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let begun = Instant::now();
        let messages = client
            .run("bench", &format!("e{i}"), start("print(7*6)"))
            .await?;
        samples.push(begun.elapsed());
        anyhow::ensure!(axp_transport::content::planner_view(&messages).contains("42"));
    }
    Ok(Series {
        name: "AXP round trip, one reused channel",
        samples,
    })
}

/// The same executions over `ax.HarnessService` (upstream AX's protocol), on the same kind of channel.
async fn harness_round_trip(binary: &Path, iterations: usize) -> anyhow::Result<Series> {
    let agent = spawn_agent(binary).await?;
    let client = axp_transport::HarnessClient::dial(&agent.url(), ClientOptions::default()).await?;
    let start = || axp_transport::pb::HarnessStart {
        harness_config: Vec::new(),
        messages: vec![axp_transport::content::user_text("print(7*6)")],
    };
    for _ in 0..100 {
        client.run("bench", "python", start()).await?;
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let begun = Instant::now();
        let messages = client.run("bench", "python", start()).await?;
        samples.push(begun.elapsed());
        anyhow::ensure!(axp_transport::content::planner_view(&messages).contains("42"));
    }
    Ok(Series {
        name: "HarnessService round trip, reused channel",
        samples,
    })
}

/// The same call with a new connection each time, as AX's Go client does.
async fn dial_per_call(binary: &Path, iterations: usize) -> anyhow::Result<Series> {
    let agent = spawn_agent(binary).await?;
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..iterations.max(10) {
        let begun = Instant::now();
        let client = AxpClient::dial(&agent.url(), ClientOptions::default()).await?;
        client
            .run("bench", &format!("e{i}"), start("print(7*6)"))
            .await?;
        samples.push(begun.elapsed());
    }
    Ok(Series {
        name: "AXP round trip, dial per call",
        samples,
    })
}

/// The Go reference agent's way: a new `python3 -c` per request. The
/// interpreter's real path is used, not a version-manager shim, so the
/// baseline is as fast as it can be.
async fn python_c(spawns: usize) -> anyhow::Result<Series> {
    let executable = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .await
        .context("running python3")?;
    let executable = String::from_utf8(executable.stdout)?.trim().to_owned();
    let mut samples = Vec::with_capacity(spawns);
    for _ in 0..spawns.max(5) {
        let begun = Instant::now();
        let output = Command::new(&executable)
            .args(["-c", "print(7*6)"])
            .output()
            .await?;
        samples.push(begun.elapsed());
        anyhow::ensure!(output.status.success() && output.stdout.starts_with(b"42"));
    }
    Ok(Series {
        name: "python3 -c per request (process only, no RPC)",
        samples,
    })
}

/// Acquire + release on a fake cluster whose sandboxes turn Ready after `ready_after`.
async fn claim_lifecycle(claims: usize, ready_after: Duration) -> anyhow::Result<(Series, f64)> {
    let cluster = FakeCluster::start(
        FakeClusterOptions::default()
            .runtime(Arc::new(LoopbackRuntime::new()))
            .ready_mode(ReadyMode::After(ready_after)),
    )
    .await?;
    cluster.create_template("bench", None).await?;
    cluster.create_warm_pool("bench-pool", "bench", 0).await?;
    let claims_api = Claims::new(
        cluster.client(),
        ClaimOptions::default()
            .namespace(cluster.namespace())
            .source("bench-pool"),
    );
    let server = cluster.server();
    let client_requests = |server: &sandbox_claim::testing::FakeApiServer| {
        let log = server.requests();
        [
            Verb::Create,
            Verb::Watch,
            Verb::Get,
            Verb::List,
            Verb::Delete,
            Verb::Patch,
        ]
        .into_iter()
        .map(|verb| log.count(verb, "sandboxclaims"))
        .sum::<u64>()
    };
    let before = client_requests(server);
    let mut samples = Vec::new();
    for i in 0..claims.max(4) {
        let conversation = format!("bench-{i}");
        let begun = Instant::now();
        claims_api.acquire(&conversation).await?;
        claims_api.release(&conversation).await?;
        samples.push(begun.elapsed());
    }
    // Only the client's requests on `sandboxclaims`: the simulated controller's
    // status writes go to `sandboxclaims/status` and its watch is opened once.
    let per_claim = (client_requests(server) - before) as f64 / samples.len() as f64;
    let name = if ready_after < Duration::from_millis(100) {
        "acquire + release, ready after 10 ms"
    } else {
        "acquire + release, ready after 1 s"
    };
    Ok((Series { name, samples }, per_claim))
}

/// RSS of the agent and its worker (MiB), before and after big outputs.
async fn memory_under_output(binary: &Path, executions: usize) -> anyhow::Result<(f64, f64)> {
    let agent = spawn_agent(binary).await?;
    let client = AxpClient::dial(&agent.url(), ClientOptions::default()).await?;
    client.run("mem", "warm", start("print('ready')")).await?;
    let before = rss_tree(agent.pid());
    for i in 0..executions {
        client
            .run(
                "mem",
                &format!("e{i}"),
                start("import sys\nsys.stdout.write('x' * (4 << 20))"),
            )
            .await?;
    }
    Ok((before, rss_tree(agent.pid())))
}

/// Resident memory of a process and its children, in MiB (Linux /proc).
fn rss_tree(pid: u32) -> f64 {
    let rss = |pid: &str| -> f64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
            .unwrap_or(0.0)
            / 1024.0
    };
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    rss(&pid.to_string()) + children.split_whitespace().map(rss).sum::<f64>()
}
