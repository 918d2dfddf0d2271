//! `bench`: the speed and memory figures, measured side by side on this machine. Run it
//! through `cargo xtask bench` (release build); `--quick` finishes in under a minute.
//!
//! Every comparison runs its sides in the same process, one after the other, against
//! peers the bench starts itself (the transport floor, the grpcio peer), so that the
//! ratios mean something on a shared, noisy machine. The pieces are in `pipeline::bench`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use pipeline::bench::{
    claims, floor, python,
    report::{Report, Series, Verdict, human},
    rpc,
};
use python_sandbox_agent::LocalAgent;
use sandbox_claim::WatchMode;
use serde_json::json;

#[derive(Parser)]
#[command(about = "Measure AXP, agent and claim-lifecycle speed and memory beside peers")]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Fewer samples and 100 conversations instead of 1,000: under a minute.
    #[arg(long)]
    quick: bool,
    /// Round trips per AXP series (default 2000, quick 300).
    #[arg(long)]
    iterations: Option<usize>,
    /// Conversations at once in the scale runs (default 1000, quick 100).
    #[arg(long)]
    conversations: Option<usize>,
    /// Skip the scale runs.
    #[arg(long)]
    no_scale: bool,
    /// Run only these sections (comma-separated), e.g. `--only round-trip,memory`.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Section>,
    /// Write the figures (and the table) as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the table as Markdown here too (what the README quotes).
    #[arg(long)]
    markdown: Option<PathBuf>,
}

/// The parts of a run, in the order they run.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    /// 1. `print(7*6)` round trips beside the floor and the grpcio peer.
    RoundTrip,
    /// 2. Time from a `print` to its first frame at the client.
    FirstOutput,
    /// 3. RSS and PSS beside the grpcio peer.
    Memory,
    /// 4. `Ready=True` written → `acquire` returns, one claim at a time.
    Readiness,
    /// 5. A thousand conversations acquiring at once.
    Scale,
}

impl Cli {
    fn runs(&self, section: Section) -> bool {
        let selected = self.only.is_empty() || self.only.contains(&section);
        selected && !(section == Section::Scale && self.no_scale)
    }
}

#[derive(clap::Subcommand)]
enum Mode {
    /// The backend side of a scale run (started by the bench itself).
    #[command(hide = true)]
    ScaleClient(claims::ClientArgs),
}

/// How much of everything a run measures.
struct Sizes {
    iterations: usize,
    spawns: usize,
    first_outputs: usize,
    executions: usize,
    readiness: usize,
    conversations: usize,
}

