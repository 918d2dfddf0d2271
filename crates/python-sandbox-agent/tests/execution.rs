//! What an execution runs and what it sends back, over real gRPC to the real binary.

mod common;

use std::time::{Duration, Instant};

use axp_transport::{content, pb::AgentStart};
use common::*;
use futures::StreamExt as _;

#[tokio::test]
async fn a_structured_prompt_runs_and_ends_with_exactly_one_end() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    let run = run(&mut client, "c1", "print(7*6)").await;
    assert_eq!(run.text(), "42");
    assert!(run.bool_field("ok"));
    assert_eq!(run.str_field("stdout").as_deref(), Some("42\n"));
}

#[tokio::test]
async fn the_legacy_envelope_runs_the_text_after_prompt() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    let start = AgentStart {
        messages: vec![content::user_text(
            "History Summary:\nuser: compute\nmodel: ok\n\nPrompt:\nprint('from envelope')",
        )],
        ..AgentStart::default()
    };
    let run = call(&mut client, request("c1", "e1", start)).await.unwrap();
    assert!(run.ends_once());
    assert_eq!(run.text(), "from envelope");
}

#[tokio::test]
async fn fenced_python_blocks_run_in_order_and_other_fences_are_skipped() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    let run = run(
        &mut client,
        "c1",
        "First:\n```python\na = 20\nprint('one')\n```\nnot this:\n```bash\nrm -rf /\n```\n```py\nprint('two')\na + 22\n```",
    )
    .await;
    assert_eq!(run.text(), "one\ntwo\n42");
}

#[tokio::test]
async fn variables_imports_and_functions_persist_across_turns() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    run(
        &mut client,
        "c1",
        "import math\nx = 41\ndef inc(v):\n    return v + 1",
    )
    .await;
    let run2 = run(&mut client, "c1", "print(inc(x), math.floor(2.5))").await;
    assert_eq!(run2.text(), "42 2");
}

#[tokio::test]
async fn the_last_expression_value_is_reported_like_a_notebook() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    let run1 = run(&mut client, "c1", "x = [1, 2]\nx + [3]").await;
    assert_eq!(run1.text(), "[1, 2, 3]");
    assert_eq!(run1.str_field("value").as_deref(), Some("[1, 2, 3]"));
    // A None value (print's) is not reported, and `_` holds the last value.
    let run2 = run(&mut client, "c1", "print(_)").await;
    assert_eq!(run2.text(), "[1, 2, 3]");
    assert_eq!(run2.str_field("value"), None);
}

#[tokio::test]
async fn one_line_cells_run_alike_whether_expressions_or_statements() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    let statement = run(&mut client, "c1", "x = 6").await;
    assert!(statement.bool_field("ok"));
    assert_eq!(statement.str_field("value"), None);
    let expression = run(&mut client, "c1", "x * 7  # a comment").await;
    assert_eq!(expression.str_field("value").as_deref(), Some("42"));
    // Statements and an expression on one line: the last expression's value, as on several lines.
    let both = run(&mut client, "c1", "import math; math.floor(x / 4)").await;
    assert_eq!(both.str_field("value").as_deref(), Some("1"));
    let failing = run(&mut client, "c1", "x / 0").await;
    assert_eq!(
        failing.str_field("error_type").as_deref(),
        Some("ZeroDivisionError")
    );
    let traceback = failing.str_field("traceback").unwrap_or_default();
    assert!(traceback.contains("line 1"), "{traceback}");
    assert!(!traceback.contains("axp-driver"), "{traceback}");
}

#[tokio::test]
async fn exceptions_are_results_with_a_traceback_not_errors() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    let run = run(&mut client, "c1", "print('before')\n1/0").await;
    let text = run.text();
    assert!(
        text.starts_with("before\nTraceback (most recent call last):"),
        "{text}"
    );
    assert!(
        text.contains("ZeroDivisionError: division by zero"),
        "{text}"
    );
    assert!(!text.contains("axp-driver"), "{text}");
    assert_eq!(
        run.str_field("error_type").as_deref(),
        Some("ZeroDivisionError")
    );
    assert!(!run.bool_field("ok"));
    let syntax = common::run(&mut client, "c1", "def f(:").await;
    assert_eq!(
        syntax.str_field("error_type").as_deref(),
        Some("SyntaxError")
    );
}

#[tokio::test]
async fn output_streams_while_a_slow_snippet_runs() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    let started = Instant::now();
    let mut stream = client
        .connect(request(
            "c1",
            "e1",
            prompt("import time\nprint('early', flush=True)\ntime.sleep(1.5)\nprint('late')"),
        ))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    let first_at = started.elapsed();
    let texts: Vec<_> = match first.r#type {
        Some(axp_transport::pb::agent_response::Type::Outputs(o)) => o
            .messages
            .iter()
            .filter_map(|m| content::text_of(m).map(str::to_owned))
            .collect(),
        other => panic!("first frame is not outputs: {other:?}"),
    };
    assert_eq!(texts, ["early"]);
    assert!(
        first_at < Duration::from_millis(1000),
        "first frame after {first_at:?}"
    );
    while stream.next().await.is_some() {}
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

