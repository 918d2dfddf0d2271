//! The manifests in `deploy/` are accepted by the upstream CRD schemas, and
//! the example `ax.yaml` names what they create.

use std::path::{Path, PathBuf};

use agent_sandbox_backend::Registry;
use kube::{
    Api,
    api::{ApiResource, DynamicObject, PostParams},
};
use sandbox_claim::testing::{FakeApiServer, install_crds, upstream_crd_dir, v0_4_6_crd_dir};
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn base_dir() -> PathBuf {
    deploy_dir().join("base")
}

/// Every document of a YAML file, as JSON.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// Creates each agent-sandbox object of `files` on a fake API server that
/// validates against the CRDs in `crd_dir`; returns how many were created.
async fn create_all(crd_dir: &Path, files: &[PathBuf]) -> usize {
    let server = FakeApiServer::start().await.unwrap();
    install_crds(&server, crd_dir).unwrap();
    let mut created = 0;
    for file in files {
        for doc in documents(file) {
            let api_version = doc["apiVersion"].as_str().unwrap();
            let kind = doc["kind"].as_str().unwrap();
            let Some((group, version)) = api_version.split_once('/') else {
                continue;
            };
            if !group.ends_with("agents.x-k8s.io") {
                continue;
            }
            let plural = format!("{}s", kind.to_lowercase());
            let resource = ApiResource {
                group: group.into(),
                version: version.into(),
                api_version: api_version.into(),
                kind: kind.into(),
                plural,
            };
            let namespace = doc["metadata"]["namespace"].as_str().unwrap();
            let object: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
            let api: Api<DynamicObject> =
                Api::namespaced_with(server.client(namespace), namespace, &resource);
            api.create(&PostParams::default(), &object)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "{} {kind} rejected by the upstream CRD: {e}",
                        file.display()
                    )
                });
            created += 1;
        }
    }
    created
}

#[tokio::test]
async fn the_v1beta1_template_and_warm_pool_pass_the_upstream_crd_schemas() {
    let files = [
        base_dir().join("sandbox-template.yaml"),
        base_dir().join("sandbox-warmpool.yaml"),
    ];
    assert_eq!(create_all(&upstream_crd_dir(), &files).await, 2);
}

#[tokio::test]
async fn the_v1alpha1_template_and_warm_pool_pass_the_v0_4_6_crd_schemas() {
    let dir = deploy_dir().join("overlays/v1alpha1");
    let files = [
        dir.join("sandbox-template.yaml"),
        dir.join("sandbox-warmpool.yaml"),
    ];
    assert_eq!(create_all(&v0_4_6_crd_dir(), &files).await, 2);
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
