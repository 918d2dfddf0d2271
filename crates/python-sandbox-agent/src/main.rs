//! `python-sandbox-agent`: serves AXP and runs Python in a supervised worker process. See `--help`.

use std::{
    io::{IsTerminal as _, Write as _},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use axp_transport::{
    conventions::listening_line,
    server::{AgentServer, ServerOptions},
    telemetry::OtlpExport,
};
use clap::Parser as _;
use python_sandbox_agent::{
    PythonAgent,
    config::{Cli, Command, LogFormat},
    init::{self, Containment},
    metrics::metrics_line,
    worker::child::{self, Limits},
};
use tracing_subscriber::{Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// The service name spans are exported under unless `OTEL_SERVICE_NAME` says otherwise.
const SERVICE_NAME: &str = "python-sandbox-agent";

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Worker(args)) = &cli.command {
        // No tokio, no logging: the worker's fds 1/2 belong to the user's code.
        let limits = Limits {
            memory_bytes: args.memory_limit_bytes,
            open_files: args.open_files,
            file_size_bytes: args.file_size_limit_bytes,
            block_subprocess: args.block_subprocess,
            venv: args.venv.clone(),
        };
        let code = child::main(&limits, args.inherited_pipes);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    // Before the runtime and the span exporter's thread: they inherit the blocked SIGTERM/SIGINT. Its warnings
    // go to a logger of this thread alone; the process-wide one needs the runtime (for the exporter).
    let containment = tracing::subscriber::with_default(logging(cli.log_format, None), init::setup);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("python-sandbox-agent: could not start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let _runtime = runtime.enter();
    let (export, export_error) = match OtlpExport::from_env(SERVICE_NAME) {
        Ok(export) => (export, None),
        Err(error) => (None, Some(error)),
    };
    // Only fails when a logger is installed already, which nothing here does.
    let _ = logging(cli.log_format, export.as_ref()).try_init();
    if let Some(error) = export_error {
        tracing::warn!(
            error = format!("{:#}", anyhow::Error::new(error)),
            "spans are not exported"
        );
    }
    let result = runtime.block_on(serve(cli, containment));
    if let Some(export) = export {
        export.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "python-sandbox-agent failed");
            ExitCode::FAILURE
        }
    }
}

/// Logs on stderr, filtered by `RUST_LOG` (default `info`), coloured only on a terminal; plus span export
/// when `export` is given (its own level filter, so `RUST_LOG=warn` does not empty the traces).
fn logging(
    format: LogFormat,
    export: Option<&OtlpExport>,
) -> impl tracing::Subscriber + Send + Sync {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    tracing_subscriber::registry()
        .with(export.map(OtlpExport::layer))
        .with(fmt.with_filter(filter))
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

    if let Some(metrics_addr) = cli.metrics_listen {
        let listener = tokio::net::TcpListener::bind(metrics_addr)
            .await
            .with_context(|| format!("could not serve metrics on {metrics_addr}"))?;
        let bound = listener
            .local_addr()
            .context("could not read the metrics address")?;
        let mut registry = prometheus_client::registry::Registry::default();
        options.metrics.register(&mut registry);
        tokio::spawn(async move {
            let served = axp_transport::metrics_http::serve(
                listener,
                Arc::new(registry),
                std::future::pending(),
            )
            .await;
            if let Err(error) = served {
                tracing::error!(%error, "the metrics endpoint stopped");
            }
        });
        tracing::info!(addr = %bound, "serving metrics at /metrics");
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{}", metrics_line(bound));
        let _ = stdout.flush();
    }

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
