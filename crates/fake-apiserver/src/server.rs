//! HTTP: the accept loop, and dispatch of routed requests ([`crate::routes`]) to the verbs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch as signal;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument as _;

use crate::apply::Applier;
use crate::crd::Registry;
use crate::discovery;
use crate::fault::{FaultAction, Faults, RequestFacts};
use crate::field_validation::{FieldValidation, Warnings};
use crate::observe::Observer;
use crate::options::FakeApiServerOptions;
use crate::requests::{RequestLog, Verb};
use crate::resource::{self, DeleteOptions, Deleted, PatchType, Target, WriteOptions};
use crate::routes::{Route, parse_query, route, verb_of};
use crate::selector::{FieldSelector, LabelSelector, Selectors};
use crate::status::ApiError;
use crate::store::Store;
use crate::table::{self, IncludeObject, PrinterColumn};
use crate::watch::{self, WatchRequest};
use crate::{openapi, openapi_pb, portforward};

/// The largest request body accepted, as on a real API server.
const MAX_BODY: usize = 3 * 1024 * 1024;

pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

/// Everything the server mutates, behind one lock: handlers never await while holding it.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) crds: Registry,
    pub(crate) store: Store,
    pub(crate) faults: Faults,
    pub(crate) requests: RequestLog,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) options: FakeApiServerOptions,
    pub(crate) addr: SocketAddr,
    pub(crate) state: Mutex<State>,
    pub(crate) shutdown: signal::Receiver<bool>,
    pub(crate) observer: Arc<Observer>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the JSON store half-written in a way that matters here.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Returned to hyper to close the connection without a response.
#[derive(Debug, thiserror::Error)]
#[error("connection reset by an injected fault")]
pub(crate) struct ResetConnection;

