//! SIGTERM and SIGINT: received on a dedicated thread with `sigwaitinfo`, so the agent sees who sent them.
//!
//! As PID 1 of its container the agent honours them only from outside the container's PID namespace (the runtime,
//! the kubelet: `si_pid` is 0 there), and ignores them from inside, where user code runs with the agent's uid and
//! could otherwise drain it. Outside a container every one is honoured (local runs and tests stop the agent so).
//!
//! Both signals must be blocked in every thread for this to work, so [`block`] runs before the async runtime
//! starts (threads inherit the mask); workers unblock them again before `exec`.

use tokio::sync::mpsc;

/// Why the signals could not be set up (the agent then falls back to tokio's handlers).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `pthread_sigmask` failed.
    #[error("could not block SIGTERM and SIGINT")]
    Block(#[source] std::io::Error),
    /// The thread that waits for them could not be started.
    #[error("could not start the signal thread")]
    SpawnThread(#[source] std::io::Error),
}

/// A shutdown request that was honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shutdown {
    /// The signal number (SIGTERM or SIGINT).
    pub signal: i32,
    /// The sender's pid as this process sees it (0: outside our PID namespace, or the kernel).
    pub sender: i32,
}

fn shutdown_set() -> libc::sigset_t {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: initialising a sigset we own.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
        set.assume_init()
    }
}

/// Blocks SIGTERM and SIGINT in the calling thread, and so in every thread it starts afterwards.
///
/// # Errors
///
/// [`Error::Block`] when `pthread_sigmask` fails.
pub fn block() -> Result<(), Error> {
    let set = shutdown_set();
    // SAFETY: changing this thread's signal mask with a valid set.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(Error::Block(std::io::Error::from_raw_os_error(rc)));
    }
    Ok(())
}

/// Unblocks every signal in the calling thread. In a forked child before `exec` (it is async-signal-safe) a
/// worker so gets SIGINT (the interrupt) and SIGTERM like any process.
pub fn unblock_all_in_child() {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: sigemptyset and sigprocmask are async-signal-safe and get a valid set.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigprocmask(libc::SIG_SETMASK, set.as_ptr(), std::ptr::null_mut());
    }
}

/// Whether a shutdown signal from `sender` is obeyed: as PID 1 only from outside the namespace.
pub fn honoured(pid1: bool, sender: i32) -> bool {
    !pid1 || sender == 0
}

/// Starts the thread that waits for SIGTERM and SIGINT (blocked by [`block`]) and sends every honoured one.
///
/// # Errors
///
/// [`Error::SpawnThread`] when the thread cannot be started.
pub fn watch(pid1: bool) -> Result<mpsc::UnboundedReceiver<Shutdown>, Error> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let set = shutdown_set();
            loop {
                let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::zeroed();
                // SAFETY: waiting for signals of a valid set, into a siginfo we own.
                let signal = unsafe { libc::sigwaitinfo(&set, info.as_mut_ptr()) };
                if signal < 0 {
                    // EINTR (a stop/continue): wait again.
                    continue;
                }
                // SAFETY: sigwaitinfo filled it in.
                let sender = unsafe { info.assume_init().si_pid() };
                let name = if signal == libc::SIGTERM {
                    "SIGTERM"
                } else {
                    "SIGINT"
                };
                if !honoured(pid1, sender) {
                    tracing::warn!(
                        signal = name,
                        sender,
                        "ignoring a shutdown signal sent from inside the container (only the runtime may stop PID 1)"
                    );
                    continue;
                }
                if tx.send(Shutdown { signal, sender }).is_err() {
                    return;
                }
            }
        })
        .map_err(Error::SpawnThread)?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_pid_1_only_signals_from_outside_the_namespace_are_honoured() {
        assert!(honoured(true, 0));
        assert!(!honoured(true, 42));
        assert!(!honoured(true, 1));
        assert!(honoured(false, 0));
        assert!(honoured(false, 42));
    }
}
