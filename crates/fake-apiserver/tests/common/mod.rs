//! Helpers shared by the integration tests.
//!
//! The CRDs the tests install are generated in-process from the fixture types below
//! (`kube::CustomResource`): claim-shaped resources in two groups and two versions, enough to
//! exercise validation, defaulting, status, discovery and versions without any file on disk.
#![allow(dead_code)]

use fake_apiserver::{FakeApiServer, FakeApiServerOptions};
use kube::CustomResourceExt;
use kube::api::{Api, ApiResource, DynamicObject};
use serde_json::{Value, json};

pub const NS: &str = "default";
pub const EXT_GROUP: &str = "extensions.agents.x-k8s.io";

/// Fixture resources: a `SandboxClaim` in `v1beta1` (served, storage) and `v1alpha1`, and a
/// `Sandbox` in the second group, shaped like agent-sandbox's but written for these tests.
pub mod fixture {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    use kube::CustomResource;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    /// A reference by name.
    #[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
    pub struct NameRef {
        pub name: String,
    }

    /// Status of a claim: conditions and the bound sandbox.
    #[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
    pub struct ClaimStatus {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub conditions: Vec<Condition>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub sandbox: Option<BoundSandbox>,
    }

    /// `status.sandbox`.
    #[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
    pub struct BoundSandbox {
        pub name: String,
        #[serde(default, rename = "podIPs", skip_serializing_if = "Vec::is_empty")]
        pub pod_ips: Vec<String>,
    }

    pub mod v1beta1 {
        use super::*;

        /// A claim naming a pool.
        #[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema)]
        #[kube(
            group = "extensions.agents.x-k8s.io",
            version = "v1beta1",
            kind = "SandboxClaim",
            namespaced,
            status = "ClaimStatus"
        )]
        #[serde(rename_all = "camelCase")]
        pub struct ClaimSpec {
            pub warm_pool_ref: NameRef,
        }

        /// A sandbox running a pod template (kept opaque).
        #[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema)]
        #[kube(
            group = "agents.x-k8s.io",
            version = "v1beta1",
            kind = "Sandbox",
            namespaced
        )]
        #[serde(rename_all = "camelCase")]
        pub struct SandboxSpec {
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub replicas: Option<i32>,
        }
    }

    pub mod v1alpha1 {
        use super::*;

        fn default_pool() -> Option<String> {
            Some("default".into())
        }

        /// A claim naming a template and a pool policy (defaulted).
        #[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema)]
        #[kube(
            group = "extensions.agents.x-k8s.io",
            version = "v1alpha1",
            kind = "SandboxClaim",
            namespaced,
            status = "ClaimStatus"
        )]
        #[serde(rename_all = "camelCase")]
        pub struct ClaimSpec {
            pub sandbox_template_ref: NameRef,
            #[serde(default = "default_pool")]
            pub warmpool: Option<String>,
        }

        /// A sandbox (v1alpha1).
        #[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema)]
        #[kube(
            group = "agents.x-k8s.io",
            version = "v1alpha1",
            kind = "Sandbox",
            namespaced
        )]
        #[serde(rename_all = "camelCase")]
        pub struct SandboxSpec {
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub replicas: Option<i32>,
        }
    }
}

fn install(server: &FakeApiServer, crd: impl serde::Serialize) {
    server
        .install_crd(serde_json::to_value(crd).expect("CRD serializes"))
        .expect("install CRD");
}

/// The fixture CRDs serving both versions (v1beta1 stored).
pub fn install_both_versions(server: &FakeApiServer) {
    let merge = |crds| kube::core::crd::merge_crds(crds, "v1beta1").expect("versions merge");
    install(
        server,
        merge(vec![
            fixture::v1beta1::SandboxClaim::crd(),
            fixture::v1alpha1::SandboxClaim::crd(),
        ]),
    );
    install(
        server,
        merge(vec![
            fixture::v1beta1::Sandbox::crd(),
            fixture::v1alpha1::Sandbox::crd(),
        ]),
    );
}

/// The fixture CRDs serving v1alpha1 only, as an older release would.
pub fn install_v1alpha1_only(server: &FakeApiServer) {
    install(server, fixture::v1alpha1::SandboxClaim::crd());
    install(server, fixture::v1alpha1::Sandbox::crd());
}

/// A server with the fixture CRDs installed (both versions served).
pub async fn server_with(options: FakeApiServerOptions) -> FakeApiServer {
    let server = FakeApiServer::start_with(options).await.expect("start");
    install_both_versions(&server);
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
