//! The claim lifecycle on the fake cluster: readiness (from the controller's `Ready=True`
//! write to `acquire` returning) and scale (a thousand conversations at once), with the
//! shared watch beside the one-watch-per-claim path.
//!
//! For scale, the backend side (a [`Claims`] and its acquires) runs in a child process, the
//! bench binary's `scale-client` mode, so its peak memory is its own; the fake cluster and
//! its simulated controller stay in the bench process, which timestamps the controller's
//! writes with a hook on the fake API server.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sandbox_claim::testing::{
    FakeApiServer, FakeApiServerOptions, FakeCluster, FakeClusterOptions, LoopbackRuntime,
    ReadyMode, Verb, WriteKind,
};
use sandbox_claim::{ClaimOptions, Claims, VersionSelection, WatchMode};
use serde_json::{Value, json};

use super::monotonic_ns;
use super::report::Series;

const TEMPLATE: &str = "bench";
const POOL: &str = "bench-pool";
/// How long a cold sandbox takes to turn Ready in these runs.
const COLD_READY: Duration = Duration::from_millis(10);

/// When the controller first wrote `Ready=True` on each claim (monotonic ns), by name.
type ReadyWrites = Arc<Mutex<HashMap<String, u64>>>;

/// Records the moment of each claim's first `Ready=True` write.
fn timestamp_ready_writes(server: &FakeApiServer) -> ReadyWrites {
    let writes = ReadyWrites::default();
    let sink = writes.clone();
    server.on_write(move |write| {
        if write.resource != "sandboxclaims" || write.kind != WriteKind::Updated {
            return;
        }
        let ready = write
            .object
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
        if !ready {
            return;
        }
        if let Some(name) = write
            .object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
        {
            let mut writes = sink.lock().unwrap_or_else(|p| p.into_inner());
            writes.entry(name.to_owned()).or_insert_with(monotonic_ns);
        }
    });
    writes
}

async fn cluster(pool: i32) -> anyhow::Result<FakeCluster> {
    let mut options = FakeClusterOptions::default()
        .runtime(Arc::new(LoopbackRuntime::new()))
        .ready_mode(ReadyMode::After(COLD_READY));
    // Room for every event of a thousand claims, so no watch is expired by the bench itself.
    options.server = FakeApiServerOptions::default().event_history(200_000);
    let cluster = FakeCluster::start(options).await?;
    cluster.create_template(TEMPLATE, None).await?;
    cluster.create_warm_pool(POOL, TEMPLATE, pool).await?;
    Ok(cluster)
}

fn claim_options(namespace: &str, mode: WatchMode) -> ClaimOptions {
    ClaimOptions::default()
        .namespace(namespace)
        .source(POOL)
        .api_version(VersionSelection::V1beta1)
        .ready_timeout(Duration::from_secs(300))
        .watch(mode)
}

/// The client's requests on `sandboxclaims` (the controller's status writes go to
/// `sandboxclaims/status`).
fn claim_requests(server: &FakeApiServer) -> u64 {
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
    .sum()
}

/// Readiness of `claims` sequential cold claims, and the acquire + release latency.
pub async fn readiness(claims: usize) -> anyhow::Result<(Series, Series, f64)> {
    let cluster = cluster(0).await?;
    let writes = timestamp_ready_writes(cluster.server());
    let api = Claims::new(
        cluster.client(),
        claim_options(cluster.namespace(), WatchMode::Shared),
    );
    // The shared watch opens with the first wait: start it before counting.
    api.acquire("warm").await?;
    api.release("warm").await?;
    let before = claim_requests(cluster.server());
    let mut lifecycle = Vec::new();
    let mut readiness = Vec::new();
    for i in 0..claims.max(4) {
        let conversation = format!("ready-{i}");
        let begun = Instant::now();
        let handle = api.acquire(&conversation).await?;
        let returned = monotonic_ns();
        api.release(&handle).await?;
        lifecycle.push(begun.elapsed());
        let written = writes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&handle.claim_name)
            .copied()
            .context("no Ready=True write was seen")?;
        readiness.push(Duration::from_nanos(returned.saturating_sub(written)));
    }
    let per_claim = (claim_requests(cluster.server()) - before) as f64 / lifecycle.len() as f64;
    Ok((
        Series::new(
            format!("acquire + release, sandbox Ready after {COLD_READY:?}"),
            lifecycle,
        ),
        Series::new("Ready=True written → acquire returns (quiet)", readiness),
        per_claim,
    ))
}

