//! [`PythonAgent`]: the AXP [`Agent`] that runs each execution's code in its conversation's Python worker. It answers
//! `ax.AgentService` and `ax.HarnessService` alike: every rule below holds on both, and a refusal is the same gRPC
//! code on both (a status on AgentService, `end{FAILED}` on HarnessService).
//!
//! # Guarantees
//!
//! - **One execution at a time per conversation.** A second call for a conversation whose code is still running is
//!   refused at once with FAILED_PRECONDITION (waiting could outlive the caller's deadline and would run turns in
//!   an order the model did not see). A call that arrives while the worker is only being restarted waits for it.
//! - **Pinning.** With [`AgentOptions::pin_conversation`] (the default) the first conversation seen owns the agent;
//!   others get PERMISSION_DENIED, so a sandbox reused by mistake never shows one conversation's state to another.
//! - **User-code failures are results.** Exceptions and memory errors are reported in the outputs, followed by
//!   `end` (`end{COMPLETED}` on HarnessService). A timeout or a dying interpreter is reported in the outputs too; on
//!   AgentService the call then ends normally (AX's fork shows the planner only the text), on HarnessService it
//!   ends `end{FAILED}` with DEADLINE_EXCEEDED or INTERNAL, as upstream AX expects of an agent-side failure.
//! - **A snippet cannot take the agent down.** Past its timeout a cell is interrupted (SIGINT → KeyboardInterrupt,
//!   namespace kept); if it has not stopped [`AgentOptions::interrupt_grace`] later its worker is killed and
//!   restarted, and the result says that earlier variables are lost.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axp_transport::{
    Agent, AgentError, Execution, OutputStream, Protocol,
    pb::{HealthCheckResponse, Message},
};
use tokio::sync::{OwnedMutexGuard, mpsc};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    config::AgentOptions,
    metrics::{ExecOutcome, RestartCause},
    output::{self, Collector, Outcome, StreamKind},
    prompt,
    worker::{
        Event, Worker,
        protocol::{ExecuteRequest, WorkerInfo},
        supervisor,
    },
};

/// Told to the model whenever its namespace is gone.
pub const STATE_LOST: &str = "The Python worker was restarted: variables, imports and functions from earlier executions are lost.";

/// Time kept between the end of an execution's timeout and the caller's deadline, for the result to travel.
const DEADLINE_MARGIN: Duration = Duration::from_millis(250);

/// The AXP agent. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct PythonAgent {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    options: AgentOptions,
    /// Set once the first worker is up; executions are refused with UNAVAILABLE until then.
    info: OnceLock<WorkerInfo>,
    state: Mutex<State>,
    /// A worker started ahead of time for the next new conversation.
    spare: Mutex<Option<Worker>>,
    refilling: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    pinned: Option<String>,
    sessions: HashMap<String, Arc<Session>>,
    /// Conversations whose worker was evicted: their next execution is told that their state is gone.
    evicted: HashSet<String>,
    shut_down: bool,
}

/// One conversation's worker.
#[derive(Debug)]
struct Session {
    slot: Arc<tokio::sync::Mutex<Slot>>,
    /// A cell is running (the lock may also be held by a restart, which a new call waits for).
    running: AtomicBool,
    last_used: Mutex<Instant>,
}

#[derive(Debug, Default)]
struct Slot {
    worker: Option<Worker>,
    cells: u64,
    /// Said in the next result (the worker died between executions, say).
    notice: Option<String>,
}

