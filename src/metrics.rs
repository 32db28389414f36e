//! Prometheus metrics for the admin listener's `/metrics` (OpenMetrics text). Per-request
//! counters are resolved to plain atomics at start, so recording a request is a few atomic
//! adds, no label lookup; those every request adds to are sharded per thread ([`counters`],
//! [`histogram`]), so the proxy workers never write one cache line. Figures other components
//! own (sync, the access-log writer, the credential cache, the process itself) are read at
//! scrape time; see [`Scraped`].
//!
//! README.md "Metrics" lists every metric with its type and labels. No label ever carries a
//! user name, an api_key or a raw path: routes are the configured prefixes, a bounded set.

mod counters;
mod families;
mod histogram;
mod process;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;

use self::counters::{CounterFamily, ShardedCounters};
pub(crate) use self::families::{counter_f64, gauge, unix_seconds};
use self::families::{labelled, RouteCounters, ScrapedCollector};
use self::histogram::ShardedHistogram;
pub(crate) use self::process::ProcessStats;
use crate::outcome::{
    AuthOutcome, Decision, Limiter, MethodClass, ReloadResult, TlsFailure, UpstreamError, WebhookOutcome,
};
use crate::status::{History, TopKeys};

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The route label of a request refused before any route was looked up (a malformed head).
const NO_ROUTE: &str = "-";

type Labels = Vec<(&'static str, &'static str)>;

/// `gateway_requests_total`'s series: one per decision and status class.
const REQUEST_SERIES: usize = Decision::ALL.len() * STATUS_CLASSES.len();
/// The upstream's answered requests and their summed time to head (µs), for the status page.
const UPSTREAM_RESPONSES: usize = 0;
const UPSTREAM_MICROS: usize = 1;

pub(crate) struct Metrics {
    registry: Registry,
    /// Indexed by `decision as usize * 5 + status class`.
    requests: Arc<ShardedCounters<REQUEST_SERIES>>,
    /// Indexed by `AuthOutcome as usize`.
    auth: Arc<ShardedCounters<{ AuthOutcome::ALL.len() }>>,
    /// Indexed by `Limiter as usize`.
    limited: Vec<Counter>,
    latency: ShardedHistogram,
    routes: RouteCounters,
    upstream_latency: ShardedHistogram,
    /// Indexed by `UpstreamError as usize`.
    upstream_errors: Vec<Counter>,
    /// `UPSTREAM_RESPONSES` and `UPSTREAM_MICROS`, for the status page's average.
    upstream_answers: ShardedCounters<2>,
    /// Indexed by `WebhookOutcome as usize`.
    webhooks: Vec<Counter>,
    /// Indexed by `TlsFailure as usize`.
    tls_failures: Vec<Counter>,
    /// Indexed by `ReloadResult as usize`.
    reloads: Vec<Counter>,
    /// Open client connections on the proxy listener.
    pub(crate) open_connections: Gauge<i64, AtomicI64>,
    /// Set just before each scrape by the admin handler.
    pub cache_entries: Gauge<i64, AtomicI64>,
    pub redis_degraded: Gauge<i64, AtomicI64>,
    /// Bytes request bodies hold now: read into memory, and spooled to disk.
    pub(crate) body_bytes_memory: Gauge<i64, AtomicI64>,
    pub(crate) body_bytes_disk: Gauge<i64, AtomicI64>,
    scraped: Arc<Mutex<Scraped>>,
    /// The busiest api_keys of the last minutes, for the status page.
    pub(crate) top_keys: TopKeys,
    /// Per-second request figures of the last minutes, for the status page.
    pub(crate) history: History,
    pub(crate) started: SystemTime,
}

