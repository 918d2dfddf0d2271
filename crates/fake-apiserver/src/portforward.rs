//! `pods/{name}/portforward`: kubelet's WebSocket port-forward as kube-rs speaks it
//! (`Api::<Pod>::portforward`), tunnelled over TCP to the pod's `status.podIP`.
//!
//! Framing (subprotocol `v4.channel.k8s.io`): every binary message starts with a channel byte.
//! Port number `i` of the `ports` query has channel `2i` for data and `2i + 1` for errors. The
//! server's first message on each channel carries the port, 2 bytes little-endian; after that,
//! messages on `2i` carry the port's bytes either way, and at most one UTF-8 message on `2i + 1`
//! says why the port failed (the pod refused the connection, say). The tunnel ends when every
//! pod connection has closed, the client closes the WebSocket, or the server shuts down.
//!
//! Each WebSocket is its own set of TCP connections to the pod: a client that needs a second
//! byte stream opens a second port-forward, as `kubectl port-forward` does per connection.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::fault::{FaultAction, RequestFacts};
use crate::requests::Verb;
use crate::routes::parse_query;
use crate::server::{Body, Shared, error_response};
use crate::status::ApiError;

/// The subprotocols served, preferred first: kube-rs offers `v5` and `v4.channel.k8s.io`;
/// `portforward.k8s.io` is what other WebSocket clients of kubelet ask for (same framing here).
const SUBPROTOCOLS: [&str; 2] = ["v4.channel.k8s.io", "portforward.k8s.io"];

/// How much of a pod's output goes into one WebSocket message.
const READ_BUFFER: usize = 32 * 1024;

/// Answers a port-forward request: `101 Switching Protocols` and a tunnel task, or a `Status`.
pub(crate) fn answer(
    shared: &Shared,
    req: Request<Incoming>,
    namespace: &str,
    name: &str,
) -> Response<Body> {
    match upgrade(shared, req, namespace, name) {
        Ok(response) => response,
        Err(error) => error_response(&error),
    }
}

fn upgrade(
    shared: &Shared,
    req: Request<Incoming>,
    namespace: &str,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let pod_ip = {
        let mut state = shared.lock();
        state.requests.record(Verb::Get, "pods/portforward");
        // Status faults apply (a 403 as without RBAC for `pods/portforward`); others do not.
        let decision = state.faults.decide(&RequestFacts {
            verb: Verb::Get,
            resource: "pods",
            subresource: Some("portforward"),
            name: Some(name),
            has_resource_version: false,
        });
        if let Some(FaultAction::Status {
            code,
            reason,
            retry_after_secs,
        }) = decision.action
        {
            let mut err = ApiError::new(code, &reason, format!("injected fault: {reason}"));
            err.retry_after_secs = retry_after_secs;
            return Err(err);
        }
        let key = (String::new(), "pods".to_owned());
        let pod = state
            .store
            .get(&key, &(namespace.to_owned(), name.to_owned()))
            .ok_or_else(|| ApiError::not_found("", "pods", name))?;
        pod.pointer("/status/podIP")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if req.method() != Method::GET {
        return Err(ApiError::method_not_allowed(format!(
            "pods/portforward is a WebSocket upgrade of GET, not {}",
            req.method()
        )));
    }
    let pod_ip: IpAddr = pod_ip
        .as_deref()
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!("pod {name:?} has no status.podIP to forward to"))
        })?;
    let ports = ports(req.uri().query())?;
    let headers = req.headers();
    let upgrade_requested = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()));
    let (true, Some(accept)) = (upgrade_requested, key) else {
        return Err(ApiError::bad_request(
            "pods/portforward needs a WebSocket upgrade (Upgrade: websocket, Sec-WebSocket-Key)",
        ));
    };
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .collect();
    let protocol = SUBPROTOCOLS
        .into_iter()
        .find(|p| offered.iter().any(|o| o == p))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "no supported port-forward subprotocol offered ({offered:?}); this server speaks {}",
                SUBPROTOCOLS.join(", ")
            ))
        })?;

    let mut shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "port-forward upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        tokio::select! {
            () = tunnel(ws, pod_ip, ports) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    });

    let mut response = Response::new(
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        header::HeaderValue::from_static(protocol),
    );
    if let Ok(accept) = header::HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    Ok(response)
}

