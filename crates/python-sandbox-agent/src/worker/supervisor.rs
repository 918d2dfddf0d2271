//! The agent's side of a worker: spawn it, wait for `Ready`, send cells, read events, interrupt, kill.
//!
//! Each worker has a watcher task that owns its [`Child`]: it notices the exit at once (not only when the pipes
//! close, which a process the code forked can delay forever), reaps it, kills what the code left behind (the
//! worker's process group and, in the agent binary, every stray descendant: see [`crate::init::reaper`]), and
//! only then publishes the exit, so the death is reported with nothing of the worker still running.

use std::{
    collections::VecDeque,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::process::ExitStatusExt as _,
    },
    path::PathBuf,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    process::{Child, ChildStdin, ChildStdout, Command},
    sync::{mpsc, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::{
    child::Limits,
    env,
    protocol::{self, ExecuteRequest, ExecuteResult, Frame, Kind, WorkerInfo},
};

/// How workers are started.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The agent binary, run as `<binary> worker …`.
    pub binary: PathBuf,
    /// Limits the worker applies to itself.
    pub limits: Limits,
    /// How long the interpreter may take to come up.
    pub startup_timeout: Duration,
    /// Environment variables passed to the worker besides the default allowlist (see [`env`](mod@env)); the worker's
    /// environment is otherwise empty, and [`env::SECRET_ENV`] is never passed.
    pub pass_env: Vec<String>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            // The running binary is the agent in every real deployment; tests set their own.
            binary: std::env::current_exe()
                .unwrap_or_else(|_| PathBuf::from("python-sandbox-agent")),
            limits: Limits {
                // Generous for data work, small enough that a memory bomb fails fast with MemoryError.
                memory_bytes: Some(2 << 30),
                open_files: 1024,
                // Stops a disk bomb filling the pod's ephemeral storage.
                file_size_bytes: Some(1 << 30),
                block_subprocess: false,
                // The interpreter the agent embeds, with its own site-packages.
                venv: None,
            },
            // Interpreter start is ~20 ms warm; allow for a cold page cache on a busy node.
            startup_timeout: Duration::from_secs(30),
            pass_env: Vec::new(),
        }
    }
}

