//! grpc.health.v1, reflection (v1 and v1alpha), and graceful shutdown of the AXP server.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axp_transport::{
    AxpClient, ClientError, ClientOptions, HarnessClient, ServerOptions, client::WaitOptions,
    content, pb::AgentStart,
};
use futures::StreamExt;
use support::{Script, serve, serve_agent_with, texts};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

async fn channel(url: String) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_wait_helper_sees_not_serving_turn_into_serving() {
    let served = serve_agent_with(
        Script::Batches(vec![], Duration::ZERO),
        ServerOptions::default(),
        false,
    )
    .await;
    let client = AxpClient::new(&served.url(), ClientOptions::default()).unwrap();
    assert!(
        !client.health_check().await.unwrap().healthy,
        "AXP HealthCheck agrees while not serving"
    );

    let flipped = Arc::new(AtomicBool::new(false));
    let waiter = {
        let client = client.clone();
        let flipped = flipped.clone();
        tokio::spawn(async move {
            client
                .wait_until_serving(WaitOptions::default())
                .await
                .unwrap();
            flipped.load(Ordering::SeqCst)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "must keep waiting while NOT_SERVING");
    flipped.store(true, Ordering::SeqCst);
    served.health.set_serving().await;
    let saw_flip = tokio::time::timeout(Duration::from_secs(3), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(saw_flip, "returned only after SERVING was reported");
    assert!(client.health_check().await.unwrap().healthy);
}

#[tokio::test]
async fn the_wait_helper_gives_up_with_the_last_status_seen() {
    let served = serve_agent_with(
        Script::Batches(vec![], Duration::ZERO),
        ServerOptions::default(),
        false,
    )
    .await;
    let client = AxpClient::new(&served.url(), ClientOptions::default()).unwrap();
    let options = WaitOptions {
        timeout: Duration::from_millis(200),
        ..WaitOptions::default()
    };
    let error = client.wait_until_serving(options).await.unwrap_err();
    match error {
        ClientError::NotServing { last, .. } => assert!(last.contains("NotServing"), "{last}"),
        other => panic!("expected NotServing, got {other:?}"),
    }
}

#[tokio::test]
async fn the_empty_service_and_both_ax_services_report_health() {
    let served = serve(
        Script::Batches(vec![], Duration::ZERO),
        ServerOptions::default(),
    )
    .await;
    let mut health = HealthClient::new(channel(served.url()).await);
    for service in ["", "ax.AgentService", "ax.HarnessService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
}

#[tokio::test]
async fn health_for_the_empty_service_is_not_serving_until_the_agent_can_run_work() {
    let served = serve_agent_with(
        Script::Batches(vec![texts(&["ok"])], Duration::ZERO),
        ServerOptions::default(),
        false,
    )
    .await;
    let harness = HarnessClient::new(&served.url(), ClientOptions::default()).unwrap();
    assert_eq!(
        harness.serving_status().await.unwrap(),
        ServingStatus::NotServing
    );
    let quick = WaitOptions {
        timeout: Duration::from_millis(200),
        ..WaitOptions::default()
    };
    assert!(
        matches!(
            harness.wait_until_serving(quick).await,
            Err(ClientError::NotServing { .. })
        ),
        "NOT_SERVING is retried, not taken for ready"
    );
    served.health.set_serving().await;
    assert_eq!(
        harness.serving_status().await.unwrap(),
        ServingStatus::Serving
    );
    harness.wait_until_serving(quick).await.unwrap();
}

#[tokio::test]
async fn reflection_v1alpha_lists_both_ax_services_for_older_grpcurl_and_grpcio() {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let served = serve(
        Script::Batches(vec![], Duration::ZERO),
        ServerOptions::default(),
    )
    .await;
    let mut reflection = ServerReflectionClient::new(channel(served.url()).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for service in [
        "ax.AgentService",
        "ax.HarnessService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&service.to_owned()), "{service}: {names:?}");
    }
}

#[tokio::test]
async fn reflection_lists_the_agent_service_so_grpcurl_needs_no_protos() {
    let served = serve(
        Script::Batches(vec![], Duration::ZERO),
        ServerOptions::default(),
    )
    .await;
    let mut reflection = ServerReflectionClient::new(channel(served.url()).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"ax.AgentService".to_owned()), "{names:?}");
    assert!(names.contains(&"ax.HarnessService".to_owned()), "{names:?}");
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );

    // And the file that defines it resolves, imports included.
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "ax.AgentService".into(),
        )),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    assert!(
        matches!(response.message_response, Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
        "{response:?}"
    );
}

#[tokio::test]
async fn shutdown_lets_a_running_execution_finish_within_the_grace_period() {
    let batches = vec![texts(&["a"]), texts(&["b"]), texts(&["c"])];
    let mut served = serve(
        Script::Batches(batches, Duration::from_millis(200)),
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
        "a"
    );

    let mut health = HealthClient::new(channel(served.url()).await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    served.begin_shutdown();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32,
        "health turns NOT_SERVING as soon as shutdown starts"
    );
    drop(watch);

    let mut rest = Vec::new();
    while let Some(batch) = outputs.next().await {
        rest.push(content::planner_view(&batch.unwrap()));
    }
    assert_eq!(rest, ["b", "c"]);
    assert!(
        outputs.ended(),
        "the drained execution still ends with `end`"
    );
    let result = tokio::time::timeout(Duration::from_secs(5), served.task)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_ok(), "{result:?}");

    let error = client
        .connect("c", "late", AgentStart::default())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::Unavailable), "{error}");
}

#[tokio::test]
async fn executions_still_running_when_the_grace_period_ends_are_cancelled_with_unavailable() {
    let options = ServerOptions {
        grace_period: Duration::from_millis(200),
        ..ServerOptions::default()
    };
    let mut served = serve(Script::Hang, options).await;
    let client = AxpClient::new(&served.url(), ClientOptions::default()).unwrap();
    let mut outputs = client
        .connect("c", "e", AgentStart::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    served.begin_shutdown();

    let error = tokio::time::timeout(Duration::from_secs(3), outputs.next())
        .await
        .expect("the hung execution must be ended after the grace period")
        .unwrap()
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::Unavailable), "{error}");
    assert_eq!(
        served.record.cancelled.load(Ordering::SeqCst),
        1,
        "the agent saw the cancel"
    );
    let result = tokio::time::timeout(Duration::from_secs(8), served.task)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}
