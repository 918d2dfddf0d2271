//! `python-sandbox-agent`: serves AXP and runs Python in a supervised worker process. See `--help`.

use std::{io::Write as _, process::ExitCode, time::Duration};

use anyhow::Context as _;
use axp_transport::{
    conventions::listening_line,
    server::{AgentServer, ServerOptions},
};
use clap::Parser as _;
use python_sandbox_agent::{
    PythonAgent,
    config::{Cli, Command, LogFormat},
    init::{self, Containment},
    worker::child::{self, Limits},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Worker(args)) = &cli.command {
        // No tokio, no logging: the worker's fds 1/2 belong to the user's code.
        let limits = Limits {
            memory_bytes: args.memory_limit_bytes,
            open_files: args.open_files,
            file_size_bytes: args.file_size_limit_bytes,
            block_subprocess: args.block_subprocess,
        };
        let code = child::main(&limits, args.inherited_pipes);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    init_logging(cli.log_format);
    // Before the runtime: its threads inherit the blocked SIGTERM/SIGINT.
    let containment = init::setup();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "could not start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(cli, containment)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "python-sandbox-agent failed");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(cli: Cli, containment: Containment) -> anyhow::Result<()> {
    let bearer_token = cli.bearer_token()?;
    let options = cli.agent_options();
    let server_options = ServerOptions {
        max_concurrent_executions: cli.max_concurrent_executions.max(1),
        max_message_size: cli.max_message_bytes,
        grace_period: Duration::from_secs_f64(cli.grace_period_secs.max(0.0)),
        bearer_token,
        ..ServerOptions::default()
    };
    tracing::info!(
        pinned = options.pin_conversation,
        timeout = ?options.default_timeout,
        output_limit = options.default_output_limit,
        memory_limit = ?options.worker.limits.memory_bytes,
        auth = server_options.bearer_token.is_some(),
        pid1 = containment.pid1,
        reaper = containment.reaper,
        "starting"
    );
    if containment.reaper {
        tokio::spawn(init::reaper::run());
    }
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("could not listen on {}", cli.listen))?;
    let addr = listener
        .local_addr()
        .context("could not read the bound address")?;

    // Serve at once so probes get NOT_SERVING (not a hanging connect) while Python starts.
    let agent = PythonAgent::new(options);
    let server = AgentServer::new(agent.clone(), server_options);
    let health = server.health();
    let serving = tokio::spawn(server.serve(listener, shutdown_signal(containment.shutdown)));
    if cli.startup_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(cli.startup_delay_ms)).await;
    }
    let python = agent
        .start_worker()
        .await
        .context("could not start the Python worker")?;
    tracing::info!(
        version = %python.version.replace('\n', " "),
        prefix = %python.prefix,
        executable = %python.executable,
        worker_pid = python.pid,
        "Python is up"
    );
    if cli.log_format == LogFormat::Text {
        // Plainly, whatever RUST_LOG says: which interpreter runs the code is the first thing to check.
        eprintln!(
            "python-sandbox-agent: running Python {} (prefix {})",
            python.version.split_whitespace().next().unwrap_or("?"),
            python.prefix
        );
    }
    health.set_serving().await;
    tracing::info!(%addr, "serving ax.AgentService, ax.HarnessService, grpc.health.v1 and reflection");
    {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{}", listening_line(addr));
        let _ = stdout.flush();
    }
    let result = serving.await.context("the server task panicked")?;
    agent.shutdown();
    result.context("the AXP server failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on the first honoured SIGTERM or SIGINT (see [`init::signals`]); with no signal thread, on any.
async fn shutdown_signal(
    shutdown: Option<tokio::sync::mpsc::UnboundedReceiver<init::signals::Shutdown>>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    if let Some(mut shutdown) = shutdown {
        match shutdown.recv().await {
            Some(init::signals::Shutdown { signal, sender }) => {
                let name = if signal == libc::SIGTERM {
                    "SIGTERM"
                } else {
                    "SIGINT"
                };
                tracing::info!(signal = name, sender, "draining");
            }
            None => tracing::warn!("the signal thread stopped: draining"),
        }
        return;
    }
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
    }
}
