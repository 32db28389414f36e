//! The metric families behind [`Metrics`](super::Metrics): labelled counter tables, the
//! per-route counters, and the collector for figures read at scrape time.

use super::*;
use prometheus_client::metrics::MetricType;
use std::borrow::Cow;

/// One counter per variant of `all`, labelled `label = variant.as_str()`.
pub(super) fn labelled<T: Copy + LabelName>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &'static str,
    all: &[T],
) -> Vec<Counter> {
    let family = Family::<Labels, Counter>::default();
    registry.register(name, help, family.clone());
    all.iter().map(|v| family.get_or_create(&vec![(label, v.label())]).clone()).collect()
}

/// The vocabulary enums' `as_str`, for [`labelled`].
pub(super) trait LabelName {
    fn label(self) -> &'static str;
}

macro_rules! label_name {
    ($($t:ty),*) => {
        $(impl LabelName for $t {
            fn label(self) -> &'static str {
                self.as_str()
            }
        })*
    };
}
label_name!(AuthOutcome, Limiter, UpstreamError, WebhookOutcome, TlsFailure, ReloadResult);

/// A route's requests by method class.
type PerMethod = ShardedCounters<{ MethodClass::ALL.len() }>;

/// `gateway_route_requests_total{route, method}`: the counters of each route seen, found by
/// the route's path in a copy-on-write table (a lookup per request, no lock), in the order
/// they were first seen. Cheap to clone: clones share the table (one is registered).
#[derive(Default, Clone, Debug)]
pub(super) struct RouteCounters {
    table: Arc<ArcSwap<RouteTable>>,
    grow: Arc<Mutex<()>>,
}

#[derive(Default, Debug)]
struct RouteTable {
    by_path: HashMap<Arc<str>, Arc<PerMethod>>,
    in_order: Vec<(Arc<str>, Arc<PerMethod>)>,
}

impl RouteCounters {
    pub(super) fn inc(&self, route: Option<&Arc<str>>, method: MethodClass) {
        let route = route.map_or(NO_ROUTE, |r| &**r);
        if let Some(counters) = self.table.load().by_path.get(route) {
            counters.inc(method as usize);
            return;
        }
        self.counters(route).inc(method as usize);
    }

    /// The route's counters, created (with their series) when new.
    pub(super) fn counters(&self, route: &str) -> Arc<PerMethod> {
        let _grow = self.grow.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(counters) = self.table.load().by_path.get(route) {
            return counters.clone();
        }
        let counters = Arc::new(PerMethod::new());
        let current = self.table.load();
        let route: Arc<str> = Arc::from(route);
        let mut in_order = current.in_order.clone();
        in_order.push((route.clone(), counters.clone()));
        let mut by_path = current.by_path.clone();
        by_path.insert(route, counters.clone());
        self.table.store(Arc::new(RouteTable { by_path, in_order }));
        counters
    }
}

impl Collector for RouteCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut family = encoder.encode_descriptor(
            "route_requests",
            "Requests by configured route prefix and method class (read, write, other)",
            None,
            MetricType::Counter,
        )?;
        for (route, counters) in &self.table.load().in_order {
            for method in MethodClass::ALL {
                let labels = [("route", &*escape_label_value(route)), ("method", method.as_str())];
                ConstCounter::new(counters.get(*method as usize)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// `value` as an OpenMetrics label value: `\\`, `"` and a line feed escaped. prometheus-client
/// 0.23 writes label values raw, and a route path holding a `"` or a line break would end
/// the value early, break the scrape or forge series.
fn escape_label_value(value: &str) -> Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(value);
    }
    let mut escaped = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

/// Writes [`Scraped`] out at each scrape.
#[derive(Debug)]
pub(super) struct ScrapedCollector(pub(super) Arc<Mutex<Scraped>>);

impl Collector for ScrapedCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let s = self.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let e = &mut encoder;
        counter(
            e,
            "gateway_access_log_dropped",
            "Access-log lines dropped because the writer fell behind",
            s.access_log_dropped,
        )?;
        counter(
            e,
            "gateway_auth_verify_calls",
            "Calls made to Frappe's whoami to verify credentials",
            s.verify_calls,
        )?;
        if let Some(sync) = &s.sync {
            counter(e, "gateway_sync_runs", "User syncs attempted", sync.runs)?;
            counter(e, "gateway_sync_failures", "User syncs that failed", sync.failures)?;
            if let Some(at) = sync.last_success {
                gauge(
                    e,
                    "gateway_sync_last_success_timestamp_seconds",
                    "Unix time of the last successful user sync (absent until one succeeds)",
                    unix_seconds(at),
                )?;
            }
        }
        if let Some(at) = s.certificate_not_after {
            gauge(
                e,
                "gateway_tls_certificate_expiry_timestamp_seconds",
                "Unix time the served certificate expires (its notAfter)",
                unix_seconds(at),
            )?;
        }
        Ok(())
    }
}

pub(crate) fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let c = ConstCounter::new(value);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

pub(crate) fn counter_f64(e: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> fmt::Result {
    let c = ConstCounter::new(value);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

pub(crate) fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> fmt::Result {
    let g = ConstGauge::new(value);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// Seconds since the Unix epoch (negative before it).
pub(crate) fn unix_seconds(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert!(matches!(escape_label_value("/api/"), Cow::Borrowed("/api/")));
        assert_eq!(escape_label_value(r#"/a"b\c"#), r#"/a\"b\\c"#);
        assert_eq!(escape_label_value("/odd\"} 1\nforged{x=\"1/"), r#"/odd\"} 1\nforged{x=\"1/"#);
    }

    #[test]
    fn route_labels_in_the_exposition_are_escaped() {
        let routes = RouteCounters::default();
        routes.counters("/odd\"} 1\nforged_total{x=\"1/");
        let mut registry = Registry::default();
        registry.register_collector(Box::new(routes));
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(!text.lines().any(|l| l.starts_with("forged_total")), "{text}");
        assert!(text.contains(r#"route="/odd\"} 1\nforged_total{x=\"1/""#), "{text}");
    }
}
