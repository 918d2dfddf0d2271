//! CRUD, validation and object-lifecycle behaviour through the real kube client.

mod common;

use common::*;
use fake_apiserver::FakeApiServerOptions;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use serde_json::json;

#[tokio::test]
async fn create_get_list_replace_and_delete_round_trip() {
    let server = server().await;
    let api = claims(&server);
    let created = api
        .create(&PostParams::default(), &claim("c1", "pool"))
        .await
        .unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.as_deref().is_some_and(|u| u.len() == 36));
    assert_eq!(meta.generation, Some(1));
    assert!(meta.creation_timestamp.is_some());
    assert_eq!(meta.namespace.as_deref(), Some(NS));

    let got = api.get("c1").await.unwrap();
    assert_eq!(
        got.metadata.resource_version,
        created.metadata.resource_version
    );
    assert_eq!(got.data["spec"]["warmPoolRef"]["name"], "pool");

    let list = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert!(list.metadata.resource_version.is_some());

    let mut changed = got.clone();
    changed.data["spec"]["warmPoolRef"]["name"] = json!("other");
    let replaced = api
        .replace("c1", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_eq!(replaced.data["spec"]["warmPoolRef"]["name"], "other");
    assert_eq!(replaced.metadata.generation, Some(2));
    let rv = |o: &DynamicObject| {
        o.metadata
            .resource_version
            .clone()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(rv(&replaced) > rv(&got));

    let deleted = api.delete("c1", &DeleteParams::default()).await.unwrap();
    assert!(
        deleted.is_right(),
        "an object without finalizers is gone at once"
    );
    assert!(api.get_opt("c1").await.unwrap().is_none());
    assert!(
        server
            .objects(EXT_GROUP, "sandboxclaims", Some(NS))
            .is_empty()
    );
}

#[tokio::test]
async fn missing_objects_are_not_found() {
    let server = server().await;
    let api = claims(&server);
    assert!(api_status(api.get("nope").await.unwrap_err()).is_not_found());
    assert!(
        api_status(
            api.delete("nope", &DeleteParams::default())
                .await
                .unwrap_err()
        )
        .is_not_found()
    );
    let patch = Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}}));
    assert!(
        api_status(
            api.patch("nope", &PatchParams::default(), &patch)
                .await
                .unwrap_err()
        )
        .is_not_found()
    );
}

#[tokio::test]
async fn creating_twice_is_already_exists() {
    let server = server().await;
    let api = claims(&server);
    api.create(&PostParams::default(), &claim("c1", "pool"))
        .await
        .unwrap();
    let err = api_status(
        api.create(&PostParams::default(), &claim("c1", "pool"))
            .await
            .unwrap_err(),
    );
    assert!(err.is_already_exists());
    assert_eq!(err.code, 409);
}

#[tokio::test]
async fn replacing_with_a_stale_resource_version_is_a_conflict() {
    let server = server().await;
    let api = claims(&server);
    let first = api
        .create(&PostParams::default(), &claim("c1", "pool"))
        .await
        .unwrap();
    let mut newer = first.clone();
    newer.metadata.labels = Some([("x".to_owned(), "1".to_owned())].into());
    api.replace("c1", &PostParams::default(), &newer)
        .await
        .unwrap();
    let err = api_status(
        api.replace("c1", &PostParams::default(), &first)
            .await
            .unwrap_err(),
    );
    assert!(err.is_conflict());
    assert!(!err.is_already_exists());
}

