//! Serving a Prometheus registry over HTTP (feature `metrics-http`): `GET /metrics` answers
//! with the registry in the OpenMetrics text format, which Prometheus scrapes as is.
//!
//! The reference agent serves its metrics with this on `--metrics-listen`; a host controller
//! can serve the backend's registry the same way (or merge it into its own endpoint).
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use prometheus_client::{metrics::counter::Counter, registry::Registry};
//!
//! # async fn run() -> std::io::Result<()> {
//! let mut registry = Registry::default();
//! let calls = Counter::<u64>::default();
//! registry.register("calls", "Calls served", calls.clone());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9464").await?;
//! axp_transport::metrics_http::serve(listener, Arc::new(registry), std::future::pending()).await
//! # }
//! ```

use std::{convert::Infallible, future::Future, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// The path metrics are served on.
pub const PATH: &str = "/metrics";

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `registry` on `listener` until `shutdown` resolves.
///
/// # Guarantees
///
/// `GET /metrics` gets the registry's current values (collectors are asked at each
/// scrape); any other path is 404 and any other method 405. One connection's failure never
/// stops the server.
///
/// # Errors
///
/// Only when accepting connections fails for good.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => return Ok(()),
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(answer(&request, &registry)) }
            });
            let served = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "metrics connection ended with an error");
            }
        });
    }
}

/// The registry in the OpenMetrics text format.
///
/// # Errors
///
/// When a metric fails to encode (a collector's bug).
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}

fn answer(request: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != PATH {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    match render(registry) {
        Ok(text) => {
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(CONTENT_TYPE),
            );
            response
        }
        Err(_) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "a metric could not be encoded\n",
        ),
    }
}
