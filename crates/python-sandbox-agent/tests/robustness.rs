//! Every item of the robustness list: each snippet ends within its timeout plus about a second with a clear
//! message, and the next execution works.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Runs `code` with a `timeout_secs` budget, checks it ended within budget + 1.5 s, and returns the run.
async fn run_bounded(
    client: &mut Client,
    conversation: &str,
    code: &str,
    timeout_secs: f64,
) -> Run {
    let started = Instant::now();
    let config = format!(r#"{{"timeout_secs": {timeout_secs}}}"#);
    let run = call(
        client,
        request(conversation, "e", prompt_with(code, &config)),
    )
    .await
    .expect("a result, not an error");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs_f64(timeout_secs + 1.5),
        "took {took:?} for a {timeout_secs} s timeout"
    );
    assert!(run.ends_once());
    run
}

type Client =
    axp_transport::pb::agent_service_client::AgentServiceClient<tonic::transport::Channel>;

async fn next_execution_works(client: &mut Client, conversation: &str) {
    let run = run(client, conversation, "print(6*7)").await;
    assert_eq!(
        run.str_field("stdout").as_deref(),
        Some("42\n"),
        "{}",
        run.text()
    );
}

#[tokio::test]
async fn a_busy_loop_is_interrupted_at_its_timeout_and_keeps_state() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    run(&mut client, "c", "kept = 'yes'").await;
    let run = run_bounded(&mut client, "c", "n = 0\nwhile True:\n    n += 1", 1.0).await;
    assert!(run.bool_field("timed_out"));
    assert_eq!(run.str_field("error_type").as_deref(), Some("TimeoutError"));
    assert!(!run.bool_field("state_lost"));
    assert!(
        run.text().contains("timeout and was interrupted"),
        "{}",
        run.text()
    );
    assert_eq!(common::run(&mut client, "c", "kept").await.text(), "'yes'");
}

#[tokio::test]
async fn a_long_sleep_in_c_ends_at_its_timeout() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    let run = run_bounded(&mut client, "c", "import time\ntime.sleep(10**6)", 1.0).await;
    assert!(run.bool_field("timed_out"));
    assert_eq!(run.str_field("error_type").as_deref(), Some("TimeoutError"));
    next_execution_works(&mut client, "c").await;
}

#[tokio::test]
async fn code_that_ignores_the_interrupt_is_killed_and_the_user_is_told_state_was_lost() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    run(&mut client, "c", "kept = 1").await;
    let code = "import signal, time\nsignal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])\ntime.sleep(10**6)";
    let run = run_bounded(&mut client, "c", code, 1.0).await;
    assert!(run.bool_field("timed_out"));
    assert!(run.bool_field("state_lost"));
    let text = run.text();
    assert!(text.contains("was killed"), "{text}");
    assert!(text.contains("earlier executions are lost"), "{text}");
    next_execution_works(&mut client, "c").await;
    assert_eq!(
        common::run(&mut client, "c", "'kept' in globals()")
            .await
            .text(),
        "False"
    );
}

#[tokio::test]
async fn a_swallowed_keyboard_interrupt_still_ends_at_the_timeout() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    let code = "import time\nwhile True:\n    try:\n        time.sleep(0.01)\n    except BaseException:\n        pass";
    let run = run_bounded(&mut client, "c", code, 1.0).await;
    assert!(
        run.bool_field("timed_out") && run.bool_field("state_lost"),
        "{}",
        run.text()
    );
    next_execution_works(&mut client, "c").await;
}

#[tokio::test]
async fn a_memory_bomb_is_a_memory_error() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    let run = run_bounded(
        &mut client,
        "c",
        "x = []\nwhile True:\n    x.append(bytearray(10**7))",
        5.0,
    )
    .await;
    let error = run.str_field("error_type");
    // MemoryError under RLIMIT_AS; if an allocation outside Python failed instead, the worker died and restarted.
    assert!(
        matches!(error.as_deref(), Some("MemoryError" | "WorkerDied")),
        "{}",
        run.text()
    );
    next_execution_works(&mut client, "c").await;
}

#[tokio::test]
async fn os_exit_restarts_the_worker_and_says_so() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    let run = run_bounded(
        &mut client,
        "c",
        "print('bye', flush=True)\nimport os\nos._exit(3)",
        5.0,
    )
    .await;
    assert_eq!(run.str_field("error_type").as_deref(), Some("WorkerDied"));
    assert!(run.text().starts_with("bye\n"), "{}", run.text());
    assert!(run.text().contains("exit status 3"), "{}", run.text());
    assert!(run.bool_field("state_lost"));
    next_execution_works(&mut client, "c").await;
}

