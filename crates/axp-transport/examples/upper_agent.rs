//! A tiny AXP agent: answers with the prompt in upper case, one word per
//! frame, to show streaming.
//!
//! ```text
//! cargo run -p axp-transport --example upper_agent -- 127.0.0.1:8494
//! cargo run -p axp-transport --features cli --bin axp -- call 127.0.0.1:8494 --prompt "hello there"
//! ```

use std::time::Duration;

use axp_transport::{
    Agent, AgentError, AgentServer, DEFAULT_PORT, Execution, OutputStream, ServerOptions, content,
    conventions::listening_line,
};

struct UpperAgent;

impl Agent for UpperAgent {
    async fn execute(&self, execution: Execution) -> Result<OutputStream, AgentError> {
        // Prefer the planner's structured prompt, as AX agents should.
        let prompt = match execution.start.subagent_prompt.as_str() {
            "" => content::last_user_text(&execution.start.messages)
                .map(|text| text.rsplit("\nPrompt:\n").next().unwrap_or(text).to_owned())
                .ok_or_else(|| AgentError::InvalidArgument("no prompt and no user text".into()))?,
            prompt => prompt.to_owned(),
        };
        let words: Vec<String> = prompt.split_whitespace().map(str::to_uppercase).collect();
        Ok(Box::pin(async_stream::stream! {
            for word in words {
                tokio::time::sleep(Duration::from_millis(50)).await;
                yield Ok(vec![content::model_text(word)]);
            }
        }))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| format!("127.0.0.1:{DEFAULT_PORT}"));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let server = AgentServer::new(UpperAgent, ServerOptions::default());
    server.health().set_serving().await;
    // The line launchers wait for, once the agent can take calls.
    println!("{}", listening_line(listener.local_addr()?));
    server
        .serve(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
