//! The worker process: `python-sandbox-agent worker`. Runs Python cells for its parent agent over the pipe
//! protocol in [`protocol`](super::protocol).
//!
//! # Expected flow
//!
//! 1. Move the protocol off fds 0/1 to private close-on-exec fds, point fd 0 at `/dev/null`, and make fds 1/2 the
//!    write ends of two pipes, so C-level writes (`os.system`, C extensions) are captured as well as `print`.
//! 2. Apply the rlimits (address space, open files, file size, no core dumps) before Python allocates anything.
//! 3. Start a pump thread that forwards pipe output to the parent as it is written.
//! 4. Initialise Python, load the driver, send `Ready`, then serve `Execute` requests one at a time.
//!
//! # Guarantees
//!
//! For each execution, every byte the code wrote to fd 1/2 before it returned is forwarded (up to the limit)
//! before `Done`: the main thread drains both pipes under the same lock the pump uses, then writes `Done`.
//! A process forked by the code (through ctypes, say) loses the protocol fds in the child, so it cannot corrupt
//! the protocol, and exits instead of answering.

use std::{
    ffi::CString,
    fs::File,
    io::{self, Write},
    os::{
        fd::{FromRawFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI32, Ordering},
    },
    time::Instant,
};

use pyo3::{prelude::*, types::PyModule};

use super::protocol::{self, ExecuteRequest, ExecuteResult, Kind, PyError, WorkerInfo};

/// Resource limits the worker applies to itself before Python starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// RLIMIT_AS in bytes; `None` leaves it unlimited.
    pub memory_bytes: Option<u64>,
    /// RLIMIT_NOFILE.
    pub open_files: u64,
    /// RLIMIT_FSIZE in bytes; `None` leaves it unlimited.
    pub file_size_bytes: Option<u64>,
    /// Refuse `subprocess`, `os.system`, `os.exec*` and `os.posix_spawn` (raw `os.fork` is always refused).
    pub block_subprocess: bool,
    /// Start the interpreter in this virtual environment, as its `bin/python` would start: its site-packages on
    /// `sys.path`, the base interpreter's not (unless the venv includes system site-packages).
    pub venv: Option<PathBuf>,
}

