//! Discovery, kubeconfig consumers, single-version CRDs and server lifecycle.

mod common;

use common::*;
use fake_apiserver::{FakeApiServer, Verb};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use kube::discovery::{Discovery, Scope};
use serde_json::json;

#[tokio::test]
async fn discovery_finds_the_installed_groups_and_versions() {
    let server = server().await;
    let discovery = Discovery::new(server.client(NS)).run().await.unwrap();
    let group = discovery
        .get(EXT_GROUP)
        .expect("extensions group is discovered");
    assert_eq!(group.preferred_version_or_latest(), "v1beta1");
    let versions: Vec<&str> = group.versions().collect();
    assert!(
        versions.contains(&"v1beta1") && versions.contains(&"v1alpha1"),
        "{versions:?}"
    );
    let (ar, caps) = group
        .versioned_resources("v1beta1")
        .into_iter()
        .find(|(ar, _)| ar.plural == "sandboxclaims")
        .expect("sandboxclaims listed");
    assert_eq!(ar.kind, "SandboxClaim");
    assert_eq!(caps.scope, Scope::Namespaced);
    assert!(caps.supports_operation(kube::discovery::verbs::WATCH));
    assert!(
        caps.subresources
            .iter()
            .any(|(sub, _)| sub.plural == "sandboxclaims/status" || sub.plural == "status")
    );
    assert!(discovery.get("agents.x-k8s.io").is_some());
    assert!(server.requests().count(Verb::Get, "discovery") >= 3);
}

#[tokio::test]
async fn a_consumer_reads_the_written_kubeconfig() {
    let server = server().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    server.write_kubeconfig(&path, "team-a").unwrap();

    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    assert_eq!(config.default_namespace, "team-a");
    let client = kube::Client::try_from(config).unwrap();
    let api: Api<DynamicObject> = Api::default_namespaced_with(client, &claim_resource());
    api.create(&PostParams::default(), &claim("c1", "p"))
        .await
        .unwrap();
    assert_eq!(
        server
            .objects(EXT_GROUP, "sandboxclaims", Some("team-a"))
            .len(),
        1
    );
}

#[tokio::test]
async fn v1alpha1_only_crds_install_and_serve_only_v1alpha1() {
    let server = FakeApiServer::start().await.unwrap();
    install_v1alpha1_only(&server);
    let ar = ApiResource {
        group: EXT_GROUP.into(),
        version: "v1alpha1".into(),
        api_version: format!("{EXT_GROUP}/v1alpha1"),
        kind: "SandboxClaim".into(),
        plural: "sandboxclaims".into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(server.client(NS), NS, &ar);
    let mut c = DynamicObject::new("old", &ar);
    c.data = json!({"spec": {"sandboxTemplateRef": {"name": "tpl"}}});
    let created = api.create(&PostParams::default(), &c).await.unwrap();
    assert_eq!(
        created.data["spec"]["warmpool"], "default",
        "schema defaults are applied"
    );

    // v1beta1 is not served by these CRDs.
    let beta: Api<DynamicObject> = Api::namespaced_with(server.client(NS), NS, &claim_resource());
    assert!(api_status(beta.list(&ListParams::default()).await.unwrap_err()).is_not_found());

    let sandboxes = ApiResource {
        group: "agents.x-k8s.io".into(),
        version: "v1alpha1".into(),
        api_version: "agents.x-k8s.io/v1alpha1".into(),
        kind: "Sandbox".into(),
        plural: "sandboxes".into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(server.client(NS), NS, &sandboxes);
    assert!(
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let server = server().await;
    let api = claims(&server);
    api.list(&ListParams::default()).await.unwrap();
    server.clone().shutdown().await;
    let err = api.list(&ListParams::default()).await.unwrap_err();
    assert!(!matches!(err, kube::Error::Api(_)), "{err:?}");
}

#[tokio::test]
async fn kubeconfig_yaml_names_the_server_and_namespace() {
    let server = FakeApiServer::start().await.unwrap();
    let yaml = server.kubeconfig_yaml("ns-1");
    assert!(yaml.contains(&server.url()));
    assert!(yaml.contains("current-context: fake-apiserver"));
    assert!(yaml.contains("namespace: \"ns-1\""));
}