/// Why a worker could not be started or talked to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The process could not be spawned.
    #[error("could not spawn the Python worker process")]
    Spawn(#[source] std::io::Error),
    /// The worker reported that it cannot start.
    #[error("the Python worker failed to start: {0}")]
    Fatal(String),
    /// The worker exited before it was ready.
    #[error("the Python worker exited before it was ready ({0})")]
    ExitedEarly(String),
    /// The worker did not say `Ready` in time.
    #[error("the Python worker did not start within {0:?}")]
    StartTimeout(Duration),
    /// The worker's greeting was malformed.
    #[error("the Python worker sent a malformed greeting")]
    BadGreeting(#[source] protocol::Error),
    /// Writing a request to the worker failed (it has died).
    #[error("could not send the request to the Python worker")]
    Send(#[source] std::io::Error),
}

/// What the worker reported, in order.
#[derive(Debug)]
pub enum Event {
    /// Bytes written to stdout.
    Stdout(Vec<u8>),
    /// Bytes written to stderr.
    Stderr(Vec<u8>),
    /// The execution finished.
    Done(ExecuteResult),
    /// The worker process ended; the text says how ("exit status 3", "signal SIGSEGV (segmentation fault)").
    Died(String),
}

/// A running worker process.
///
/// # Guarantees
///
/// Dropping a `Worker` kills its whole process group (the worker and anything it spawned) with SIGKILL, and,
/// once [`crate::init::reaper`] is enabled, every process the code left behind.
#[derive(Debug)]
pub struct Worker {
    pid: i32,
    /// How the process ended, once its watcher has reaped it and killed what it left behind.
    exit: watch::Receiver<Option<String>>,
    /// Tells the watcher to kill the worker itself (`start_kill`, safe against pid reuse).
    stop: CancellationToken,
    /// How far the end of the worker has been seen, for a cancel-safe [`Worker::next_event`].
    ending: Ending,
    stdin: ChildStdin,
    frames: mpsc::Receiver<Result<Frame, protocol::Error>>,
    info: WorkerInfo,
    dead: Option<String>,
    /// Our copies of the capture pipes' read ends: what a dying worker wrote but never forwarded is read here.
    capture: [OwnedFd; 2],
    /// Events recovered after the worker died, delivered before [`Event::Died`].
    recovered: VecDeque<Event>,
}

/// Where [`Worker::next_event`] is in noticing the end of the worker.
#[derive(Debug, Clone)]
enum Ending {
    /// Frames may come.
    Running,
    /// The protocol pipe closed; the process should exit by the deadline or is killed.
    PipeClosed(Instant),
    /// The process exited (with this description); frames it wrote may still be read until the deadline.
    Exited(Instant, String),
}

/// How long a worker whose protocol pipe closed may take to exit before it is killed.
const EXIT_AFTER_EOF: Duration = Duration::from_millis(500);
/// How long frames are still read after the worker exited. Its group and strays are dead by then, so the pipe
/// normally reaches EOF at once; this bounds the wait if something still holds it.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

impl Worker {
    /// Starts a worker and waits until its interpreter is up.
    ///
    /// # Errors
    ///
    /// [`Error`] when it cannot be spawned, fails to start, or is not ready in time.
    pub async fn spawn(options: &WorkerOptions) -> Result<Self, Error> {
        let mut command = Command::new(&options.binary);
        command
            .arg("worker")
            .arg("--open-files")
            .arg(options.limits.open_files.to_string());
        if let Some(bytes) = options.limits.memory_bytes {
            command.arg("--memory-limit-bytes").arg(bytes.to_string());
        }
        if let Some(bytes) = options.limits.file_size_bytes {
            command
                .arg("--file-size-limit-bytes")
                .arg(bytes.to_string());
        }
        if options.limits.block_subprocess {
            command.arg("--block-subprocess");
        }
        if let Some(venv) = &options.limits.venv {
            command.arg("--venv").arg(venv);
        }
        command.arg("--inherited-pipes");
        let (stdout_pipe, stderr_pipe) =
            (pipe().map_err(Error::Spawn)?, pipe().map_err(Error::Spawn)?);
        let passed: [RawFd; 4] = [
            stdout_pipe.0.as_raw_fd(),
            stderr_pipe.0.as_raw_fd(),
            stdout_pipe.1.as_raw_fd(),
            stderr_pipe.1.as_raw_fd(),
        ];
        command
            .env_clear()
            .envs(env::worker_env(std::env::vars_os(), &options.pass_env))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // Capture pipes to fds 3..=6 (via high fds first, so no dup2 clobbers a source).
                let mut high = [0; 4];
                for (slot, fd) in high.iter_mut().zip(passed) {
                    *slot = libc::fcntl(fd, libc::F_DUPFD, 64);
                    if *slot < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (target, fd) in super::child::INHERITED_PIPES.into_iter().zip(high) {
                    if libc::dup2(fd, target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(fd);
                }
                // Own process group: a kill reaches whatever the snippet spawned, too.
                libc::setpgid(0, 0);
                // Die with the agent, never outlive it as an orphan running user code.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // The agent blocks SIGTERM/SIGINT for its signal thread; the worker needs SIGINT (the interrupt).
                crate::init::signals::unblock_all_in_child();
                Ok(())
            });
        }
        // Registered under the registry's lock, so the reaper never takes its exit status nor counts it a stray.
        let mut child = {
            let mut live = crate::init::reaper::live_workers();
            let child = command.spawn().map_err(Error::Spawn)?;
            if let Some(pid) = child.id() {
                live.insert(pid as i32);
            }
            child
        };
        // The write ends now live only in the worker (and what it spawns).
        drop((stdout_pipe.1, stderr_pipe.1));
        let pid = child.id().map(|p| p as i32).unwrap_or_default();
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(Error::Spawn(std::io::Error::other(
                "the worker's stdin or stdout is not piped",
            )));
        };
        let (tx, mut frames) = mpsc::channel(64);
        tokio::spawn(read_frames(stdout, tx));
        let (exit_tx, exit) = watch::channel(None);
        let stop = CancellationToken::new();
        tokio::spawn(watch_exit(child, pid, stop.clone(), exit_tx));

        let greeting = tokio::time::timeout(options.startup_timeout, frames.recv()).await;
        let mut worker = Self {
            pid,
            exit,
            stop,
            ending: Ending::Running,
            stdin,
            frames,
            info: WorkerInfo {
                version: String::new(),
                prefix: String::new(),
                executable: String::new(),
                pid: pid as u32,
            },
            dead: None,
            capture: [stdout_pipe.0, stderr_pipe.0],
            recovered: VecDeque::new(),
        };
        match greeting {
            Err(_) => Err(Error::StartTimeout(options.startup_timeout)),
            Ok(Some(Ok(frame))) if frame.kind == Kind::Ready => {
                worker.info = frame.json().map_err(Error::BadGreeting)?;
                Ok(worker)
            }
            Ok(Some(Ok(frame))) if frame.kind == Kind::Fatal => Err(Error::Fatal(
                String::from_utf8_lossy(&frame.payload).into_owned(),
            )),
            Ok(Some(Ok(frame))) => Err(Error::Fatal(format!(
                "unexpected first frame {:?}",
                frame.kind
            ))),
            Ok(Some(Err(error))) => Err(Error::BadGreeting(error)),
            Ok(None) => {
                let status = wait_exit(&mut worker.exit).await;
                Err(Error::ExitedEarly(status))
            }
        }
    }

    /// Which Python the worker runs.
    pub fn info(&self) -> &WorkerInfo {
        &self.info
    }

    /// The worker's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the process has exited (between executions, say); returns how.
    pub fn exited(&mut self) -> Option<String> {
        if let Some(dead) = &self.dead {
            return Some(dead.clone());
        }
        let status = self.exit.borrow().clone()?;
        self.dead = Some(status.clone());
        Some(status)
    }

    /// Sends one cell to run.
    ///
    /// # Errors
    ///
    /// [`Error::Send`] when the worker is gone.
    pub async fn send(&mut self, request: &ExecuteRequest) -> Result<(), Error> {
        let frame = protocol::encode_json(Kind::Execute, request);
        self.stdin.write_all(&frame).await.map_err(Error::Send)
    }

    /// Whether an event is already waiting to be read (so [`Worker::next_event`] would not wait for the worker).
    pub fn has_queued_event(&self) -> bool {
        !self.recovered.is_empty() || !self.frames.is_empty()
    }

    /// The next event. Cancel-safe.
    ///
    /// The worker's death is noticed when its process exits, even if a process it forked still holds its pipes:
    /// then the frames already written are read for a moment, then what it left in the capture pipes, then
    /// [`Event::Died`].
    pub async fn next_event(&mut self) -> Event {
        loop {
            if let Some(event) = self.recovered.pop_front() {
                return event;
            }
            if let Some(dead) = &self.dead {
                return Event::Died(dead.clone());
            }
            match self.ending.clone() {
                Ending::Running => tokio::select! {
                    biased;
                    frame = self.frames.recv() => match frame {
                        Some(Ok(frame)) => {
                            if let Some(event) = frame_event(frame) {
                                return event;
                            }
                        }
                        // A broken pipe or a closed one: the worker is gone or unusable.
                        Some(Err(_)) | None => {
                            self.ending = Ending::PipeClosed(Instant::now() + EXIT_AFTER_EOF);
                        }
                    },
                    status = wait_exit(&mut self.exit) => {
                        self.ending = Ending::Exited(Instant::now() + DRAIN_AFTER_EXIT, status);
                    }
                },
                Ending::PipeClosed(deadline) => {
                    // The pipe closed; the process may still be running (it closed fd 1 of the protocol?): make sure.
                    let status =
                        match tokio::time::timeout_at(deadline, wait_exit(&mut self.exit)).await {
                            Ok(status) => status,
                            Err(_) => {
                                self.kill_group();
                                wait_exit(&mut self.exit).await
                            }
                        };
                    self.finish(status);
                }
                Ending::Exited(deadline, status) => {
                    match tokio::time::timeout_at(deadline, self.frames.recv()).await {
                        Ok(Some(Ok(frame))) => {
                            if let Some(event) = frame_event(frame) {
                                return event;
                            }
                        }
                        _ => self.finish(status),
                    }
                }
            }
        }
    }

    /// The worker is dead and reaped: queue what it left in the capture pipes, then [`Event::Died`].
    fn finish(&mut self, status: String) {
        self.dead = Some(status.clone());
        self.recover_output();
        self.recovered.push_back(Event::Died(status));
    }

    /// Asks the running cell to stop: SIGINT to the worker's main thread, which raises `KeyboardInterrupt` in
    /// Python code (and interrupts `time.sleep`). Code that swallows it or sits in C needs [`Worker::kill`].
    pub fn interrupt(&self) {
        if self.dead.is_none() && self.pid > 0 {
            // SAFETY: tgkill to the worker's main thread (its tid is its pid).
            unsafe { libc::syscall(libc::SYS_tgkill, self.pid, self.pid, libc::SIGINT) };
        }
    }

    /// Kills the worker and everything in its process group, and reaps it.
    pub async fn kill(&mut self) -> String {
        self.kill_group();
        let status = wait_exit(&mut self.exit).await;
        self.dead.get_or_insert(status).clone()
    }

    /// Reads what the dead worker left in the capture pipes (it wrote it, but its pump never forwarded it).
    fn recover_output(&mut self) {
        const MAX: usize = 8 << 20;
        let mut buf = vec![0u8; 64 * 1024];
        for (index, fd) in self.capture.iter().enumerate() {
            let mut total = 0;
            while total < MAX {
                // SAFETY: reading into a valid buffer from our own non-blocking pipe read end.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    break;
                }
                let bytes = buf[..n as usize].to_vec();
                total += bytes.len();
                self.recovered.push_back(if index == 0 {
                    Event::Stdout(bytes)
                } else {
                    Event::Stderr(bytes)
                });
            }
        }
    }

    fn kill_group(&mut self) {
        // Once the watcher published the exit it has killed the group itself; the id may be free for reuse.
        if self.exit.borrow().is_none() {
            kill_process_group(self.pid);
        }
        // And the worker itself: the code may have moved it out of its group (`os.setpgid`), and a worker that
        // survives here hangs `wait` forever. The watcher's `start_kill` does nothing once the child is reaped.
        self.stop.cancel();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// SIGKILL to the process group `pgid` (a worker's: its pid).
fn kill_process_group(pgid: i32) {
    if pgid > 0 {
        // SAFETY: signalling a worker's process group.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

/// The event a frame from the worker stands for, if any.
fn frame_event(frame: Frame) -> Option<Event> {
    match frame.kind {
        Kind::Stdout => Some(Event::Stdout(frame.payload)),
        Kind::Stderr => Some(Event::Stderr(frame.payload)),
        Kind::Done => match frame.json() {
            Ok(result) => Some(Event::Done(result)),
            Err(error) => {
                tracing::warn!(%error, "malformed Done frame from the worker");
                None
            }
        },
        other => {
            tracing::debug!(kind = ?other, "ignoring a frame from the worker");
            None
        }
    }
}

/// How the worker ended, once its watcher published it. Cancel-safe.
async fn wait_exit(exit: &mut watch::Receiver<Option<String>>) -> String {
    match exit.wait_for(Option::is_some).await {
        Ok(status) => status.clone().unwrap_or_default(),
        Err(_) => "unknown exit (its watcher stopped)".to_owned(),
    }
}

/// Owns the worker's [`Child`]: waits for it to exit (or kills it when `stop` is cancelled), unregisters it, kills
/// what it left behind, then publishes how it ended.
async fn watch_exit(
    mut child: Child,
    pid: i32,
    stop: CancellationToken,
    exit: watch::Sender<Option<String>>,
) {
    let status = tokio::select! {
        status = child.wait() => status,
        () = stop.cancelled() => {
            let _ = child.start_kill();
            child.wait().await
        }
    };
    let status = match status {
        Ok(status) => describe_exit(status),
        Err(error) => format!("unknown exit ({error})"),
    };
    crate::init::reaper::live_workers().remove(pid);
    // A copy of the worker forked behind the audit hook, or a subprocess still in its group: it may hold the
    // worker's pipes, and must not run on unsupervised.
    kill_process_group(pid);
    crate::init::reaper::kill_strays().await;
    let _ = exit.send(Some(status));
}

/// A close-on-exec pipe: (read end, write end). The read end is made non-blocking.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds we then own.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Only the read end is non-blocking: writers (the user's code) must block on a full pipe.
        let flags = libc::fcntl(fds[1], libc::F_GETFL);
        libc::fcntl(fds[1], libc::F_SETFL, flags & !libc::O_NONBLOCK);
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

/// Reads frames from the worker into a channel, so receiving is cancel-safe.
async fn read_frames(stdout: ChildStdout, tx: mpsc::Sender<Result<Frame, protocol::Error>>) {
    let mut reader = BufReader::with_capacity(64 * 1024, stdout);
    loop {
        let mut head = [0u8; 5];
        if reader.read_exact(&mut head).await.is_err() {
            return;
        }
        let frame = match protocol::parse_header(head) {
            Ok((len, kind)) => {
                let mut payload = vec![0; len - 1];
                match reader.read_exact(&mut payload).await {
                    Ok(_) => Ok(Frame { kind, payload }),
                    Err(error) => Err(protocol::Error::Io(error)),
                }
            }
            Err(error) => Err(error),
        };
        let failed = frame.is_err();
        if tx.send(frame).await.is_err() || failed {
            return;
        }
    }
}

/// "exit status 3", "signal SIGSEGV (segmentation fault)".
pub fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    match status.signal() {
        Some(signal) => {
            let name = nix::sys::signal::Signal::try_from(signal)
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|_| format!("signal {signal}"));
            let why = match signal {
                libc::SIGSEGV => " (segmentation fault)",
                libc::SIGBUS => " (bus error)",
                libc::SIGABRT => " (aborted)",
                libc::SIGXCPU => " (CPU time limit exceeded)",
                libc::SIGKILL => " (killed: the timeout, or out of memory)",
                libc::SIGFPE => " (arithmetic fault)",
                libc::SIGILL => " (illegal instruction)",
                _ => "",
            };
            format!("signal {name}{why}")
        }
        None => "unknown exit".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_described_for_the_model() {
        assert_eq!(describe_exit(ExitStatus::from_raw(3 << 8)), "exit status 3");
        assert_eq!(
            describe_exit(ExitStatus::from_raw(libc::SIGSEGV)),
            "signal SIGSEGV (segmentation fault)"
        );
        assert!(describe_exit(ExitStatus::from_raw(libc::SIGKILL)).contains("out of memory"));
    }
}
