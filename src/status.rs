//! The status page on the admin listener: `GET /` is one self-contained HTML page (inline CSS,
//! JS and SVG charts; no external asset) that polls `GET /status.json` every two seconds.
//!
//! Nothing here runs per request: a ticker samples the metrics' cumulative counters once a
//! second into [`History`], and rotates the [`TopKeys`] windows once a minute; the JSON is
//! assembled from those and from the components' own state when asked for. The admin
//! listener is private (loopback by default), so the page names users and (shortened) keys.

mod history;
mod top;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::Response;
use http_body_util::Full;
use serde_json::{json, Map, Value};
use tokio::time::MissedTickBehavior;

pub(crate) use self::history::History;
pub(crate) use self::top::TopKeys;
use crate::access_log::KeyLabel;
use crate::metrics::{unix_seconds, Metrics, ProcessStats};
use crate::outcome::AuthOutcome;
use crate::server::ShutdownSignal;
use crate::state::Shared;

const PAGE: &str = include_str!("status/page.html");

/// The window the headline rates and upstream health are computed over.
const RECENT: usize = 60;
/// Rows in the top keys and top users tables.
const TOP_ROWS: usize = 10;
/// How often the top-keys windows rotate (the page shows the last `WINDOWS` of them).
const TOP_WINDOW_TICKS: u64 = 60;

/// `GET /`: the page.
pub(crate) fn page() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Everything is inline; nothing may load from elsewhere.
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
        ),
    );
    response
}

/// Samples the counters once a second (and rotates the top-keys windows once a minute) until
/// shutdown.
pub(crate) fn spawn_sampler(metrics: Arc<Metrics>, mut shutdown: ShutdownSignal) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        for n in 1u64.. {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
            metrics.history.tick(metrics.totals());
            if n % TOP_WINDOW_TICKS == 0 {
                metrics.top_keys.rotate();
            }
        }
    });
}

