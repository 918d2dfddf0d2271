//! Which CRDs a fake cluster serves: the generated ones (both versions, or v1alpha1 only),
//! or documents the user brings (YAML streams, a directory), replacing or joining them.

use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::discovery::Discovery;
use sandbox_claim::crds::{self, CrdVersions, Kind};
use sandbox_claim::testing::{ClusterError, CrdSource, FakeCluster, FakeClusterOptions};
use sandbox_claim::{ApiVersion, ClaimOptions, Claims};
use serde_json::json;

async fn served_versions(cluster: &FakeCluster, group: &str) -> Vec<String> {
    let discovery = Discovery::new(cluster.client()).run().await.unwrap();
    let mut versions: Vec<String> = discovery
        .get(group)
        .map(|g| g.versions().map(str::to_owned).collect())
        .unwrap_or_default();
    versions.sort();
    versions
}

/// The generated CRDs of `versions` as one YAML stream, the way a release ships them.
fn generated_yaml(versions: CrdVersions) -> String {
    crds::all(versions)
        .unwrap()
        .iter()
        .map(|crd| serde_saphyr::to_string(crd).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

/// A CRD for a kind of our own, to show that extra documents join the generated ones.
const WIDGETS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  names: {kind: Widget, plural: widgets}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [size]
              properties:
                size: {type: integer, minimum: 1}
"#;

#[tokio::test]
async fn the_default_cluster_serves_both_generated_versions_of_every_kind() {
    let cluster = FakeCluster::start(FakeClusterOptions::default())
        .await
        .unwrap();
    for kind in Kind::ALL {
        assert_eq!(
            served_versions(&cluster, kind.group()).await,
            ["v1alpha1", "v1beta1"],
            "{kind}"
        );
    }
}

#[tokio::test]
async fn the_v0_4_6_cluster_serves_v1alpha1_only_and_claims_detect_it() {
    let cluster = FakeCluster::start(FakeClusterOptions::v0_4_6())
        .await
        .unwrap();
    assert_eq!(
        served_versions(&cluster, Kind::SandboxClaim.group()).await,
        ["v1alpha1"]
    );
    let claims = Claims::detect(cluster.client(), ClaimOptions::default().source("tpl"))
        .await
        .unwrap();
    assert_eq!(claims.api_version(), ApiVersion::V1alpha1);
}

#[tokio::test]
async fn crds_from_a_directory_replace_the_generated_ones() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("agent-sandbox.yaml"),
        generated_yaml(CrdVersions::V1alpha1Only),
    )
    .unwrap();
    // Neither a `.yaml` file nor a file at all: both are skipped.
    std::fs::write(dir.path().join("README.md"), "not a CRD").unwrap();
    std::fs::create_dir(dir.path().join("older-release.yaml")).unwrap();
    let options = FakeClusterOptions::default()
        .crds(CrdSource::Dir(dir.path().to_owned()))
        .version(ApiVersion::V1alpha1);
    let cluster = FakeCluster::start(options).await.unwrap();
    assert_eq!(
        served_versions(&cluster, Kind::SandboxClaim.group()).await,
        ["v1alpha1"]
    );
    cluster.create_template("tpl", None).await.unwrap();
}

#[tokio::test]
async fn extra_crd_yaml_joins_the_generated_crds_and_is_validated() {
    let options = FakeClusterOptions::default().extra_crd_yaml(WIDGETS);
    let cluster = FakeCluster::start(options).await.unwrap();
    assert_eq!(served_versions(&cluster, "example.com").await, ["v1"]);
    assert_eq!(
        served_versions(&cluster, Kind::Sandbox.group()).await,
        ["v1alpha1", "v1beta1"]
    );
    let ar = ApiResource {
        group: "example.com".into(),
        version: "v1".into(),
        api_version: "example.com/v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let widgets: Api<DynamicObject> = Api::default_namespaced_with(cluster.client(), &ar);
    let mut w = DynamicObject::new("w", &ar);
    w.data = json!({"spec": {"size": 0}});
    let err = widgets
        .create(&PostParams::default(), &w)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(s) if s.code == 422),
        "size >= 1"
    );
}

#[tokio::test]
async fn yaml_streams_install_in_order() {
    let options = FakeClusterOptions::default().crds(CrdSource::Yaml(vec![
        generated_yaml(CrdVersions::Current),
        WIDGETS.to_owned(),
    ]));
    let cluster = FakeCluster::start(options).await.unwrap();
    assert_eq!(served_versions(&cluster, "example.com").await, ["v1"]);
    cluster.create_template("tpl", None).await.unwrap();
    cluster.create_warm_pool("pool", "tpl", 0).await.unwrap();
}

#[tokio::test]
async fn a_missing_directory_is_a_read_error_naming_it() {
    let missing = std::path::PathBuf::from("/nonexistent/agent-sandbox-crds");
    let err =
        FakeCluster::start(FakeClusterOptions::default().crds(CrdSource::Dir(missing.clone())))
            .await
            .unwrap_err();
    assert!(
        matches!(&err, ClusterError::ReadCrd { path, .. } if *path == missing),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_document_that_is_not_yaml_is_an_install_error_naming_its_position() {
    let options = FakeClusterOptions::default().crds(CrdSource::Yaml(vec![
        WIDGETS.to_owned(),
        "kind: [unclosed".to_owned(),
    ]));
    let err = FakeCluster::start(options).await.unwrap_err();
    assert!(
        matches!(&err, ClusterError::InstallCrd { origin, .. } if origin == "YAML document 2"),
        "{err:?}"
    );
}