#[tokio::test]
async fn sys_exit_is_an_ordinary_exception_and_keeps_state() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    run(&mut client, "c", "kept = 1").await;
    let run = run_bounded(&mut client, "c", "import sys\nsys.exit(2)", 5.0).await;
    assert_eq!(run.str_field("error_type").as_deref(), Some("SystemExit"));
    assert!(!run.bool_field("state_lost"));
    assert_eq!(common::run(&mut client, "c", "kept").await.text(), "1");
}

#[tokio::test]
async fn infinite_recursion_is_a_recursion_error() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    let run = run_bounded(
        &mut client,
        "c",
        "def f(n):\n    return f(n + 1)\nf(0)",
        5.0,
    )
    .await;
    assert_eq!(
        run.str_field("error_type").as_deref(),
        Some("RecursionError")
    );
    next_execution_works(&mut client, "c").await;
}

#[tokio::test]
async fn a_segfault_via_ctypes_restarts_the_worker() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    let run = run_bounded(&mut client, "c", "import ctypes\nctypes.string_at(0)", 5.0).await;
    assert_eq!(run.str_field("error_type").as_deref(), Some("WorkerDied"));
    assert!(run.text().contains("SIGSEGV"), "{}", run.text());
    assert!(
        run.text().contains("earlier executions are lost"),
        "{}",
        run.text()
    );
    next_execution_works(&mut client, "c").await;
}

#[tokio::test]
async fn closing_stdout_does_not_break_later_executions() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    run_bounded(&mut client, "c", "import sys\nsys.stdout.close()", 5.0).await;
    next_execution_works(&mut client, "c").await;
    let run = run_bounded(
        &mut client,
        "c",
        "import os\nos.close(1)\nos.close(2)\nprint('lost')",
        5.0,
    )
    .await;
    assert!(!run.bool_field("ok"));
    next_execution_works(&mut client, "c").await;
}

#[tokio::test]
async fn fork_attempts_are_refused_or_contained() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    let run = run_bounded(&mut client, "c", "import os\nos.fork()", 5.0).await;
    assert_eq!(
        run.str_field("error_type").as_deref(),
        Some("PermissionError")
    );
    assert!(
        run.text().contains("os.fork is not allowed"),
        "{}",
        run.text()
    );
    // A fork behind the audit hook's back: the copy cannot answer for the worker, and it is killed when the
    // cell ends, so it never prints into a later execution.
    let code = "import ctypes, os, time\npid = ctypes.CDLL(None).fork()\nif not pid:\n    time.sleep(0.3)\nprint('parent' if pid else 'child')";
    let run = run_bounded(&mut client, "c", code, 5.0).await;
    assert_eq!(
        run.str_field("stdout").as_deref(),
        Some("parent\n"),
        "{}",
        run.text()
    );
    let later = common::run(&mut client, "c", "import time\ntime.sleep(0.6)\nprint(6*7)").await;
    assert_eq!(
        later.str_field("stdout").as_deref(),
        Some("42\n"),
        "{}",
        later.text()
    );
}

#[tokio::test]
async fn huge_output_is_capped_and_the_agent_stays_small() {
    let agent = agent(&["--output-limit-bytes", "100000"]).await;
    let mut client = client(&agent).await;
    let run = run_bounded(
        &mut client,
        "c",
        "for _ in range(200000):\n    print('x' * 99)",
        10.0,
    )
    .await;
    assert!(run.bool_field("stdout_truncated"));
    let stdout = run.str_field("stdout").unwrap();
    assert_eq!(stdout.len(), 100_000);
    assert!(
        run.text()
            .contains("[stdout truncated: showing the first 100000 of 20000000 bytes]"),
        "truncation marker"
    );
    let one_line = run_bounded(&mut client, "c", "print('y' * 50_000_000)", 10.0).await;
    assert!(one_line.bool_field("stdout_truncated"));
    let rss = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let kb: u64 = rss
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(kb < 100_000, "agent RSS {kb} kB");
    next_execution_works(&mut client, "c").await;
}

#[tokio::test]
async fn subprocesses_run_and_survive_the_cell_unless_blocked() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    let code =
        "import subprocess\nsubprocess.run(['echo', 'sub'])\np = subprocess.Popen(['sleep', '5'])";
    let run = run_bounded(&mut client, "c", code, 5.0).await;
    assert_eq!(
        run.str_field("stdout").as_deref(),
        Some("sub\n"),
        "{}",
        run.text()
    );
    assert_eq!(
        common::run(&mut client, "c", "p.poll() is None")
            .await
            .text(),
        "True"
    );

    let blocked = common::agent(&["--block-subprocess"]).await;
    let mut client = common::client(&blocked).await;
    let run = run_bounded(
        &mut client,
        "c",
        "import subprocess\nsubprocess.run(['echo', 'x'])",
        5.0,
    )
    .await;
    assert_eq!(
        run.str_field("error_type").as_deref(),
        Some("PermissionError"),
        "{}",
        run.text()
    );
    next_execution_works(&mut client, "c").await;
}
