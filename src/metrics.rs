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

use crate::outcome::{AuthOutcome, Decision, Limiter};

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

type Labels = Vec<(&'static str, &'static str)>;

pub struct Metrics {
    registry: Registry,
    /// Indexed by `decision as usize * 5 + status class`.
    requests: Vec<Counter>,
    /// Indexed by `AuthOutcome as usize`.
    auth: Vec<Counter>,
    /// Indexed by `Limiter as usize`.
    limited: Vec<Counter>,
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
        let requests = Decision::ALL
            .iter()
            .flat_map(|d| STATUS_CLASSES.iter().map(move |s| vec![("decision", d.as_str()), ("status", *s)]))
            .map(|labels| requests_family.get_or_create(&labels).clone())
            .collect();
        let auth_family = Family::<Labels, Counter>::default();
        registry.register("auth", "Token authentications by outcome", auth_family.clone());
        let auth = AuthOutcome::ALL
            .iter()
            .map(|o| auth_family.get_or_create(&vec![("outcome", o.as_str())]).clone())
            .collect();
        let limited_family = Family::<Labels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit, by limiter",
            limited_family.clone(),
        );
        let limited = Limiter::ALL
            .iter()
            .map(|l| limited_family.get_or_create(&vec![("limiter", l.as_str())]).clone())
            .collect();
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
            limited,
            latency,
            cache_entries,
            redis_degraded,
            sync_age_seconds,
            access_log_dropped,
        }
    }

    /// Counts one finished request.
    pub fn record_request(&self, decision: Decision, status: u16, latency: Duration) {
        let s = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[decision as usize * STATUS_CLASSES.len() + s].inc();
        self.latency.observe(latency.as_secs_f64());
    }

    /// Counts one authentication outcome.
    pub fn record_auth(&self, outcome: AuthOutcome) {
        self.auth[outcome as usize].inc();
    }

    /// Counts one request refused by `limiter`.
    pub fn record_limited(&self, limiter: Limiter) {
        self.limited[limiter as usize].inc();
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
        m.record_request(Decision::Deny, 403, Duration::from_millis(1));
        m.record_request(Decision::Deny, 401, Duration::from_millis(1));
        m.record_auth(AuthOutcome::Hit);
        m.record_limited(Limiter::Lockout);
        let text = m.encode();
        assert!(text.contains("gateway_requests_total{decision=\"deny\",status=\"4xx\"} 2"), "{text}");
        assert!(text.contains("gateway_auth_total{outcome=\"hit\"} 1"), "{text}");
        assert!(text.contains("gateway_rate_limited_total{limiter=\"lockout\"} 1"), "{text}");
    }
}