/// Why the worker could not start (it then reports `Fatal` and exits 1).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Moving the protocol fds or creating the capture pipes failed.
    #[error("could not set up the worker's file descriptors")]
    SetupFds(#[source] io::Error),
    /// `setrlimit` failed.
    #[error("could not apply the resource limits")]
    SetLimits(#[source] io::Error),
    /// The pump thread could not be started.
    #[error("could not start the output pump thread")]
    SpawnPump(#[source] io::Error),
    /// `--venv` names a directory without `pyvenv.cfg`.
    #[error("{} is not a virtual environment (it has no pyvenv.cfg)", .0.display())]
    NotAVenv(PathBuf),
    /// The interpreter refused its configuration.
    #[error("the Python interpreter could not start: {0}")]
    InitPython(String),
    /// Loading the driver or calling its setup raised.
    #[error("the Python driver failed to load: {0}")]
    LoadDriver(String),
    /// The pipe to the parent failed.
    #[error("the protocol pipe to the agent failed")]
    Protocol(#[source] protocol::Error),
}

/// The protocol write end; -1 in a forked child (see [`after_fork_in_child`]).
static PROTOCOL_OUT: AtomicI32 = AtomicI32::new(-1);
static PROTOCOL_IN: AtomicI32 = AtomicI32::new(-1);
static WORKER_PID: AtomicI32 = AtomicI32::new(0);
/// Set in the worker when it forked with libc `fork` (not `vfork`): the cell may have left a copy of itself.
static FORKED: AtomicBool = AtomicBool::new(false);
/// The output accounting and pipes, for [`drain_output`] (called from Python before `os._exit`).
static OUTPUT: std::sync::OnceLock<(Arc<Mutex<Shared>>, [RawFd; 2])> = std::sync::OnceLock::new();

/// Forwards everything written so far to the agent. `os._exit` calls this first: otherwise
/// output the pump thread had read but not yet forwarded would die with the process.
#[pyfunction]
fn drain_output(py: Python<'_>) {
    if let Some((shared, pipes)) = OUTPUT.get() {
        py.detach(|| drop(lock_drained(shared, *pipes)));
    }
}

/// Locks the shared state once everything written to fd 1/2 so far (by C code, subprocesses) is forwarded: the
/// pump forwards under this lock, so holding it means nothing is in flight, and what is forwarded next comes
/// after it. A failed forward means the agent is gone, which the pump notices and ends the worker.
fn lock_drained(shared: &Mutex<Shared>, pipes: [RawFd; 2]) -> std::sync::MutexGuard<'_, Shared> {
    let mut guard = shared.lock().unwrap_or_else(|p| p.into_inner());
    let mut buf = [0u8; 4096];
    let _ = guard.drain(pipes, &mut buf);
    guard
}

/// Forwards what Python code wrote to `sys.stdout` (`index` 0) or `sys.stderr` (1) straight to the agent, without
/// the hop through the capture pipe and the pump thread: a `print` costs one write to the agent. What C code or
/// subprocesses wrote to fd 1/2 before is forwarded first, under the same lock, so the order is kept. In a copy
/// of the worker made by `fork` the protocol pipe is gone, and code may have closed fd 1/2 or pointed them
/// elsewhere (`os.dup2`): then the bytes are written to the fd, as a plain `print` would, errors included.
#[pyfunction]
fn emit(py: Python<'_>, index: usize, data: &[u8]) -> PyResult<usize> {
    let len = data.len();
    let fd = if index == 1 { 2 } else { 1 };
    let direct = OUTPUT.get().filter(|_| {
        index <= 1
            && std::process::id() as i32 == WORKER_PID.load(Ordering::SeqCst)
            && CAPTURE_IDS
                .get()
                .is_some_and(|ids| file_id(fd) == Some(ids[index]))
    });
    let Some((shared, pipes)) = direct else {
        return write_fd(fd, data).map_err(PyErr::from);
    };
    py.detach(|| {
        // The agent gone means the worker exits at the pump's next read; the write simply reports success.
        let _ = lock_drained(shared, *pipes).forward(index, data);
    });
    Ok(len)
}

/// The (device, inode) of the capture pipes' write ends, set up once: what fd 1/2 must still be for [`emit`].
static CAPTURE_IDS: std::sync::OnceLock<[(u64, u64); 2]> = std::sync::OnceLock::new();

/// The (device, inode) `fd` refers to; `None` when it is closed.
fn file_id(fd: RawFd) -> Option<(u64, u64)> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills the struct when it returns 0.
    (unsafe { libc::fstat(fd, stat.as_mut_ptr()) } == 0).then(|| {
        // SAFETY: initialised by the successful fstat.
        let stat = unsafe { stat.assume_init() };
        (stat.st_dev, stat.st_ino)
    })
}

/// Writes all of `data` to `fd`, as a `FileIO` would. Raw `write`, not a borrowed `File`: the code may have closed
/// the fd, which a `File` must never hold, and then this reports EBADF as `print` would.
fn write_fd(fd: RawFd, mut data: &[u8]) -> io::Result<usize> {
    let len = data.len();
    while !data.is_empty() {
        // SAFETY: writing a valid buffer.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        data = &data[n as usize..];
    }
    Ok(len)
}

const DRIVER: &str = include_str!("driver.py");

/// The capture pipes a supervisor passes in (see [`INHERITED_PIPES`]).
pub const INHERITED_PIPES: [RawFd; 4] = [3, 4, 5, 6];

/// Runs the worker until the parent closes the pipe. Returns the process exit code.
///
/// With `inherited_pipes`, fds 3/4 are the read ends and 5/6 the write ends of the stdout/stderr capture pipes,
/// created by the agent (which keeps the read ends too, to recover the last output of a worker that dies);
/// otherwise the worker creates its own.
pub fn main(limits: &Limits, inherited_pipes: bool) -> i32 {
    match run(limits, inherited_pipes) {
        Ok(()) => 0,
        Err(error) => {
            let message = format!("{:#}", anyhow::Error::new(error));
            if let Some(mut out) = protocol_out() {
                let _ = protocol::write_frame(&mut out, Kind::Fatal, message.as_bytes());
                std::mem::forget(out);
            }
            1
        }
    }
}

/// The protocol write end as a `File` that must be `forget`-ed, not dropped.
fn protocol_out() -> Option<File> {
    let fd = PROTOCOL_OUT.load(Ordering::SeqCst);
    // SAFETY: the fd stays open for the life of the process; callers forget the File.
    (fd >= 0).then(|| unsafe { File::from_raw_fd(fd) })
}

/// What the pump and the main thread share: the protocol writer and the per-execution output accounting.
struct Shared {
    out: File,
    /// Output outside an execution (a leftover thread) is read and dropped.
    active: bool,
    limit: u64,
    /// Bytes written per stream in this execution (stdout, stderr).
    written: [u64; 2],
}

impl Shared {
    /// Forwards `bytes` read from stream `index` (0 stdout, 1 stderr) within the limit.
    fn forward(&mut self, index: usize, bytes: &[u8]) -> io::Result<()> {
        if !self.active {
            return Ok(());
        }
        let already = self.written[index];
        self.written[index] += bytes.len() as u64;
        // Forward one byte past the limit so the agent sees the overflow even if totals are lost.
        let room = (self.limit + 1).saturating_sub(already);
        let take = bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        if take == 0 {
            return Ok(());
        }
        let kind = if index == 0 {
            Kind::Stdout
        } else {
            Kind::Stderr
        };
        protocol::write_frame(&mut self.out, kind, &bytes[..take]).map_err(|e| match e {
            protocol::Error::Io(io) => io,
            other => io::Error::other(other),
        })
    }

    /// Reads everything currently in the non-blocking pipes and forwards it.
    fn drain(&mut self, pipes: [RawFd; 2], buf: &mut [u8]) -> io::Result<()> {
        for (index, fd) in pipes.into_iter().enumerate() {
            loop {
                // SAFETY: `fd` is our open non-blocking pipe read end and `buf` is a valid buffer.
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n > 0 {
                    self.forward(index, &buf[..n as usize])?;
                    continue;
                }
                let error = io::Error::last_os_error();
                if n < 0 && error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // 0 (all writers closed: cannot happen, we hold them) or EAGAIN: empty.
                break;
            }
        }
        Ok(())
    }
}

fn run(limits: &Limits, inherited_pipes: bool) -> Result<(), Error> {
    WORKER_PID.store(std::process::id() as i32, Ordering::SeqCst);
    let fds = setup_fds(inherited_pipes).map_err(Error::SetupFds)?;
    apply_limits(limits).map_err(Error::SetLimits)?;
    // SAFETY: registering a handler that only does async-signal-safe work (dup2/close) in the child.
    unsafe { libc::pthread_atfork(None, Some(after_fork_in_parent), Some(after_fork_in_child)) };

    // SAFETY: `fds.protocol_out` is a fresh fd we own; the File is the only owner besides the static copy,
    // which is only used by `main` after `run` returns (and forgotten there).
    let shared = Arc::new(Mutex::new(Shared {
        // Close-on-exec like the original: a plain `dup` would hand the protocol pipe to every `os.system` shell and
        // its background children, which could then corrupt the frames or keep the pipe open after the worker dies.
        out: unsafe { File::from_raw_fd(libc::fcntl(fds.protocol_out, libc::F_DUPFD_CLOEXEC, 10)) },
        active: false,
        limit: 0,
        written: [0; 2],
    }));
    let pipes = [fds.stdout_read, fds.stderr_read];
    let _ = OUTPUT.set((shared.clone(), pipes));
    if let (Some(out), Some(err)) = (file_id(fds.stdout_write), file_id(fds.stderr_write)) {
        let _ = CAPTURE_IDS.set([out, err]);
    }
    {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("output-pump".into())
            .stack_size(256 * 1024)
            .spawn(move || pump(pipes, &shared))
            .map_err(Error::SpawnPump)?;
    }
    // SAFETY: a fresh fd we own for reading requests.
    let mut input = io::BufReader::new(unsafe { File::from_raw_fd(fds.protocol_in) });

    // Absolute, so `sys.executable` and `sys.prefix` stay right when the code changes directory.
    let venv = match &limits.venv {
        Some(venv) => Some(std::path::absolute(venv).map_err(|_| Error::NotAVenv(venv.clone()))?),
        None => None,
    };
    if let Some(venv) = &venv {
        initialize_in_venv(venv)?;
    }
    Python::attach(|py| -> Result<(), Error> {
        let driver = load_driver(py).map_err(Error::LoadDriver)?;
        driver
            .add_function(
                wrap_pyfunction!(drain_output, &driver)
                    .map_err(|e| Error::LoadDriver(e.to_string()))?,
            )
            .map_err(|e| Error::LoadDriver(e.to_string()))?;
        driver
            .add_function(
                wrap_pyfunction!(emit, &driver).map_err(|e| Error::LoadDriver(e.to_string()))?,
            )
            .map_err(|e| Error::LoadDriver(e.to_string()))?;
        let run_cell = driver
            .getattr("_axp_run")
            .map_err(|e| Error::LoadDriver(e.to_string()))?;
        let setup: (String, String, String) = driver
            .getattr("_axp_setup")
            .and_then(|f| {
                let venv = venv.as_ref().map(|v| v.to_string_lossy().into_owned());
                f.call1((limits.block_subprocess, venv))
            })
            .and_then(|r| r.extract())
            .map_err(|e| Error::LoadDriver(describe(py, &e)))?;
        let info = WorkerInfo {
            version: setup.0,
            prefix: setup.1,
            executable: setup.2,
            pid: std::process::id(),
        };
        {
            let mut guard = shared.lock().unwrap_or_else(|p| p.into_inner());
            let frame = protocol::encode_json(Kind::Ready, &info);
            guard
                .out
                .write_all(&frame)
                .map_err(|e| Error::Protocol(protocol::Error::Io(e)))?;
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let frame = py
                .detach(|| protocol::read_frame(&mut input))
                .map_err(Error::Protocol)?;
            let Some(frame) = frame else {
                return Ok(());
            };
            if frame.kind != Kind::Execute {
                continue;
            }
            let request: ExecuteRequest = frame.json().map_err(Error::Protocol)?;
            let result = execute(py, &run_cell, &request, &fds, &shared);
            if std::process::id() as i32 != WORKER_PID.load(Ordering::SeqCst) {
                // A fork of the worker (through ctypes, say) finished the cell: it must not answer.
                // SAFETY: ending a forked child without running the parent's atexit machinery.
                unsafe { libc::_exit(0) };
            }
            kill_forked_copies();
            let mut guard = shared.lock().unwrap_or_else(|p| p.into_inner());
            guard
                .drain(pipes, &mut buf)
                .map_err(|e| Error::Protocol(protocol::Error::Io(e)))?;
            let result = ExecuteResult {
                stdout_bytes: guard.written[0],
                stderr_bytes: guard.written[1],
                ..result
            };
            guard.active = false;
            let frame = protocol::encode_json(Kind::Done, &result);
            guard
                .out
                .write_all(&frame)
                .map_err(|e| Error::Protocol(protocol::Error::Io(e)))?;
        }
    })
}

/// Starts the interpreter as `venv/bin/python` would: CPython finds `pyvenv.cfg` beside the program it is told
/// it is, and takes the venv as `sys.prefix`. Otherwise pyo3 starts it on first use, as the agent binary.
fn initialize_in_venv(venv: &Path) -> Result<(), Error> {
    if !venv.join("pyvenv.cfg").is_file() {
        return Err(Error::NotAVenv(venv.to_owned()));
    }
    let program = CString::new(venv.join("bin").join("python").as_os_str().as_bytes())
        .map_err(|_| Error::NotAVenv(venv.to_owned()))?;
    let failed = |status: pyo3::ffi::PyStatus| {
        let message = if status.err_msg.is_null() {
            "unknown error".to_owned()
        } else {
            // SAFETY: CPython's status messages are static NUL-terminated strings.
            unsafe { std::ffi::CStr::from_ptr(status.err_msg) }
                .to_string_lossy()
                .into_owned()
        };
        Error::InitPython(message)
    };
    // SAFETY: the documented PyConfig sequence (init, set, initialise, clear) on a config we own, before any
    // other use of Python in this process; the GIL is then released, as pyo3's own initialisation leaves it.
    unsafe {
        let mut config = std::mem::MaybeUninit::<pyo3::ffi::PyConfig>::uninit();
        pyo3::ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
        let config = config.as_mut_ptr();
        // As pyo3's `Py_InitializeEx(0)`: the driver installs the one handler it needs (SIGINT).
        (*config).install_signal_handlers = 0;
        (*config).parse_argv = 0;
        let status = pyo3::ffi::PyConfig_SetBytesString(
            config,
            &raw mut (*config).program_name,
            program.as_ptr(),
        );
        if pyo3::ffi::PyStatus_Exception(status) != 0 {
            pyo3::ffi::PyConfig_Clear(config);
            return Err(failed(status));
        }
        let status = pyo3::ffi::Py_InitializeFromConfig(config);
        pyo3::ffi::PyConfig_Clear(config);
        if pyo3::ffi::PyStatus_Exception(status) != 0 {
            return Err(failed(status));
        }
        pyo3::ffi::PyEval_SaveThread();
    }
    Ok(())
}

/// Runs one cell; output accounting is switched on for its duration.
fn execute(
    py: Python<'_>,
    run_cell: &Bound<'_, PyAny>,
    request: &ExecuteRequest,
    fds: &Fds,
    shared: &Mutex<Shared>,
) -> ExecuteResult {
    // An earlier cell may have closed or replaced fds 1/2 (`os.close(1)`): point them at the pipes again.
    // SAFETY: dup2 between fds we own.
    unsafe {
        libc::dup2(fds.stdout_write, 1);
        libc::dup2(fds.stderr_write, 2);
    }
    set_cpu_limit(request.cpu_limit_secs);
    // A stale interrupt (sent as the previous cell finished) must not hit this cell.
    let _ = py.check_signals();
    {
        let mut guard = shared.lock().unwrap_or_else(|p| p.into_inner());
        guard.active = true;
        guard.limit = request.output_limit;
        guard.written = [0; 2];
    }
    let started = Instant::now();
    let outcome = run_cell.call1((
        request.code.as_str(),
        request.filename.as_str(),
        request.reset,
        request.value_limit,
    ));
    let duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let mut result = ExecuteResult {
        duration_us,
        ..ExecuteResult::default()
    };
    match outcome
        .and_then(|r| r.extract::<(Option<String>, bool, Option<(String, String, String)>)>())
    {
        Ok((value, value_truncated, error)) => {
            result.value = value;
            result.value_truncated = value_truncated;
            result.error = error.map(|(r#type, message, traceback)| PyError {
                r#type,
                message,
                traceback,
            });
        }
        // The driver itself failed (an interrupt landed in it, say): report it as the cell's error.
        Err(error) => {
            result.error = Some(PyError {
                r#type: error
                    .get_type(py)
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
                message: error.value(py).to_string(),
                traceback: describe(py, &error),
            });
        }
    }
    result
}

fn describe(py: Python<'_>, error: &PyErr) -> String {
    let tb = error
        .traceback(py)
        .and_then(|tb| tb.format().ok())
        .unwrap_or_default();
    format!("{tb}{error}")
}

fn load_driver(py: Python<'_>) -> Result<Bound<'_, PyModule>, String> {
    let code = CString::new(DRIVER).map_err(|e| e.to_string())?;
    PyModule::from_code(py, &code, c"<axp-driver>", c"_axp_driver").map_err(|e| describe(py, &e))
}

/// The worker's file descriptors after [`setup_fds`].
#[derive(Debug)]
struct Fds {
    protocol_in: RawFd,
    protocol_out: RawFd,
    stdout_read: RawFd,
    stdout_write: RawFd,
    stderr_read: RawFd,
    stderr_write: RawFd,
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn setup_fds(inherited_pipes: bool) -> io::Result<Fds> {
    // SAFETY: plain fd syscalls on fds this process owns; results are checked.
    unsafe {
        let protocol_in = check(libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 10))?;
        let protocol_out = check(libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 10))?;
        PROTOCOL_IN.store(protocol_in, Ordering::SeqCst);
        PROTOCOL_OUT.store(protocol_out, Ordering::SeqCst);
        let null = check(libc::open(
            c"/dev/null".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        ))?;
        check(libc::dup2(null, 0))?;
        libc::close(null);
        let mut out = [0; 2];
        let mut err = [0; 2];
        if inherited_pipes {
            let [out_r, err_r, out_w, err_w] = INHERITED_PIPES;
            for fd in INHERITED_PIPES {
                check(libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC))?;
            }
            out = [out_r, out_w];
            err = [err_r, err_w];
        } else {
            check(libc::pipe2(out.as_mut_ptr(), libc::O_CLOEXEC))?;
            check(libc::pipe2(err.as_mut_ptr(), libc::O_CLOEXEC))?;
        }
        for fd in [out[0], err[0]] {
            let flags = check(libc::fcntl(fd, libc::F_GETFL))?;
            check(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK))?;
        }
        // A bigger pipe means fewer wake-ups of the pump for chatty code.
        libc::fcntl(out[1], libc::F_SETPIPE_SZ, 1 << 20);
        check(libc::dup2(out[1], 1))?;
        check(libc::dup2(err[1], 2))?;
        Ok(Fds {
            protocol_in,
            protocol_out,
            stdout_read: out[0],
            stdout_write: out[1],
            stderr_read: err[0],
            stderr_write: err[1],
        })
    }
}

