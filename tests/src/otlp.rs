//! An in-process OpenTelemetry collector: an OTLP/gRPC `TraceService` on 127.0.0.1 that
//! keeps every span it is sent, so tests (and the demo) can look at whole traces across
//! the processes of the pipeline.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, any_value},
};
use tokio::sync::oneshot;

/// One span as a collector received it (ids in lower-case hex, as in `traceparent`).
#[derive(Debug, Clone, PartialEq)]
pub struct CollectedSpan {
    /// The exporting process's `service.name`.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits; empty for a root.
    pub parent_span_id: String,
    /// Attributes, their values as text.
    pub attributes: BTreeMap<String, String>,
    /// Start, for ordering siblings.
    pub start_unix_nanos: u64,
}

impl CollectedSpan {
    /// An attribute's value, if set.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// The collector. Stops serving when dropped.
#[derive(Debug)]
pub struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<CollectedSpan>>>,
    _stop: oneshot::Sender<()>,
}

#[derive(Debug, Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<CollectedSpan>>>,
}

impl Collector {
    /// Serves on a free port of 127.0.0.1.
    ///
    /// # Errors
    ///
    /// When no port can be bound.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let receiver = Receiver::default();
        let spans = receiver.spans.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            );
        tokio::spawn(server);
        Ok(Self {
            addr,
            spans,
            _stop: stop,
        })
    }

    /// `http://127.0.0.1:<port>`: the value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<CollectedSpan> {
        self.spans.lock().expect("span list poisoned").clone()
    }

    /// The spans of one trace, in start order.
    pub fn trace(&self, trace_id: &str) -> Vec<CollectedSpan> {
        let mut spans: Vec<_> = self
            .spans()
            .into_iter()
            .filter(|span| span.trace_id == trace_id)
            .collect();
        spans.sort_by_key(|span| span.start_unix_nanos);
        spans
    }
}

/// The one span named `name` among `spans`.
///
/// # Panics
///
/// When there is none or several (with the tree in the message): for tests.
pub fn one<'a>(spans: &'a [CollectedSpan], name: &str) -> &'a CollectedSpan {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one `{name}` span:\n{}", render_tree(spans));
    found[0]
}

/// The spans as an indented tree (`name [service]` per line, children under their parent,
/// in start order); spans whose parent is not among them are roots.
pub fn render_tree(spans: &[CollectedSpan]) -> String {
    fn walk(spans: &[CollectedSpan], parent: &str, depth: usize, out: &mut String) {
        for span in spans.iter().filter(|s| s.parent_span_id == parent) {
            let mut facts: Vec<String> = ["conversation_id", "exec_id", "outcome", "path"]
                .iter()
                .filter_map(|key| Some(format!("{key}={}", span.attribute(key)?)))
                .collect();
            facts.insert(0, span.service.clone());
            out.push_str(&format!(
                "{}{} [{}]\n",
                "  ".repeat(depth),
                span.name,
                facts.join(" ")
            ));
            walk(spans, &span.span_id, depth + 1, out);
        }
    }
    let ids: Vec<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut out = String::new();
    let mut roots: Vec<&str> = spans
        .iter()
        .filter(|s| !ids.contains(&s.parent_span_id.as_str()))
        .map(|s| s.parent_span_id.as_str())
        .collect();
    roots.dedup();
    for root in roots {
        walk(spans, root, 0, &mut out);
    }
    out
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref()))
                .unwrap_or_default();
            for span in resource_spans
                .scope_spans
                .into_iter()
                .flat_map(|scope| scope.spans)
            {
                received.push(CollectedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                        .collect(),
                    start_unix_nanos: span.start_time_unix_nano,
                });
            }
        }
        self.spans
            .lock()
            .expect("span list poisoned")
            .extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}
