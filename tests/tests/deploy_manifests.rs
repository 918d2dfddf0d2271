//! The manifests in `deploy/` are accepted by the CRDs this project generates (always; the
//! upstream ones are checked by the opt-in conformance suite), render with kustomize, and the
//! example `ax.yaml` names what they create.

mod support;

use std::path::PathBuf;

use agent_sandbox_backend::Registry;
use sandbox_claim::crds::Kind;
use sandbox_claim::testing::CrdSource;
use serde_json::Value;
use support::{
    agent_sandbox_documents, agent_sandbox_kind, create, deploy_dir, documents, kustomize,
    server_with,
};

fn base_dir() -> PathBuf {
    deploy_dir().join("base")
}

/// Creates every document on a fake API server serving `crds`; returns the kinds created.
async fn create_all(crds: &CrdSource, docs: &[Value], origin: &str) -> Vec<Kind> {
    let server = server_with(crds).await;
    let client = server.client("default");
    let mut created = Vec::new();
    for doc in docs {
        create(&client, doc).await.unwrap_or_else(|e| {
            panic!(
                "{origin}: {} {} rejected by the {crds:?} CRDs: {e}",
                doc["kind"], doc["metadata"]["name"]
            )
        });
        created.extend(agent_sandbox_kind(doc));
    }
    created.sort();
    created
}

fn files(paths: &[PathBuf]) -> Vec<Value> {
    paths.iter().flat_map(|p| documents(p)).collect()
}

const TEMPLATE_AND_POOL: [Kind; 2] = [Kind::SandboxTemplate, Kind::SandboxWarmPool];

#[tokio::test]
async fn the_v1beta1_template_and_warm_pool_pass_the_generated_crd_schemas() {
    let docs = files(&[
        base_dir().join("sandbox-template.yaml"),
        base_dir().join("sandbox-warmpool.yaml"),
    ]);
    assert_eq!(
        create_all(&CrdSource::Generated, &docs, "deploy/base").await,
        TEMPLATE_AND_POOL
    );
}

#[tokio::test]
async fn the_v1alpha1_template_and_warm_pool_pass_the_v1alpha1_only_crd_schemas() {
    let dir = deploy_dir().join("overlays/v1alpha1");
    let docs = files(&[
        dir.join("sandbox-template.yaml"),
        dir.join("sandbox-warmpool.yaml"),
    ]);
    assert_eq!(
        create_all(&CrdSource::V1alpha1Only, &docs, "deploy/overlays/v1alpha1").await,
        TEMPLATE_AND_POOL
    );
}

/// Renders `dir` with kustomize and creates its agent-sandbox objects against `crds`; returns
/// the rendered documents (`None` when kubectl is missing outside CI).
async fn render_and_create(dir: &str, crds: &CrdSource, version: &str) -> Option<Vec<Value>> {
    let docs = kustomize(&deploy_dir().join(dir))?;
    let agent_sandbox = agent_sandbox_documents(&docs);
    for doc in &agent_sandbox {
        assert!(
            doc["apiVersion"]
                .as_str()
                .is_some_and(|v| v.ends_with(&format!("/{version}"))),
            "{dir} renders {} {} at {}, not {version}",
            doc["kind"],
            doc["metadata"]["name"],
            doc["apiVersion"]
        );
    }
    assert_eq!(
        create_all(crds, &agent_sandbox, &format!("kubectl kustomize {dir}")).await,
        TEMPLATE_AND_POOL,
        "{dir}"
    );
    Some(docs)
}

fn kinds(docs: &[Value]) -> Vec<&str> {
    let mut kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    kinds.sort_unstable();
    kinds
}

#[tokio::test]
async fn the_base_and_both_overlays_render_and_their_objects_pass_the_generated_crds() {
    let Some(base) = render_and_create(".", &CrdSource::Generated, "v1beta1").await else {
        return;
    };
    assert_eq!(
        kinds(&base),
        [
            "Namespace",
            "Namespace",
            "Role",
            "RoleBinding",
            "SandboxTemplate",
            "SandboxWarmPool",
            "ServiceAccount"
        ]
    );
    let kind = render_and_create("overlays/kind", &CrdSource::Generated, "v1beta1")
        .await
        .expect("kubectl was found a moment ago");
    let template = kind
        .iter()
        .find(|d| d["kind"] == "SandboxTemplate")
        .expect("a template");
    let pod = &template["spec"]["podTemplate"]["spec"];
    assert!(
        pod.get("runtimeClassName").is_none(),
        "kind has no gVisor RuntimeClass"
    );
    assert_eq!(pod["containers"][0]["imagePullPolicy"], "Never");
    let base_template = base
        .iter()
        .find(|d| d["kind"] == "SandboxTemplate")
        .expect("a template");
    assert_eq!(
        template["spec"]["networkPolicy"], base_template["spec"]["networkPolicy"],
        "kind keeps the production NetworkPolicy: e2e's demo runs in-cluster as the AX controller"
    );
    let alpha = render_and_create("overlays/v1alpha1", &CrdSource::V1alpha1Only, "v1alpha1")
        .await
        .expect("kubectl was found a moment ago");
    assert_eq!(kinds(&alpha), kinds(&base), "same objects, other version");
}

#[test]
fn the_example_ax_yaml_names_the_deployed_pool_template_namespace_and_port() {
    let registry = Registry::from_file(deploy_dir().join("../config/ax.yaml")).unwrap();
    let agent = registry.get("py").expect("the example registers `py`");
    let template = &documents(&base_dir().join("sandbox-template.yaml"))[0];
    let pool = &documents(&base_dir().join("sandbox-warmpool.yaml"))[0];
    assert_eq!(
        agent.template.as_deref(),
        template["metadata"]["name"].as_str()
    );
    assert_eq!(
        agent.warm_pool.as_deref(),
        pool["metadata"]["name"].as_str()
    );
    assert_eq!(
        pool["spec"]["sandboxTemplateRef"]["name"],
        template["metadata"]["name"]
    );
    assert_eq!(
        Some(agent.namespace.as_str()),
        template["metadata"]["namespace"].as_str()
    );
    let port =
        &template["spec"]["podTemplate"]["spec"]["containers"][0]["ports"][0]["containerPort"];
    assert_eq!(port.as_u64(), Some(u64::from(agent.port)));
}

#[test]
fn the_controller_role_grants_what_the_backend_uses_and_nothing_more() {
    let docs = documents(&base_dir().join("controller-rbac.yaml"));
    let role = docs.iter().find(|d| d["kind"] == "Role").expect("a Role");
    let rules = role["rules"].as_array().unwrap();
    let claims = rules
        .iter()
        .find(|r| {
            r["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x == "sandboxclaims")
        })
        .unwrap();
    let verbs: Vec<&str> = claims["verbs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for needed in ["create", "get", "list", "watch", "patch", "delete"] {
        assert!(
            verbs.contains(&needed),
            "the backend needs {needed} on sandboxclaims"
        );
    }
    let all_verbs: Vec<&str> = rules
        .iter()
        .flat_map(|r| r["verbs"].as_array().unwrap())
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        !all_verbs.contains(&"*")
            && !all_verbs.contains(&"update")
            && !all_verbs.contains(&"deletecollection")
    );
}
