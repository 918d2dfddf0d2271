//! The Docker Engine, reached through a small API-version proxy.
//!
//! Why the proxy exists: testcontainers 0.28 talks to the engine with bollard 0.21, which
//! prefixes every request with a fixed API version (`/v1.53/…`), does not negotiate unless asked
//! (testcontainers does not ask) and ignores `DOCKER_API_VERSION`. Debian bookworm's `docker.io`
//! (Engine 20.10, API 1.41 at most) refuses such requests with "client version 1.53 is too new".
//! So the tests serve HTTP on 127.0.0.1 in-process, forward each request to the engine's unix
//! socket with a version prefix newer than the engine's lowered to the engine's, and point
//! testcontainers at it with `DOCKER_HOST=tcp://127.0.0.1:PORT`. On an engine new enough the
//! proxy forwards requests unchanged. Upgraded connections (exec and attach streams) are spliced
//! through.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full, combinators::BoxBody};
use hyper::{Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UnixStream};

/// How long one probe of the engine may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// An engine the tests can use.
#[derive(Debug, Clone)]
pub struct Engine {
    /// The engine's unix socket.
    pub socket: PathBuf,
    /// The engine's version, e.g. `20.10.24+dfsg1`.
    pub version: String,
    /// The newest API version the engine speaks.
    pub api: ApiVersion,
}

/// A Docker API version, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion(pub u32, pub u32);

impl ApiVersion {
    fn parse(text: &str) -> Option<Self> {
        let (major, minor) = text.split_once('.')?;
        Some(Self(major.parse().ok()?, minor.parse().ok()?))
    }
}

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// The engine's socket: `DOCKER_HOST` when it is a `unix://` address, else `/var/run/docker.sock`.
///
/// # Errors
///
/// `DOCKER_HOST` names something other than a unix socket.
pub fn socket_from_env() -> Result<PathBuf, String> {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.trim().is_empty() => host
            .strip_prefix("unix://")
            .map(PathBuf::from)
            .ok_or_else(|| {
                format!(
                    "DOCKER_HOST={host}: the container tests reach the engine only over a unix socket (unix:///path)"
                )
            }),
        _ => Ok(PathBuf::from("/var/run/docker.sock")),
    }
}

impl Engine {
    /// Asks the engine at `socket` for its version.
    ///
    /// # Errors
    ///
    /// The engine does not answer, or answers something else than its version.
    pub async fn probe(socket: &Path) -> Result<Self, String> {
        let (status, body) = get(socket, "/version").await?;
        if status != StatusCode::OK {
            return Err(format!("GET /version answered {status}"));
        }
        let json: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("GET /version is not JSON: {e}"))?;
        let api = json["ApiVersion"]
            .as_str()
            .and_then(ApiVersion::parse)
            .ok_or_else(|| format!("GET /version has no ApiVersion: {json}"))?;
        Ok(Self {
            socket: socket.to_owned(),
            version: json["Version"].as_str().unwrap_or("?").to_owned(),
            api,
        })
    }

    /// Whether the engine has the image `reference` (`name:tag`).
    ///
    /// # Errors
    ///
    /// The engine does not answer, or answers neither found nor not-found.
    pub async fn has_image(&self, reference: &str) -> Result<bool, String> {
        let (status, body) = get(
            &self.socket,
            &format!("/v{}/images/{reference}/json", self.api),
        )
        .await?;
        match status {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            other => Err(format!(
                "inspecting image {reference}: {other}: {}",
                String::from_utf8_lossy(&body)
            )),
        }
    }

    /// Serves the version-lowering proxy on 127.0.0.1 from the current runtime; returns its address.
    ///
    /// # Errors
    ///
    /// No loopback port can be bound.
    pub async fn serve_proxy(&self) -> Result<SocketAddr, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("binding the Docker API proxy on 127.0.0.1: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("the Docker API proxy's address: {e}"))?;
        let socket = Arc::new(self.socket.clone());
        let api = self.api;
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let socket = socket.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let socket = socket.clone();
                        async move { Ok::<_, hyper::Error>(forward(&socket, api, req).await) }
                    });
                    // A client that hangs up mid-request is no concern of the tests.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Ok(addr)
    }
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Forwards one request to the engine; a failure to reach it is a 502 that says why.
async fn forward(
    socket: &Path,
    api: ApiVersion,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let lowered = lower_version(&target, api);
    match lowered.parse() {
        Ok(uri) => *req.uri_mut() = uri,
        Err(e) => return bad_gateway(format!("rewritten URI {lowered:?}: {e}")),
    }
    let client_side = hyper::upgrade::on(&mut req);
    let mut sender = match connect(socket).await {
        Ok(sender) => sender,
        Err(e) => return bad_gateway(e),
    };
    let mut response = match sender.send_request(req).await {
        Ok(response) => response,
        Err(e) => return bad_gateway(format!("forwarding {target}: {e}")),
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let engine_side = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            if let (Ok(client), Ok(engine)) = (client_side.await, engine_side.await) {
                let _ = tokio::io::copy_bidirectional(
                    &mut TokioIo::new(client),
                    &mut TokioIo::new(engine),
                )
                .await;
            }
        });
    }
    response.map(|body| body.boxed())
}

fn bad_gateway(message: String) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(message))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}

/// `/v1.53/containers/json` → `/v1.41/containers/json` for an engine at 1.41; anything else unchanged.
pub fn lower_version(target: &str, engine: ApiVersion) -> String {
    let Some(rest) = target.strip_prefix("/v") else {
        return target.to_owned();
    };
    let Some((version, tail)) = rest.split_once('/') else {
        return target.to_owned();
    };
    match ApiVersion::parse(version) {
        Some(asked) if asked > engine => format!("/v{engine}/{tail}"),
        _ => target.to_owned(),
    }
}

/// One HTTP/1 connection to the engine (one per request: simple, and the engine is local).
async fn connect<B>(socket: &Path) -> Result<hyper::client::conn::http1::SendRequest<B>, String>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {}: {e}", socket.display()))?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    Ok(sender)
}

/// GET `path` from the engine, bounded by [`PROBE_TIMEOUT`].
async fn get(socket: &Path, path: &str) -> Result<(StatusCode, Bytes), String> {
    let call = async {
        let mut sender = connect(socket).await?;
        let request = Request::get(path)
            .header(header::HOST, "docker")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("GET {path}: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("GET {path}: reading the body: {e}"))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(PROBE_TIMEOUT, call)
        .await
        .map_err(|_| format!("GET {path} took over {PROBE_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_version_newer_than_the_engines_is_lowered() {
        let engine = ApiVersion(1, 41);
        assert_eq!(
            lower_version("/v1.53/containers/json?all=1", engine),
            "/v1.41/containers/json?all=1"
        );
        assert_eq!(
            lower_version("/v1.40/containers/json", engine),
            "/v1.40/containers/json"
        );
        assert_eq!(lower_version("/_ping", engine), "/_ping");
        assert_eq!(lower_version("/version", engine), "/version");
    }
}
