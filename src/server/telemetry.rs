//! Logging and tracing: structured `tracing` output, pretty or JSON; when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are also exported over OTLP/gRPC, and an
//! incoming W3C `traceparent` makes the call's span part of the caller's trace.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use super::config::{LogConfig, LogFormat};

/// Keeps the OTLP exporter and the log writer alive; [`Telemetry::shutdown`] (or dropping it)
/// flushes what is buffered.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    _log_writer: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// Log lines waiting for the writer thread; beyond this a line is dropped rather than making
/// a gRPC call wait for stderr (a blocked or slow log pipe must not stall the service).
const LOG_BUFFER_LINES: usize = 64 * 1024;

impl Telemetry {
    /// Exports every buffered span (call before exit).
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            if let Err(e) = p.shutdown() {
                tracing::warn!(error = %e, "exporting the last spans failed");
            }
        }
    }
}

/// Installs the global subscriber (once; later calls are ignored, as in tests). Must run inside
/// a tokio runtime when OTLP export is on.
pub fn init(config: &LogConfig) -> Telemetry {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.filter));
    let provider = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .and_then(|endpoint| {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| {
                    // The subscriber is not installed yet.
                    let _ = std::io::Write::write_all(
                        &mut std::io::stderr(),
                        format!("OTLP exporter disabled: {e}\n").as_bytes(),
                    );
                })
                .ok()?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        opentelemetry_sdk::Resource::builder()
                            .with_service_name("customer-profile")
                            .build(),
                    )
                    .build(),
            )
        });
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("customer-profile")));
    // One line per call is written by a background thread: formatting stays on the caller, the
    // write(2) to stderr does not.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .thread_name("log-writer")
        .finish(std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let installed = match config.format {
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(writer))
            .try_init(),
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(writer),
            )
            .try_init(),
    };
    Telemetry {
        provider,
        // When a subscriber was already installed (tests), this writer is unused.
        _log_writer: installed.ok().map(|()| guard),
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The span of one gRPC call: named by its method, child of the caller's trace when the
/// request carries a W3C `traceparent`.
pub fn call_span<B>(req: &http::Request<B>) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = tracing::info_span!(
        "grpc",
        method = %req.uri().path(),
        otel.kind = "server",
        code = tracing::field::Empty,
        latency_us = tracing::field::Empty,
    );
    if req.headers().contains_key("traceparent") {
        let cx = TraceContextPropagator::new().extract(&Headers(req.headers()));
        let _ = span.set_parent(cx);
    }
    span
}
