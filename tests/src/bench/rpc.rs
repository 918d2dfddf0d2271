//! What is measured against any AXP endpoint (the floor, the reference agent, the grpcio
//! peer) with the generated tonic clients alone, so every server gets the same client.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use axp_transport::content;
use axp_transport::pb::{
    AgentRequest, AgentStart, HarnessRequest, HarnessStart, Message, agent_response,
    agent_service_client::AgentServiceClient, harness_request, harness_response,
    harness_service_client::HarnessServiceClient,
};
use futures::StreamExt as _;
use tonic::transport::Channel;

use super::monotonic_ns;
use super::report::Series;

/// The trivial execution every server runs.
pub const TRIVIAL: &str = "print(7*6)";

/// Executions before any sample is taken (connections, caches, the worker warm).
const WARM_UP: usize = 100;

/// Dials one channel to `url`.
pub async fn channel(url: &str) -> anyhow::Result<Channel> {
    tonic::transport::Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("dialling {url}"))
}

fn request(conversation: &str, exec: &str, code: &str) -> AgentRequest {
    AgentRequest {
        conversation_id: conversation.to_owned(),
        exec_id: exec.to_owned(),
        start: Some(AgentStart {
            subagent_prompt: code.to_owned(),
            ..AgentStart::default()
        }),
    }
}

/// One AgentService execution to its `end`: the outputs' messages.
async fn agent_call(
    client: &mut AgentServiceClient<Channel>,
    conversation: &str,
    exec: &str,
    code: &str,
) -> anyhow::Result<Vec<Message>> {
    let mut stream = client
        .connect(request(conversation, exec, code))
        .await?
        .into_inner();
    let mut messages = Vec::new();
    let mut ended = false;
    // Read to the trailers: a stream dropped early is reset, and h2 closes a connection
    // after a thousand resets.
    while let Some(frame) = stream.next().await {
        match frame?.r#type {
            Some(agent_response::Type::Outputs(o)) => messages.extend(o.messages),
            Some(agent_response::Type::End(_)) => ended = true,
            None => {}
        }
    }
    anyhow::ensure!(ended, "the stream ended without `end`");
    Ok(messages)
}

/// One HarnessService execution to its `end`. The request stream stays open until then,
/// as upstream AX keeps it (for cancels).
async fn harness_call(
    client: &mut HarnessServiceClient<Channel>,
    conversation: &str,
    code: &str,
) -> anyhow::Result<Vec<Message>> {
    let start = HarnessRequest {
        conversation_id: conversation.to_owned(),
        harness_id: "python".to_owned(),
        r#type: Some(harness_request::Type::Start(HarnessStart {
            harness_config: Vec::new(),
            messages: vec![content::user_text(code)],
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(start).await?;
    let mut tx = Some(tx);
    let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut stream = client.connect(requests).await?.into_inner();
    let mut messages = Vec::new();
    let mut ended = false;
    while let Some(frame) = stream.next().await {
        match frame?.r#type {
            Some(harness_response::Type::Outputs(o)) => messages.extend(o.messages),
            Some(harness_response::Type::End(_)) => {
                ended = true;
                // Half-close our side, then read to the trailers (no reset on either side).
                tx = None;
            }
            None => {}
        }
    }
    drop(tx);
    anyhow::ensure!(ended, "the stream ended without `end`");
    Ok(messages)
}

fn says_42(messages: &[Message]) -> anyhow::Result<()> {
    let view = content::planner_view(messages);
    anyhow::ensure!(view.contains("42"), "unexpected output: {view}");
    Ok(())
}

/// Sequential `print(7*6)` over one AgentService channel.
pub async fn agent_round_trip(name: &str, url: &str, iterations: usize) -> anyhow::Result<Series> {
    let mut client = AgentServiceClient::new(channel(url).await?);
    for i in 0..WARM_UP {
        says_42(&agent_call(&mut client, "bench", &format!("warm-{i}"), TRIVIAL).await?)?;
    }
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let begun = Instant::now();
        let messages = agent_call(&mut client, "bench", &format!("e{i}"), TRIVIAL).await?;
        samples.push(begun.elapsed());
        says_42(&messages)?;
    }
    Ok(Series::new(name, samples))
}

/// Sequential `print(7*6)` over one HarnessService channel.
pub async fn harness_round_trip(
    name: &str,
    url: &str,
    iterations: usize,
) -> anyhow::Result<Series> {
    let mut client = HarnessServiceClient::new(channel(url).await?);
    for _ in 0..WARM_UP {
        says_42(&harness_call(&mut client, "bench-harness", TRIVIAL).await?)?;
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let begun = Instant::now();
        let messages = harness_call(&mut client, "bench-harness", TRIVIAL).await?;
        samples.push(begun.elapsed());
        says_42(&messages)?;
    }
    Ok(Series::new(name, samples))
}

/// The streaming snippet: the first print carries the monotonic clock at the moment it
/// runs; then a 50 ms sleep and a second print.
const STREAMING: &str = "import time\nprint(time.monotonic_ns())\ntime.sleep(0.05)\nprint('done')";

/// Time from the snippet's first `print` to its first frame at the client.
pub async fn first_output(name: &str, url: &str, runs: usize) -> anyhow::Result<Series> {
    let mut client = AgentServiceClient::new(channel(url).await?);
    agent_call(&mut client, "first", "warm", "import time").await?;
    let mut samples = Vec::with_capacity(runs);
    for i in 0..runs {
        let mut stream = client
            .connect(request("first", &format!("e{i}"), STREAMING))
            .await?
            .into_inner();
        let mut first = None;
        while let Some(frame) = stream.next().await {
            let received = monotonic_ns();
            if let Some(agent_response::Type::Outputs(o)) = frame?.r#type
                && first.is_none()
            {
                let text = content::planner_view(&o.messages);
                let printed: u64 = text
                    .lines()
                    .next()
                    .and_then(|l| l.trim().parse().ok())
                    .with_context(|| format!("the first frame holds no clock: {text:?}"))?;
                anyhow::ensure!(
                    !text.contains("done"),
                    "the first frame already holds the second print: {text:?}"
                );
                first = Some(Duration::from_nanos(received.saturating_sub(printed)));
            }
        }
        samples.push(first.context("no output frame")?);
    }
    Ok(Series::new(name, samples))
}

/// A small but real cell, run for the memory figures.
const WORK: &str = "print(sum(i * i for i in range(1000)))";

/// Memory of a server process and its children, in MiB.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// RSS after one execution.
    pub rss_idle: f64,
    /// RSS after the further executions.
    pub rss_after: f64,
    /// PSS after the further executions (shared pages split between the processes).
    pub pss_after: f64,
}

/// [`Memory`] of `pid` and its children after one execution and after `executions` more.
pub async fn memory(url: &str, pid: u32, executions: usize) -> anyhow::Result<Memory> {
    let mut client = AgentServiceClient::new(channel(url).await?);
    agent_call(&mut client, "mem", "warm", WORK).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_idle = super::rss_tree(pid, false);
    for i in 0..executions {
        agent_call(&mut client, "mem", &format!("e{i}"), WORK).await?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(Memory {
        rss_idle,
        rss_after: super::rss_tree(pid, false),
        pss_after: super::pss_tree(pid),
    })
}