impl PythonAgent {
    /// An agent with no worker yet: it refuses executions with UNAVAILABLE until [`PythonAgent::start_worker`].
    pub fn new(options: AgentOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                options,
                info: OnceLock::new(),
                state: Mutex::default(),
                spare: Mutex::new(None),
                refilling: AtomicBool::new(false),
            }),
        }
    }

    /// Starts the first Python worker (kept for the first conversation) and returns which Python it runs.
    ///
    /// # Errors
    ///
    /// [`supervisor::Error`] when the worker cannot start.
    pub async fn start_worker(&self) -> Result<WorkerInfo, supervisor::Error> {
        let worker = Worker::spawn(&self.inner.options.worker).await?;
        let info = worker.info().clone();
        *self.inner.spare.lock().unwrap_or_else(|p| p.into_inner()) = Some(worker);
        let _ = self.inner.info.set(info.clone());
        Ok(info)
    }

    /// [`PythonAgent::new`] then [`PythonAgent::start_worker`].
    ///
    /// # Errors
    ///
    /// [`supervisor::Error`] when the worker cannot start.
    pub async fn start(options: AgentOptions) -> Result<Self, supervisor::Error> {
        let agent = Self::new(options);
        agent.start_worker().await?;
        Ok(agent)
    }

    /// Which Python the workers run, once the first one is up.
    pub fn python(&self) -> Option<&WorkerInfo> {
        self.inner.info.get()
    }

    /// Kills every worker. Executions still running end as if their worker died.
    pub fn shutdown(&self) {
        let sessions: Vec<_> = {
            let mut state = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
            state.shut_down = true;
            state.sessions.drain().map(|(_, s)| s).collect()
        };
        self.inner.options.metrics.set_live_conversations(0);
        drop(
            self.inner
                .spare
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        for session in sessions {
            if let Ok(mut slot) = session.slot.try_lock() {
                slot.worker.take();
            }
        }
    }

    fn session(&self, conversation_id: &str) -> Result<Arc<Session>, AgentError> {
        let options = &self.inner.options;
        let mut state = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.shut_down {
            return Err(AgentError::Unavailable("the agent is shutting down".into()));
        }
        if options.pin_conversation {
            match &state.pinned {
                Some(pinned) if pinned != conversation_id => {
                    return Err(AgentError::PermissionDenied(
                        "this Python sandbox is pinned to another conversation and refuses others, so no \
                         conversation can see another's state (run the agent with --unpinned for local use)"
                            .into(),
                    ));
                }
                Some(_) => {}
                None => {
                    tracing::info!(conversation_id, "pinned to this conversation");
                    state.pinned = Some(conversation_id.to_owned());
                }
            }
        }
        if let Some(session) = state.sessions.get(conversation_id) {
            *session.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            return Ok(session.clone());
        }
        if state.sessions.len() >= options.max_conversations {
            let idle = state
                .sessions
                .iter()
                .filter(|(_, s)| !s.running.load(Ordering::SeqCst) && s.slot.try_lock().is_ok())
                .min_by_key(|(_, s)| *s.last_used.lock().unwrap_or_else(|p| p.into_inner()))
                .map(|(id, _)| id.clone());
            match idle {
                Some(id) => {
                    tracing::info!(evicted = %id, "evicting the least recently used conversation's worker");
                    state.sessions.remove(&id);
                    state.evicted.insert(id);
                }
                None => {
                    return Err(AgentError::ResourceExhausted(format!(
                        "all {} conversation slots are running code; retry later",
                        options.max_conversations
                    )));
                }
            }
        }
        let notice = state.evicted.remove(conversation_id).then(|| {
            format!(
                "This conversation's Python worker was stopped to make room for other conversations. {STATE_LOST}"
            )
        });
        let session = Arc::new(Session {
            slot: Arc::new(tokio::sync::Mutex::new(Slot {
                notice,
                ..Slot::default()
            })),
            running: AtomicBool::new(false),
            last_used: Mutex::new(Instant::now()),
        });
        state
            .sessions
            .insert(conversation_id.to_owned(), session.clone());
        options.metrics.set_live_conversations(state.sessions.len());
        Ok(session)
    }

    /// A ready worker for a new or restarted session: the spare if there is one (then refilled in the background),
    /// else a new one.
    async fn take_worker(&self) -> Result<Worker, supervisor::Error> {
        let spare = self
            .inner
            .spare
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let worker = match spare.and_then(|mut w| w.exited().is_none().then_some(w)) {
            Some(worker) => worker,
            None => Worker::spawn(&self.inner.options.worker).await?,
        };
        if !self.inner.options.pin_conversation
            && !self.inner.refilling.swap(true, Ordering::SeqCst)
        {
            let agent = self.clone();
            tokio::spawn(async move {
                match Worker::spawn(&agent.inner.options.worker).await {
                    Ok(worker) => {
                        *agent.inner.spare.lock().unwrap_or_else(|p| p.into_inner()) = Some(worker)
                    }
                    Err(error) => {
                        tracing::warn!(error = %anyhow::Error::new(error), "could not pre-start a spare worker")
                    }
                }
                agent.inner.refilling.store(false, Ordering::SeqCst);
            });
        }
        Ok(worker)
    }

    /// Makes sure the slot has a live worker; records a notice when earlier state is gone.
    async fn ensure_worker(&self, slot: &mut Slot) -> Result<(), AgentError> {
        if let Some(worker) = &mut slot.worker {
            match worker.exited() {
                None => return Ok(()),
                Some(status) => {
                    tracing::warn!(%status, "the Python worker exited between executions");
                    self.inner.options.metrics.restarted(RestartCause::DiedIdle);
                    slot.notice = Some(format!(
                        "The Python worker had exited since the last execution ({status}). {STATE_LOST}"
                    ));
                    slot.worker = None;
                }
            }
        } else if slot.cells > 0 && slot.notice.is_none() {
            slot.notice = Some(STATE_LOST.to_owned());
        }
        let worker = self
            .take_worker()
            .await
            .map_err(|error| AgentError::Unavailable(format!("{:#}", anyhow::Error::new(error))))?;
        slot.worker = Some(worker);
        Ok(())
    }
}

