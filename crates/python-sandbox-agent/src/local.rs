//! Spawning the agent binary as a local process (tests, the backend's local-process runtime).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use axp_transport::conventions::parse_listening_line;
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
};

/// Why the agent process could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The binary could not be spawned.
    #[error("could not spawn {0}")]
    Spawn(PathBuf, #[source] std::io::Error),
    /// It exited or closed stdout before saying where it listens.
    #[error("the agent exited before it listened")]
    ExitedEarly,
    /// It did not say where it listens in time.
    #[error("the agent did not listen within {0:?}")]
    Timeout(Duration),
    /// The first line was not the `listening on <addr>` line
    /// ([`axp_transport::conventions::listening_line`]).
    #[error("the agent printed an unexpected start-up line: {0:?}")]
    BadLine(String),
}

/// A running agent process on a loopback port. Killed (with its workers) when dropped.
#[derive(Debug)]
pub struct LocalAgent {
    child: Child,
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
}

impl LocalAgent {
    /// Spawns `binary --listen 127.0.0.1:0 <args>` and waits until it listens (its worker is up by then, so the
    /// health service says SERVING).
    ///
    /// # Errors
    ///
    /// [`Error`] when it cannot start or does not listen within 30 s.
    pub async fn spawn<I, S>(binary: &Path, args: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = Command::new(binary);
        command.arg("--listen").arg("127.0.0.1:0").args(args);
        Self::from_command(command).await
    }

    /// Spawns a prepared command (its program, flags and environment set by the caller; it should listen on
    /// `127.0.0.1:0`) and waits until it prints where it listens. Stdout is taken over; stderr is inherited.
    ///
    /// # Errors
    ///
    /// [`Error`] when it cannot start or does not listen within 30 s.
    pub async fn from_command(mut command: Command) -> Result<Self, Error> {
        let program = PathBuf::from(command.as_std().get_program());
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::Spawn(program, e))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let wait = Duration::from_secs(30);
        let mut lines = BufReader::new(stdout).lines();
        let mut metrics = None;
        let started = async {
            loop {
                let line = lines
                    .next_line()
                    .await
                    .ok()
                    .flatten()
                    .ok_or(Error::ExitedEarly)?;
                // With --metrics-listen, `metrics on <addr>` comes first.
                if metrics.is_none()
                    && let Some(addr) = crate::metrics::parse_metrics_line(&line)
                {
                    metrics = Some(addr);
                    continue;
                }
                return parse_listening_line(&line).ok_or(Error::BadLine(line));
            }
        };
        let addr = tokio::time::timeout(wait, started)
            .await
            .map_err(|_| Error::Timeout(wait))??;
        // Keep draining stdout so the agent never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            addr,
            metrics,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where it serves metrics, when started with `--metrics-listen`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// `http://<addr>`, for gRPC clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or_default()
    }

    /// The process, to signal or wait for it.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}