/// Figures other components own, copied in by the admin handler before each scrape (and by
/// the setters below) and written out as they are: counters that are counted elsewhere stay
/// counters, and a timestamp that does not exist yet is left out rather than given a sentinel.
#[derive(Debug, Default, Clone)]
pub(crate) struct Scraped {
    pub(crate) access_log_dropped: u64,
    /// Calls the credential store made to Frappe's whoami.
    pub(crate) verify_calls: u64,
    /// `None` without a sync token.
    pub(crate) sync: Option<SyncFigures>,
    /// The served certificate's notAfter; `None` without TLS.
    pub(crate) certificate_not_after: Option<SystemTime>,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct SyncFigures {
    pub(crate) runs: u64,
    pub(crate) failures: u64,
    pub(crate) last_success: Option<SystemTime>,
}

/// Cumulative request figures, sampled by the status page's ticker.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Totals {
    pub(crate) requests: u64,
    pub(crate) client_errors: u64,
    pub(crate) server_errors: u64,
    pub(crate) upstream_responses: u64,
    pub(crate) upstream_micros: u64,
    pub(crate) upstream_errors: u64,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector));
        let scraped = Arc::new(Mutex::new(Scraped::default()));
        root.register_collector(Box::new(ScrapedCollector(scraped.clone())));
        let registry = root.sub_registry_with_prefix("gateway");

        let requests = Arc::new(ShardedCounters::new());
        registry.register_collector(Box::new(CounterFamily {
            name: "requests",
            help: "Requests by decision and status class",
            series: Decision::ALL
                .iter()
                .flat_map(|d| {
                    STATUS_CLASSES.iter().map(move |s| vec![("decision", d.as_str()), ("status", *s)])
                })
                .collect(),
            counters: requests.clone(),
        }));
        let auth = Arc::new(ShardedCounters::new());
        registry.register_collector(Box::new(CounterFamily {
            name: "auth",
            help: "Token authentications by outcome",
            series: AuthOutcome::ALL.iter().map(|o| vec![("outcome", o.as_str())]).collect(),
            counters: auth.clone(),
        }));
        let limited = labelled(
            registry,
            "rate_limited",
            "Requests refused by a rate limit, by limiter",
            "limiter",
            Limiter::ALL,
        );
        let latency = ShardedHistogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "request_duration_seconds",
            "Time from request to end of response",
            latency.clone(),
        );
        let routes = RouteCounters::default();
        registry.register_collector(Box::new(routes.clone()));
        let upstream_latency = ShardedHistogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "upstream_request_duration_seconds",
            "Time from sending a request upstream to its response head, for answered requests",
            upstream_latency.clone(),
        );
        let upstream_errors = labelled(
            registry,
            "upstream_errors",
            "Requests the upstream did not answer, by kind",
            "kind",
            UpstreamError::ALL,
        );
        let webhooks = labelled(
            registry,
            "webhook_events",
            "POST /hooks/frappe by outcome",
            "outcome",
            WebhookOutcome::ALL,
        );
        let tls_failures = labelled(
            registry,
            "tls_handshake_failures",
            "TLS handshakes on the proxy listener that failed, by reason",
            "reason",
            TlsFailure::ALL,
        );
        let reloads = labelled(
            registry,
            "config_reloads",
            "Configuration reloads by result",
            "result",
            ReloadResult::ALL,
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Open client connections on the proxy listener",
            open_connections.clone(),
        );
        let build = Family::<Labels, Gauge>::default();
        registry.register("build_info", "The running build (value 1)", build.clone());
        build.get_or_create(&vec![("version", env!("CARGO_PKG_VERSION"))]).set(1);
        let cache_entries = Gauge::default();
        registry.register("credential_cache_entries", "Cached credentials", cache_entries.clone());
        let redis_degraded = Gauge::default();
        registry.register(
            "rate_limit_redis_degraded",
            "1 while Redis is unreachable and local limits apply",
            redis_degraded.clone(),
        );
        let body_bytes = Family::<Labels, Gauge>::default();
        registry.register(
            "request_body_bytes",
            "Bytes request bodies hold now, read into memory or spooled to disk (bounded by server.max_buffered_bytes / max_spool_bytes)",
            body_bytes.clone(),
        );
        let body_bytes_memory = body_bytes.get_or_create(&vec![("store", "memory")]).clone();
        let body_bytes_disk = body_bytes.get_or_create(&vec![("store", "disk")]).clone();
        Metrics {
            registry: root,
            requests,
            auth,
            limited,
            latency,
            routes,
            upstream_latency,
            upstream_errors,
            upstream_answers: ShardedCounters::new(),
            webhooks,
            tls_failures,
            reloads,
            open_connections,
            cache_entries,
            redis_degraded,
            body_bytes_memory,
            body_bytes_disk,
            scraped,
            top_keys: TopKeys::default(),
            history: History::default(),
            started: SystemTime::now(),
        }
    }

    /// Counts one finished request.
    pub(crate) fn record_request(&self, decision: Decision, status: u16, latency: Duration) {
        let s = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests.inc(decision as usize * STATUS_CLASSES.len() + s);
        self.latency.observe(latency);
    }

    /// Counts one finished request under its route (`None`: refused before routing).
    pub(crate) fn record_route(&self, route: Option<&Arc<str>>, method: MethodClass) {
        self.routes.inc(route, method);
    }

    /// Makes the routes' series exist (at zero) before their first request; call it when a
    /// configuration is loaded. Routes seen without it are added on their first request.
    pub(crate) fn register_routes<'a>(&self, routes: impl IntoIterator<Item = &'a Arc<str>>) {
        for route in routes {
            self.routes.counters(route);
        }
    }

    /// Counts one authentication outcome.
    pub(crate) fn record_auth(&self, outcome: AuthOutcome) {
        self.auth.inc(outcome as usize);
    }

    /// Counts one request refused by `limiter`.
    pub(crate) fn record_limited(&self, limiter: Limiter) {
        self.limited[limiter as usize].inc();
    }

    /// One upstream response head after `elapsed`.
    pub(crate) fn record_upstream(&self, elapsed: Duration) {
        self.upstream_latency.observe(elapsed);
        self.upstream_answers.inc(UPSTREAM_RESPONSES);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.upstream_answers.add(UPSTREAM_MICROS, micros);
    }

    /// One request the upstream did not answer.
    pub(crate) fn record_upstream_error(&self, kind: UpstreamError) {
        self.upstream_errors[kind as usize].inc();
    }

    pub(crate) fn record_webhook(&self, outcome: WebhookOutcome) {
        self.webhooks[outcome as usize].inc();
    }

    pub(crate) fn record_tls_failure(&self, reason: TlsFailure) {
        self.tls_failures[reason as usize].inc();
    }

    /// Counts one configuration reload (`SIGHUP`, `POST /reload`): applied or refused.
    pub(crate) fn record_reload(&self, ok: bool) {
        let result = if ok { ReloadResult::Ok } else { ReloadResult::Error };
        self.reloads[result as usize].inc();
    }

    /// Sets the served certificate's expiry (`gateway_tls_certificate_expiry_timestamp_seconds`);
    /// call at start and after a reload that changed the certificate. `None` removes it.
    pub(crate) fn set_certificate_expiry(&self, not_after: Option<SystemTime>) {
        self.scraped().certificate_not_after = not_after;
    }

    pub(crate) fn certificate_expiry(&self) -> Option<SystemTime> {
        self.scraped().certificate_not_after
    }

    /// Copies in the figures other components own (see [`Scraped`]); the certificate's
    /// expiry is kept.
    pub(crate) fn refresh(&self, access_log_dropped: u64, verify_calls: u64, sync: Option<SyncFigures>) {
        let mut scraped = self.scraped();
        scraped.access_log_dropped = access_log_dropped;
        scraped.verify_calls = verify_calls;
        scraped.sync = sync;
    }

    fn scraped(&self) -> std::sync::MutexGuard<'_, Scraped> {
        self.scraped.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cumulative figures for the status page.
    pub(crate) fn totals(&self) -> Totals {
        let mut t = Totals {
            upstream_responses: self.upstream_answers.get(UPSTREAM_RESPONSES),
            upstream_micros: self.upstream_answers.get(UPSTREAM_MICROS),
            upstream_errors: self.upstream_errors.iter().map(Counter::get).sum(),
            ..Totals::default()
        };
        for i in 0..REQUEST_SERIES {
            let n = self.requests.get(i);
            t.requests += n;
            match i % STATUS_CLASSES.len() {
                3 => t.client_errors += n,
                4 => t.server_errors += n,
                _ => {}
            }
        }
        t
    }

    /// Requests by decision, summed over status classes.
    pub(crate) fn decisions(&self) -> Vec<(Decision, u64)> {
        let per = STATUS_CLASSES.len();
        Decision::ALL
            .iter()
            .map(|d| (*d, (0..per).map(|s| self.requests.get(*d as usize * per + s)).sum()))
            .collect()
    }

    pub(crate) fn auth_counts(&self) -> Vec<(AuthOutcome, u64)> {
        AuthOutcome::ALL.iter().map(|o| (*o, self.auth.get(*o as usize))).collect()
    }

    pub(crate) fn limited_counts(&self) -> Vec<(Limiter, u64)> {
        Limiter::ALL.iter().map(|l| (*l, self.limited[*l as usize].get())).collect()
    }

    pub(crate) fn upstream_error_counts(&self) -> Vec<(UpstreamError, u64)> {
        UpstreamError::ALL.iter().map(|k| (*k, self.upstream_errors[*k as usize].get())).collect()
    }

    pub(crate) fn webhook_counts(&self) -> Vec<(WebhookOutcome, u64)> {
        WebhookOutcome::ALL.iter().map(|o| (*o, self.webhooks[*o as usize].get())).collect()
    }

    pub(crate) fn tls_failure_count(&self) -> u64 {
        self.tls_failures.iter().map(Counter::get).sum()
    }

    pub(crate) fn reload_counts(&self) -> (u64, u64) {
        (self.reloads[ReloadResult::Ok as usize].get(), self.reloads[ReloadResult::Error as usize].get())
    }

    /// The OpenMetrics text exposition (ends with `# EOF`).
    pub(crate) fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
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
        assert_eq!(m.totals().client_errors, 2);
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn routes_are_labelled_by_prefix_and_method_class() {
        let m = Metrics::new();
        let api: Arc<str> = Arc::from("/api/");
        m.register_routes([&Arc::from("/login")]);
        m.record_route(Some(&api), MethodClass::Read);
        m.record_route(Some(&api), MethodClass::Read);
        m.record_route(Some(&Arc::from("/api/")), MethodClass::Write);
        m.record_route(None, MethodClass::Other);
        let text = m.encode();
        assert!(text.contains("gateway_route_requests_total{route=\"/api/\",method=\"read\"} 2"), "{text}");
        assert!(text.contains("gateway_route_requests_total{route=\"/api/\",method=\"write\"} 1"), "{text}");
        assert!(text.contains("gateway_route_requests_total{route=\"/login\",method=\"write\"} 0"), "{text}");
        assert!(text.contains("gateway_route_requests_total{route=\"-\",method=\"other\"} 1"), "{text}");
    }

    #[test]
    fn mirrored_figures_keep_their_types_and_absent_timestamps_stay_absent() {
        let m = Metrics::new();
        m.refresh(3, 2, Some(SyncFigures { runs: 4, failures: 1, last_success: None }));
        m.record_reload(false);
        m.record_upstream_error(UpstreamError::Connect);
        let text = m.encode();
        assert!(text.contains("# TYPE gateway_access_log_dropped counter"), "{text}");
        assert!(text.contains("gateway_access_log_dropped_total 3"), "{text}");
        assert!(text.contains("gateway_sync_runs_total 4"), "{text}");
        assert!(text.contains("gateway_sync_failures_total 1"), "{text}");
        assert!(!text.contains("gateway_sync_last_success_timestamp_seconds"), "{text}");
        assert!(!text.contains("certificate_expiry"), "{text}");
        assert!(text.contains("gateway_config_reloads_total{result=\"error\"} 1"), "{text}");
        assert!(text.contains("gateway_upstream_errors_total{kind=\"connect\"} 1"), "{text}");
        assert!(text.contains(&format!("gateway_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))));
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.contains("process_open_fds "), "{text}");
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
        let at = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        m.set_certificate_expiry(Some(at));
        m.refresh(3, 2, Some(SyncFigures { runs: 5, failures: 1, last_success: Some(at) }));
        let text = m.encode();
        assert!(text.contains("gateway_tls_certificate_expiry_timestamp_seconds 1900000000"), "{text}");
        assert!(text.contains("gateway_sync_last_success_timestamp_seconds 1900000000"), "{text}");
    }
}