fn set_limit(resource: libc::__rlimit_resource_t, value: Option<u64>) -> io::Result<()> {
    let value = value.unwrap_or(libc::RLIM_INFINITY);
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit with a valid pointer.
    check(unsafe { libc::setrlimit(resource, &limit) }).map(drop)
}

fn apply_limits(limits: &Limits) -> io::Result<()> {
    set_limit(libc::RLIMIT_CORE, Some(0))?;
    if limits.memory_bytes.is_some() {
        set_limit(libc::RLIMIT_AS, limits.memory_bytes)?;
    }
    set_limit(libc::RLIMIT_NOFILE, Some(limits.open_files))?;
    if limits.file_size_bytes.is_some() {
        set_limit(libc::RLIMIT_FSIZE, limits.file_size_bytes)?;
        // Past RLIMIT_FSIZE a write fails with EFBIG (an OSError in Python) instead of killing the worker.
        // SAFETY: setting a signal disposition to SIG_IGN.
        unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    }
    Ok(())
}

/// Lets this execution use `secs` more CPU seconds; past them the kernel sends SIGXCPU, which ends the worker
/// (the agent's wall-clock timeout normally acts first). The hard limit stays unlimited so it can be raised again.
fn set_cpu_limit(secs: u64) {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct.
    let used = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        let usage = usage.assume_init();
        (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) as u64 + 1
    };
    let limit = libc::rlimit {
        rlim_cur: used + secs.max(1),
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid pointer.
    unsafe { libc::setrlimit(libc::RLIMIT_CPU, &limit) };
}

