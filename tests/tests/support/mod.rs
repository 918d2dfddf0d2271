//! What the deploy/ and conformance tests share: reading and rendering the manifests in
//! `deploy/`, and creating agent-sandbox objects on a fake API server.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kube::Api;
use kube::api::{ApiResource, DynamicObject, PostParams};
use sandbox_claim::crds::Kind;
use sandbox_claim::testing::{CrdSource, FakeApiServer};
use serde_json::Value;

/// `deploy/` of this repository.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every document of a YAML stream, as JSON (empty documents dropped).
pub fn parse_documents(text: &str, origin: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap_or_else(|e| panic!("{origin}: {e}"))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// Every document of a YAML file, as JSON.
pub fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_documents(&text, &path.display().to_string())
}

/// What `kubectl kustomize <dir>` renders, or `None` when kubectl is not installed and this is
/// not CI (then one line says so). In CI (`CI` set) a missing kubectl fails the test.
pub fn kustomize(dir: &Path) -> Option<Vec<Value>> {
    let output = match Command::new("kubectl").arg("kustomize").arg(dir).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var_os("CI").is_none(),
                "kubectl is not installed, and CI needs it to render deploy/ (kustomize is built into kubectl)"
            );
            println!(
                "skipped: kubectl is not installed, so `kubectl kustomize {}` cannot run (CI fails here)",
                dir.display()
            );
            return None;
        }
        Err(e) => panic!("running kubectl kustomize {}: {e}", dir.display()),
    };
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("kustomize prints UTF-8");
    Some(parse_documents(
        &text,
        &format!("kubectl kustomize {}", dir.display()),
    ))
}

/// The agent-sandbox kind of a document (`None` for namespaces, RBAC, …).
pub fn agent_sandbox_kind(doc: &Value) -> Option<Kind> {
    let (group, _) = doc["apiVersion"].as_str()?.split_once('/')?;
    Kind::ALL
        .into_iter()
        .find(|k| k.group() == group && doc["kind"] == k.as_str())
}

/// The agent-sandbox documents of `docs`.
pub fn agent_sandbox_documents(docs: &[Value]) -> Vec<Value> {
    docs.iter()
        .filter(|d| agent_sandbox_kind(d).is_some())
        .cloned()
        .collect()
}

/// A fake API server (strict unknown fields, schema validation) serving `crds`.
pub async fn server_with(crds: &CrdSource) -> FakeApiServer {
    let server = FakeApiServer::start()
        .await
        .expect("fake API server starts");
    crds.install(&server).expect("CRDs install");
    server
}

/// Creates one agent-sandbox document (status included, through the status subresource when
/// it has one) through `client`, in its namespace (`default` when it names none).
///
/// # Errors
/// The API error of the first write the server rejects.
pub async fn create(client: &kube::Client, doc: &Value) -> Result<(), kube::Error> {
    let kind = agent_sandbox_kind(doc).expect("an agent-sandbox document");
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or_default();
    let resource = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.as_str().into(),
        plural: kind.plural().into(),
    };
    let namespace = doc["metadata"]["namespace"].as_str().unwrap_or("default");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let mut body = doc.clone();
    let status = body.as_object_mut().and_then(|m| m.remove("status"));
    let object: DynamicObject = serde_json::from_value(body).map_err(kube::Error::SerdeError)?;
    let created = api.create(&PostParams::default(), &object).await?;
    if let Some(status) = status.filter(|s| !s.is_null()) {
        let mut with_status = created;
        with_status.data["status"] = status;
        api.replace_status(
            &with_status.metadata.name.clone().unwrap_or_default(),
            &PostParams::default(),
            &with_status,
        )
        .await?;
    }
    Ok(())
}
