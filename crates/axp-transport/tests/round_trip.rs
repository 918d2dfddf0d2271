//! Loopback gRPC: our client against our server over real TCP.

mod support;

use std::time::Duration;

use axp_transport::{
    AgentError, AxpClient, ClientError, ClientOptions, ServerOptions, content,
    pb::{AgentRequest, AgentStart, agent_service_client::AgentServiceClient},
};
use futures::StreamExt;
use support::{Script, serve, texts};
use tonic::Code;

fn start(prompt: &str, history: &str) -> AgentStart {
    AgentStart {
        agent_id: "py".into(),
        agent_config: br#"{"timeout_secs": 5}"#.to_vec(),
        ..content::planner_start(prompt, history)
    }
}

#[tokio::test]
async fn outputs_arrive_in_order_with_end_last_and_ids_echoed() {
    let batches = vec![texts(&["one"]), texts(&["two", "three"]), texts(&["four"])];
    let served = serve(
        Script::Batches(batches, Duration::from_millis(5)),
        ServerOptions::default(),
    )
    .await;
    let client = AxpClient::new(&served.url(), ClientOptions::default()).unwrap();

    let mut outputs = client
        .connect("conv-1", "exec-1", start("print(1)", ""))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Some(batch) = outputs.next().await {
        seen.push(content::planner_view(&batch.unwrap()));
    }
    assert_eq!(seen, ["one", "two\nthree", "four"]);
    assert!(outputs.ended(), "the stream must finish with `end`");
}