impl Sizes {
    fn of(cli: &Cli) -> Self {
        let (iterations, spawns, first_outputs, executions, readiness, conversations) = if cli.quick
        {
            (300, 10, 20, 200, 20, 100)
        } else {
            (2000, 40, 100, 1000, 100, 1000)
        };
        Self {
            iterations: cli.iterations.unwrap_or(iterations),
            spawns,
            first_outputs,
            executions,
            readiness,
            conversations: cli.conversations.unwrap_or(conversations),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Mode::ScaleClient(args)) = cli.mode {
        // The backend as a controller runs it: a multi-threaded runtime.
        return tokio::runtime::Runtime::new()?.block_on(claims::client(args));
    }
    // One thread, as a latency-sensitive client would run its hot path: on two cores,
    // cross-thread wake-ups of a multi-threaded runtime cost more than the work measured.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(cli))
}

/// The reference agent, its worker in the peer's venv. `pinned` is how a sandbox runs it
/// (one conversation, no spare worker); the round trips use several conversations.
async fn spawn_agent(binary: &Path, venv: &Path, pinned: bool) -> anyhow::Result<LocalAgent> {
    let mut command = tokio::process::Command::new(binary);
    command
        .args(["--listen", "127.0.0.1:0", "--python-venv"])
        .arg(venv);
    if !pinned {
        command.arg("--unpinned");
    }
    command
        .env("RUST_LOG", "error")
        .stderr(std::process::Stdio::null());
    Ok(LocalAgent::from_command(command).await?)
}

/// Runs `work` on a multi-threaded runtime of its own, on a thread of its own, and waits for
/// it without blocking this one. The scale runs' fake cluster (its API server and simulated
/// controller) spawns its tasks there, so it uses every core, as a real API server does,
/// instead of this single-threaded runtime, which the latency sections need.
async fn on_every_core<T: Send + 'static>(
    work: impl Future<Output = anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("scale-cluster".into())
        .spawn(move || {
            let result = tokio::runtime::Runtime::new()
                .context("a runtime for the scale run")
                .and_then(|runtime| runtime.block_on(work));
            let _ = tx.send(result);
        })?;
    rx.await.context("the scale run's thread died")?
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let sizes = Sizes::of(&cli);
    let root = std::env::current_dir()?;
    let binary = pipeline::agent_binary();
    anyhow::ensure!(
        binary.exists(),
        "build the agent first: {} is missing",
        binary.display()
    );
    let bench = std::env::current_exe()?;
    let interpreter = python::interpreter().await?;
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "machine: {cpus} cores; python-sandbox-agent: {}",
        binary.display()
    );
    println!(
        "python3 baseline and grpcio peer venv base: {}",
        interpreter.display()
    );
    let venv = python::venv(&interpreter, &root, &root.join("target/bench-python")).await?;
    let mut report = Report::default();
    report.put(
        "machine",
        json!({"cores": cpus, "interpreter": interpreter.display().to_string(), "quick": cli.quick}),
    );

    if cli.runs(Section::RoundTrip) || cli.runs(Section::FirstOutput) {
        let floor = format!("http://{}", floor::start()?);
        let project_server = format!("http://{}", floor::start_project_server()?);
        let agent = spawn_agent(&binary, venv.dir(), false).await?;
        let peer = python::Peer::start(&venv, &root).await?;
        if cli.runs(Section::RoundTrip) {
            report.section(
                "1. print(7*6), sequential calls over one channel (generated tonic client)",
            );
            let n = sizes.iterations;
            for (protocol, key) in [("AgentService", "agent"), ("HarnessService", "harness")] {
                let measure = async |name: String, url: &str| -> anyhow::Result<Series> {
                    if key == "agent" {
                        rpc::agent_round_trip(&name, url, n).await
                    } else {
                        rpc::harness_round_trip(&name, url, n).await
                    }
                };
                let floor_s =
                    measure(format!("{protocol}: transport floor (bare tonic)"), &floor).await?;
                let server_s = measure(
                    format!("{protocol}: project server, agent answering at once"),
                    &project_server,
                )
                .await?;
                let ours = measure(format!("{protocol}: reference agent"), &agent.url()).await?;
                let peer_s = measure(
                    format!("{protocol}: grpcio peer (exec in-process)"),
                    &peer.url(),
                )
                .await?;
                for series in [&floor_s, &server_s, &ours, &peer_s] {
                    report.series(series);
                    report.put(
                        &format!("{key}_round_trip_{}", slug(&series.name)),
                        series.json(),
                    );
                }
                // The server's share of the gap to the floor; the rest is the Python worker.
                let server_vs_floor = ratio(server_s.p50(), floor_s.p50());
                report.row(
                    &format!("{protocol}: project server ÷ floor (p50)"),
                    format!("{server_vs_floor:.2}×"),
                    "",
                    Verdict::Info,
                );
                report.put(
                    &format!("{key}_server_ratio_vs_floor"),
                    json!(server_vs_floor),
                );
                let vs_floor = ratio(ours.p50(), floor_s.p50());
                let vs_peer = ratio(peer_s.p50(), ours.p50());
                report.row(
                    &format!("{protocol}: reference agent ÷ floor (p50)"),
                    format!("{vs_floor:.2}×"),
                    "≤ 2×",
                    Verdict::of(vs_floor <= 2.0),
                );
                report.row(
                    &format!("{protocol}: grpcio peer ÷ reference agent (p50)"),
                    format!("{vs_peer:.2}× faster"),
                    "≥ 2× faster",
                    Verdict::of(vs_peer >= 2.0),
                );
                report.put(&format!("{key}_ratio_vs_floor"), json!(vs_floor));
                report.put(&format!("{key}_speedup_vs_grpcio_peer"), json!(vs_peer));
            }
            let spawn = python::python_c(&interpreter, sizes.spawns).await?;
            let ours = rpc::agent_round_trip("again", &agent.url(), n / 4).await?;
            report.series(&spawn);
            let vs_spawn = ratio(spawn.p50(), ours.p50());
            report.row(
                &format!("reference agent vs {}", interpreter.display()),
                format!("{vs_spawn:.0}× faster"),
                "",
                Verdict::Info,
            );
            report.put("python3_c_per_request", spawn.json());
            report.put("speedup_vs_python3_c", json!(vs_spawn));
        }
        if cli.runs(Section::FirstOutput) {
            report.section(
                "2. First output: print, sleep 50 ms, print (print → first frame at the client)",
            );
            let first =
                rpc::first_output("reference agent", &agent.url(), sizes.first_outputs).await?;
            let first_peer =
                rpc::first_output("grpcio peer", &peer.url(), sizes.first_outputs).await?;
            report.row(
                "reference agent",
                format!("p50 {}  p99 {}", human(first.p50()), human(first.p99())),
                "p50 ≤ 2 ms, p99 ≤ 5 ms",
                Verdict::of(
                    first.p50() <= Duration::from_millis(2)
                        && first.p99() <= Duration::from_millis(5),
                ),
            );
            report.series(&first_peer);
            report.put("first_output_agent", first.json());
            report.put("first_output_grpcio_peer", first_peer.json());
        }
    }
    if cli.runs(Section::Memory) {
        report.section(&format!(
            "3. Memory: RSS (and PSS) after one execution and after {} more",
            sizes.executions
        ));
        let agent = spawn_agent(&binary, venv.dir(), true).await?;
        let ours = rpc::memory(&agent.url(), agent.pid(), sizes.executions).await?;
        drop(agent);
        let peer = python::Peer::start(&venv, &root).await?;
        let theirs = rpc::memory(&peer.url(), peer.pid(), sizes.executions).await?;
        drop(peer);
        for (name, m) in [
            ("reference agent + worker", &ours),
            ("grpcio peer", &theirs),
        ] {
            report.row(
                name,
                format!(
                    "{:.1} → {:.1} MiB (PSS {:.1} MiB)",
                    m.rss_idle, m.rss_after, m.pss_after
                ),
                "",
                Verdict::Info,
            );
        }
        let mem_ratio = ours.rss_after / theirs.rss_after.max(1e-9);
        report.row(
            "reference agent ÷ grpcio peer (RSS after)",
            format!("{mem_ratio:.2}×"),
            "≤ 0.7×",
            Verdict::of(mem_ratio <= 0.7),
        );
        // RSS counts the pages the agent and its worker share (binary, libpython) twice.
        let pss_ratio = ours.pss_after / theirs.pss_after.max(1e-9);
        report.row(
            "reference agent ÷ grpcio peer (PSS after)",
            format!("{pss_ratio:.2}×"),
            "",
            Verdict::Info,
        );
        report.put(
            "memory_mib",
            json!({
                "agent_idle": ours.rss_idle, "agent_after": ours.rss_after, "agent_pss_after": ours.pss_after,
                "peer_idle": theirs.rss_idle, "peer_after": theirs.rss_after, "peer_pss_after": theirs.pss_after,
                "executions": sizes.executions, "ratio_after": mem_ratio, "pss_ratio_after": pss_ratio,
            }),
        );
    }
    if cli.runs(Section::Readiness) {
        report.section("4. Readiness on the fake cluster (one claim at a time, cold sandboxes)");
        let (lifecycle, readiness, per_claim) = claims::readiness(sizes.readiness).await?;
        report.series(&lifecycle);
        report.row(
            &readiness.name.clone(),
            format!(
                "p50 {}  p99 {}",
                human(readiness.p50()),
                human(readiness.p99())
            ),
            "p99 ≤ 5 ms",
            Verdict::of(readiness.p99() <= Duration::from_millis(5)),
        );
        report.row(
            "client requests on sandboxclaims per claim (create, get, delete)",
            format!("{per_claim:.1}"),
            "",
            Verdict::Info,
        );
        report.put("claim_lifecycle", lifecycle.json());
        report.put("ready_to_acquire_quiet", readiness.json());
        report.put("requests_per_claim_quiet", json!(per_claim));
    }
    if cli.runs(Section::Scale) {
        let n = sizes.conversations;
        report.section(&format!(
            "5. Scale: {n} conversations acquiring at once (backend in its own process)"
        ));
        let mut runs = Vec::new();
        for warm in [true, false] {
            for mode in [WatchMode::Shared, WatchMode::PerClaim] {
                match on_every_core(claims::scale(bench.clone(), n, warm, mode)).await {
                    Ok(run) => {
                        scale_rows(&mut report, &run);
                        runs.push(run.json());
                    }
                    Err(error) if error.is::<claims::PoolNotFilled>() => {
                        report.row(
                            "warm pool: the simulated controller did not fill it",
                            error.to_string(),
                            "",
                            Verdict::Missed,
                        );
                        runs.push(json!({"warm_pool": true, "error": error.to_string()}));
                        break;
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        report.put("scale", json!(runs));
    }

    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.to_json())?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\nfigures written to {}", path.display());
    }
    if let Some(path) = &cli.markdown {
        std::fs::write(path, report.markdown())
            .with_context(|| format!("writing {}", path.display()))?;
        println!("table written to {}", path.display());
    }
    Ok(())
}

fn scale_rows(report: &mut Report, run: &claims::ScaleRun) {
    let label = format!(
        "{} pool, {} watch",
        if run.warm { "warm" } else { "empty" },
        match run.mode {
            WatchMode::PerClaim => "per-claim",
            _ => "shared",
        }
    );
    let shared = run.mode == WatchMode::Shared;
    let judged = |met: bool| {
        if shared {
            Verdict::of(met)
        } else {
            Verdict::Info
        }
    };
    report.row(
        &format!("{label}: claims/s"),
        format!("{:.0} ({} errors)", run.claims_per_sec, run.errors),
        if shared { "≥ 300" } else { "" },
        judged(run.claims_per_sec >= 300.0 && run.errors == 0),
    );
    report.row(
        &format!("{label}: acquire"),
        format!(
            "p50 {}  p99 {}",
            human(run.acquire.p50()),
            human(run.acquire.p99())
        ),
        if shared { "p99 ≤ 2 s" } else { "" },
        judged(run.acquire.p99() <= Duration::from_secs(2)),
    );
    report.row(
        &format!("{label}: Ready=True written → acquire returns"),
        format!(
            "p50 {}  p99 {}",
            human(run.readiness.p50()),
            human(run.readiness.p99())
        ),
        "",
        Verdict::Info,
    );
    report.row(
        &format!("{label}: peak watches, requests per claim"),
        format!(
            "{} watches, {:.1} requests",
            run.peak_watches, run.requests_per_claim
        ),
        if shared { "constant" } else { "" },
        judged(run.peak_watches <= 2),
    );
    report.row(
        &format!("{label}: backend peak RSS"),
        format!("{:.1} MiB", run.backend_peak_mib),
        "",
        Verdict::Info,
    );
    report.row(
        &format!("{label}: fake API server request latency"),
        format!(
            "p50 {}  p99 {}",
            human(run.server_latency.p50()),
            human(run.server_latency.p99())
        ),
        "",
        Verdict::Info,
    );
}

/// A JSON key from a series name.
fn slug(name: &str) -> String {
    let tail = name.split(": ").nth(1).unwrap_or(name);
    tail.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join("_")
        .to_lowercase()
}
