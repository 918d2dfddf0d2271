//! The README's flow on the fake cluster: claim a sandbox for a conversation from a warm
//! pool, renew it, release it, and see what it cost in API requests.
//!
//! `cargo run -p sandbox-claim --features testing --example fake_cluster`

use std::time::Instant;

use sandbox_claim::testing::{FakeCluster, FakeClusterOptions};
use sandbox_claim::{ClaimOptions, Claims};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // An in-process API server with this crate's CRDs, and a simulated controller.
    let cluster = FakeCluster::start(FakeClusterOptions::default()).await?;
    cluster.create_template("python", None).await?;
    cluster.create_warm_pool("python-pool", "python", 2).await?;

    let claims = Claims::detect(
        cluster.client(),
        ClaimOptions::default()
            .namespace(cluster.namespace())
            .source("python-pool"),
    )
    .await?;
    println!("speaking agent-sandbox {}", claims.api_version().as_str());

    let started = Instant::now();
    let handle = claims.acquire("conversation-42").await?;
    println!(
        "claim {} bound to sandbox {} at {} after {:.1?}",
        handle.claim_name,
        handle.sandbox_name,
        handle.pod_ip,
        started.elapsed()
    );

    claims.renew(&handle).await?;
    claims.release(&handle).await?;
    let left = cluster.server().objects(
        "extensions.agents.x-k8s.io",
        "sandboxclaims",
        Some(cluster.namespace()),
    );
    println!("claims left after release: {}", left.len());

    for (verb, resource, count) in cluster.server().requests().iter() {
        if resource.starts_with("sandboxclaims") {
            println!("{count:>3} × {} {resource}", verb.as_str());
        }
    }
    Ok(())
}
