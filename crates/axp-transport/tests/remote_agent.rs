//! A plain AXP endpoint, driven through the `RemoteAgent` trait a controller
//! holds every kind of agent by.

mod support;

use std::time::Duration;

use axp_transport::{
    AgentError, ClientError, ClientOptions, ServerOptions, content,
    remote::{EndpointAgent, RemoteAgent, RemoteAgentError},
};
use support::{Script, serve, texts};
use tonic::Code;

fn agent_at(url: &str) -> Box<dyn RemoteAgent> {
    Box::new(EndpointAgent::new(url, ClientOptions::default()).unwrap())
}

#[tokio::test]
async fn an_endpoint_agent_delivers_every_batch_in_order_and_summarizes_the_execution() {
    let served = serve(
        Script::Batches(
            vec![texts(&["one"]), texts(&["two", "three"])],
            Duration::from_millis(5),
        ),
        ServerOptions::default(),
    )
    .await;
    let agent = agent_at(&served.url());
    let mut seen = Vec::new();
    let summary = agent
        .execute(
            "conv",
            "e1",
            content::planner_start("go", ""),
            &mut |batch| seen.push(content::planner_view(&batch)),
        )
        .await
        .unwrap();
    assert_eq!(seen, ["one", "two\nthree"]);
    assert_eq!(summary.frames, 2);
    assert!(summary.ended, "the server sent `end`");
    assert!(
        summary
            .first_output
            .is_some_and(|first| first <= summary.total)
    );
    let starts = served.record.starts.lock().unwrap();
    assert_eq!((starts[0].0.as_str(), starts[0].1.as_str()), ("conv", "e1"));
}

#[tokio::test]
async fn a_refusal_is_a_start_error_with_the_agents_code_and_the_client_error_as_source() {
    let served = serve(
        Script::Refuse(AgentError::InvalidArgument("no code".into())),
        ServerOptions::default(),
    )
    .await;
    let agent = agent_at(&served.url());
    let error = agent
        .execute("conv", "e1", content::planner_start("", ""), &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(error, RemoteAgentError::Start { .. }), "{error:?}");
    assert_eq!(error.code(), Some(Code::InvalidArgument));
    assert_eq!(error.outputs_delivered(), 0);
    let source = std::error::Error::source(&error).unwrap();
    assert!(source.downcast_ref::<ClientError>().is_some(), "{source:?}");
}

#[tokio::test]
async fn a_failure_after_output_is_a_stream_error_that_counts_what_was_delivered() {
    let served = serve(
        Script::FailAfterOne(texts(&["partial"]), AgentError::Internal("crashed".into())),
        ServerOptions::default(),
    )
    .await;
    let agent = agent_at(&served.url());
    let mut seen = 0;
    let error = agent
        .execute("conv", "e1", content::planner_start("go", ""), &mut |_| {
            seen += 1
        })
        .await
        .unwrap_err();
    assert_eq!(seen, 1);
    assert!(
        matches!(error, RemoteAgentError::Stream { outputs: 1, .. }),
        "{error:?}"
    );
    assert_eq!(error.code(), Some(Code::Internal));
}

#[tokio::test]
async fn an_endpoint_nobody_listens_on_is_a_start_error_marked_unavailable() {
    // Bind and drop a listener: the port is free and nothing accepts on it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let agent = agent_at(&format!("http://{addr}"));
    let error = agent
        .execute("conv", "e1", content::planner_start("go", ""), &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(error, RemoteAgentError::Start { .. }), "{error:?}");
    assert_eq!(error.code(), Some(Code::Unavailable));
    let client_error = std::error::Error::source(&error)
        .and_then(|source| source.downcast_ref::<ClientError>())
        .expect("the client's error is the source");
    assert!(client_error.is_connect_failure(), "{client_error:?}");
}