/// Accepts connections until `shutdown` fires or its sender is dropped; then aborts them all.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: signal::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        // `pods/{name}/portforward` upgrades to a WebSocket.
                        .with_upgrades()
                        .await
                    {
                        tracing::debug!(%peer, error = %e, "connection ended");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

pub(crate) fn full(status: StatusCode, value: &Value) -> Response<Body> {
    let body = Full::new(Bytes::from(serde_json::to_vec(value).unwrap_or_default()))
        .map_err(|never: Infallible| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn error_response(err: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = full(status, &err.to_json());
    if let Some(secs) = err.retry_after_secs
        && let Ok(v) = header::HeaderValue::from_str(&secs.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ResetConnection> {
    let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path());
    async move {
        let begun = std::time::Instant::now();
        let response = dispatch(&shared, req).await;
        shared.observer.record_latency(begun.elapsed());
        if let Ok(r) = &response {
            tracing::debug!(status = r.status().as_u16(), "answered");
        }
        response
    }
    .instrument(span)
    .await
}

async fn dispatch(
    shared: &Shared,
    req: Request<Incoming>,
) -> Result<Response<Body>, ResetConnection> {
    if let Route::PortForward { namespace, name } = route(req.uri().path()) {
        return Ok(portforward::answer(shared, req, &namespace, &name));
    }
    let (parts, body) = req.into_parts();
    let route = route(parts.uri.path());
    let query = parse_query(parts.uri.query());
    let Some(verb) = verb_of(&parts.method, &route, &query) else {
        let err = ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource: {}",
            parts.method
        ));
        return Ok(error_response(&err));
    };
    let (resource_label, subresource, name) = match &route {
        Route::Object {
            plural,
            name,
            status,
            ..
        } => (plural.clone(), status.then_some("status"), name.clone()),
        Route::OpenApiV2 | Route::OpenApiV3 | Route::OpenApiV3Doc(..) => {
            ("openapi".to_owned(), None, None)
        }
        _ => ("discovery".to_owned(), None, None),
    };
    let has_resource_version = query
        .get("resourceVersion")
        .is_some_and(|rv| !rv.is_empty() && rv != "0");
    let decision = {
        let mut state = shared.lock();
        let label = match subresource {
            Some(s) => format!("{resource_label}/{s}"),
            None => resource_label.clone(),
        };
        state.requests.record(verb, &label);
        state.faults.decide(&RequestFacts {
            verb,
            resource: &resource_label,
            subresource,
            name: name.as_deref(),
            has_resource_version,
        })
    };
    if !decision.latency.is_zero() {
        tokio::time::sleep(decision.latency).await;
    }
    let mut drop_after = None;
    let mut expire = false;
    match decision.action {
        Some(FaultAction::Status {
            code,
            reason,
            retry_after_secs,
        }) => {
            let mut err = ApiError::new(code, &reason, format!("injected fault: {reason}"));
            err.retry_after_secs = retry_after_secs;
            return Ok(error_response(&err));
        }
        Some(FaultAction::ResetConnection) => return Err(ResetConnection),
        Some(FaultAction::DropWatch { after_events }) => drop_after = Some(after_events),
        Some(FaultAction::ExpireResourceVersion) if verb == Verb::List => {
            return Ok(error_response(&ApiError::expired(
                "too old resource version (injected fault)",
            )));
        }
        Some(FaultAction::ExpireResourceVersion) => expire = true,
        // `decide` resolves a random fault to the action it drew.
        Some(FaultAction::Latency(_) | FaultAction::Random(_)) | None => {}
    }

    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return Ok(error_response(&ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!("reading the request body: {e}"),
            )));
        }
    };
    let header_text = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let content_type = header_text(header::CONTENT_TYPE);
    let accept = header_text(header::ACCEPT);
    let ctx = Ctx {
        shared,
        verb,
        query: &query,
        body: &body,
        content_type: &content_type,
        accept: &accept,
        warnings: Warnings::default(),
        drop_after,
        expire,
    };
    let mut response = match ctx.run(&route) {
        Ok(Answer::Json(status, value)) => full(status, &value),
        Ok(Answer::Bytes(content_type, bytes)) => {
            let body = Full::new(Bytes::from(bytes))
                .map_err(|never: Infallible| match never {})
                .boxed();
            let mut response = Response::new(body);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(content_type),
            );
            response
        }
        Ok(Answer::Watch(rx, tabulate)) => {
            let stream = ReceiverStream::new(rx).map(move |chunk| {
                chunk.map(|bytes| match &tabulate {
                    Some((columns, include)) => table_event(&bytes, columns, *include),
                    None => bytes,
                })
            });
            let stream = stream.map(|chunk| chunk.map(Frame::data));
            let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(err) => error_response(&err),
    };
    for warning in ctx.warnings.headers() {
        response.headers_mut().append(header::WARNING, warning);
    }
    Ok(response)
}

