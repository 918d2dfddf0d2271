//! OTLP span export (feature `otlp`): the spans of this process, sent over OTLP/gRPC to an
//! OpenTelemetry collector, configured by the standard `OTEL_*` environment variables.
//!
//! | Variable | Effect |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT` | the collector (`http://host:4317`); export is **off** when neither is set |
//! | `OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none` | export off even with an endpoint |
//! | `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | the resource the spans are reported under |
//! | `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`, `_TIMEOUT`, `_COMPRESSION` | as the OTLP exporter specification says |
//! | `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`, … | the batch span processor |
//!
//! The exporter speaks plaintext gRPC (a node-local collector or sidecar).
//!
//! # Example
//!
//! ```no_run
//! use tracing_subscriber::layer::SubscriberExt as _;
//! use tracing_subscriber::util::SubscriberInitExt as _;
//!
//! # #[tokio::main] async fn main() -> Result<(), axp_transport::telemetry::TelemetryError> {
//! // Inside a Tokio runtime: the gRPC exporter needs one.
//! let export = axp_transport::telemetry::OtlpExport::from_env("my-controller")?;
//! tracing_subscriber::registry()
//!     .with(export.as_ref().map(|export| export.layer()))
//!     .with(tracing_subscriber::fmt::layer())
//!     .init();
//! // … run; then send what is still queued:
//! if let Some(export) = export {
//!     export.shutdown();
//! }
//! # Ok(()) }
//! ```

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{ExporterBuildError, WithExportConfig as _};
use opentelemetry_sdk::{
    Resource,
    trace::{SdkTracer, SdkTracerProvider},
};
use tracing_subscriber::{Layer, filter::LevelFilter, registry::LookupSpan};

/// The variables that name a collector; export is on when either is set.
pub const ENDPOINT_ENV: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// Why span export could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The OTLP exporter rejected its configuration (an endpoint that is not a URI, say).
    #[error("could not build the OTLP span exporter")]
    Exporter(#[source] ExporterBuildError),
}

/// Spans of this process exported over OTLP/gRPC, in batches.
///
/// # Guarantees
///
/// [`OtlpExport::shutdown`] (or dropping the last handle) sends what is still queued.
///
/// # Caveats
///
/// Build it inside a Tokio runtime (the gRPC channel runs on it); exporting happens on a
/// thread of the batch processor. Only spans at INFO and above are exported.
#[derive(Debug, Clone)]
pub struct OtlpExport {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl OtlpExport {
    /// Export as the `OTEL_*` variables say, reported as `service_name` unless
    /// `OTEL_SERVICE_NAME` names the service; `None` when no collector is named or export
    /// is disabled.
    ///
    /// # Errors
    ///
    /// [`TelemetryError::Exporter`] when the variables do not make an exporter.
    pub fn from_env(service_name: &str) -> Result<Option<Self>, TelemetryError> {
        let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
        let disabled = std::env::var("OTEL_SDK_DISABLED")
            .is_ok_and(|v| v.eq_ignore_ascii_case("true"))
            || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
        if disabled || !ENDPOINT_ENV.iter().any(|name| set(name)) {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(TelemetryError::Exporter)?;
        Ok(Some(Self::with_exporter(exporter, service_name)))
    }

    /// Export to the collector at `endpoint` (`http://127.0.0.1:4317`), reported as
    /// `service_name` unless `OTEL_SERVICE_NAME` says otherwise: for tests and demos that
    /// run their own collector.
    ///
    /// # Errors
    ///
    /// [`TelemetryError::Exporter`] for an endpoint that is not a URI.
    pub fn to_endpoint(endpoint: &str, service_name: &str) -> Result<Self, TelemetryError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(TelemetryError::Exporter)?;
        Ok(Self::with_exporter(exporter, service_name))
    }

    fn with_exporter(exporter: opentelemetry_otlp::SpanExporter, service_name: &str) -> Self {
        // The SDK's resource reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; a name
        // given here only replaces its `unknown_service` default.
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(service_name.to_owned());
        }
        let provider = SdkTracerProvider::builder()
            .with_resource(resource.build())
            .with_batch_exporter(exporter)
            .build();
        let tracer = provider.tracer(env!("CARGO_PKG_NAME"));
        Self { provider, tracer }
    }

    /// The `tracing` layer that turns spans into exported OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        // Libraries' TRACE/DEBUG spans (h2, hyper, tower) would flood the collector.
        tracing_opentelemetry::layer()
            .with_tracer(self.tracer.clone())
            .with_filter(LevelFilter::INFO)
    }

    /// Sends every span that has ended so far; blocks until the collector answered.
    pub fn flush(&self) {
        if let Err(error) = self.provider.force_flush() {
            tracing::warn!(%error, "could not flush the span export");
        }
    }

    /// Sends what is queued and stops exporting.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "could not shut the span export down cleanly");
        }
    }
}
