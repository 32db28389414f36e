//! Prometheus metrics for the admin listener's `/metrics`. Per-request counters are resolved
//! to plain atomics at start, so recording a request is a few atomic adds, no label lookup.

use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Decisions the access log can record, in a fixed order (index into the counter table).
const DECISIONS: [&str; 6] =
    ["allow", "deny", "rate_limited", "unavailable", "upstream_error", "client_closed"];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Authentication outcomes, as the access log names them.
/// `over-budget` counts unknown credentials refused by the verification budget,
/// `administrator` Administrator's credentials refused by `auth.allow_administrator = false`.
pub const AUTH_OUTCOMES: [&str; 9] = [
    "hit",
    "miss-verified",
    "stale",
    "negative-hit",
    "rejected",
    "disabled",
    "unavailable",
    "over-budget",
    "administrator",
];

type Labels = Vec<(&'static str, &'static str)>;

pub struct Metrics {
    registry: Registry,
    requests: Vec<Counter>,
    auth: Vec<Counter>,
    latency: Histogram,
    /// Set just before each scrape by the admin handler.
    pub cache_entries: Gauge<i64, AtomicI64>,
    pub redis_degraded: Gauge<i64, AtomicI64>,
    pub sync_age_seconds: Gauge<i64, AtomicI64>,
    pub access_log_dropped: Gauge<i64, AtomicI64>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gateway");
        let requests_family = Family::<Labels, Counter>::default();
        registry.register("requests", "Requests by decision and status class", requests_family.clone());
        let requests = DECISIONS
            .iter()
            .flat_map(|d| STATUS_CLASSES.iter().map(move |s| vec![("decision", *d), ("status", *s)]))
            .map(|labels| requests_family.get_or_create(&labels).clone())
            .collect();
        let auth_family = Family::<Labels, Counter>::default();
        registry.register("auth", "Token authentications by outcome", auth_family.clone());
        let auth =
            AUTH_OUTCOMES.iter().map(|o| auth_family.get_or_create(&vec![("outcome", *o)]).clone()).collect();
        let latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "request_duration_seconds",
            "Time from request to end of response",
            latency.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register("credential_cache_entries", "Cached credentials", cache_entries.clone());
        let redis_degraded = Gauge::default();
        registry.register(
            "rate_limit_redis_degraded",
            "1 while Redis is unreachable and local limits apply",
            redis_degraded.clone(),
        );
        let sync_age_seconds = Gauge::default();
        registry.register(
            "sync_age_seconds",
            "Seconds since the last good user sync (-1: never)",
            sync_age_seconds.clone(),
        );
        let access_log_dropped = Gauge::default();
        registry.register(
            "access_log_dropped",
            "Access-log lines dropped because the writer fell behind",
            access_log_dropped.clone(),
        );
        Metrics {
            registry,
            requests,
            auth,
            latency,
            cache_entries,
            redis_degraded,
            sync_age_seconds,
            access_log_dropped,
        }
    }

    /// Counts one finished request.
    pub fn record_request(&self, decision: &str, status: u16, latency: Duration) {
        let d = DECISIONS.iter().position(|x| *x == decision).unwrap_or(1);
        let s = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[d * STATUS_CLASSES.len() + s].inc();
        self.latency.observe(latency.as_secs_f64());
    }

    /// Counts one authentication outcome (names from [`AUTH_OUTCOMES`]).
    pub fn record_auth(&self, outcome: &str) {
        if let Some(i) = AUTH_OUTCOMES.iter().position(|x| *x == outcome) {
            self.auth[i].inc();
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_decision_and_class() {
        let m = Metrics::new();
        m.record_request("deny", 403, Duration::from_millis(1));
        m.record_request("deny", 401, Duration::from_millis(1));
        m.record_auth("hit");
        let text = m.encode();
        assert!(text.contains("gateway_requests_total{decision=\"deny\",status=\"4xx\"} 2"), "{text}");
        assert!(text.contains("gateway_auth_total{outcome=\"hit\"} 1"), "{text}");
    }
}