#[tokio::test]
async fn raw_frames_echo_ids_and_end_comes_exactly_once_and_last() {
    let served = serve(
        Script::Batches(vec![texts(&["a"]), texts(&["b"])], Duration::ZERO),
        ServerOptions::default(),
    )
    .await;
    let channel = tonic::transport::Endpoint::from_shared(served.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = AgentServiceClient::new(channel);
    let request = AgentRequest {
        conversation_id: "Conv-ÄÖ".into(),
        exec_id: "exec/7".into(),
        start: Some(AgentStart::default()),
    };
    let mut stream = raw.connect(request).await.unwrap().into_inner();
    let mut frames = Vec::new();
    while let Some(frame) = stream.message().await.unwrap() {
        frames.push(frame);
    }
    assert_eq!(frames.len(), 3);
    for frame in &frames {
        assert_eq!(frame.conversation_id, "Conv-ÄÖ");
        assert_eq!(frame.exec_id, "exec/7");
        assert!(frame.r#type.is_some(), "no frame may have its oneof unset");
    }
    use axp_transport::pb::agent_response::Type;
    assert!(matches!(frames[0].r#type, Some(Type::Outputs(_))));
    assert!(matches!(frames[1].r#type, Some(Type::Outputs(_))));
    assert!(matches!(frames[2].r#type, Some(Type::End(_))));
}

#[tokio::test]
async fn structured_prompt_history_config_and_execution_id_survive_the_wire() {
    let served = serve(
        Script::Batches(vec![texts(&["ok"])], Duration::ZERO),
        ServerOptions::default(),
    )
    .await;
    let client = AxpClient::new(&served.url(), ClientOptions::default()).unwrap();
    let prompt = "```python\nx = {'a': [1, 2]}\nprint(x)\n```\nand explain — ünïcode";
    let history = "user: hi\nmodel: hello";
    client
        .run("conv-9", "exec-42", start(prompt, history))
        .await
        .unwrap();

    let starts = served.record.starts.lock().unwrap();
    let (conversation, exec, got) = &starts[0];
    assert_eq!(
        (conversation.as_str(), exec.as_str()),
        ("conv-9", "exec-42")
    );
    assert_eq!(got.subagent_prompt, prompt);
    assert_eq!(got.subagent_history, history);
    assert_eq!(got.agent_id, "py");
    assert_eq!(got.agent_config, br#"{"timeout_secs": 5}"#);
    assert_eq!(
        content::last_user_text(&got.messages).unwrap(),
        format!("History Summary:\n{history}\n\nPrompt:\n{prompt}")
    );
    assert_eq!(
        served.record.execution_ids.lock().unwrap()[0].as_deref(),
        Some("exec-42"),
        "the client must send `execution-id` metadata as AX does"
    );
}

#[tokio::test]
async fn one_client_serves_sixteen_concurrent_calls() {
    let served = serve(
        Script::Batches(
            vec![texts(&["x"]), texts(&["y"])],
            Duration::from_millis(20),
        ),
        ServerOptions::default(),
    )
    .await;
    let client = AxpClient::dial(&served.url(), ClientOptions::default())
        .await
        .unwrap();
    let calls = (0..16).map(|i| {
        let client = client.clone();
        async move {
            client
                .run(&format!("c{i}"), &format!("e{i}"), AgentStart::default())
                .await
        }
    });
    let results = futures::future::join_all(calls).await;
    for result in results {
        assert_eq!(content::planner_view(&result.unwrap()), "x\ny");
    }
    assert_eq!(served.record.starts.lock().unwrap().len(), 16);
}

#[tokio::test]
async fn a_request_without_start_is_rejected_with_invalid_argument() {
    let served = serve(
        Script::Batches(vec![], Duration::ZERO),
        ServerOptions::default(),
    )
    .await;
    let channel = tonic::transport::Endpoint::from_shared(served.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = AgentServiceClient::new(channel)
        .connect(AgentRequest {
            conversation_id: "c".into(),
            exec_id: "e".into(),
            start: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("start"), "{}", status.message());
    assert!(
        served.record.starts.lock().unwrap().is_empty(),
        "the agent must not see it"
    );
}

#[tokio::test]
async fn agent_errors_reach_the_client_as_typed_statuses() {
    let served = serve(
        Script::Refuse(AgentError::PermissionDenied(
            "pinned to conversation a".into(),
        )),
        ServerOptions::default(),
    )
    .await;
    let client = AxpClient::new(&served.url(), ClientOptions::default()).unwrap();
    let error = client
        .connect("b", "e", AgentStart::default())
        .await
        .unwrap_err();
    match error {
        ClientError::Status { code, message } => {
            assert_eq!(code, Code::PermissionDenied);
            assert_eq!(message, "pinned to conversation a");
        }
        other => panic!("expected a status, got {other:?}"),
    }
}

#[tokio::test]
async fn an_error_after_outputs_ends_the_stream_with_that_status_and_no_end() {
    let served = serve(
        Script::FailAfterOne(
            texts(&["partial"]),
            AgentError::Internal("worker died".into()),
        ),
        ServerOptions::default(),
    )
    .await;
    let client = AxpClient::new(&served.url(), ClientOptions::default()).unwrap();
    let mut outputs = client
        .connect("c", "e", AgentStart::default())
        .await
        .unwrap();
    assert_eq!(
        content::planner_view(&outputs.next().await.unwrap().unwrap()),
        "partial"
    );
    let error = outputs.next().await.unwrap().unwrap_err();
    assert_eq!(error.code(), Some(Code::Internal));
    assert!(outputs.next().await.is_none());
    assert!(!outputs.ended());
}

#[tokio::test]
async fn dropping_the_outputs_cancels_the_execution_on_the_server_within_a_second() {
    let served = serve(Script::Hang, ServerOptions::default()).await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    *served.record.cancelled_tx.lock().unwrap() = Some(tx);
    let client = AxpClient::new(&served.url(), ClientOptions::default()).unwrap();
    let outputs = client
        .connect("c", "e", AgentStart::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(outputs);
    tokio::time::timeout(Duration::from_secs(1), rx)
        .await
        .expect("the server's handler must observe the cancel within 1 s")
        .unwrap();
}

#[tokio::test]
async fn the_client_deadline_covers_a_stalled_stream_and_cancels_the_server() {
    let served = serve(Script::Hang, ServerOptions::default()).await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    *served.record.cancelled_tx.lock().unwrap() = Some(tx);
    let options = ClientOptions {
        timeout: Some(Duration::from_millis(300)),
        ..ClientOptions::default()
    };
    let client = AxpClient::new(&served.url(), options).unwrap();
    let mut outputs = client
        .connect("c", "e", AgentStart::default())
        .await
        .unwrap();
    let error = outputs.next().await.unwrap().unwrap_err();
    assert!(
        matches!(error, ClientError::DeadlineExceeded { timeout } if timeout == Duration::from_millis(300)),
        "{error:?}"
    );
    tokio::time::timeout(Duration::from_secs(1), rx)
        .await
        .expect("the server must see the deadline too")
        .unwrap();
}

#[tokio::test]
async fn calls_over_the_execution_limit_are_refused_with_resource_exhausted() {
    let options = ServerOptions {
        max_concurrent_executions: 1,
        ..ServerOptions::default()
    };
    let served = serve(Script::Hang, options).await;
    let client = AxpClient::new(&served.url(), ClientOptions::default()).unwrap();
    let first = client
        .connect("c1", "e1", AgentStart::default())
        .await
        .unwrap();
    let error = client
        .connect("c2", "e2", AgentStart::default())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::ResourceExhausted));
    drop(first);
    // The permit is released once the first call is gone.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = client.connect("c3", "e3", AgentStart::default()).await;
    assert!(again.is_ok(), "{again:?}");
}

#[tokio::test]
async fn bearer_token_guards_connect_but_not_health() {
    let options = ServerOptions {
        bearer_token: Some("t0ken".into()),
        ..ServerOptions::default()
    };
    let served = serve(
        Script::Batches(vec![texts(&["hi"])], Duration::ZERO),
        options,
    )
    .await;

    let anonymous = AxpClient::new(&served.url(), ClientOptions::default()).unwrap();
    let error = anonymous
        .connect("c", "e", AgentStart::default())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::Unauthenticated));
    anonymous
        .wait_until_serving(Default::default())
        .await
        .expect("grpc.health.v1 stays open for probes");

    let wrong = AxpClient::new(
        &served.url(),
        ClientOptions {
            bearer_token: Some("t0kem".into()),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let error = wrong
        .connect("c", "e", AgentStart::default())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::Unauthenticated));

    let right = AxpClient::new(
        &served.url(),
        ClientOptions {
            bearer_token: Some("t0ken".into()),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let messages = right.run("c", "e", AgentStart::default()).await.unwrap();
    assert_eq!(content::planner_view(&messages), "hi");
}

#[tokio::test]
async fn gzip_in_both_directions_round_trips_large_outputs() {
    let big = "x".repeat(512 * 1024);
    let served = serve(
        Script::Batches(vec![texts(&[big.as_str()])], Duration::ZERO),
        ServerOptions::default(),
    )
    .await;
    let client = AxpClient::new(
        &served.url(),
        ClientOptions {
            gzip: true,
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let start = AgentStart {
        subagent_prompt: "y".repeat(256 * 1024),
        ..AgentStart::default()
    };
    let messages = client.run("c", "e", start).await.unwrap();
    assert_eq!(content::planner_view(&messages).len(), big.len());
    assert_eq!(
        served.record.starts.lock().unwrap()[0]
            .2
            .subagent_prompt
            .len(),
        256 * 1024
    );
}

#[tokio::test]
async fn a_request_over_the_servers_message_limit_is_refused_and_the_server_lives_on() {
    let options = ServerOptions {
        max_message_size: 64 * 1024,
        ..ServerOptions::default()
    };
    let served = serve(
        Script::Batches(vec![texts(&["ok"])], Duration::ZERO),
        options,
    )
    .await;
    let client = AxpClient::new(&served.url(), ClientOptions::default()).unwrap();
    let oversized = AgentStart {
        subagent_prompt: "z".repeat(128 * 1024),
        ..AgentStart::default()
    };
    let error = client.connect("c", "e", oversized).await.unwrap_err();
    assert_eq!(error.code(), Some(Code::OutOfRange), "{error}");
    let messages = client.run("c", "e2", AgentStart::default()).await.unwrap();
    assert_eq!(content::planner_view(&messages), "ok");
}

#[tokio::test]
async fn an_unreachable_agent_is_a_connect_failure() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let error = AxpClient::dial(&format!("http://{addr}"), ClientOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::Connect { .. }), "{error:?}");
    assert!(error.is_connect_failure());

    let lazy = AxpClient::new(&format!("http://{addr}"), ClientOptions::default()).unwrap();
    let error = lazy
        .connect("c", "e", AgentStart::default())
        .await
        .unwrap_err();
    assert!(error.is_connect_failure(), "{error:?}");
}

#[tokio::test]
async fn the_server_enforces_the_callers_grpc_timeout_and_cancels_the_agent() {
    let served = serve(Script::Hang, ServerOptions::default()).await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    *served.record.cancelled_tx.lock().unwrap() = Some(tx);
    // A raw client that sends `grpc-timeout` but does not enforce it itself.
    let channel = tonic::transport::Endpoint::from_shared(served.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = tonic::Request::new(AgentRequest {
        conversation_id: "c".into(),
        exec_id: "e".into(),
        start: Some(AgentStart::default()),
    });
    request.set_timeout(Duration::from_millis(200));
    let mut stream = AgentServiceClient::new(channel)
        .connect(request)
        .await
        .unwrap()
        .into_inner();
    let status = tokio::time::timeout(Duration::from_secs(3), stream.message())
        .await
        .expect("the server must end the call at the deadline")
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    tokio::time::timeout(Duration::from_secs(1), rx)
        .await
        .expect("the agent must see the cancel")
        .unwrap();
}
