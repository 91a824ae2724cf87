//! Prometheus metrics with bounded labels: route templates (never raw paths), methods,
//! status codes and collection names.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of a served request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route template, e.g. `/v1/collections/{name}/search`, or `unmatched`.
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// Status code.
    pub status: u16,
}

/// Labels of a latency observation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route template.
    pub route: String,
    /// HTTP method.
    pub method: String,
}

/// Labels of per-collection series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CollectionLabels {
    /// Collection name.
    pub collection: String,
}

/// Labels of a refusal.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `unauthenticated`, `forbidden`, `rate_limited`, `overloaded`, `timeout`.
    pub reason: String,
}

/// Every metric the server exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests by route, method and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Latency by route and method.
    pub latency: Family<RouteLabels, Histogram>,
    /// Requests refused before reaching the engine.
    pub refused: Family<ReasonLabels, Counter>,
    /// Records written per collection.
    pub records_written: Family<CollectionLabels, Counter>,
    /// Searches per collection.
    pub searches: Family<CollectionLabels, Counter>,
    /// Live records per collection (refreshed at scrape).
    pub records: Family<CollectionLabels, Gauge>,
    /// Requests in flight.
    pub inflight: Gauge,
    /// Texts embedded.
    pub texts_embedded: Counter,
    /// Fleet webhook deliveries and MQTT wake-ups.
    pub fleet_notify: crate::fleet_notify::NotifyMetrics,
}

fn latency_histogram() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kernelize");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let refused = Family::<ReasonLabels, Counter>::default();
        let records_written = Family::<CollectionLabels, Counter>::default();
        let searches = Family::<CollectionLabels, Counter>::default();
        let records = Family::<CollectionLabels, Gauge>::default();
        let inflight = Gauge::default();
        let texts_embedded = Counter::default();
        registry.register("http_requests", "HTTP requests served", requests.clone());
        registry.register("http_request_duration_seconds", "HTTP request latency", latency.clone());
        registry.register(
            "http_refused",
            "Requests refused by authentication, authorization or limits",
            refused.clone(),
        );
        registry.register("records_written", "Records upserted or deleted", records_written.clone());
        registry.register("searches", "Searches served", searches.clone());
        registry.register("collection_records", "Live records per collection", records.clone());
        registry.register("http_requests_in_flight", "Requests being served", inflight.clone());
        registry.register("texts_embedded", "Texts embedded", texts_embedded.clone());
        let fleet_notify = crate::fleet_notify::NotifyMetrics::register(&mut registry);
        Metrics {
            registry,
            requests,
            latency,
            refused,
            records_written,
            searches,
            records,
            inflight,
            texts_embedded,
            fleet_notify,
        }
    }

    /// Counts a refusal.
    pub fn refuse(&self, reason: &str) {
        self.refused.get_or_create(&ReasonLabels { reason: reason.to_owned() }).inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
