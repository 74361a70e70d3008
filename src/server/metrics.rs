//! Prometheus metrics, one registry per server (tests run many servers in one process, so
//! nothing is global), served as text on their own port at `/metrics`.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::audit::AuditLog;
use crate::domain::view_cache::ViewCache;
use crate::store::Store;

const META: Metadata<'static> = Metadata::new("customer_profile", metrics::Level::INFO, None);

/// Latency buckets, seconds: 100 µs to 10 s.
const BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// The registry.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    Key::from_parts(
        name,
        labels
            .iter()
            .map(|(k, v)| Label::new(*k, v.to_string()))
            .collect::<Vec<_>>(),
    )
}

/// How often the server folds recorded histogram samples into buckets (see
/// [`Metrics::run_upkeep`]): at 150,000 calls/s one interval holds about 750,000 samples, 6 MB.
pub const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Metrics {
        let builder = PrometheusBuilder::new();
        let builder = builder
            .set_buckets(&BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        Metrics { recorder, handle }
    }

    /// A counter.
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.recorder.register_counter(&key(name, labels), &META)
    }

    /// A gauge.
    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.recorder.register_gauge(&key(name, labels), &META)
    }

    /// A histogram.
    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.recorder.register_histogram(&key(name, labels), &META)
    }

    /// Folds the histogram samples recorded since the last upkeep into their buckets (the
    /// recorder holds every sample until then); the server does this every [`UPKEEP_EVERY`].
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The Prometheus text exposition, with store and audit log gauges sampled now.
    pub fn render(&self, store: &dyn Store, views: &ViewCache, audit: &AuditLog) -> String {
        // 1 while the audit log cannot be written: audited calls are refused meanwhile, and
        // health stays SERVING (the process is fine), so this is what to alert on.
        self.gauge("audit_log_failing", &[])
            .set(if audit.failing().is_some() { 1.0 } else { 0.0 });
        self.gauge("audit_log_size_on_disk_bytes", &[])
            .set(audit.size_on_disk() as f64);
        self.counter("view_cache_hits_total", &[])
            .absolute(views.hits());
        self.counter("view_cache_misses_total", &[])
            .absolute(views.misses());
        self.gauge("view_cache_entries", &[])
            .set(views.len() as f64);
        let stats = store.stats();
        self.gauge("store_size_on_disk_bytes", &[])
            .set(stats.size_on_disk as f64);
        self.gauge("store_commits", &[]).set(stats.commits as f64);
        self.gauge("store_flushes", &[]).set(stats.flushes as f64);
        self.gauge("store_writes_per_flush", &[])
            .set(if stats.flushes == 0 {
                0.0
            } else {
                stats.commits as f64 / stats.flushes as f64
            });
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// The tower stack's per-call metrics, with handles registered once: building a label set and
/// looking it up in the registry for every call costs allocations and hashing that a flood of
/// refused calls would pay tens of thousands of times a second.
pub struct CallMetrics {
    registry: Arc<Metrics>,
    in_flight: Gauge,
    /// Method label → its handles. The labels are bounded: the caller passes a method the
    /// server knows or [`UNKNOWN_METHOD`], never a path as the client sent it.
    methods: parking_lot::RwLock<HashMap<Box<str>, Arc<MethodMetrics>>>,
}

/// The label of every path that names no method of the server, so a client cannot grow the
/// registry by calling made-up paths.
pub const UNKNOWN_METHOD: &str = "unknown";

impl std::fmt::Debug for CallMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallMetrics")
    }
}

impl CallMetrics {
    /// Handles in `registry`.
    pub fn new(registry: Arc<Metrics>) -> CallMetrics {
        CallMetrics {
            in_flight: registry.gauge("grpc_requests_in_flight", &[]),
            registry,
            methods: parking_lot::RwLock::new(HashMap::new()),
        }
    }

    /// `grpc_requests_in_flight`.
    pub fn in_flight(&self) -> &Gauge {
        &self.in_flight
    }

    /// The handles of `method` (a bounded label: see [`CallMetrics::methods`]).
    pub fn method(&self, method: &str) -> Arc<MethodMetrics> {
        if let Some(m) = self.methods.read().get(method) {
            return m.clone();
        }
        self.methods
            .write()
            .entry(method.into())
            .or_insert_with(|| {
                Arc::new(MethodMetrics {
                    duration: self
                        .registry
                        .histogram("grpc_request_duration_seconds", &[("method", method)]),
                    by_code: std::array::from_fn(|_| OnceLock::new()),
                    registry: self.registry.clone(),
                    method: method.into(),
                })
            })
            .clone()
    }
}

/// One method's handles: its latency histogram, and its call counter by status code,
/// registered at a code's first use (so `/metrics` lists only codes that occurred).
pub struct MethodMetrics {
    duration: Histogram,
    by_code: [OnceLock<Counter>; 17],
    registry: Arc<Metrics>,
    method: Box<str>,
}

impl MethodMetrics {
    /// A call ended with `code` after `elapsed`.
    pub fn finished(&self, code: tonic::Code, elapsed: Duration) {
        let name = crate::audit::code_name(code as i32);
        if let Some(slot) = self.by_code.get(code as usize) {
            slot.get_or_init(|| {
                self.registry.counter(
                    "grpc_requests_total",
                    &[("method", &self.method), ("code", name)],
                )
            })
            .increment(1);
        }
        self.duration.record(elapsed.as_secs_f64());
    }
}

/// Serves `/metrics` on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    views: Arc<ViewCache>,
    audit: Arc<AuditLog>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            let store = store.clone();
            let views = views.clone();
            let audit = audit.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.render(&*store, &views, &audit),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
}
