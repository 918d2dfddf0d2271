//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use fake_apiserver::{FakeApiServer, FakeApiServerOptions};
use kube::api::{Api, ApiResource, DynamicObject};
use serde_json::{Value, json};

pub const NS: &str = "default";
pub const EXT_GROUP: &str = "extensions.agents.x-k8s.io";

/// `../../../shared/agent-sandbox/crds` relative to the crate.
pub fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/agent-sandbox/crds")
}

pub fn read_crd(file: &str) -> String {
    std::fs::read_to_string(crds_dir().join(file)).unwrap_or_else(|e| panic!("reading {file}: {e}"))
}

/// A server with the four upstream v1beta1 CRDs installed.
pub async fn server_with(options: FakeApiServerOptions) -> FakeApiServer {
    let server = FakeApiServer::start_with(options).await.expect("start");
    for file in [
        "agents.x-k8s.io_sandboxes.yaml",
        "extensions.agents.x-k8s.io_sandboxclaims.yaml",
        "extensions.agents.x-k8s.io_sandboxtemplates.yaml",
        "extensions.agents.x-k8s.io_sandboxwarmpools.yaml",
    ] {
        server
            .install_crd_yaml(&read_crd(file))
            .expect("install CRD");
    }
    server
}

pub async fn server() -> FakeApiServer {
    server_with(FakeApiServerOptions::default()).await
}

pub fn claim_resource() -> ApiResource {
    ApiResource {
        group: EXT_GROUP.into(),
        version: "v1beta1".into(),
        api_version: format!("{EXT_GROUP}/v1beta1"),
        kind: "SandboxClaim".into(),
        plural: "sandboxclaims".into(),
    }
}

pub fn claims(server: &FakeApiServer) -> Api<DynamicObject> {
    Api::namespaced_with(server.client(NS), NS, &claim_resource())
}

pub fn claim(name: &str, pool: &str) -> DynamicObject {
    let mut c = DynamicObject::new(name, &claim_resource());
    c.data = json!({"spec": {"warmPoolRef": {"name": pool}}});
    c
}

pub fn ready_status() -> Value {
    json!({"status": {
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "SandboxReady", "message": "ok",
            "lastTransitionTime": "2025-01-01T00:00:00Z"
        }],
        "sandbox": {"name": "sb-1", "podIPs": ["10.0.0.1"]}
    }})
}

pub fn api_status(err: kube::Error) -> kube::core::Status {
    match err {
        kube::Error::Api(status) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}
