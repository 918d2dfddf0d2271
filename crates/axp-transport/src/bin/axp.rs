//! `axp`: poke any AXP agent by hand. Built with the `cli` feature:
//! `cargo run -p axp-transport --features cli --bin axp -- health 127.0.0.1:8494`.
//!
//! ```text
//! axp call 127.0.0.1:8494 'print(6*7)'                # legacy envelope only
//! axp call 127.0.0.1:8494 --prompt 'print(6*7)' --history 'user: hi'
//! axp health 127.0.0.1:8494
//! ```

use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use axp_transport::{
    AxpClient, ClientOptions,
    client::WaitOptions,
    content,
    pb::{AgentStart, Message, content::Type},
};
use clap::{Parser, Subcommand};
use futures::StreamExt;

#[derive(Parser)]
#[command(
    name = "axp",
    version,
    about = "Call an AXP agent (ax.AgentService) by hand"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
        /// Structured prompt (AgentStart.subagent_prompt); also used as TEXT when TEXT is absent.
        #[arg(long)]
        prompt: Option<String>,
        /// Structured history (AgentStart.subagent_history).
        #[arg(long, default_value = "")]
        history: String,
        /// Conversation id.
        #[arg(long, default_value = "axp-cli")]
        conversation: String,
        /// Execution id (a new one per call by default).
        #[arg(long)]
        exec: Option<String>,
        /// Agent id (AgentStart.agent_id).
        #[arg(long, default_value = "")]
        agent_id: String,
        /// AgentStart.agent_config, JSON.
        #[arg(long)]
        config: Option<String>,
        /// Deadline for the whole call, in seconds.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
        /// Bearer token for agents that require one.
        #[arg(long, env = "AXP_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Ask whether an agent is up (grpc.health.v1, then AXP HealthCheck).
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
            let client = AxpClient::new(&addr, options)?;
            let start = AgentStart {
                agent_id,
                agent_config: config.unwrap_or_default().into_bytes(),
                messages: vec![content::user_text(content::planner_envelope(
                    &history, &user_text,
                ))],
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
            let answer = client.health_check().await?;
            println!(
                "{} {}",
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
