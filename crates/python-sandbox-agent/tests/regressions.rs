//! Regressions: each test here failed before its fix.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt as _;

#[tokio::test]
async fn a_shell_child_does_not_inherit_the_protocol_pipe() {
    // A background process started through `os.system` used to hold a copy of the worker's protocol pipe, so a
    // worker that then crashed was not seen to die until the cell's timeout (and was misreported as a timeout).
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    let started = Instant::now();
    let code = "import ctypes, os\nos.system('sleep 30 > /dev/null 2>&1 &')\nctypes.string_at(0)";
    let run = call(
        &mut client,
        request("c", "e", prompt_with(code, r#"{"timeout_secs": 20}"#)),
    )
    .await
    .expect("a result");
    assert!(run.ends_once());
    assert_eq!(
        run.str_field("error_type").as_deref(),
        Some("WorkerDied"),
        "{}",
        run.text()
    );
    assert!(run.text().contains("SIGSEGV"), "{}", run.text());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        common::run(&mut client, "c", "print(6*7)").await.text(),
        "42"
    );
}

#[tokio::test]
async fn a_worker_that_leaves_its_process_group_is_still_killed_at_the_timeout() {
    // Killing only the process group missed a worker that had moved itself into another group: the kill never
    // landed, the run waited for the worker forever, and the call never ended.
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    let code = "import os, signal, subprocess, time\n\
                p = subprocess.Popen(['sleep', '20'], process_group=0)\n\
                os.setpgid(0, p.pid)\n\
                signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])\n\
                time.sleep(10**6)";
    let started = Instant::now();
    let run = within(
        Duration::from_secs(10),
        call(
            &mut client,
            request("c", "e", prompt_with(code, r#"{"timeout_secs": 1}"#)),
        ),
    )
    .await
    .expect("a result");
    assert!(run.ends_once());
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        run.bool_field("timed_out") && run.bool_field("state_lost"),
        "{}",
        run.text()
    );
    let next = within(
        Duration::from_secs(10),
        common::run(&mut client, "c", "print(6*7)"),
    )
    .await;
    assert_eq!(next.text(), "42");
}

#[tokio::test]
async fn a_huge_exception_message_is_an_ordinary_error_and_keeps_state() {
    // The message and traceback were unbounded: past the protocol's frame limit the agent took the worker for
    // broken, killed it and reported `WorkerDied`, losing the namespace.
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    run(&mut client, "c", "kept = 1").await;
    let run = within(
        Duration::from_secs(20),
        common::run(&mut client, "c", "raise ValueError('x' * 10**8)"),
    )
    .await;
    assert_eq!(run.str_field("error_type").as_deref(), Some("ValueError"));
    assert!(!run.bool_field("state_lost"));
    let message = run.str_field("error_message").unwrap();
    assert!(message.len() < 100_000, "{} bytes", message.len());
    assert!(message.ends_with("[truncated]"));
    assert_eq!(common::run(&mut client, "c", "kept").await.text(), "1");
}

#[tokio::test]
async fn the_final_frames_fit_a_default_grpc_client_at_the_default_output_limit() {
    // The rest of both streams, the summary (with the value) and the structured copy of both streams used to travel
    // in one message: about 6 MB here, which a default gRPC client (4 MiB) refuses, so the caller got an error
    // instead of the result.
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    let code = "import sys\nsys.stdout.write('o' * 1000000)\nsys.stderr.write('e' * 1000000)\n'v' * 999000";
    let run = call(&mut client, request("c", "e", prompt(code)))
        .await
        .expect("a result, not a status");
    assert!(run.ends_once());
    assert_eq!(run.str_field("stdout").unwrap().len(), 1_000_000);
    assert_eq!(run.str_field("stderr").unwrap().len(), 1_000_000);
    let texts = run.texts();
    assert_eq!(texts[0], "o".repeat(1_000_000));
    assert_eq!(texts[1], "e".repeat(1_000_000));
    assert!(texts[2].starts_with("'vvv"), "summary holds the value");
}

#[tokio::test]
async fn an_evicted_conversation_is_told_its_state_is_gone() {
    // With --unpinned, a conversation whose worker was evicted came back to an empty namespace without a word.
    let agent = agent(&["--unpinned", "--max-conversations", "1"]).await;
    let mut client = client(&agent).await;
    run(&mut client, "a", "kept = 1").await;
    run(&mut client, "b", "other = 1").await;
    let back = run(&mut client, "a", "'kept' in globals()").await;
    assert!(back.bool_field("state_lost"), "{}", back.text());
    let text = back.text();
    assert!(text.starts_with("False\n"), "{text}");
    assert!(text.contains("earlier executions are lost"), "{text}");
    // Said once.
    let again = run(&mut client, "a", "1").await;
    assert!(!again.bool_field("state_lost"));
    assert_eq!(again.text(), "1");
}

#[tokio::test]
async fn a_cell_that_ignores_the_interrupt_is_killed_before_the_callers_deadline() {
    // The timeout is cut to the caller's deadline minus a margin, but the kill came half a second after the
    // interrupt, past the deadline: the caller got DEADLINE_EXCEEDED instead of a result.
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    run(&mut client, "c", "kept = 1").await;
    let code = "import signal, time\nsignal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])\ntime.sleep(10**6)";
    let mut req = tonic::Request::new(request("c", "e2", prompt(code)));
    req.set_timeout(Duration::from_secs(3));
    let mut stream = client.connect(req).await.expect("started").into_inner();
    let mut frames = Vec::new();
    while let Some(frame) = stream.next().await {
        frames.push(frame.expect("a result, not DEADLINE_EXCEEDED"));
    }
    let run = Run { frames };
    assert!(run.ends_once());
    assert!(
        run.bool_field("timed_out") && run.bool_field("state_lost"),
        "{}",
        run.text()
    );
    let next = within(
        Duration::from_secs(10),
        common::run(&mut client, "c", "print(6*7)"),
    )
    .await;
    assert_eq!(next.text(), "42");
}

#[tokio::test]
async fn code_using_every_core_outside_the_gil_is_not_killed_by_the_cpu_backstop() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        return; // one core: CPU time cannot outrun wall time
    }
    // Threads hashing in C release the GIL, so CPU time grows `cores` times faster
    // than wall time. With a 4 s timeout, the old backstop of timeout + 2 CPU
    // seconds let the kernel kill the worker (SIGXCPU) about 3 s in.
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    let code = format!(
        "import hashlib, threading, time\n\
         data = b'x' * (8 << 20)\n\
         end = time.monotonic() + 3.5\n\
         def spin():\n\
         \x20   while time.monotonic() < end:\n\
         \x20       hashlib.sha256(data).digest()\n\
         threads = [threading.Thread(target=spin) for _ in range({cores})]\n\
         [t.start() for t in threads]\n\
         [t.join() for t in threads]\n\
         kept = 'alive'\n"
    );
    let run = call(
        &mut client,
        request("c", "e1", prompt_with(&code, r#"{"timeout_secs": 4}"#)),
    )
    .await
    .expect("a result");
    assert!(run.bool_field("ok"), "{}", run.text());
    assert_eq!(
        common::run(&mut client, "c", "kept").await.text(),
        "'alive'"
    );
}
