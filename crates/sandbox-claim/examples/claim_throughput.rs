//! How many claims per second the fake cluster's simulated controller serves: `N`
//! conversations acquire at once (cold starts, pods that start at once), then all release.
//! A measurement, not a test; run it in release mode:
//!
//! `cargo run --release -p sandbox-claim --features testing --example claim_throughput -- 1000`

use std::sync::Arc;
use std::time::{Duration, Instant};

use sandbox_claim::testing::{FakeCluster, FakeClusterOptions, LoopbackRuntime, ReadyMode};
use sandbox_claim::{ClaimOptions, Claims};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1000);
    let cluster = FakeCluster::start(
        FakeClusterOptions::default()
            .runtime(Arc::new(LoopbackRuntime::new()))
            .ready_mode(ReadyMode::After(Duration::ZERO)),
    )
    .await?;
    cluster.create_template("tpl", None).await?;
    cluster.create_warm_pool("pool", "tpl", 0).await?;
    let claims = Claims::new(
        cluster.client(),
        ClaimOptions::default()
            .namespace(cluster.namespace())
            .source("pool")
            .ready_timeout(Duration::from_secs(120)),
    );

    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let claims = claims.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                claims
                    .acquire(&format!("load-{i}"))
                    .await
                    .map(|_| t.elapsed())
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(n);
    for task in tasks {
        latencies.push(task.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{n} claims at once: {:.0} claims/s ({elapsed:.2?}); acquire p50 {:.0?}, p99 {:.0?}, max {:.0?}",
        n as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
    );
    let per_claim: Vec<String> = cluster
        .server()
        .requests()
        .iter()
        .filter(|(_, _, count)| *count as usize >= n / 10)
        .map(|(verb, resource, count)| format!("{verb} {resource} {:.1}", count as f64 / n as f64))
        .collect();
    println!(
        "API requests per claim (client and controller): {}",
        per_claim.join(", ")
    );
    let released = Instant::now();
    for i in 0..n {
        claims.release(&format!("load-{i}")).await?;
    }
    println!("released in {:.2?}", released.elapsed());
    Ok(())
}
