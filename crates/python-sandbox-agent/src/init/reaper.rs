//! Reaping and cleanup for an agent that is PID 1 of its container or a child subreaper: zombies of orphans
//! reparented to the agent are reaped, and after a worker dies everything user code left behind is killed.
//!
//! # Guarantees
//!
//! - The exit status of a live worker is never taken: live workers are registered (see [`LiveWorkers`]) and only
//!   `tokio::process` waits for them. Registration happens under the same lock as spawning, so a worker is never
//!   seen unregistered.
//! - Both are no-ops until [`enable`] is called, which only the agent binary does: a program that embeds
//!   [`PythonAgent`](crate::PythonAgent) keeps its other children.

use std::{
    collections::BTreeSet,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use super::procfs;

static LIVE: Mutex<LiveWorkers> = Mutex::new(LiveWorkers {
    pids: BTreeSet::new(),
});
static ENABLED: AtomicBool = AtomicBool::new(false);
/// One warning is enough when `/proc` cannot be read (a sandbox without it would log at every SIGCHLD).
static WARNED: AtomicBool = AtomicBool::new(false);

/// How long [`kill_strays`] keeps killing. A fork bomb is bounded by the pod's pid limit; past this the rest is
/// left for the next cleanup rather than hanging the report of the worker's death.
const KILL_BUDGET: Duration = Duration::from_secs(2);
/// Pause between rounds, so killed processes can exit and their children be reparented to us.
const ROUND_PAUSE: Duration = Duration::from_millis(5);

/// The process ids of the live workers: theirs and their descendants are not strays, and their exit status is
/// `tokio::process`'s to take.
#[derive(Debug)]
pub struct LiveWorkers {
    pids: BTreeSet<i32>,
}

impl LiveWorkers {
    /// Registers a worker just spawned.
    pub fn insert(&mut self, pid: i32) {
        if pid > 0 {
            self.pids.insert(pid);
        }
    }

    /// Unregisters a worker that has been reaped (or given up on).
    pub fn remove(&mut self, pid: i32) {
        self.pids.remove(&pid);
    }

    /// The registered workers (for the memory metric).
    pub fn pids(&self) -> impl Iterator<Item = i32> + '_ {
        self.pids.iter().copied()
    }
}

/// The registry, locked. Hold it across spawning a worker and registering it.
pub fn live_workers() -> MutexGuard<'static, LiveWorkers> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Turns reaping and stray-killing on for this process (the agent binary, as PID 1 or subreaper).
pub fn enable() {
    ENABLED.store(true, Ordering::SeqCst);
}

/// Whether [`enable`] was called.
pub fn is_enabled() -> bool {
    ENABLED.load(Ordering::SeqCst)
}

fn scan() -> Option<Vec<procfs::ProcStat>> {
    match procfs::scan() {
        Ok(procs) => Some(procs),
        Err(error) => {
            if !WARNED.swap(true, Ordering::SeqCst) {
                tracing::warn!(error = %anyhow::Error::new(error), "cannot read the process table: orphans are neither reaped nor killed");
            }
            None
        }
    }
}

fn me() -> i32 {
    i32::try_from(std::process::id()).unwrap_or(i32::MAX)
}

/// Reaps the zombies among our children that are not live workers; returns how many.
pub fn reap_zombies() -> usize {
    if !is_enabled() {
        return 0;
    }
    let live = live_workers();
    reap_locked(&live)
}

fn reap_locked(live: &LiveWorkers) -> usize {
    let Some(procs) = scan() else {
        return 0;
    };
    let mut reaped = 0;
    for pid in procfs::zombie_children(&procs, me(), &live.pids) {
        let mut status = 0;
        // SAFETY: waiting for one specific child of ours that is not a live worker; WNOHANG never blocks.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            reaped += 1;
        }
    }
    reaped
}

/// Kills (SIGKILL) and reaps every descendant of the agent that is not a live worker or a descendant of one,
/// round after round as their children are reparented to us, until none is left or the budget is spent.
/// Returns how many processes were killed.
pub async fn kill_strays() -> usize {
    if !is_enabled() {
        return 0;
    }
    let started = std::time::Instant::now();
    let mut killed = 0;
    loop {
        let left = {
            let live = live_workers();
            reap_locked(&live);
            let Some(procs) = scan() else {
                return killed;
            };
            let strays = procfs::strays(&procs, me(), &live.pids);
            let running: Vec<i32> = procs
                .iter()
                .filter(|p| strays.contains(&p.pid) && !p.is_zombie())
                .map(|p| p.pid)
                .collect();
            for &pid in &running {
                // SAFETY: signalling a descendant of ours; the registry lock keeps new workers out of the list.
                if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                    killed += 1;
                }
            }
            strays.len()
        };
        if left == 0 {
            break;
        }
        if started.elapsed() > KILL_BUDGET {
            tracing::warn!(
                left,
                "processes left behind by user code are still being killed; giving up for now"
            );
            break;
        }
        tokio::time::sleep(ROUND_PAUSE).await;
    }
    if killed > 0 {
        tracing::info!(killed, "killed processes left behind by user code");
    }
    killed
}

/// Reaps orphans for as long as the runtime runs: at every SIGCHLD, and every few seconds in case a signal was
/// coalesced or the sandbox does not deliver it.
pub async fn run() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(sigchld) => Some(sigchld),
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGCHLD: orphans are reaped every few seconds only");
            None
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(()) = async { match &mut sigchld { Some(s) => s.recv().await, None => None } } => {}
            _ = tick.tick() => {}
        }
        let reaped = reap_zombies();
        if reaped > 0 {
            tracing::debug!(reaped, "reaped orphaned processes");
        }
    }
}
