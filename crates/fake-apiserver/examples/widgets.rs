//! The README's flow as a program: start the fake API server, install a CRD, create an
//! object through the real `kube` client, watch it change, and read the request log.
//!
//! `cargo run -p fake-apiserver --example widgets`

use fake_apiserver::FakeApiServer;
use futures::{StreamExt as _, TryStreamExt as _};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::runtime::{WatchStreamExt as _, watcher};

/// A small CRD: `Widget` with a required integer `spec.size` between 1 and 10.
const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: { plural: widgets, singular: widget, kind: Widget, listKind: WidgetList }
  versions:
    - name: v1
      served: true
      storage: true
      subresources: { status: {} }
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [size]
              properties:
                size: { type: integer, minimum: 1, maximum: 10 }
            status:
              type: object
              properties:
                phase: { type: string }
"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = FakeApiServer::start().await?;
    server.install_crd_yaml(WIDGET_CRD)?;
    println!("fake API server at {}", server.url());

    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    let widgets: Api<DynamicObject> =
        Api::namespaced_with(server.client("default"), "default", &ar);

    let mut widget = DynamicObject::new("w1", &ar);
    widget.data = serde_json::json!({ "spec": { "size": 3 } });
    widgets.create(&PostParams::default(), &widget).await?;

    // The schema is enforced: size 0 is below the minimum.
    let mut too_small = DynamicObject::new("w0", &ar);
    too_small.data = serde_json::json!({ "spec": { "size": 0 } });
    let rejected = widgets.create(&PostParams::default(), &too_small).await;
    println!("size 0 rejected: {}", rejected.is_err());

    // A watch sees the status change that a controller would write.
    let events = watcher(widgets.clone(), watcher::Config::default()).applied_objects();
    let status = serde_json::json!({ "status": { "phase": "Ready" } });
    widgets
        .patch_status("w1", &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    let seen = events
        .try_filter(|w| futures::future::ready(w.data["status"]["phase"] == "Ready"))
        .boxed()
        .try_next()
        .await?;
    println!(
        "watched w1 turn {}",
        seen.map_or("?".into(), |w| w.data["status"]["phase"].to_string())
    );

    // Every request the server answered, by verb and resource.
    for (verb, resource, count) in server.requests().iter() {
        println!("{count:>3} × {} {resource}", verb.as_str());
    }
    server.shutdown().await;
    Ok(())
}