/// One scale run.
#[derive(Debug)]
pub struct ScaleRun {
    /// Conversations at once.
    pub conversations: usize,
    /// A warm pool of `conversations` members, or an empty one.
    pub warm: bool,
    /// Shared watch or one per claim.
    pub mode: WatchMode,
    /// Claims per second, from the first acquire to the last return.
    pub claims_per_sec: f64,
    /// Acquire latency.
    pub acquire: Series,
    /// `Ready=True` written → acquire returns.
    pub readiness: Series,
    /// The fake API server's own request latency (arrival → response head) during the run.
    pub server_latency: Series,
    /// Most watch connections on `sandboxclaims` the backend held at once.
    pub peak_watches: usize,
    /// The backend's API requests on `sandboxclaims`, per claim.
    pub requests_per_claim: f64,
    /// Peak RSS of the backend process, MiB.
    pub backend_peak_mib: f64,
    /// Acquires that failed (the first error is printed).
    pub errors: usize,
}

impl ScaleRun {
    /// The run as JSON.
    pub fn json(&self) -> Value {
        json!({
            "conversations": self.conversations,
            "warm_pool": self.warm,
            "watch": format!("{:?}", self.mode),
            "claims_per_sec": self.claims_per_sec,
            "acquire": self.acquire.json(),
            "ready_to_acquire": self.readiness.json(),
            "fake_server_request_latency": self.server_latency.json(),
            "peak_watches": self.peak_watches,
            "requests_per_claim": self.requests_per_claim,
            "backend_peak_rss_mib": self.backend_peak_mib,
            "errors": self.errors,
        })
    }
}

/// How long the simulated controller may take to fill a warm pool before a warm run is
/// given up (and reported as such).
const POOL_FILL_BUDGET: Duration = Duration::from_secs(120);

/// Why a scale run did not happen.
#[derive(Debug, thiserror::Error)]
#[error("the warm pool had {ready} of {members} members Ready after {}s", POOL_FILL_BUDGET.as_secs())]
pub struct PoolNotFilled {
    /// Members Ready at the deadline.
    pub ready: usize,
    /// Members asked for.
    pub members: usize,
}