/// `GET /status.json` (the admin handler refreshes the scraped figures first).
pub(crate) async fn report(state: &Shared) -> Value {
    let m = &state.obs.metrics;
    let runtime = state.runtime();
    let now = SystemTime::now();
    let totals = m.totals();
    let samples = m.history.samples();
    let (recent, seconds) = history::sum_last(&samples, RECENT);
    let per_second = |n: u64| if seconds == 0 { 0.0 } else { n as f64 / seconds as f64 };
    let ratio = |part: u64, whole: u64| (whole > 0).then(|| part as f64 / whole as f64);

    let auth = m.auth_counts();
    let auth_count = |o: AuthOutcome| auth.iter().find(|(a, _)| *a == o).map_or(0, |(_, n)| *n);
    let hits = auth_count(AuthOutcome::Hit);
    let verified = auth_count(AuthOutcome::MissVerified);
    let (mut top_keys, top_users) = m.top_keys.top(TOP_ROWS);
    for k in &mut top_keys {
        k.key = Arc::from(KeyLabel { key: &k.key, full: runtime.full_api_key }.to_string());
    }
    let (reloads_ok, reloads_error) = m.reload_counts();
    let upstream_health = match (recent.upstream_responses, recent.upstream_errors) {
        (0, 0) => "idle",
        (_, 0) => "ok",
        (0, _) => "down",
        _ => "degraded",
    };
    let certificate = m.certificate_expiry().map(|at| {
        let left = at.duration_since(now).map_or_else(|e| -e.duration().as_secs_f64(), |d| d.as_secs_f64());
        json!({ "not_after": unix_seconds(at), "days_left": left / 86_400.0 })
    });
    let sync = crate::admin::sync_report(state).map(|(fresh, mut details)| {
        let report = state.auth.sync_status.as_ref().map(|s| s.report());
        let state_name = match &report {
            Some(r) if r.last_success_age.is_none() && r.failures == 0 => "pending",
            Some(r) if r.last_success_age.is_none() => "failing",
            Some(r) if r.consecutive_failures > 0 => "retrying",
            _ if !fresh => "stale",
            _ => "ok",
        };
        if let (Value::Object(d), Some(r)) = (&mut details, report) {
            d.insert("state".into(), json!(state_name));
            d.insert("fresh".into(), json!(fresh));
            d.insert("runs".into(), json!(r.runs));
            d.insert("failures".into(), json!(r.failures));
            d.insert("last_success_at".into(), json!(r.last_success_at.map(unix_seconds)));
        }
        details
    });
    let process = ProcessStats::read().map(|p| {
        json!({ "resident_bytes": p.resident_bytes, "open_fds": p.open_fds, "cpu_seconds": p.cpu_seconds, "threads": p.threads })
    });
    let config = &runtime.config;
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "now": unix_seconds(now),
        "started_at": unix_seconds(m.started),
        "requests": {
            "total": totals.requests,
            "client_errors": totals.client_errors,
            "server_errors": totals.server_errors,
            "per_second": per_second(recent.requests),
            "error_rate": ratio(recent.server_errors, recent.requests),
            "window_seconds": seconds,
            "by_decision": named(m.decisions().into_iter().map(|(d, n)| (d.as_str(), n))),
            "by_auth": named(auth.iter().map(|(o, n)| (o.as_str(), *n))),
            "rate_limited": named(m.limited_counts().into_iter().map(|(l, n)| (l.as_str(), n))),
        },
        "history": {
            "interval_seconds": 1,
            "requests": samples.iter().map(|s| s.requests).collect::<Vec<_>>(),
            "client_errors": samples.iter().map(|s| s.client_errors).collect::<Vec<_>>(),
            "server_errors": samples.iter().map(|s| s.server_errors).collect::<Vec<_>>(),
            "upstream_ms": samples
                .iter()
                .map(|s| (s.upstream_responses > 0).then(|| s.upstream_micros as f64 / s.upstream_responses as f64 / 1000.0))
                .collect::<Vec<_>>(),
        },
        "connections": {
            "open": m.open_connections.get(),
            "tls_handshake_failures": m.tls_failure_count(),
        },
        "credential_cache": {
            "entries": m.cache_entries.get(),
            "capacity": config.auth.cache_capacity,
            "hits": hits,
            "verified": verified,
            "hit_ratio": ratio(hits, hits + verified),
            "whoami_calls": state.auth.store.verify_calls(),
        },
        "sync": sync,
        "webhooks": {
            "enabled": config.frappe.webhook_secret.is_some(),
            "by_outcome": named(m.webhook_counts().into_iter().map(|(o, n)| (o.as_str(), n))),
        },
        "upstream": {
            "url": config.upstream.url.to_string(),
            "health": upstream_health,
            "responses": recent.upstream_responses,
            "errors": recent.upstream_errors,
            "avg_ms": (recent.upstream_responses > 0)
                .then(|| recent.upstream_micros as f64 / recent.upstream_responses as f64 / 1000.0),
            "errors_by_kind": named(m.upstream_error_counts().into_iter().map(|(k, n)| (k.as_str(), n))),
        },
        "rate_limit": {
            "backend": state.limits.limiter.backend_name(),
            "degraded": state.limits.limiter.is_degraded(),
        },
        "top": {
            "window_seconds": top::WINDOWS as u64 * TOP_WINDOW_TICKS,
            "keys": top_keys,
            "users": top_users,
        },
        "config": {
            "fingerprint": runtime.fingerprint,
            "loaded_at": unix_seconds(runtime.loaded_at),
            "reloads": { "ok": reloads_ok, "error": reloads_error },
            "routes": runtime.routes.paths().count(),
        },
        "certificate": certificate,
        "process": process,
    })
}

fn named<'a>(pairs: impl Iterator<Item = (&'a str, u64)>) -> Value {
    Value::Object(pairs.map(|(k, n)| (k.to_string(), json!(n))).collect::<Map<_, _>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained() {
        assert!(PAGE.contains("/status.json"));
        // The SVG namespace is a name, not a fetch.
        let page = PAGE.replace("http://www.w3.org/2000/svg", "");
        for external in ["http://", "https://", "<link", "src=\"", "@import", "url("] {
            assert!(!page.contains(external), "the page refers to an outside asset: {external}");
        }
        // Data from the gateway is shown as text, never parsed as markup.
        assert!(!PAGE.contains("innerHTML"));
    }
}