#[tokio::test]
async fn merge_json_and_apply_patches_are_applied() {
    let server = server().await;
    let api = claims(&server);
    api.create(&PostParams::default(), &claim("c1", "pool"))
        .await
        .unwrap();

    let merge = Patch::Merge(
        json!({"metadata": {"labels": {"team": "a"}}, "spec": {"warmPoolRef": {"name": "p2"}}}),
    );
    let merged = api
        .patch("c1", &PatchParams::default(), &merge)
        .await
        .unwrap();
    assert_eq!(merged.data["spec"]["warmPoolRef"]["name"], "p2");
    assert_eq!(merged.metadata.labels.unwrap()["team"], "a");

    let ops: json_patch_ops::Ops = serde_json::from_value(json!([
        {"op": "replace", "path": "/spec/warmPoolRef/name", "value": "p3"},
        {"op": "add", "path": "/metadata/annotations", "value": {"k": "v"}}
    ]))
    .unwrap();
    let patched = api
        .patch("c1", &PatchParams::default(), &Patch::Json::<()>(ops))
        .await
        .unwrap();
    assert_eq!(patched.data["spec"]["warmPoolRef"]["name"], "p3");
    assert_eq!(patched.metadata.annotations.unwrap()["k"], "v");

    // Server-side apply creates an absent object and updates a present one.
    let mut applied = claim("c2", "p4");
    applied.metadata.labels = Some([("via".to_owned(), "apply".to_owned())].into());
    let params = PatchParams::apply("tests").force();
    let created = api
        .patch("c2", &params, &Patch::Apply(&applied))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    applied.data["spec"]["warmPoolRef"]["name"] = json!("p5");
    let updated = api
        .patch("c2", &params, &Patch::Apply(&applied))
        .await
        .unwrap();
    assert_eq!(updated.data["spec"]["warmPoolRef"]["name"], "p5");
    assert_eq!(updated.metadata.generation, Some(2));
}

mod json_patch_ops {
    pub type Ops = json_patch::Patch;
}