/// pthread_atfork child handler: a fork of the worker must not be able to write protocol frames.
extern "C" fn after_fork_in_child() {
    for slot in [&PROTOCOL_OUT, &PROTOCOL_IN] {
        let fd = slot.load(Ordering::SeqCst);
        if fd >= 0 {
            // SAFETY: async-signal-safe calls. Point the fd at /dev/null rather than close it so the number
            // cannot be reused by a later open in the child.
            unsafe {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
                if null >= 0 {
                    libc::dup3(null, fd, libc::O_CLOEXEC);
                    libc::close(null);
                }
            }
        }
    }
}

/// pthread_atfork parent handler: remember that a fork happened (async-signal-safe: one atomic store).
extern "C" fn after_fork_in_parent() {
    FORKED.store(true, Ordering::SeqCst);
}

/// After a cell that forked: kills children still running this binary (copies of the worker made with libc
/// `fork`, e.g. through ctypes), so they cannot keep running the cell and print into later executions.
/// Children that exec'd another program (subprocesses) are left alone. Costs nothing when no fork happened.
fn kill_forked_copies() {
    if !FORKED.swap(false, Ordering::SeqCst) {
        return;
    }
    let me = std::process::id();
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state, ppid, ...
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(me) {
            continue;
        }
        if std::fs::read_link(format!("/proc/{pid}/exe")).ok().as_ref() == Some(&exe) {
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// Forwards pipe output to the parent while cells run.
fn pump(pipes: [RawFd; 2], shared: &Mutex<Shared>) {
    // The agent's SIGINT is for the main thread (time.sleep there must see EINTR), never for this one.
    // SAFETY: manipulating this thread's signal mask.
    unsafe {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut());
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut polls = [
        libc::pollfd {
            fd: pipes[0],
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: pipes[1],
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: poll over two valid pollfds.
        let n = unsafe { libc::poll(polls.as_mut_ptr(), 2, -1) };
        if n <= 0 {
            continue;
        }
        let mut guard = shared.lock().unwrap_or_else(|p| p.into_inner());
        if guard.drain(pipes, &mut buf).is_err() {
            // The agent is gone: nothing left to do.
            // SAFETY: exiting the process at once, as the parent cannot be told anything.
            unsafe { libc::_exit(0) };
        }
    }
}
