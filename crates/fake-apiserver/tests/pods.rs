//! Core `v1` pods and `pods/{name}/portforward` through kube's real client.

use fake_apiserver::{FakeApiServer, Verb};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

const NS: &str = "default";

/// A TCP server on 127.0.0.1 that echoes every connection back; returns its port.
async fn echo_server() -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

async fn running_pod(server: &FakeApiServer, name: &str, ip: &str) -> Api<Pod> {
    let pods: Api<Pod> = Api::namespaced(server.client(NS), NS);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "agent", "image": "example.com/agent"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})),
    )
    .await
    .unwrap();
    pods
}

#[tokio::test]
async fn pods_are_served_in_the_core_group_with_discovery() {
    let server = FakeApiServer::start().await.unwrap();
    let pods = running_pod(&server, "p1", "127.0.0.1").await;
    let got = pods.get("p1").await.unwrap();
    assert_eq!(
        got.status.and_then(|s| s.pod_ip).as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        pods.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    let raw = server.objects("", "pods", Some(NS));
    assert_eq!(raw[0]["apiVersion"], "v1");

    let discovery = kube::Discovery::new(server.client(NS)).run().await.unwrap();
    let core = discovery
        .groups()
        .find(|g| g.name().is_empty())
        .expect("the core group is discovered");
    assert!(
        core.recommended_resources()
            .iter()
            .any(|(ar, _)| ar.plural == "pods" && ar.api_version == "v1"),
        "{:?}",
        core.recommended_resources()
    );

    pods.delete("p1", &DeleteParams::default()).await.unwrap();
    let gone = pods.get("p1").await.unwrap_err();
    assert!(
        matches!(&gone, kube::Error::Api(s) if s.code == 404 && s.message == "pods \"p1\" not found"),
        "{gone:?}"
    );
}

#[tokio::test]
async fn a_port_forward_tunnels_to_the_pod_ip_and_each_forward_is_counted() {
    let server = FakeApiServer::start().await.unwrap();
    let port = echo_server().await;
    let pods = running_pod(&server, "echo", "127.0.0.1").await;

    for round in 0..2 {
        let mut forwarder = pods.portforward("echo", &[port]).await.unwrap();
        let mut stream = forwarder.take_stream(port).unwrap();
        let message = format!("hello through the tunnel, round {round}");
        stream.write_all(message.as_bytes()).await.unwrap();
        let mut echoed = vec![0; message.len()];
        stream.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, message.as_bytes());
        drop(stream);
        forwarder.join().await.unwrap();
    }
    assert_eq!(server.requests().count(Verb::Get, "pods/portforward"), 2);
}

#[tokio::test]
async fn a_refused_port_is_reported_on_the_error_channel() {
    let server = FakeApiServer::start().await.unwrap();
    // Bound, then closed: nothing listens there.
    let port = {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        listener.local_addr().unwrap().port()
    };
    let pods = running_pod(&server, "closed", "127.0.0.1").await;
    let mut forwarder = pods.portforward("closed", &[port]).await.unwrap();
    let error = forwarder.take_error(port).unwrap().await;
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains(&format!("error forwarding port {port}"))),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_port_forward_to_a_missing_pod_is_not_found() {
    let server = FakeApiServer::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(server.client(NS), NS);
    let Err(error) = pods.portforward("nowhere", &[8494]).await else {
        panic!("a port-forward to a missing pod must fail");
    };
    assert!(
        matches!(&error, kube::Error::Api(s) if s.code == 404),
        "{error:?}"
    );
}
