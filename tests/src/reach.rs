//! Whether this host reaches a cluster's pod IPs, for choosing between the backend's
//! `direct` and `port-forward` connection modes (a laptop against GKE reaches none).

use std::{net::SocketAddr, time::Duration};

use axp_transport::DEFAULT_PORT;
use k8s_openapi::api::core::v1::Pod;

/// How long the probe waits for a pod IP to accept a connection.
pub const REACH_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What [`probe_pod_network`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reachability {
    /// A pod of the namespace accepted a TCP connection on its IP and the AXP port.
    pub reachable: bool,
    /// Why, in words, for the operator.
    pub why: String,
}

/// Connects to the AXP port of the first pod of `namespace` that has an IP. Not reachable
/// when no pod can be listed or none has an IP: port-forward works in every case, direct
/// only where the pod network is routed.
pub async fn probe_pod_network(kube: &kube::Client, namespace: &str) -> Reachability {
    let unreachable = |why: String| Reachability {
        reachable: false,
        why,
    };
    let pods: kube::Api<Pod> = kube::Api::namespaced(kube.clone(), namespace);
    let listed = match pods.list(&kube::api::ListParams::default()).await {
        Ok(listed) => listed,
        Err(error) => {
            return unreachable(format!(
                "cannot list pods in {namespace} to probe them ({error})"
            ));
        }
    };
    let Some(ip) = listed
        .items
        .iter()
        .filter_map(|pod| pod.status.as_ref()?.pod_ip.clone())
        .find_map(|ip| ip.parse::<std::net::IpAddr>().ok())
    else {
        return unreachable(format!("no pod in {namespace} has an IP to probe"));
    };
    let address = SocketAddr::new(ip, DEFAULT_PORT);
    match tokio::time::timeout(REACH_PROBE_TIMEOUT, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_)) => Reachability {
            reachable: true,
            why: format!("pod IP {address} answers from here"),
        },
        Ok(Err(error)) => unreachable(format!(
            "pod IP {address} is not reachable from here ({error})"
        )),
        Err(_) => unreachable(format!(
            "pod IP {address} did not answer within {REACH_PROBE_TIMEOUT:?}"
        )),
    }
}
