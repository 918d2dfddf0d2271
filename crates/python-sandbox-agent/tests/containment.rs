//! Process containment outside a container (the agent is a child subreaper here, not PID 1): a worker's death is
//! noticed at once, nothing user code started outlives its worker, orphans are reaped, and user code cannot read
//! the agent's environment. PID-1-only behaviour (ignoring SIGTERM from inside, surviving `kill(-1)`) needs a
//! container and is covered by the container tests.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt as _;

type Client =
    axp_transport::pb::agent_service_client::AgentServiceClient<tonic::transport::Channel>;

/// Runs `code` with a `timeout_secs` budget; returns the run and how long it took.
async fn run_timed(client: &mut Client, code: &str, timeout_secs: f64) -> (Run, Duration) {
    let started = Instant::now();
    let config = format!(r#"{{"timeout_secs": {timeout_secs}}}"#);
    let run = call(client, request("c", "e", prompt_with(code, &config)))
        .await
        .expect("a result, not an error");
    assert!(run.ends_once(), "exactly one end: {:?}", run.frames);
    (run, started.elapsed())
}

async fn next_execution_works(client: &mut Client) {
    let run = run(client, "c", "print(6*7)").await;
    assert_eq!(
        run.str_field("stdout").as_deref(),
        Some("42\n"),
        "{}",
        run.text()
    );
}

/// `/proc/<pid>/stat` split into (state, ppid), or `None` once the process is gone (and reaped).
fn stat(pid: u32) -> Option<(char, u32)> {
    let line = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = line.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Waits (boundedly) until `pid` no longer exists, not even as a zombie.
async fn assert_gone(pid: u32, what: &str) {
    let started = Instant::now();
    while let Some(state) = stat(pid) {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{what} (pid {pid}) still exists: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first line of stdout as a pid.
fn printed_pid(run: &Run) -> u32 {
    let stdout = run.str_field("stdout").unwrap_or_default();
    stdout
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid printed: {}", run.text()))
}

#[tokio::test]
async fn a_worker_that_forks_with_ctypes_and_exits_is_reported_dead_at_once_and_its_fork_is_killed()
{
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    // The fork keeps the worker's pipes open; the agent must not wait for them to close.
    let code = "import ctypes, os, time\npid = ctypes.CDLL(None).fork()\nif pid == 0:\n    time.sleep(60)\n    os._exit(0)\nprint(pid, flush=True)\nos._exit(0)";
    let (run, took) = run_timed(&mut client, code, 20.0).await;
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(
        run.str_field("error_type").as_deref(),
        Some("WorkerDied"),
        "{}",
        run.text()
    );
    assert!(run.text().contains("exit status 0"), "{}", run.text());
    assert!(run.bool_field("state_lost"));
    assert_gone(printed_pid(&run), "the forked copy of the worker").await;
    next_execution_works(&mut client).await;
}

#[tokio::test]
async fn a_detached_session_does_not_survive_os_exit_of_its_worker() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    let code = "import subprocess\np = subprocess.Popen(['sleep', '60'], start_new_session=True)\nprint(p.pid)";
    let (run, _) = run_timed(&mut client, code, 10.0).await;
    let pid = printed_pid(&run);
    assert!(
        stat(pid).is_some(),
        "the detached process runs while its worker lives"
    );
    // Still running while the worker lives: only a worker's death ends what it started.
    assert_eq!(
        common::run(&mut client, "c", "p.poll() is None")
            .await
            .text(),
        "True"
    );
    let (run, took) = run_timed(&mut client, "import os\nos._exit(1)", 10.0).await;
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(run.str_field("error_type").as_deref(), Some("WorkerDied"));
    assert_gone(pid, "the detached sleep").await;
    next_execution_works(&mut client).await;
}

#[tokio::test]
async fn a_detached_session_does_not_survive_a_worker_killed_at_its_timeout() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    // A double fork too: the grandchild is reparented to the agent while the worker still lives.
    let code = "import signal, subprocess, time\n\
        p = subprocess.Popen(['sleep', '60'], start_new_session=True)\n\
        q = subprocess.run(['sh', '-c', 'setsid sleep 60 >/dev/null 2>&1 & echo $!'], capture_output=True, text=True)\n\
        print(p.pid)\nprint(q.stdout.strip(), flush=True)\n\
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])\ntime.sleep(10**6)";
    let (run, took) = run_timed(&mut client, code, 1.0).await;
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert!(
        run.bool_field("timed_out") && run.bool_field("state_lost"),
        "{}",
        run.text()
    );
    let stdout = run.str_field("stdout").unwrap_or_default();
    let pids: Vec<u32> = stdout.lines().filter_map(|l| l.parse().ok()).collect();
    assert_eq!(pids.len(), 2, "{}", run.text());
    for pid in pids {
        assert_gone(pid, "a detached sleep").await;
    }
    next_execution_works(&mut client).await;
}

#[tokio::test]
async fn orphans_are_reparented_to_the_agent_and_reaped() {
    let mut agent = agent(&[]).await;
    let agent_pid = agent.pid();
    let mut client = client(&agent).await;
    let code = "import subprocess\nr = subprocess.run(['sh', '-c', 'sleep 0.5 >/dev/null 2>&1 & echo $!'], capture_output=True, text=True)\nprint(r.stdout.strip())";
    let (run, _) = run_timed(&mut client, code, 10.0).await;
    let orphan = printed_pid(&run);
    // Its parent shell has exited: it belongs to the agent now (a subreaper here, PID 1 in a container).
    let (_, ppid) = stat(orphan).expect("the orphan still sleeps");
    assert_eq!(ppid, agent_pid, "the orphan is the agent's child");
    assert_gone(orphan, "the orphan, reaped").await;
    // No zombie children of the agent at all.
    let zombies: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&pid| stat(pid).is_some_and(|(state, ppid)| ppid == agent_pid && state == 'Z'))
        .collect();
    assert!(zombies.is_empty(), "zombie children: {zombies:?}");
    assert!(
        agent.child().try_wait().unwrap().is_none(),
        "the agent still runs"
    );
    next_execution_works(&mut client).await;
}

#[tokio::test]
async fn user_code_cannot_read_the_agents_environment_or_memory() {
    let agent = agent_with_env(
        &["--worker-env", "CONTAINMENT_PASSED,AXP_TOKEN"],
        &[
            ("AXP_TOKEN", "s3cret-token"),
            ("CONTAINMENT_AGENT_ONLY", "agent-only"),
            ("CONTAINMENT_PASSED", "passed"),
        ],
    )
    .await;
    let mut client = client(&agent).await;
    // As root (a developer's container) user code reads any /proc file, so the probe drops CAP_SYS_PTRACE first,
    // which leaves it as close to the pod's unprivileged uid as this machine allows: the agent's memory is closed
    // to it, though root still owns the agent's environ file. As any other uid both are closed.
    let code = "import os, subprocess\n\
        agent = os.getppid()\n\
        def probe(name):\n    \
            if os.geteuid() == 0:\n        \
                r = subprocess.run(['setpriv', '--bounding-set=-sys_ptrace', '--', 'head', '-c1', f'/proc/{agent}/{name}'], capture_output=True, text=True)\n        \
                return 'PermissionError' if 'Permission denied' in r.stderr else ('readable' if r.returncode == 0 else 'OSError')\n    \
            try:\n        \
                with open(f'/proc/{agent}/{name}', 'rb') as f:\n            f.read(1)\n        \
                return 'readable'\n    \
            except OSError as e:\n        \
                return type(e).__name__\n\
        print(agent, probe('environ'), probe('mem'))\n\
        print(sorted(k for k in os.environ if k.startswith(('AXP', 'CONTAINMENT'))), 'PATH' in os.environ)";
    let mut authed = tonic::Request::new(request("c", "e", prompt(code)));
    authed
        .metadata_mut()
        .insert("authorization", "Bearer s3cret-token".parse().unwrap());
    let mut stream = client.connect(authed).await.unwrap().into_inner();
    let mut frames = Vec::new();
    while let Some(frame) = stream.next().await {
        frames.push(frame.unwrap());
    }
    let run = Run { frames };
    let stdout = run.str_field("stdout").unwrap_or_default();
    let mut lines = stdout.lines();
    let probes: Vec<&str> = lines.next().unwrap_or_default().split(' ').collect();
    assert_eq!(
        probes.first(),
        Some(&agent.pid().to_string().as_str()),
        "{}",
        run.text()
    );
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert_eq!(
            probes.get(1),
            Some(&"PermissionError"),
            "environ: {}",
            run.text()
        );
    }
    assert_eq!(
        probes.get(2),
        Some(&"PermissionError"),
        "mem: {}",
        run.text()
    );
    assert_eq!(
        lines.next(),
        Some("['CONTAINMENT_PASSED'] True"),
        "only the allowlist and --worker-env, never the token: {}",
        run.text()
    );
    let mut next = tonic::Request::new(request("c", "e2", prompt("print(6*7)")));
    next.metadata_mut()
        .insert("authorization", "Bearer s3cret-token".parse().unwrap());
    let mut stream = client.connect(next).await.unwrap().into_inner();
    let mut frames = Vec::new();
    while let Some(frame) = stream.next().await {
        frames.push(frame.unwrap());
    }
    assert_eq!(Run { frames }.str_field("stdout").as_deref(), Some("42\n"));
}