#[tokio::test]
async fn a_claim_without_a_warm_pool_name_is_invalid_with_the_field_path() {
    let server = server().await;
    let api = claims(&server);
    let mut bad = claim("c1", "pool");
    bad.data = json!({"spec": {"warmPoolRef": {}}});
    let err = api_status(api.create(&PostParams::default(), &bad).await.unwrap_err());
    assert!(err.is_invalid());
    assert_eq!(err.code, 422);
    let causes = err.details.unwrap().causes;
    assert_eq!(causes[0].field, "spec.warmPoolRef.name");
    assert_eq!(causes[0].message, "Required value");
    assert!(
        err.message
            .contains("spec.warmPoolRef.name: Required value"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn an_unknown_spec_field_is_rejected_by_default_and_pruned_when_lenient() {
    let strict = server().await;
    let mut typo = claim("c1", "pool");
    typo.data["spec"]["warmPoolRefs"] = json!({"name": "oops"});
    let err = api_status(
        claims(&strict)
            .create(&PostParams::default(), &typo)
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (400, "BadRequest"));
    assert!(
        err.message
            .ends_with("strict decoding error: unknown field \"spec.warmPoolRefs\""),
        "{}",
        err.message
    );

    let lenient = server_with(FakeApiServerOptions::default().strict_unknown_fields(false)).await;
    let created = claims(&lenient)
        .create(&PostParams::default(), &typo)
        .await
        .unwrap();
    assert!(
        created.data["spec"].get("warmPoolRefs").is_none(),
        "pruned like a real server"
    );
}

#[tokio::test]
async fn malformed_names_and_bodies_are_rejected() {
    let server = server().await;
    let api = claims(&server);
    let err = api_status(
        api.create(&PostParams::default(), &claim("Not_A_Name", "p"))
            .await
            .unwrap_err(),
    );
    assert!(err.is_invalid());
    assert_eq!(err.details.unwrap().causes[0].field, "metadata.name");

    let client = server.client(NS);
    let request = http::Request::post(format!(
        "/apis/{EXT_GROUP}/v1beta1/namespaces/{NS}/sandboxclaims"
    ))
    .header("content-type", "application/json")
    .body(b"{not json".to_vec())
    .unwrap();
    let err = api_status(client.request_text(request).await.unwrap_err());
    assert_eq!(err.code, 400);
    assert_eq!(err.reason, "BadRequest");
}

#[tokio::test]
async fn status_writes_change_only_status_and_spec_writes_keep_status() {
    let server = server().await;
    let api = claims(&server);
    let mut with_status = claim("c1", "pool");
    with_status.data["status"] = ready_status()["status"].clone();
    let created = api
        .create(&PostParams::default(), &with_status)
        .await
        .unwrap();
    assert!(
        created.data.get("status").is_none(),
        "a create keeps status empty"
    );

    let mut status_patch = ready_status();
    status_patch["spec"] = json!({"warmPoolRef": {"name": "ignored"}});
    let after = api
        .patch_status("c1", &PatchParams::default(), &Patch::Merge(&status_patch))
        .await
        .unwrap();
    assert_eq!(after.data["status"]["sandbox"]["name"], "sb-1");
    assert_eq!(after.data["spec"]["warmPoolRef"]["name"], "pool");
    assert_eq!(
        after.metadata.generation,
        Some(1),
        "status writes do not bump generation"
    );

    let mut spec_write = after.clone();
    spec_write.data["status"] = json!({"sandbox": {"name": "ignored"}});
    spec_write.data["spec"]["warmPoolRef"]["name"] = json!("p2");
    let replaced = api
        .replace("c1", &PostParams::default(), &spec_write)
        .await
        .unwrap();
    assert_eq!(replaced.data["status"]["sandbox"]["name"], "sb-1");
    assert_eq!(replaced.data["spec"]["warmPoolRef"]["name"], "p2");

    let status = api.get_status("c1").await.unwrap();
    assert_eq!(status.data["status"]["conditions"][0]["type"], "Ready");
    let mut bad_status = json!({"status": {"conditions": [{"type": "Ready"}]}});
    bad_status["status"]["conditions"][0]["status"] = json!("Maybe");
    let err = api_status(
        api.patch_status("c1", &PatchParams::default(), &Patch::Merge(&bad_status))
            .await
            .unwrap_err(),
    );
    assert!(err.is_invalid());
}

#[tokio::test]
async fn generate_name_appends_a_random_suffix() {
    let server = server().await;
    let api = claims(&server);
    let mut c = claim("", "pool");
    c.metadata.name = None;
    c.metadata.generate_name = Some("claim-".into());
    let a = api.create(&PostParams::default(), &c).await.unwrap();
    let b = api.create(&PostParams::default(), &c).await.unwrap();
    let (a, b) = (a.metadata.name.unwrap(), b.metadata.name.unwrap());
    assert!(
        a.starts_with("claim-") && a.len() == "claim-".len() + 5,
        "{a}"
    );
    assert_ne!(a, b);
}

#[tokio::test]
async fn label_and_field_selectors_filter_lists() {
    let server = server().await;
    let api = claims(&server);
    for (name, app, tier) in [
        ("a", "web", "front"),
        ("b", "web", "back"),
        ("c", "db", "back"),
    ] {
        let mut c = claim(name, "pool");
        c.metadata.labels = Some(
            [
                ("app".to_owned(), app.to_owned()),
                ("tier".to_owned(), tier.to_owned()),
            ]
            .into(),
        );
        api.create(&PostParams::default(), &c).await.unwrap();
    }
    let names = |lp: ListParams| {
        let api = api.clone();
        async move {
            let mut n: Vec<String> = api
                .list(&lp)
                .await
                .unwrap()
                .items
                .into_iter()
                .filter_map(|o| o.metadata.name)
                .collect();
            n.sort();
            n
        }
    };
    assert_eq!(
        names(ListParams::default().labels("app=web")).await,
        ["a", "b"]
    );
    assert_eq!(names(ListParams::default().labels("app!=web")).await, ["c"]);
    assert_eq!(
        names(ListParams::default().labels("tier in (back),app notin (db)")).await,
        ["b"]
    );
    assert_eq!(
        names(ListParams::default().labels("!missing,app")).await,
        ["a", "b", "c"]
    );
    assert_eq!(
        names(ListParams::default().fields("metadata.name=b")).await,
        ["b"]
    );
    assert_eq!(
        names(ListParams::default().fields("metadata.name!=b")).await,
        ["a", "c"]
    );
    let err = api_status(
        api.list(&ListParams::default().fields("spec.x=1"))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 400);
}

#[tokio::test]
async fn finalizers_keep_a_deleted_object_until_the_last_is_removed() {
    let server = server().await;
    let api = claims(&server);
    let mut c = claim("c1", "pool");
    c.metadata.finalizers = Some(vec!["example.com/a".into(), "example.com/b".into()]);
    api.create(&PostParams::default(), &c).await.unwrap();

    let pending = api.delete("c1", &DeleteParams::default()).await.unwrap();
    let pending = pending
        .left()
        .expect("still present while finalizers remain");
    assert!(pending.metadata.deletion_timestamp.is_some());
    assert!(
        api.get("c1")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );

    let one = Patch::Json::<()>(
        serde_json::from_value(json!([{"op": "remove", "path": "/metadata/finalizers/0"}]))
            .unwrap(),
    );
    api.patch("c1", &PatchParams::default(), &one)
        .await
        .unwrap();
    assert!(api.get_opt("c1").await.unwrap().is_some());
    let last = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    api.patch("c1", &PatchParams::default(), &last)
        .await
        .unwrap();
    assert!(api.get_opt("c1").await.unwrap().is_none());
}

#[tokio::test]
async fn deleting_an_owner_cascades_to_dependents_unless_orphaned() {
    let server = server().await;
    let api = claims(&server);
    let owner = |o: &DynamicObject| {
        json!([{"apiVersion": format!("{EXT_GROUP}/v1beta1"), "kind": "SandboxClaim",
                "name": o.metadata.name, "uid": o.metadata.uid, "controller": true}])
    };
    for policy in ["background", "foreground", "orphan"] {
        let parent = api
            .create(
                &PostParams::default(),
                &claim(&format!("parent-{policy}"), "p"),
            )
            .await
            .unwrap();
        let mut child = claim(&format!("child-{policy}"), "p");
        child.metadata.owner_references = Some(serde_json::from_value(owner(&parent)).unwrap());
        api.create(&PostParams::default(), &child).await.unwrap();
        let dp = match policy {
            "background" => DeleteParams::background(),
            "foreground" => DeleteParams::foreground(),
            _ => DeleteParams::orphan(),
        };
        api.delete(&format!("parent-{policy}"), &dp).await.unwrap();
        let child = api.get_opt(&format!("child-{policy}")).await.unwrap();
        if policy == "orphan" {
            let child = child.expect("orphaned child survives");
            assert!(
                child
                    .metadata
                    .owner_references
                    .unwrap_or_default()
                    .is_empty()
            );
        } else {
            assert!(child.is_none(), "{policy} deletion removes the child");
        }
    }
}

#[tokio::test]
async fn delete_preconditions_are_enforced() {
    let server = server().await;
    let api = claims(&server);
    api.create(&PostParams::default(), &claim("c1", "p"))
        .await
        .unwrap();
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("wrong".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    assert!(api_status(api.delete("c1", &dp).await.unwrap_err()).is_conflict());
    api.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .unwrap();
    assert!(
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn unchanged_writes_keep_the_resource_version() {
    let server = server().await;
    let api = claims(&server);
    let created = api
        .create(&PostParams::default(), &claim("c1", "p"))
        .await
        .unwrap();
    let same = api
        .replace("c1", &PostParams::default(), &created)
        .await
        .unwrap();
    assert_eq!(
        same.metadata.resource_version,
        created.metadata.resource_version
    );
    let labelled = api
        .patch(
            "c1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_ne!(
        labelled.metadata.resource_version,
        created.metadata.resource_version
    );
    assert_eq!(
        labelled.metadata.generation,
        Some(1),
        "metadata changes do not bump generation"
    );
}
