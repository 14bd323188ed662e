//! Prometheus metrics (text exposition at `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

/// Labels of the key proxy counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProxyLabels {
    /// `DeliverKfrag`, `Reencrypt`, `Release`.
    pub method: String,
    /// `ok` or `refused`.
    pub outcome: String,
}

/// Labels of the bad-cfrag counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub proxy: String,
}

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Histogram,
    pub auth_failures: Counter,
    pub upload_bytes: Counter,
    pub download_bytes: Counter,
    pub access_allowed: Counter,
    pub access_denied: Counter,
    /// Requests this gateway served as a key proxy.
    pub proxy: Family<ProxyLabels, Counter>,
    /// Capsule fragments refused as a reader, by the proxy that sent them.
    pub bad_cfrags: Family<PeerLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ehr_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        let latency = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            latency.clone(),
        );
        let auth_failures = Counter::default();
        registry.register(
            "auth_failures",
            "Rejected bearer tokens",
            auth_failures.clone(),
        );
        let upload_bytes = Counter::default();
        registry.register(
            "upload_plaintext_bytes",
            "Plaintext bytes uploaded",
            upload_bytes.clone(),
        );
        let download_bytes = Counter::default();
        registry.register(
            "download_plaintext_bytes",
            "Plaintext bytes served",
            download_bytes.clone(),
        );
        let access_allowed = Counter::default();
        registry.register(
            "access_allowed",
            "Allowed access decisions",
            access_allowed.clone(),
        );
        let access_denied = Counter::default();
        registry.register(
            "access_denied",
            "Denied access decisions",
            access_denied.clone(),
        );
        let proxy = Family::<ProxyLabels, Counter>::default();
        registry.register(
            "key_proxy_requests",
            "Key proxy requests served, by method and outcome",
            proxy.clone(),
        );
        let bad_cfrags = Family::<PeerLabels, Counter>::default();
        registry.register(
            "bad_cfrags",
            "Capsule fragments that failed verification, by proxy",
            bad_cfrags.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            auth_failures,
            upload_bytes,
            download_bytes,
            access_allowed,
            access_denied,
            proxy,
            bad_cfrags,
        }
    }

    /// Counts one key proxy request.
    pub fn proxy_requests(&self, method: &str, outcome: &str) {
        self.proxy
            .get_or_create(&ProxyLabels {
                method: method.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if prometheus_client::encoding::text::encode(&mut s, &self.registry).is_err() {
            s.clear();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RequestLabels {
                method: "GET".into(),
                route: "/healthz".into(),
                status: 200,
            })
            .inc();
        m.upload_bytes.inc_by(42);
        let text = m.render();
        assert!(text.contains("ehr_gateway_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1"), "{text}");
        assert!(text.contains("ehr_gateway_upload_plaintext_bytes_total 42"));
    }
}