/// The `ports` query parameter: comma-separated, at least one, each 1–65535.
fn ports(query: Option<&str>) -> Result<Vec<u16>, ApiError> {
    let query = parse_query(query);
    let raw = query.get("ports").map(String::as_str).unwrap_or("");
    let ports: Vec<u16> = raw
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| ApiError::bad_request(format!("invalid port {p:?} in `ports`")))
        })
        .collect::<Result<_, _>>()?;
    if ports.is_empty() {
        return Err(ApiError::bad_request("`ports` names no port to forward"));
    }
    if ports.len() > 128 {
        return Err(ApiError::bad_request("`ports` names more than 128 ports"));
    }
    Ok(ports)
}

/// Carries bytes between the WebSocket and one TCP connection per port until either side ends.
async fn tunnel<S>(ws: WebSocketStream<S>, pod_ip: IpAddr, ports: Vec<u16>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sink, mut incoming) = ws.split();
    let (from_pod, mut to_client) = mpsc::channel::<Message>(16);
    let mut writers: Vec<Option<OwnedWriteHalf>> = Vec::with_capacity(ports.len());
    let mut readers = JoinSet::new();
    for (index, port) in ports.iter().enumerate() {
        // At most 128 ports (checked), so the channel numbers fit a byte.
        let data = u8::try_from(2 * index).unwrap_or(u8::MAX - 1);
        let error = data + 1;
        let [lo, hi] = port.to_le_bytes();
        for channel in [data, error] {
            if sink
                .send(Message::binary(vec![channel, lo, hi]))
                .await
                .is_err()
            {
                return;
            }
        }
        match TcpStream::connect(SocketAddr::new(pod_ip, *port)).await {
            Ok(stream) => {
                let (read, write) = stream.into_split();
                writers.push(Some(write));
                readers.spawn(pump(read, data, from_pod.clone()));
            }
            Err(e) => {
                writers.push(None);
                let mut message = vec![error];
                message.extend_from_slice(
                    format!("error forwarding port {port} to pod {pod_ip}: {e}").as_bytes(),
                );
                if sink.send(Message::binary(message)).await.is_err() {
                    return;
                }
            }
        }
    }
    drop(from_pod);
    loop {
        tokio::select! {
            out = to_client.recv() => match out {
                Some(message) => {
                    if sink.send(message).await.is_err() {
                        break;
                    }
                }
                // Every pod connection has closed.
                None => break,
            },
            message = incoming.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    let Some((&channel, data)) = bytes.split_first() else { continue };
                    // Clients write only on data channels; anything else is ignored.
                    if channel % 2 == 1 || data.is_empty() {
                        continue;
                    }
                    let slot = writers.get_mut(usize::from(channel / 2));
                    if let Some(writer) = slot
                        && let Some(w) = writer.as_mut()
                        && w.write_all(data).await.is_err()
                    {
                        *writer = None;
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = sink.send(Message::Close(None)).await;
    let _ = sink.close().await;
    readers.abort_all();
}

/// Copies what the pod writes on one port into data messages on `channel`.
async fn pump(mut read: OwnedReadHalf, channel: u8, to_client: mpsc::Sender<Message>) {
    let mut buffer = vec![0_u8; READ_BUFFER];
    loop {
        let n = match read.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut message = Vec::with_capacity(n + 1);
        message.push(channel);
        message.extend_from_slice(&buffer[..n]);
        if to_client.send(Message::binary(message)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_read_from_the_query_and_bad_ones_refused() {
        assert_eq!(ports(Some("&ports=80%2C1234")).unwrap(), vec![80, 1234]);
        assert_eq!(ports(Some("ports=8494")).unwrap(), vec![8494]);
        assert!(ports(Some("ports=")).is_err());
        assert!(ports(None).is_err());
        assert!(ports(Some("ports=0")).is_err());
        assert!(ports(Some("ports=70000")).is_err());
    }
}