/// Waits until `members` warm-pool sandboxes are Ready, within [`POOL_FILL_BUDGET`].
async fn pool_ready(cluster: &FakeCluster, members: usize) -> anyhow::Result<Duration> {
    let begun = Instant::now();
    loop {
        let ready = cluster
            .server()
            .objects("agents.x-k8s.io", "sandboxes", Some(cluster.namespace()))
            .iter()
            .filter(|s| {
                s.pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
            })
            .count();
        if ready >= members {
            return Ok(begun.elapsed());
        }
        if begun.elapsed() > POOL_FILL_BUDGET {
            return Err(PoolNotFilled { ready, members }.into());
        }
        // Seldom: every look copies the pool's objects under the server's lock.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `conversations` acquires at once from a backend process against a fresh fake cluster.
pub async fn scale(
    bench: PathBuf,
    conversations: usize,
    warm: bool,
    mode: WatchMode,
) -> anyhow::Result<ScaleRun> {
    let members = if warm { conversations } else { 0 };
    let cluster = cluster(i32::try_from(members)?).await?;
    if warm {
        let took = pool_ready(&cluster, members).await?;
        println!(
            "    (warm pool of {members} Ready after {:.1} s)",
            took.as_secs_f64()
        );
    }
    let server = cluster.server();
    let writes = timestamp_ready_writes(server);
    let controller_watches = server.watches("sandboxclaims").open;
    server.reset_requests();
    let mode_flag = match mode {
        WatchMode::PerClaim => "per-claim",
        _ => "shared",
    };
    let output = tokio::process::Command::new(&bench)
        .args(["scale-client", "--url", &server.url(), "--namespace"])
        .arg(cluster.namespace())
        .args(["--conversations", &conversations.to_string()])
        .args(["--watch", mode_flag])
        .stderr(Stdio::inherit())
        .output()
        .await
        .context("running the scale client")?;
    anyhow::ensure!(output.status.success(), "the scale client failed");
    let report: ClientReport =
        serde_json::from_slice(&output.stdout).context("reading the scale client's report")?;
    let peak_watches = server
        .watches("sandboxclaims")
        .peak
        .saturating_sub(controller_watches);
    let requests_per_claim = claim_requests(server) as f64 / conversations as f64;
    let server_latency = Series::new("fake API server", server.request_latencies());
    let writes = writes.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let readiness = report
        .returned
        .iter()
        .filter_map(|(name, returned)| {
            let written = writes.get(name)?;
            Some(Duration::from_nanos(returned.saturating_sub(*written)))
        })
        .collect();
    if let Some(error) = &report.first_error {
        println!("    first acquire error: {error}");
    }
    Ok(ScaleRun {
        conversations,
        warm,
        mode,
        claims_per_sec: report.acquire_us.len() as f64 / (report.wall_us / 1e6),
        acquire: Series::new(
            "acquire",
            report
                .acquire_us
                .iter()
                .map(|us| Duration::from_secs_f64(us / 1e6))
                .collect(),
        ),
        readiness: Series::new("Ready=True written → acquire returns", readiness),
        server_latency,
        peak_watches,
        requests_per_claim,
        backend_peak_mib: report.peak_rss_mib,
        errors: report.errors,
    })
}

/// What the scale client prints.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ClientReport {
    /// Successful acquires' latencies, µs.
    acquire_us: Vec<f64>,
    /// Claim name → monotonic ns when its acquire returned.
    returned: HashMap<String, u64>,
    /// First acquire to last return, µs.
    wall_us: f64,
    errors: usize,
    first_error: Option<String>,
    /// The client's VmHWM after releasing everything, MiB.
    peak_rss_mib: f64,
}

/// Options of the `scale-client` mode.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The fake API server.
    #[arg(long)]
    url: String,
    /// Namespace of the claims.
    #[arg(long)]
    namespace: String,
    /// Conversations acquiring at once.
    #[arg(long)]
    conversations: usize,
    /// `shared` or `per-claim`.
    #[arg(long)]
    watch: String,
}

/// The `scale-client` mode: acquire `conversations` claims at once, then release them,
/// and print a [`ClientReport`] as JSON.
pub async fn client(args: ClientArgs) -> anyhow::Result<()> {
    let mut config = kube::Config::new(args.url.parse()?);
    config.default_namespace = args.namespace.clone();
    let client = kube::Client::try_from(config)?;
    let mode = match args.watch.as_str() {
        "per-claim" => WatchMode::PerClaim,
        "shared" => WatchMode::Shared,
        other => anyhow::bail!("--watch is `shared` or `per-claim`, not {other:?}"),
    };
    let claims = Claims::new(client, claim_options(&args.namespace, mode));
    let begun = monotonic_ns();
    let tasks: Vec<_> = (0..args.conversations)
        .map(|i| {
            let claims = claims.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let result = claims.acquire(&format!("scale-{i}")).await;
                (result, started.elapsed(), monotonic_ns())
            })
        })
        .collect();
    let mut report = ClientReport {
        acquire_us: Vec::new(),
        returned: HashMap::new(),
        wall_us: 0.0,
        errors: 0,
        first_error: None,
        peak_rss_mib: 0.0,
    };
    let mut handles = Vec::new();
    for task in tasks {
        let (result, took, returned) = task.await?;
        match result {
            Ok(handle) => {
                report.acquire_us.push(took.as_secs_f64() * 1e6);
                report.returned.insert(handle.claim_name.clone(), returned);
                handles.push(handle);
            }
            Err(error) => {
                report.errors += 1;
                report
                    .first_error
                    .get_or_insert_with(|| format!("{:#}", anyhow::Error::new(error)));
            }
        }
    }
    let last = report.returned.values().copied().max().unwrap_or(begun);
    report.wall_us = last.saturating_sub(begun) as f64 / 1e3;
    let releases = handles.iter().map(|h| claims.release(h));
    for released in futures::future::join_all(releases).await {
        released?;
    }
    report.peak_rss_mib = super::rss_tree(std::process::id(), true);
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
