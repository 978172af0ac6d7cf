//! Prometheus metrics, served on their own listener so scraping never competes with the API
//! port's auth and limits.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::model::{kind_from_id, kind_name};
use crate::store::Store;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// What the accept loops count (`listen`): clones share the same counters.
#[derive(Clone, Debug, Default)]
pub struct ConnectionMetrics {
    /// gRPC connections currently held open.
    pub open: Gauge,
    /// Connections closed right after accept because `max_connections` were open.
    pub shed: Counter,
    /// Connections closed because their first bytes did not arrive in time.
    pub handshake_timeouts: Counter,
    /// Accept failures for want of descriptors (EMFILE/ENFILE), each followed by a back-off.
    pub descriptor_exhausted: Counter,
    /// Connections closed because they held no RPC for `idle_timeout_ms`.
    pub idle_closed: Counter,
}

/// All metrics of one server.
pub struct Metrics {
    registry: Registry,
    requests: Family<RpcLabels, Counter>,
    latency: Family<MethodLabel, Histogram, fn() -> Histogram>,
    objects: Family<KindLabel, Gauge>,
    revision: Gauge,
    flushes: Counter,
    flush_seconds: Gauge<f64, AtomicU64>,
    last_flush_seconds: Gauge<f64, AtomicU64>,
    connections: ConnectionMetrics,
    drift_engine_ready: Gauge,
    drift_engine_failed: Gauge,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ])
}

impl Metrics {
    /// Registers every metric; store figures are read at scrape time.
    pub fn new(store: Arc<dyn Store>) -> Self {
        let mut registry = Registry::with_prefix("muster");
        let requests = Family::<RpcLabels, Counter>::default();
        let latency: Family<MethodLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let objects = Family::<KindLabel, Gauge>::default();
        let revision = Gauge::default();
        let flushes = Counter::default();
        let flush_seconds = Gauge::<f64, AtomicU64>::default();
        let last_flush_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "grpc_requests",
            "gRPC requests by method and status code",
            requests.clone(),
        );
        registry.register(
            "grpc_request_duration_seconds",
            "gRPC request latency",
            latency.clone(),
        );
        registry.register("objects", "Objects in the store by kind", objects.clone());
        registry.register(
            "store_revision",
            "Newest committed store revision",
            revision.clone(),
        );
        registry.register(
            "store_flushes",
            "Group-commit flushes (flush + fdatasync)",
            flushes.clone(),
        );
        registry.register(
            "store_flush_seconds_total",
            "Time spent in group-commit flushes",
            flush_seconds.clone(),
        );
        registry.register(
            "store_last_flush_seconds",
            "Duration of the latest flush",
            last_flush_seconds.clone(),
        );
        let connections = ConnectionMetrics::default();
        registry.register(
            "connections_open",
            "gRPC connections currently open",
            connections.open.clone(),
        );
        registry.register(
            "connections_shed",
            "gRPC connections closed at accept because max_connections were open",
            connections.shed.clone(),
        );
        registry.register(
            "connections_idle_closed",
            "gRPC connections closed because they held no RPC for idle_timeout_ms",
            connections.idle_closed.clone(),
        );
        registry.register(
            "connection_handshake_timeouts",
            "Connections closed because their first bytes (TLS or HTTP/2 preface) came too late",
            connections.handshake_timeouts.clone(),
        );
        registry.register(
            "accept_descriptor_exhausted",
            "Accepts that failed for want of file descriptors (EMFILE/ENFILE), then backed off",
            connections.descriptor_exhausted.clone(),
        );
        let drift_engine_ready = Gauge::default();
        let drift_engine_failed = Gauge::default();
        registry.register(
            "drift_engine_ready",
            "1 while the drift engine answers drift and plan queries (0 while loading or failed)",
            drift_engine_ready.clone(),
        );
        registry.register(
            "drift_engine_failed",
            "1 when the drift engine could not load the store or stopped on an error: ConfigService is NOT_SERVING",
            drift_engine_failed.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            objects,
            revision,
            flushes,
            flush_seconds,
            last_flush_seconds,
            connections,
            drift_engine_ready,
            drift_engine_failed,
            store,
        }
    }

    /// Records the drift engine's status.
    pub fn set_drift_engine(&self, status: &crate::drift::EngineStatus) {
        use crate::drift::EngineStatus as S;
        let (ready, failed) = match status {
            S::Running => (1, 0),
            S::Failed(_) => (0, 1),
            S::Loading | S::Stopped => (0, 0),
        };
        self.drift_engine_ready.set(ready);
        self.drift_engine_failed.set(failed);
    }

    /// The accept loops' counters.
    pub fn connections(&self) -> ConnectionMetrics {
        self.connections.clone()
    }

    /// Counts one finished RPC.
    pub fn observe(&self, method: &str, code: &str, took: Duration) {
        self.requests
            .get_or_create(&RpcLabels {
                method: method.to_string(),
                code: code.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabel {
                method: method.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// The text exposition, with store figures refreshed.
    pub fn render(&self) -> String {
        if let Ok(counts) = self.store.counts() {
            for (kind, n) in counts {
                let k = kind_name(kind_from_id(kind)).to_string();
                self.objects
                    .get_or_create(&KindLabel { kind: k })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        self.revision
            .set(i64::try_from(self.store.revision()).unwrap_or(i64::MAX));
        let s = self.store.flush_stats();
        let seen = self.flushes.get();
        self.flushes.inc_by(s.flushes.saturating_sub(seen));
        self.flush_seconds.set(s.total.as_secs_f64());
        self.last_flush_seconds.set(s.last.as_secs_f64());
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Concurrent connections to the metrics listener.
const METRICS_MAX_CONNECTIONS: usize = 16;

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Response, StatusCode};
    // Scrapes are short: a few at a time is plenty, and more must not eat descriptors.
    let permits = Arc::new(tokio::sync::Semaphore::new(METRICS_MAX_CONNECTIONS));
    let mut error_log = crate::listen::LogEvery::default();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors, the backlog stays readable: back off instead of spinning.
                if error_log.due() {
                    tracing::warn!(error = %e, "metrics accept failed; backing off");
                }
                tokio::time::sleep(crate::listen::ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let _permit = permit;
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let metrics = Arc::clone(&metrics);
                    async move {
                        let resp = if req.uri().path() == "/metrics" {
                            Response::builder()
                                .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                                .body(Full::new(Bytes::from(metrics.render())))
                        } else {
                            Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::from("see /metrics\n")))
                        };
                        resp.map_err(|e| std::io::Error::other(e.to_string()))
                    }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            // A client that never finishes its request headers gives its slot back.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(io, svc)
                .await;
        });
    }
}
