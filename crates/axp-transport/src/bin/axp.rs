//! `axp`: poke any AXP agent by hand, over either protocol. Built with the `cli` feature:
//! `cargo run -p axp-transport --features cli --bin axp -- health 127.0.0.1:8494`.
//!
//! ```text
//! axp call 127.0.0.1:8494 'print(6*7)'                # AgentService, legacy envelope only
//! axp call 127.0.0.1:8494 --prompt 'print(6*7)' --history 'user: hi'
//! axp call 127.0.0.1:8494 --protocol harness 'print(6*7)'   # HarnessService (upstream AX)
//! axp health 127.0.0.1:8494                           # grpc.health.v1, service ""
//! ```

use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use axp_transport::{
    AxpClient, ClientError, ClientOptions, HarnessClient,
    client::WaitOptions,
    content,
    pb::{AgentStart, HarnessStart, Message, content::Type},
};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

#[derive(Parser)]
#[command(
    name = "axp",
    version,
    about = "Call an AXP agent (ax.AgentService or ax.HarnessService) by hand"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Which AX agent protocol to speak.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Protocol {
    /// ax.AgentService: the AX fork with `subagent_prompt`.
    Axp,
    /// ax.HarnessService: upstream google/ax since June 2026.
    Harness,
}

#[derive(Subcommand)]
enum Command {
    /// Run one execution and print its outputs as they arrive.
    Call {
        /// Agent address: host:port or http(s)://host:port.
        addr: String,
        /// The user's text. Sent as AX's planner does: wrapped in the legacy
        /// "History Summary: … Prompt: …" envelope.
        text: Option<String>,
        /// The protocol to call with.
        #[arg(long, value_enum, default_value_t = Protocol::Axp)]
        protocol: Protocol,
        /// Structured prompt (AgentStart.subagent_prompt; HarnessService has no such field); also used as TEXT when
        /// TEXT is absent.
        #[arg(long)]
        prompt: Option<String>,
        /// Structured history (AgentStart.subagent_history).
        #[arg(long, default_value = "")]
        history: String,
        /// Conversation id.
        #[arg(long, default_value = "axp-cli")]
        conversation: String,
        /// Execution id (a new one per call by default; AgentService only: HarnessService has none).
        #[arg(long)]
        exec: Option<String>,
        /// Agent id (AgentStart.agent_id, or HarnessRequest.harness_id).
        #[arg(long, default_value = "")]
        agent_id: String,
        /// Per-execution options, JSON (AgentStart.agent_config, or HarnessStart.harness_config).
        #[arg(long)]
        config: Option<String>,
        /// Deadline for the whole call, in seconds.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
        /// Bearer token for agents that require one.
        #[arg(long, env = "AXP_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Ask whether an agent is up: grpc.health.v1 for service "" (what Kubernetes and AX's harness client ask),
    /// or AXP HealthCheck for agents without the standard health service.
    Health {
        /// Agent address: host:port or http(s)://host:port.
        addr: String,
        /// Keep asking until SERVING, up to this many seconds.
        #[arg(long, default_value_t = 0.0)]
        wait: f64,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("axp: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Call {
            addr,
            text,
            protocol,
            prompt,
            history,
            conversation,
            exec,
            agent_id,
            config,
            timeout,
            token,
        } => {
            let user_text = text
                .or_else(|| prompt.clone())
                .context("give the TEXT to send, or --prompt")?;
            if let Some(config) = &config {
                serde_json::from_str::<serde_json::Value>(config)
                    .context("--config is not valid JSON")?;
            }
            let options = ClientOptions {
                timeout: Some(
                    Duration::try_from_secs_f64(timeout)
                        .context("--timeout must be a positive number of seconds")?,
                ),
                bearer_token: token,
                ..ClientOptions::default()
            };
            let messages = vec![content::user_text(content::planner_envelope(
                &history, &user_text,
            ))];
            let config = config.unwrap_or_default().into_bytes();
            match protocol {
                Protocol::Axp => {
                    let client = AxpClient::new(&addr, options)?;
                    let start = AgentStart {
                        agent_id,
                        agent_config: config,
                        messages,
                        subagent_prompt: prompt.unwrap_or_default(),
                        subagent_history: history,
                    };
                    let exec = exec.unwrap_or_else(|| format!("exec-{}", std::process::id()));
                    let mut outputs = client.connect(&conversation, &exec, start).await?;
                    while let Some(batch) = outputs.next().await {
                        for message in batch? {
                            print_message(&message);
                        }
                    }
                    if !outputs.ended() {
                        eprintln!("axp: (the agent closed the stream without `end`)");
                    }
                }
                Protocol::Harness => {
                    if exec.is_some() {
                        anyhow::bail!(
                            "--exec has no meaning on HarnessService: the agent makes its own exec id"
                        );
                    }
                    let client = HarnessClient::new(&addr, options)?;
                    let start = HarnessStart {
                        harness_config: config,
                        messages,
                    };
                    let mut outputs = client.connect(&conversation, &agent_id, start).await?;
                    while let Some(batch) = outputs.next().await {
                        for message in batch? {
                            print_message(&message);
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Health { addr, wait } => {
            let client = AxpClient::new(&addr, ClientOptions::default())?;
            if wait > 0.0 {
                let options = WaitOptions {
                    timeout: Duration::try_from_secs_f64(wait)
                        .context("--wait must be a positive number of seconds")?,
                    ..WaitOptions::default()
                };
                client.wait_until_serving(options).await?;
                println!("SERVING");
                return Ok(ExitCode::SUCCESS);
            }
            match client.serving_status().await {
                Ok(status) => {
                    println!("{}", status.as_str_name());
                    Ok(if status == ServingStatus::Serving {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    })
                }
                Err(ClientError::Status {
                    code: Code::Unimplemented,
                    ..
                }) => {
                    // No standard health service: older agents only have AXP's.
                    let answer = client.health_check().await?;
                    println!(
                        "{} {} (AXP HealthCheck; no grpc.health.v1)",
                        if answer.healthy {
                            "healthy"
                        } else {
                            "unhealthy"
                        },
                        answer.message
                    );
                    Ok(if answer.healthy {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    })
                }
                Err(error) => Err(error.into()),
            }
        }
    }
}

fn print_message(message: &Message) {
    match message.content.as_ref().and_then(|c| c.r#type.as_ref()) {
        Some(Type::Text(text)) => println!("{}", text.text),
        Some(Type::ToolResult(_)) => match content::tool_result_json(message) {
            Some(json) => eprintln!("[tool result] {json}"),
            None => eprintln!("[tool result] <empty>"),
        },
        Some(other) => eprintln!("[{}] {other:?}", message.role),
        None => eprintln!("[{}] <empty message>", message.role),
    }
}
