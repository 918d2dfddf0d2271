//! `fieldValidation`, deprecation and their `Warning` headers, read from the raw HTTP responses.

mod common;

use common::*;
use fake_apiserver::FakeApiServerOptions;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};

/// POSTs a claim with one unknown field; returns the status, the `Warning` headers and the body.
async fn create_with_typo(
    server: &fake_apiserver::FakeApiServer,
    name: &str,
    query: &str,
) -> (u16, Vec<String>, Value) {
    let body = json!({
        "apiVersion": format!("{EXT_GROUP}/v1beta1"),
        "kind": "SandboxClaim",
        "metadata": {"name": name},
        "spec": {"warmPoolRef": {"name": "pool"}, "warmPoolRefs": {"name": "typo"}},
    });
    let request = http::Request::post(format!(
        "/apis/{EXT_GROUP}/v1beta1/namespaces/{NS}/sandboxclaims{query}"
    ))
    .header("content-type", "application/json")
    .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
    .unwrap();
    let response = server.client(NS).send(request).await.unwrap();
    let status = response.status().as_u16();
    let warnings = response
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, warnings, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn a_server_like_a_real_one_warns_about_unknown_fields_and_drops_them() {
    let server = server_with(FakeApiServerOptions::default().strict_unknown_fields(false)).await;
    let (status, warnings, created) = create_with_typo(&server, "c1", "").await;
    assert_eq!(status, 201);
    assert_eq!(warnings, [r#"299 - "unknown field \"spec.warmPoolRefs\"""#]);
    assert!(created["spec"].get("warmPoolRefs").is_none());
    assert_eq!(created["spec"]["warmPoolRef"]["name"], "pool");

    let (status, warnings, _) = create_with_typo(&server, "c2", "?fieldValidation=Ignore").await;
    assert_eq!((status, warnings.len()), (201, 0), "Ignore drops silently");
}

#[tokio::test]
async fn strict_validation_refuses_unknown_fields_with_a_bad_request_status() {
    let server = server_with(FakeApiServerOptions::default().strict_unknown_fields(false)).await;
    let (status, _, body) = create_with_typo(&server, "c1", "?fieldValidation=Strict").await;
    assert_eq!(status, 400);
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "BadRequest");
    assert_eq!(body["code"], 400);
    assert_eq!(
        body["message"],
        "SandboxClaim in version \"v1beta1\" cannot be handled as a SandboxClaim: strict decoding error: unknown field \"spec.warmPoolRefs\""
    );
    assert!(
        server
            .objects(EXT_GROUP, "sandboxclaims", Some(NS))
            .is_empty()
    );

    let (status, _, body) = create_with_typo(&server, "c1", "?fieldValidation=Loose").await;
    assert_eq!((status, body["reason"].as_str()), (400, Some("BadRequest")));
}

#[tokio::test]
async fn status_errors_name_the_resource_or_the_kind_as_upstream_does() {
    let server = server().await;
    let api = claims(&server);
    let missing = api_status(api.get("nope").await.unwrap_err());
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    let details = missing.details.unwrap();
    assert_eq!(
        (
            details.kind.as_str(),
            details.group.as_str(),
            details.name.as_str()
        ),
        ("sandboxclaims", EXT_GROUP, "nope")
    );
    let mut bad = claim("c1", "pool");
    bad.data = json!({"spec": {"warmPoolRef": {}}});
    let invalid = api_status(
        api.create(&kube::api::PostParams::default(), &bad)
            .await
            .unwrap_err(),
    );
    assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));
    assert_eq!(invalid.details.unwrap().kind, "SandboxClaim");
}

#[tokio::test]
async fn a_deprecated_version_answers_with_its_deprecation_warning() {
    let server = fake_apiserver::FakeApiServer::start().await.unwrap();
    let version = |name: &str, extra: Value| {
        let mut v = json!({"name": name, "served": true, "storage": name == "v2",
            "schema": {"openAPIV3Schema": {"type": "object"}}});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    server
        .install_crd(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget"},
                "versions": [
                    version("v1", json!({"deprecated": true, "deprecationWarning": "example.com/v1 Widget is old; use v2"})),
                    version("v2", json!({})),
                ]}
        }))
        .unwrap();
    let warnings = |version: &'static str| {
        let server = server.clone();
        async move {
            let request = http::Request::get(format!(
                "/apis/example.com/{version}/namespaces/{NS}/widgets"
            ))
            .body(kube::client::Body::empty())
            .unwrap();
            let response = server.client(NS).send(request).await.unwrap();
            assert_eq!(response.status(), 200);
            response
                .headers()
                .get_all("warning")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        warnings("v1").await,
        [r#"299 - "example.com/v1 Widget is old; use v2""#]
    );
    assert!(warnings("v2").await.is_empty());
}
