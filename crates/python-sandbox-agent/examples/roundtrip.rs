//! Measures the full AXP round trip of `print(7*6)` against the real binary, and `python3 -c` for comparison.
//!
//! ```text
//! cargo build --release -p python-sandbox-agent --examples
//! target/release/examples/roundtrip [ITERATIONS]
//! ```
//!
//! The agent binary is the one next to this example's directory (`target/<profile>/python-sandbox-agent`), or
//! `$AGENT_BINARY`.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use axp_transport::pb::{AgentRequest, AgentStart, agent_service_client::AgentServiceClient};
use futures::StreamExt as _;
use python_sandbox_agent::LocalAgent;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn report(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let median = percentile(&samples, 0.5);
    println!(
        "{name:<40} n={:<6} median={:>9.1?} p90={:>9.1?} p99={:>9.1?} max={:>9.1?}",
        samples.len(),
        median,
        percentile(&samples, 0.9),
        percentile(&samples, 0.99),
        samples.last().copied().unwrap_or_default()
    );
    median
}

fn request(i: usize) -> AgentRequest {
    AgentRequest {
        conversation_id: "bench".into(),
        exec_id: format!("e{i}"),
        start: Some(AgentStart {
            subagent_prompt: "print(7*6)".into(),
            ..AgentStart::default()
        }),
    }
}

async fn one_call(client: &mut AgentServiceClient<tonic::transport::Channel>, i: usize) {
    let mut stream = client
        .connect(request(i))
        .await
        .expect("connect")
        .into_inner();
    let mut frames = 0;
    while let Some(frame) = stream.next().await {
        frame.expect("frame");
        frames += 1;
    }
    assert_eq!(frames, 2, "outputs + end");
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let iterations: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let binary = std::env::var_os("AGENT_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("current exe");
            exe.parent()
                .and_then(|p| p.parent())
                .expect("target dir")
                .join("python-sandbox-agent")
        });
    let agent = LocalAgent::spawn(&binary, ["--log-format", "text"]).await?;
    let endpoint = tonic::transport::Endpoint::from_shared(agent.url())?.tcp_nodelay(true);

    let mut client = AgentServiceClient::new(endpoint.connect().await?);
    for i in 0..200 {
        one_call(&mut client, i).await;
    }
    let mut reused = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let started = Instant::now();
        one_call(&mut client, i).await;
        reused.push(started.elapsed());
    }
    let median = report("AXP print(7*6), one reused connection", reused);

    let mut fresh = Vec::with_capacity(iterations / 4);
    for i in 0..iterations / 4 {
        let started = Instant::now();
        let mut client = AgentServiceClient::new(endpoint.connect().await?);
        one_call(&mut client, i).await;
        fresh.push(started.elapsed());
    }
    report("AXP print(7*6), new connection per call", fresh);

    // `python3` on PATH may be a pyenv shim (a shell script); measure the real interpreter too.
    let real = tokio::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .await?;
    let real = String::from_utf8(real.stdout)?.trim().to_owned();
    let mut baseline = Duration::MAX;
    for program in ["python3", real.as_str()] {
        let mut spawns = Vec::with_capacity(100);
        for _ in 0..100 {
            let started = Instant::now();
            let output = tokio::process::Command::new(program)
                .args(["-c", "print(7*6)"])
                .output()
                .await?;
            assert_eq!(output.stdout, b"42\n");
            spawns.push(started.elapsed());
        }
        baseline = baseline.min(report(&format!("{program} -c 'print(7*6)'"), spawns));
    }
    println!(
        "speed-up at the median vs the faster python3 -c (reused connection): {:.1}x",
        baseline.as_secs_f64() / median.as_secs_f64()
    );
    Ok(())
}
