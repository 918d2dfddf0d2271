//! What the agent does as PID 1 of its container (or, outside one, as a child subreaper): make itself unreadable
//! to user code, reap orphans, kill what user code leaves behind when its worker dies, and take SIGTERM/SIGINT
//! only from the runtime.
//!
//! - [`procfs`] reads the process table and selects zombies and strays from it.
//! - [`reaper`] reaps and kills, and keeps the registry of live workers that must be left alone.
//! - [`signals`] receives SIGTERM/SIGINT with the sender's pid.
//!
//! Only the agent binary calls [`setup`]; a program embedding [`PythonAgent`](crate::PythonAgent) keeps its own
//! process handling. Every step is best effort: a sandbox (gVisor, say) that refuses one gets a warning in the log
//! and the agent runs on with the rest.

pub mod procfs;
pub mod reaper;
pub mod signals;

/// Why a step of [`setup`] failed (logged as a warning; the agent goes on).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `prctl(PR_SET_DUMPABLE, 0)` failed: same-uid processes may read this process's memory and environment.
    #[error("could not make the agent non-dumpable")]
    SetDumpable(#[source] std::io::Error),
    /// `prctl(PR_SET_CHILD_SUBREAPER, 1)` failed: orphans go to the namespace's init instead of the agent.
    #[error("could not make the agent a child subreaper")]
    SetSubreaper(#[source] std::io::Error),
    /// SIGTERM/SIGINT could not be set up for [`signals::watch`].
    #[error("could not set up the shutdown signals")]
    Signals(#[source] signals::Error),
}

/// What [`setup`] achieved.
#[derive(Debug)]
pub struct Containment {
    /// The agent is PID 1 of its PID namespace (its container).
    pub pid1: bool,
    /// Orphans of its descendants are reparented to the agent (always true as PID 1).
    pub reaper: bool,
    /// The honoured SIGTERM/SIGINT, from [`signals::watch`]; `None` when that could not be set up (the signals
    /// are then left to ordinary handlers, and honoured from anyone).
    pub shutdown: Option<tokio::sync::mpsc::UnboundedReceiver<signals::Shutdown>>,
}

fn prctl(option: libc::c_int, value: libc::c_ulong) -> std::io::Result<()> {
    // SAFETY: prctl with an integer argument and no pointers.
    if unsafe { libc::prctl(option, value, 0, 0, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Prepares the agent process. Call once, from `main`, before the async runtime (or any other thread) starts.
///
/// 1. Not dumpable: `/proc/<agent>/environ`, `mem` and ptrace are closed to same-uid processes (user code). The
///    worker, a fresh `exec`, is dumpable again; it holds nothing secret.
/// 2. Child subreaper (unless PID 1, which is one already), and reaping and stray-killing enabled
///    ([`reaper::enable`]).
/// 3. SIGTERM/SIGINT blocked and received by [`signals::watch`]'s thread.
pub fn setup() -> Containment {
    let pid1 = std::process::id() == 1;
    if let Err(error) = prctl(libc::PR_SET_DUMPABLE, 0).map_err(Error::SetDumpable) {
        tracing::warn!(error = %anyhow::Error::new(error), "continuing");
    }
    let reaper = pid1
        || match prctl(libc::PR_SET_CHILD_SUBREAPER, 1).map_err(Error::SetSubreaper) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(error = %anyhow::Error::new(error), "continuing");
                false
            }
        };
    // Even without the subreaper bit our own orphaned grandchildren are none of ours, but strays that are still
    // our children (a worker's process group leftovers) are, so cleanup stays on.
    reaper::enable();
    let shutdown = match signals::block()
        .and_then(|()| signals::watch(pid1))
        .map_err(Error::Signals)
    {
        Ok(shutdown) => Some(shutdown),
        Err(error) => {
            // Blocked with nobody waiting, they would never stop the agent.
            signals::unblock_all_in_child();
            tracing::warn!(error = %anyhow::Error::new(error), "continuing with ordinary signal handlers");
            None
        }
    };
    Containment {
        pid1,
        reaper,
        shutdown,
    }
}