impl Agent for PythonAgent {
    /// Runs in the server's execution span (`axp.connect` / `harness.connect`, which carries
    /// the conversation and exec ids and continues the caller's trace): a child span
    /// `worker.dispatch` finds the conversation's worker, and `python.run` runs the code.
    async fn execute(&self, execution: Execution) -> Result<OutputStream, AgentError> {
        let protocol = execution.protocol;
        let received = tokio::time::Instant::now();
        let parent = tracing::Span::current();
        let dispatch = tracing::info_span!("worker.dispatch");
        let result = self
            .dispatch(execution, received, &parent)
            .instrument(dispatch)
            .await;
        if result.is_err() {
            self.inner
                .options
                .metrics
                .executed(protocol.service_name(), ExecOutcome::Refused);
        }
        result
    }

    async fn health(&self) -> HealthCheckResponse {
        match self.inner.info.get() {
            Some(info) => HealthCheckResponse {
                healthy: true,
                message: format!(
                    "Python {} ({})",
                    info.version.split_whitespace().next().unwrap_or(""),
                    info.prefix
                ),
            },
            None => HealthCheckResponse {
                healthy: false,
                message: "the Python worker is starting".into(),
            },
        }
    }
}

impl PythonAgent {
    /// Checks the call, finds (or starts) the conversation's worker and starts the code in `python.run`, a child of
    /// `parent` (the server's execution span).
    async fn dispatch(
        &self,
        execution: Execution,
        received: tokio::time::Instant,
        parent: &tracing::Span,
    ) -> Result<OutputStream, AgentError> {
        let Execution {
            protocol,
            conversation_id,
            exec_id,
            start,
            cancelled,
            deadline,
            ..
        } = execution;
        if self.inner.info.get().is_none() {
            return Err(AgentError::Unavailable(
                "the Python worker is starting; retry shortly".into(),
            ));
        }
        if conversation_id.is_empty() {
            return Err(AgentError::InvalidArgument(format!(
                "{}.conversation_id is empty",
                protocol.request_message()
            )));
        }
        let code =
            prompt::extract(&start).map_err(|e| AgentError::InvalidArgument(e.to_string()))?;
        let exec_options = self
            .inner
            .options
            .exec_options(&start.agent_config, protocol.config_field())
            .map_err(|e| AgentError::InvalidArgument(e.to_string()))?;
        let session = self.session(&conversation_id)?;

        let mut slot = match session.slot.clone().try_lock_owned() {
            Ok(slot) => slot,
            Err(_) if !session.running.load(Ordering::SeqCst) => {
                // Only a restart holds the lock: wait for it.
                tokio::time::timeout(
                    self.inner.options.worker.startup_timeout,
                    session.slot.clone().lock_owned(),
                )
                .await
                .map_err(|_| {
                    AgentError::Unavailable("the Python worker is restarting; retry later".into())
                })?
            }
            Err(_) => {
                return Err(AgentError::FailedPrecondition(
                    "this conversation already has an execution running; AXP runs one execution per \
                     conversation at a time"
                        .into(),
                ));
            }
        };
        // From here until the run ends (or this call is dropped), the lock means "code is running".
        let running = RunningFlag::set(session.clone());
        let mut timeout = exec_options.timeout;
        if let Some(deadline) = deadline {
            let left = deadline
                .checked_duration_since(tokio::time::Instant::now())
                .and_then(|d| d.checked_sub(DEADLINE_MARGIN))
                .unwrap_or_default();
            if left.is_zero() {
                return Err(AgentError::DeadlineExceeded(
                    "the call's deadline leaves no time to run the code".into(),
                ));
            }
            timeout = timeout.min(left);
        }
        self.ensure_worker(&mut slot).await?;
        slot.cells += 1;
        let request = ExecuteRequest {
            code: code.text,
            filename: format!("<cell {}>", slot.cells),
            output_limit: exec_options.output_limit,
            value_limit: exec_options.output_limit,
            // A backstop behind the wall-clock timeout, not a second limit: CPU time
            // counts every thread, so code using several cores outside the GIL
            // (hashlib, zlib, BLAS) may burn `cores` CPU seconds per wall second.
            cpu_limit_secs: (timeout.as_secs() + 2) * cores(),
            reset: exec_options.reset,
        };
        tracing::debug!(cell = slot.cells, source = ?code.source, fenced = code.fenced, ?timeout, "running");
        let (tx, rx) = mpsc::unbounded_channel();
        let run = Run {
            agent: self.clone(),
            running,
            request,
            timeout,
            call_deadline: deadline,
            output_limit: exec_options.output_limit,
            exec_id,
            protocol,
            cancelled,
            received,
            tx,
        };
        let span = tracing::info_span!(
            parent: parent,
            "python.run",
            conversation_id = %conversation_id,
            exec_id = %run.exec_id,
            cell = slot.cells,
            outcome = tracing::field::Empty,
        );
        tokio::spawn(run.run(slot).instrument(span));
        Ok(Box::pin(UnboundedReceiverStream::new(rx)))
    }
}

