//! The exact HTTP requests of one claim's life (create → watch → release), asserted with a
//! `tower-test` mock in place of the API server.

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use sandbox_claim::{
    ClaimOptions, Claims, Propagation, VersionSelection, WatchMode, labels, naming,
};
use serde_json::{Value, json};
use std::pin::pin;
use tower_test::mock;

const BASE: &str = "/apis/extensions.agents.x-k8s.io/v1beta1/namespaces/agents/sandboxclaims";

async fn body_json(req: Request<Body>) -> Value {
    let bytes = req.into_body().collect_bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn respond(send: mock::SendResponse<Response<Body>>, code: StatusCode, body: &Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

#[tokio::test]
async fn one_claim_is_one_create_one_watch_one_get_and_one_delete() {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "agents");
    let claims = Claims::new(
        client,
        ClaimOptions::default()
            .namespace("agents")
            .source("pool")
            .api_version(VersionSelection::V1beta1)
            .propagation(Propagation::Foreground)
            // The watch of this claim alone; the shared watch is counted in `fake_cluster`.
            .watch(WatchMode::PerClaim),
    );
    let name = naming::claim_name("conv", "c-1").unwrap();

    let server = tokio::spawn({
        let name = name.clone();
        async move {
            let mut handle = pin!(handle);

            // 1. Create.
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), Method::POST);
            assert_eq!(
                req.uri().to_string(),
                format!("{BASE}?&fieldManager=sandbox-claim")
            );
            let mut claim = body_json(req).await;
            assert_eq!(claim["metadata"]["name"], name.as_str());
            assert_eq!(
                claim["metadata"]["labels"][labels::MANAGED_BY],
                "sandbox-claim"
            );
            assert_eq!(claim["metadata"]["labels"][labels::SOURCE], "pool");
            assert_eq!(
                claim["metadata"]["labels"][labels::CONVERSATION_HASH],
                naming::conversation_hash("c-1").as_str()
            );
            assert_eq!(
                claim["metadata"]["annotations"][labels::CONVERSATION_ID],
                "c-1"
            );
            assert!(
                claim["metadata"]["annotations"][labels::CLIENT_FIRST_REQUESTED_AT].is_string()
            );
            assert_eq!(claim["spec"]["warmPoolRef"]["name"], "pool");
            assert_eq!(claim["spec"]["lifecycle"]["shutdownPolicy"], "Delete");
            assert!(claim["spec"]["lifecycle"]["shutdownTime"].is_string());
            claim["metadata"]["resourceVersion"] = json!("100");
            claim["metadata"]["uid"] = json!("uid-1");
            respond(send, StatusCode::CREATED, &claim);

            // 2. Watch from the create response's resourceVersion, by name.
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), Method::GET);
            let uri = req.uri().to_string();
            assert!(uri.starts_with(&format!("{BASE}?&watch=true")), "{uri}");
            assert!(
                uri.contains(&format!("fieldSelector=metadata.name%3D{name}")),
                "{uri}"
            );
            assert!(uri.contains("resourceVersion=100"), "{uri}");
            let mut ready = claim.clone();
            ready["metadata"]["resourceVersion"] = json!("101");
            ready["status"] = json!({
                "conditions": [{"type": "Ready", "status": "True", "reason": "DependenciesReady",
                    "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
                "sandbox": {"name": "pool-abcde", "podIPs": ["10.1.2.3"]},
            });
            let event = serde_json::to_vec(&json!({"type": "MODIFIED", "object": ready})).unwrap();
            send.send_response(Response::builder().body(Body::from(event)).unwrap());

            // 3. Release: read (ownership check), then delete with the uid precondition.
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), Method::GET);
            assert_eq!(req.uri().to_string(), format!("{BASE}/{name}"));
            respond(send, StatusCode::OK, &ready);
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), Method::DELETE);
            assert_eq!(req.uri().to_string(), format!("{BASE}/{name}?"));
            let body = body_json(req).await;
            assert_eq!(body["propagationPolicy"], "Foreground");
            assert_eq!(body["preconditions"]["uid"], "uid-1");
            respond(
                send,
                StatusCode::OK,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
            );
        }
    });

    let handle = claims.acquire("c-1").await.unwrap();
    assert_eq!(handle.sandbox_name, "pool-abcde");
    assert_eq!(handle.pod_name, "pool-abcde");
    assert_eq!(handle.pod_ip.to_string(), "10.1.2.3");
    assert_eq!(handle.namespace, "agents");
    claims.release(&handle).await.unwrap();
    server.await.unwrap();
}
