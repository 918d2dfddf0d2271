//! Runs one execution of a conversation in an agent-sandbox sandbox, as an AX
//! controller would: load the `ax.yaml` registry, build the backend for one of
//! its agents, run the code, give the sandbox back.
//!
//! ```text
//! cargo run -p agent-sandbox-backend --example run_a_conversation -- config/ax.yaml py 'print(6 * 7)'
//! ```
//!
//! It uses the cluster of the current kubeconfig context (or the in-cluster
//! service account), which must have agent-sandbox and the entry's warm pool
//! or template installed (`kubectl apply -k deploy/`).

use agent_sandbox_backend::{AgentSandboxAgent, Registry};
use axp_transport::content;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let ax_yaml = args.next().unwrap_or_else(|| "config/ax.yaml".into());
    let agent_id = args.next().unwrap_or_else(|| "py".into());
    let code = args.next().unwrap_or_else(|| "print(6 * 7)".into());

    let registry = Registry::from_file(&ax_yaml)?;
    let entry = registry
        .get(&agent_id)
        .ok_or_else(|| format!("{ax_yaml} registers no agent {agent_id:?}"))?;
    let kube = kube::Client::try_default().await?;
    let agent = AgentSandboxAgent::from_config(kube, entry).await?;

    let conversation = format!("example-{}", std::process::id());
    let result = agent
        .connect(
            &conversation,
            "exec-1",
            content::planner_start(&code, ""),
            |batch| println!("{}", content::planner_view(&batch)),
        )
        .await;
    // Give the sandbox back whether or not the execution succeeded.
    agent.release(&conversation).await?;
    let report = result?;
    eprintln!(
        "ran in sandbox {} at {} ({} frame(s), claim to ready {:?}, total {:?})",
        report.sandbox.sandbox_name,
        report.sandbox.pod_ip,
        report.frames,
        report.claim_to_ready,
        report.total
    );
    Ok(())
}