#[tokio::test]
async fn output_alone_in_flight_reaches_the_client_before_the_snippet_goes_on() {
    // An hour-long coalescing interval: only output that is never held can arrive while the snippet waits.
    let agent = agent(&["--flush-interval-ms", "3600000"]).await;
    let mut client = client(&agent).await;
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("release");
    // The snippet blocks until the test has seen its first frame (or gives up after 8 s, which fails the test).
    let code = format!(
        "import os, time\nprint('first')\nfor _ in range(800):\n    if os.path.exists({release:?}): break\n    \
         time.sleep(0.01)\nprint('released' if os.path.exists({release:?}) else 'gave up')",
        release = release.to_str().unwrap()
    );
    let mut stream = client
        .connect(request("c1", "e1", prompt(&code)))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    let texts: Vec<_> = match first.r#type {
        Some(axp_transport::pb::agent_response::Type::Outputs(o)) => o
            .messages
            .iter()
            .filter_map(|m| content::text_of(m).map(str::to_owned))
            .collect(),
        other => panic!("first frame is not outputs: {other:?}"),
    };
    assert_eq!(
        texts,
        ["first"],
        "the first frame holds the first print alone"
    );
    std::fs::write(&release, b"").unwrap();
    let mut rest = Vec::new();
    while let Some(frame) = stream.next().await {
        if let Some(axp_transport::pb::agent_response::Type::Outputs(o)) = frame.unwrap().r#type {
            rest.extend(o.messages);
        }
    }
    assert!(
        content::planner_view(&rest).contains("released"),
        "the snippet went on only after the client saw its first output: {}",
        content::planner_view(&rest)
    );
}

#[tokio::test]
async fn a_print_loop_is_coalesced_and_joined_frames_rebuild_the_output() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    let run = run(
        &mut client,
        "c1",
        "import time\nfor i in range(2000):\n    print(i)\n    if i % 500 == 0: time.sleep(0.03)",
    )
    .await;
    let expected: Vec<String> = (0..2000).map(|i| i.to_string()).collect();
    assert_eq!(run.text(), expected.join("\n"));
    let frames = run.texts().len();
    assert!(frames < 50, "{frames} text frames for 2000 lines");
    assert!(frames > 1, "output was streamed, not sent once");
}

#[tokio::test]
async fn stderr_and_c_level_writes_are_captured() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    let run = run(
        &mut client,
        "c1",
        "import os, sys\nprint('warn', file=sys.stderr)\nos.system('echo from-shell')",
    )
    .await;
    assert_eq!(run.str_field("stderr").as_deref(), Some("warn\n"));
    assert_eq!(run.str_field("stdout").as_deref(), Some("from-shell\n"));
    assert!(run.text().contains("from-shell") && run.text().contains("warn"));
}

#[tokio::test]
async fn prints_and_fd_writes_arrive_in_the_order_they_were_made() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    let code =
        "import os\nfor i in range(50):\n    os.write(1, b'fd %d\\n' % i)\n    print('print', i)";
    let run = run(&mut client, "c1", code).await;
    let expected: String = (0..50).map(|i| format!("fd {i}\nprint {i}\n")).collect();
    assert_eq!(run.str_field("stdout").as_deref(), Some(expected.as_str()));
}

#[tokio::test]
async fn print_follows_fd_1_when_the_code_points_it_elsewhere() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    let code = "import os, sys\n\
                saved = os.dup(1)\n\
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)\n\
                print('silenced')\n\
                sys.stdout.flush()\n\
                os.dup2(saved, 1)\n\
                print('shown')";
    let run = run(&mut client, "c1", code).await;
    assert_eq!(
        run.str_field("stdout").as_deref(),
        Some("shown\n"),
        "{}",
        run.text()
    );
}

#[tokio::test]
async fn agent_config_sets_the_timeout_and_can_reset_the_namespace() {
    let agent = agent(&[]).await;
    let mut client = client(&agent).await;
    run(&mut client, "c1", "kept = 1").await;
    let reset = call(
        &mut client,
        request(
            "c1",
            "e2",
            prompt_with("'kept' in globals()", r#"{"reset": true}"#),
        ),
    )
    .await
    .unwrap();
    assert_eq!(reset.text(), "False");
    let started = Instant::now();
    let slow = call(
        &mut client,
        request(
            "c1",
            "e3",
            prompt_with("import time\ntime.sleep(30)", r#"{"timeout_secs": 0.5}"#),
        ),
    )
    .await
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(slow.bool_field("timed_out"));
}