/// One watch event line with its object as a one-row `Table` (errors pass as they are).
fn table_event(line: &Bytes, columns: &[PrinterColumn], include: IncludeObject) -> Bytes {
    let Ok(mut event) = serde_json::from_slice::<Value>(line) else {
        return line.clone();
    };
    if !matches!(
        event["type"].as_str(),
        Some("ADDED" | "MODIFIED" | "DELETED")
    ) {
        return line.clone();
    }
    let rv = event
        .pointer("/object/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    event["object"] = table::table(columns, &[event["object"].take()], &rv, include);
    let mut bytes = serde_json::to_vec(&event).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

enum Answer {
    Json(StatusCode, Value),
    Bytes(&'static str, Vec<u8>),
    /// A watch, and the columns when its events carry `Table`s.
    Watch(
        tokio::sync::mpsc::Receiver<watch::Chunk>,
        Option<(Vec<PrinterColumn>, IncludeObject)>,
    ),
}

struct Ctx<'a> {
    shared: &'a Shared,
    verb: Verb,
    query: &'a HashMap<String, String>,
    body: &'a Bytes,
    content_type: &'a str,
    accept: &'a str,
    /// Sent back as `Warning` headers.
    warnings: Warnings,
    drop_after: Option<usize>,
    expire: bool,
}

impl Ctx<'_> {
    fn q(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }

    fn selectors(&self) -> Result<Selectors, ApiError> {
        let bad = |e: crate::selector::Error| ApiError::bad_request(e.to_string());
        Ok(Selectors {
            labels: LabelSelector::parse(self.q("labelSelector").unwrap_or("")).map_err(bad)?,
            fields: FieldSelector::parse(self.q("fieldSelector").unwrap_or("")).map_err(bad)?,
        })
    }

    fn json_body(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(self.body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
    }

    fn write_options(&self) -> Result<WriteOptions<'_>, ApiError> {
        Ok(WriteOptions {
            validate: self.shared.options.validate_schema,
            fields: FieldValidation::parse(
                self.q("fieldValidation"),
                self.shared.options.strict_unknown_fields,
            )?,
            warnings: &self.warnings,
        })
    }

    /// The printer columns when the client asked for a `Table`.
    fn tabulate(&self, t: &Target<'_>) -> Option<(Vec<PrinterColumn>, IncludeObject)> {
        (table::wanted(self.accept) && !t.status).then(|| {
            (
                t.version.printer_columns.clone(),
                IncludeObject::parse(self.q("includeObject")),
            )
        })
    }

    fn run(&self, route: &Route) -> Result<Answer, ApiError> {
        let ok = |v: Value| Ok(Answer::Json(StatusCode::OK, v));
        let not_found = || {
            ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        };
        let state = self.shared.lock();
        match route {
            Route::Version => ok(discovery::version()),
            Route::CoreVersions => ok(discovery::core_versions(&self.shared.addr.to_string())),
            Route::CoreResources => ok(discovery::core_resources(&state.crds)),
            // Answered before the body is read (it upgrades the connection).
            Route::PortForward { .. } => Err(not_found()),
            Route::Groups => ok(discovery::groups(&state.crds)),
            Route::Group(g) => {
                discovery::group(&state.crds, g).map_or_else(|| Err(not_found()), ok)
            }
            Route::Resources(g, v) => {
                discovery::resources(&state.crds, g, v).map_or_else(|| Err(not_found()), ok)
            }
            // The OpenAPI documents hold every schema: built from a snapshot, unlocked.
            Route::OpenApiV2 => {
                let crds = state.crds.clone();
                drop(state);
                let doc = openapi::v2(&crds);
                if self.accept.contains(openapi_pb::ACCEPTED) {
                    Ok(Answer::Bytes(
                        openapi_pb::CONTENT_TYPE,
                        openapi_pb::encode(&doc),
                    ))
                } else {
                    ok(doc)
                }
            }
            Route::OpenApiV3 => {
                let crds = state.crds.clone();
                drop(state);
                ok(openapi::v3_index(&crds))
            }
            Route::OpenApiV3Doc(g, v) => {
                let crds = state.crds.clone();
                drop(state);
                openapi::v3_group_version(&crds, g, v).map_or_else(|| Err(not_found()), ok)
            }
            Route::Unknown => Err(not_found()),
            Route::Object {
                group,
                version,
                namespace,
                plural,
                name,
                status,
            } => {
                let resource = state.crds.get(group, plural).ok_or_else(not_found)?;
                let v = resource.version(version).ok_or_else(not_found)?;
                if let Some(deprecation) = &v.deprecation {
                    self.warnings.push(deprecation.clone());
                }
                if *status && !v.status_subresource {
                    return Err(not_found());
                }
                // A namespaced resource is reachable without a namespace only as an
                // all-namespaces collection; a cluster-scoped one never has a namespace.
                let all_namespaces =
                    matches!(self.verb, Verb::List | Verb::Watch | Verb::DeleteCollection);
                if (!resource.namespaced && namespace.is_some())
                    || (resource.namespaced && namespace.is_none() && !all_namespaces)
                {
                    return Err(not_found());
                }
                let t = Target {
                    resource: &resource,
                    version: v,
                    namespace: namespace.as_deref(),
                    name: name.as_deref(),
                    status: *status,
                };
                drop(state);
                self.verb_on(t)
            }
        }
    }

    fn verb_on(&self, t: Target<'_>) -> Result<Answer, ApiError> {
        let ok = |v: Value| Ok(Answer::Json(StatusCode::OK, v));
        let mut state = self.shared.lock();
        let store = &mut state.store;
        match self.verb {
            Verb::Get => {
                let object = resource::get(store, t)?;
                match self.tabulate(&t) {
                    Some((columns, include)) => {
                        let rv = object["metadata"]["resourceVersion"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned();
                        ok(table::table(&columns, &[object], &rv, include))
                    }
                    None => ok(object),
                }
            }
            Verb::List => {
                let mut list = resource::list(store, t, &self.selectors()?);
                match self.tabulate(&t) {
                    Some((columns, include)) => {
                        let rv = list["metadata"]["resourceVersion"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned();
                        let items = match list["items"].take() {
                            Value::Array(items) => items,
                            _ => Vec::new(),
                        };
                        ok(table::table(&columns, &items, &rv, include))
                    }
                    None => ok(list),
                }
            }
            Verb::Watch => {
                let req = WatchRequest {
                    resource: Arc::new(t.resource.clone()),
                    version: t.version.name.clone(),
                    namespace: t.namespace.map(str::to_owned),
                    selectors: self.selectors()?,
                    resource_version: self.q("resourceVersion").map(str::to_owned),
                    bookmarks: self.q("allowWatchBookmarks") == Some("true"),
                    send_initial_events: self.q("sendInitialEvents") == Some("true"),
                    timeout: self
                        .q("timeoutSeconds")
                        .and_then(|s| s.parse().ok())
                        .map(Duration::from_secs),
                    drop_after: self.drop_after,
                    expire: self.expire,
                };
                let rx = watch::start(
                    store,
                    req,
                    self.shared.options.bookmark_interval,
                    self.shared.shutdown.clone(),
                    self.shared.observer.watch_opened(&t.resource.plural),
                )?;
                Ok(Answer::Watch(rx, self.tabulate(&t)))
            }
            Verb::Create => {
                let created = resource::create(store, t, self.json_body()?, self.write_options()?)?;
                Ok(Answer::Json(StatusCode::CREATED, created))
            }
            Verb::Update => ok(resource::replace(
                store,
                t,
                self.json_body()?,
                self.write_options()?,
            )?),
            Verb::Patch => {
                let ct = self.content_type.split(';').next().unwrap_or("").trim();
                let patch_type = match ct {
                    "application/merge-patch+json" => PatchType::Merge,
                    // Built-in kinds take strategic merge patches (here: as merge patches, which
                    // is the same for the fields pods and namespaces have); custom resources
                    // refuse them, as upstream (`kubectl patch` without `--type` gets a 415).
                    "application/strategic-merge-patch+json" if t.resource.group.is_empty() => {
                        PatchType::Merge
                    }
                    "application/json-patch+json" => PatchType::Json,
                    "application/apply-patch+yaml" | "application/apply-patch+json" => {
                        PatchType::Apply(Applier {
                            manager: self.q("fieldManager").unwrap_or("").to_owned(),
                            force: self.q("force") == Some("true"),
                        })
                    }
                    other => {
                        return Err(ApiError::new(
                            415,
                            "UnsupportedMediaType",
                            format!(
                                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml; got {other:?}"
                            ),
                        ));
                    }
                };
                ok(resource::patch(
                    store,
                    t,
                    &patch_type,
                    self.body,
                    self.write_options()?,
                )?)
            }
            Verb::Delete => {
                let opts = DeleteOptions::parse(self.body, self.q("propagationPolicy"))?;
                match resource::delete(store, t, &opts)? {
                    Deleted::Pending(object) => ok(object),
                    Deleted::Gone(status) => ok(status),
                }
            }
            Verb::DeleteCollection => {
                let opts = DeleteOptions::parse(self.body, self.q("propagationPolicy"))?;
                ok(resource::delete_collection(
                    store,
                    t,
                    &self.selectors()?,
                    &opts,
                ))
            }
        }
    }
}