/// One running execution, driven by its own task so that a client that goes away still gets its cell stopped.
struct Run {
    agent: PythonAgent,
    running: RunningFlag,
    request: ExecuteRequest,
    timeout: Duration,
    /// The caller's deadline: a cell that ignores the interrupt is killed before it, so the caller gets a result.
    call_deadline: Option<tokio::time::Instant>,
    output_limit: u64,
    exec_id: String,
    cancelled: CancellationToken,
    /// Which wire the call came on: it decides how a timeout or a crash ends the call.
    protocol: Protocol,
    /// When the call reached the agent (for the time to first output).
    received: tokio::time::Instant,
    tx: mpsc::UnboundedSender<Result<Vec<Message>, AgentError>>,
}

/// Marks a session's lock as held by running code (not by a restart) while it lives.
struct RunningFlag(Arc<Session>);

impl RunningFlag {
    fn set(session: Arc<Session>) -> Self {
        session.running.store(true, Ordering::SeqCst);
        Self(session)
    }
}

impl Drop for RunningFlag {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::SeqCst);
    }
}

/// Why the agent stopped a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Timeout,
    Cancelled,
}

impl Run {
    async fn run(self, mut slot: OwnedMutexGuard<Slot>) {
        let Self {
            agent,
            running,
            request,
            timeout,
            call_deadline,
            output_limit,
            exec_id,
            protocol,
            cancelled,
            received,
            tx,
        } = self;
        let metrics = agent.inner.options.metrics.clone();
        let mut first_output = None;
        let mut send = |batch: Vec<Message>| {
            first_output.get_or_insert_with(|| received.elapsed());
            let _ = tx.send(Ok(batch));
        };
        let started = Instant::now();
        let mut outcome = Outcome {
            cell: slot.cells,
            ..Outcome::default()
        };
        if let Some(notice) = slot.notice.take() {
            outcome.state_lost = true;
            outcome.notices.push(notice);
        }
        let mut collector = Collector::new(output_limit, agent.inner.options.flush_interval);
        let grace = agent.inner.options.interrupt_grace;
        let worker = slot.worker.as_mut().expect("ensure_worker ran");
        let deadline = tokio::time::Instant::now() + timeout;
        let mut stop: Option<(Stop, tokio::time::Instant)> = None;
        let mut killed = false;

        let sent = worker.send(&request).await;
        let died = loop {
            if sent.is_err() {
                break Some(worker.next_event().await);
            }
            let flush_at = collector.flush_at();
            // Due now: flush without the timer, whose millisecond ticks would hold output alone in flight for
            // up to a millisecond.
            if flush_at.is_some_and(|at| at <= Instant::now())
                && flush_due(&mut collector, worker, &mut send)
            {
                continue;
            }
            let flush_at = flush_at.map(tokio::time::Instant::from_std);
            tokio::select! {
                event = worker.next_event() => match event {
                    Event::Stdout(bytes) => collector.push(StreamKind::Stdout, &bytes),
                    Event::Stderr(bytes) => collector.push(StreamKind::Stderr, &bytes),
                    Event::Done(result) => {
                        outcome.result = Some(result);
                        break None;
                    }
                    died @ Event::Died(_) => break Some(died),
                },
                () = sleep_until(flush_at) => {
                    flush_due(&mut collector, worker, &mut send);
                }
                () = tokio::time::sleep_until(deadline), if stop.is_none() => {
                    tracing::info!(?timeout, "cell timed out: interrupting");
                    worker.interrupt();
                    let now = tokio::time::Instant::now();
                    let mut kill_at = now + grace;
                    if let Some(call_deadline) = call_deadline {
                        kill_at = kill_at.min(call_deadline - DEADLINE_MARGIN / 2).max(now);
                    }
                    stop = Some((Stop::Timeout, kill_at));
                }
                () = cancelled.cancelled(), if stop.is_none() => {
                    tracing::info!("execution cancelled: interrupting the cell");
                    worker.interrupt();
                    stop = Some((Stop::Cancelled, tokio::time::Instant::now() + grace));
                }
                () = sleep_until(stop.map(|(_, at)| at)) => {
                    tracing::warn!("the cell did not stop when interrupted: killing the Python worker");
                    worker.kill().await;
                    killed = true;
                    break None;
                }
            }
        };
        outcome.duration = started.elapsed();
        let timed_out = matches!(stop, Some((Stop::Timeout, _)));
        outcome.timed_out = timed_out;
        let secs = timeout.as_secs_f64();
        // The agent-side failure behind `outcome.error`, for HarnessService's `end{FAILED}`.
        let mut agent_failure = None;
        if killed {
            outcome.state_lost = true;
            let description = format!(
                "the code ran past its {secs} s timeout and did not stop when interrupted, so the Python worker \
                 was killed"
            );
            agent_failure = Some(AgentError::DeadlineExceeded(description.clone()));
            outcome.error = Some(("TimeoutError".into(), description));
            outcome.notices.push(STATE_LOST.to_owned());
        } else if let Some(Event::Died(status)) = &died {
            outcome.state_lost = true;
            let hint = if status.contains("SIGKILL") {
                " (out of memory?)"
            } else {
                ""
            };
            let description =
                format!("the Python interpreter stopped while running this code: {status}{hint}");
            agent_failure = Some(AgentError::Internal(description.clone()));
            outcome.error = Some(("WorkerDied".into(), description));
            outcome.notices.push(STATE_LOST.to_owned());
        } else if timed_out {
            let interrupted = outcome
                .result
                .as_ref()
                .and_then(|r| r.error.as_ref())
                .is_some_and(|e| e.r#type == "KeyboardInterrupt");
            if interrupted {
                let description = format!(
                    "the code ran past its {secs} s timeout and was interrupted; variables from earlier executions \
                     are kept"
                );
                agent_failure = Some(AgentError::DeadlineExceeded(description.clone()));
                outcome.error = Some(("TimeoutError".into(), description));
            }
        }
        if let Some(result) = &outcome.result {
            collector.set_totals(result.stdout_bytes, result.stderr_bytes);
        }
        if !matches!(stop, Some((Stop::Cancelled, _))) {
            // The last output, the summary and the structured result travel in as few frames as fit under
            // `output::FRAME_BYTES`: together they can be several times the output limit, past what a gRPC client
            // accepts in one message (4 MiB by default), but a quick cell's result is one frame.
            for batch in output::frames(output::finish(&mut collector, &outcome, &exec_id)) {
                send(batch);
            }
            // HarnessService reports what the agent (not the user's code) cut short as `end{FAILED}`.
            if protocol == Protocol::HarnessService
                && let Some(failure) = agent_failure
            {
                let _ = tx.send(Err(failure));
            }
        }
        // The stream ends (and `end` is sent) before any restart, so the result is not delayed by it.
        drop(tx);
        drop(running);
        let cancelled_by_caller = matches!(stop, Some((Stop::Cancelled, _)));
        let exec_outcome = if cancelled_by_caller {
            ExecOutcome::Cancelled
        } else if timed_out {
            ExecOutcome::Timeout
        } else if died.is_some() {
            ExecOutcome::WorkerDied
        } else if outcome.result.as_ref().is_some_and(|r| r.error.is_some()) {
            ExecOutcome::Exception
        } else {
            ExecOutcome::Completed
        };
        tracing::Span::current().record("outcome", exec_outcome.as_str());
        metrics.executed(protocol.service_name(), exec_outcome);
        metrics.ran_for(outcome.duration.as_secs_f64());
        if let Some(first) = first_output {
            metrics.first_output(first.as_secs_f64());
        }
        if timed_out {
            metrics.timed_out(killed);
        }
        if let Some(result) = &outcome.result {
            if result.stdout_bytes > output_limit {
                metrics.truncated("stdout");
            }
            if result.stderr_bytes > output_limit {
                metrics.truncated("stderr");
            }
        }
        if killed {
            metrics.restarted(RestartCause::Killed);
        } else if died.is_some() {
            metrics.restarted(RestartCause::DiedRunning);
        }
        if killed || died.is_some() {
            slot.worker = None;
            if let Err(error) = agent.ensure_worker(&mut slot).await {
                tracing::warn!(%error, "could not restart the Python worker; the next execution will try again");
            }
            // This restart was already reported in this result.
            slot.notice = None;
        }
    }
}

/// Flushes the output that is due, unless the worker already wrote more that can join it in the same frame (often
/// the cell's end): then that is read first, and the next turn of the loop flushes. Output alone in flight goes at
/// once. Returns whether it flushed.
fn flush_due(
    collector: &mut Collector,
    worker: &Worker,
    send: &mut impl FnMut(Vec<Message>),
) -> bool {
    if worker.has_queued_event() && collector.may_wait_for_queued() {
        return false;
    }
    let batch = collector.flush();
    if !batch.is_empty() {
        send(batch);
    }
    true
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Cores this process may run on (at least 1), read once: the standard library reads the cgroup's CPU quota
/// from /sys on every call, which cost as much as the rest of a quick execution's dispatch.
fn cores() -> u64 {
    static CORES: OnceLock<u64> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u64))
}
