//! W3C trace context (`traceparent`, `tracestate`) carried as gRPC metadata, so one trace
//! runs from the AX controller through the backend into the agent.
//!
//! The clients of this crate write the current span's context into every call
//! ([`inject`]); the server makes the span of each execution a child of the caller's
//! context ([`continue_trace`]), on both protocols. AX's own harness client sends
//! `traceparent` on every call, so an agent served here joins AX's traces as they are.
//!
//! The format is always W3C Trace Context (OpenTelemetry's `TraceContextPropagator`),
//! whatever global propagator the host configured: it is what AX speaks.
//!
//! # Caveats
//!
//! Spans only have an OpenTelemetry context when the process installed a
//! `tracing-opentelemetry` layer (an exporter such as
//! [`telemetry::OtlpExport`](crate::telemetry), feature `otlp`); without one, [`inject`]
//! writes nothing and [`continue_trace`] changes nothing.
//!
//! # Example
//!
//! ```
//! use axp_transport::trace_context;
//! use tonic::metadata::MetadataMap;
//!
//! let mut metadata = MetadataMap::new();
//! metadata.insert(
//!     "traceparent",
//!     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap(),
//! );
//! let span = tracing::info_span!("execution");
//! trace_context::continue_trace(&span, &metadata); // the span joins the caller's trace
//! ```

use std::collections::BTreeMap;

use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator as _},
    trace::TraceContextExt as _,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The metadata entry (HTTP/2 header) naming the caller's span.
pub const TRACEPARENT: &str = "traceparent";
/// The metadata entry carrying vendor trace state beside [`TRACEPARENT`].
pub const TRACESTATE: &str = "tracestate";

/// Writes `span`'s trace context into `metadata` (`traceparent`, and `tracestate` when
/// there is one). Writes nothing when the span has no valid OpenTelemetry context.
pub fn inject(span: &tracing::Span, metadata: &mut MetadataMap) {
    let context = span.context();
    TraceContextPropagator::new().inject_context(&context, &mut MetadataInjector(metadata));
}

/// The caller's trace context in `metadata`, if it sent one (an invalid or missing
/// `traceparent` gives an empty context).
pub fn extract(metadata: &MetadataMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&MetadataExtractor(metadata))
}

/// Makes `span` a child of the caller's span named in `metadata`. A call without (valid)
/// trace context leaves `span` where it is: the root of a new trace, or the child of the
/// current span.
///
/// Call it right after creating `span`, before it is entered: a started span keeps its parent.
pub fn continue_trace(span: &tracing::Span, metadata: &MetadataMap) {
    let context = extract(metadata);
    if context.span().span_context().is_valid() {
        // Fails only without an OpenTelemetry layer, where there is no trace to join.
        let _ = span.set_parent(context);
    }
}

/// `span`'s trace context as W3C header pairs (`traceparent`, and `tracestate` when
/// non-empty); empty when the span has no valid context. This is what the
/// agent-sandbox SDKs store, as JSON, in a claim's `opentelemetry.io/trace-context`
/// annotation.
pub fn headers(span: &tracing::Span) -> BTreeMap<String, String> {
    let mut headers = BTreeMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut MapInjector(&mut headers));
    headers
}

/// The trace id of `span`'s context as 32 hex digits, if it has a valid one.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator writes only lower-case ASCII names and printable values; anything
        // else could not travel as metadata and is dropped rather than failing the call.
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct MapInjector<'a>(&'a mut BTreeMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            self.0.insert(key.to_owned(), value);
        }
    }
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                KeyRef::Ascii(key) => Some(key.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_in_metadata_is_read_back_as_the_callers_span() {
        let mut metadata = MetadataMap::new();
        metadata.insert(TRACEPARENT, PARENT.parse().unwrap());
        metadata.insert(TRACESTATE, "vendor=opaque".parse().unwrap());
        let context = extract(&metadata);
        let span = context.span();
        let caller = span.span_context();
        assert!(caller.is_valid());
        assert!(caller.is_remote());
        assert_eq!(
            caller.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(caller.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(caller.trace_state().header(), "vendor=opaque");
    }

    #[test]
    fn missing_or_malformed_trace_context_is_no_parent() {
        let mut metadata = MetadataMap::new();
        assert!(!extract(&metadata).span().span_context().is_valid());
        metadata.insert(TRACEPARENT, "00-not-a-trace-01".parse().unwrap());
        assert!(!extract(&metadata).span().span_context().is_valid());
    }

    #[test]
    fn without_an_opentelemetry_layer_nothing_is_injected() {
        let mut metadata = MetadataMap::new();
        inject(&tracing::info_span!("call"), &mut metadata);
        assert!(metadata.get(TRACEPARENT).is_none());
        assert!(headers(&tracing::info_span!("call")).is_empty());
    }
}
