//! The admin listener (loopback by default): the status page (`/`, `/status.json`),
//! `/healthz`, `/readyz`, `/metrics` and the Frappe webhook receiver `POST /hooks/frappe`.
//! Plain HTTP/1.1; never served on the proxy port. Requests naming a Host that is not an IP,
//! `localhost` or in `admin.allowed_hosts` are refused before routing (DNS-rebinding guard),
//! and so are state-changing requests a browser marks as cross-site (CSRF guard).

use std::convert::Infallible;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, HOST, ORIGIN};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::auth;
use crate::metrics::SyncFigures;
use crate::outcome::WebhookOutcome;
use crate::request_body::{BodyStats, UpstreamBody};
use crate::server::{self, ShutdownSignal};
use crate::state::Shared;
use crate::status;

type AdminResponse = Response<Full<Bytes>>;

/// A readiness probe must answer quickly even when the upstream hangs.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Admin connections served at once: plenty for probes, a Prometheus, a few browsers and
/// Frappe's webhooks, and a bound on the tasks and file descriptors (shared with the proxy
/// listener) that clients of this listener can hold.
const MAX_ADMIN_CONNECTIONS: usize = 256;

/// Serves admin requests until shutdown. At [`MAX_ADMIN_CONNECTIONS`] the loop stops
/// accepting until a connection ends: further clients wait in the kernel's accept queue
/// (nothing is refused), as on the proxy listener.
pub(crate) async fn serve_admin(listener: TcpListener, state: Arc<Shared>, mut shutdown: ShutdownSignal) {
    status::spawn_sampler(state.obs.metrics.clone(), shutdown.clone());
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        // A slot first, then accept: one listener, so no other worker could take the client.
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.expect("semaphore never closed"),
            _ = shutdown.changed() => break,
        };
        let Some((stream, _)) = server::accept(&listener, &mut shutdown).await else { break };
        let state = state.clone();
        crate::spawn(async move {
            let service = service_fn(move |req| route(state.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(slot);
        });
    }
}

async fn route(state: Arc<Shared>, req: Request<Incoming>) -> Result<AdminResponse, Infallible> {
    if let Some(refused) = check_host(&state, &req).or_else(|| check_same_origin(&req)) {
        return Ok(refused);
    }
    let response = match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => status::page(),
        (&Method::GET, "/status.json") => {
            refresh_scraped(&state).await;
            json(StatusCode::OK, status::report(&state).await)
        }
        (&Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({ "status": "ok" })),
        (&Method::GET, "/readyz") => readiness(&state).await,
        (&Method::GET, "/metrics") => metrics(&state).await,
        (&Method::POST, "/hooks/frappe") => webhook(&state, req).await,
        (&Method::POST, "/reload") => reload(&state),
        _ => json(StatusCode::NOT_FOUND, serde_json::json!({ "error": "not found" })),
    };
    Ok(response)
}

/// The DNS-rebinding guard: a page on `evil.example`, whose name the attacker made resolve to
/// 127.0.0.1, is same-origin with the admin listener and could read `/status.json` or
/// `POST /reload`; but the browser still sends `Host: evil.example`, which is refused here
/// (403, one warning). Reads `admin.allowed_hosts` from the runtime config, so a reload
/// changes it for the next request.
fn check_host(state: &Shared, req: &Request<Incoming>) -> Option<AdminResponse> {
    if exempt_from_host_check(req.method(), req.uri().path()) {
        return None;
    }
    let runtime = state.runtime();
    let host = refused_host(req, &runtime.config.admin.allowed_hosts)?;
    tracing::warn!(
        host = %host,
        method = %req.method(),
        path = req.uri().path(),
        "admin request refused: its Host is not an IP, localhost or in admin.allowed_hosts"
    );
    Some(json(
        StatusCode::FORBIDDEN,
        serde_json::json!({
            "error": "Host not allowed on the admin listener (DNS-rebinding guard): use an IP address or localhost, or list the name in admin.allowed_hosts"
        }),
    ))
}

/// Answered whatever the Host: orchestrator probes (sent to service names; they reveal
/// nothing) and the Frappe webhook (sent to the URL the operator configured, often a service
/// name; authenticated by its signature).
fn exempt_from_host_check(method: &Method, path: &str) -> bool {
    matches!((method, path), (&Method::GET, "/healthz" | "/readyz") | (&Method::POST, "/hooks/frappe"))
}

/// The CSRF guard: a page on any IP origin (`http://203.0.113.7/`) can make the operator's
/// browser submit a form to `http://127.0.0.1:9901/reload` (a `text/plain` form needs no CORS
/// preflight, and an IP `Host` passes [`check_host`]). The browser marks such a request with
/// `Sec-Fetch-Site` and `Origin`, so a state-changing request carrying either one pointing
/// elsewhere is refused (403, one warning). curl and other non-browser clients send neither
/// and pass.
fn check_same_origin(req: &Request<Incoming>) -> Option<AdminResponse> {
    if !needs_same_origin(req.method(), req.uri().path()) {
        return None;
    }
    let host = req.headers().get(HOST).and_then(|h| h.to_str().ok());
    let host = host.or_else(|| req.uri().authority().map(|a| a.as_str()));
    let reason = cross_site_reason(req.headers(), host)?;
    tracing::warn!(
        method = %req.method(),
        path = req.uri().path(),
        reason = %reason,
        "admin request refused: sent cross-site by a browser"
    );
    Some(json(
        StatusCode::FORBIDDEN,
        serde_json::json!({ "error": format!("cross-site request refused on the admin listener: {reason}") }),
    ))
}

/// Every request that may change state (not GET or HEAD), except the Frappe webhook, which
/// its signature authenticates.
fn needs_same_origin(method: &Method, path: &str) -> bool {
    !matches!((method, path), (&Method::GET | &Method::HEAD, _) | (&Method::POST, "/hooks/frappe"))
}

/// Why the browser says the request comes from another site, or `None`: `Sec-Fetch-Site` is
/// `cross-site` or `same-site`, or an `Origin` is present whose `host[:port]` is not exactly
/// `host` (letter case aside) — `Origin: null` never is. Without either header (non-browser
/// clients) nothing says so.
fn cross_site_reason(headers: &HeaderMap, host: Option<&str>) -> Option<String> {
    for site in headers.get_all("sec-fetch-site") {
        let site = String::from_utf8_lossy(site.as_bytes()).trim().to_ascii_lowercase();
        if site == "cross-site" || site == "same-site" {
            return Some(format!("Sec-Fetch-Site is {site}"));
        }
    }
    let same_origin = |origin: &&HeaderValue| {
        let origin_host = origin.to_str().ok().and_then(|o| o.split_once("://")).map(|(_, h)| h);
        origin_host.zip(host).is_some_and(|(o, h)| o.eq_ignore_ascii_case(h))
    };
    let foreign = headers.get_all(ORIGIN).iter().find(|o| !same_origin(o))?;
    let origin = String::from_utf8_lossy(foreign.as_bytes());
    Some(format!("Origin {origin} is not this listener ({})", host.unwrap_or("no Host")))
}

/// The first name the request was sent to that [`host_allowed`] refuses: every `Host` header
/// (a duplicate cannot slip past), and the request target's authority when it has one
/// (absolute form; HTTP/2's `:authority`).
fn refused_host(req: &Request<Incoming>, allowed: &[String]) -> Option<String> {
    let headers = req.headers().get_all(HOST).iter().map(|v| String::from_utf8_lossy(v.as_bytes()));
    let authority = req.uri().authority().map(|a| a.as_str().into());
    headers.chain(authority).find(|host| !host_allowed(Some(host), allowed)).map(|host| host.into_owned())
}

/// Whether a request whose `Host` is `host` (`name[:port]`, `ipv4[:port]`, `[ipv6][:port]`)
/// may reach the admin pages. Allowed: no Host or an empty one (non-browser clients; a browser
/// always sends the name it resolved), IP literals, `localhost`, the names in `allowed`
/// (lowercase without a trailing dot, as the config stores them), and anything when `allowed`
/// holds `"*"`. The port is ignored; letter case and a trailing dot do not matter. Anything
/// else — another name, userinfo, an unbracketed IPv6, a bad port, stray characters — is
/// refused.
fn host_allowed(host: Option<&str>, allowed: &[String]) -> bool {
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return true;
    };
    if allowed.iter().any(|a| a == "*") {
        return true;
    }
    match host_name(host) {
        Some(HostName::Ip) => true,
        Some(HostName::Name(name)) => name == "localhost" || allowed.contains(&name),
        None => false,
    }
}

enum HostName {
    Ip,
    /// Lowercase, without a trailing dot.
    Name(String),
}

/// Reads `host[:port]`; `None` when it is not one.
fn host_name(host: &str) -> Option<HostName> {
    let is_port = |p: &str| p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = host.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(is_port);
        return (port_ok && ip.parse::<Ipv6Addr>().is_ok()).then_some(HostName::Ip);
    }
    let (name, port) = match host.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    if !port.is_none_or(is_port) {
        return None;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.parse::<Ipv4Addr>().is_ok() {
        return Some(HostName::Ip);
    }
    let label_ok =
        |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    name.split('.').all(label_ok).then(|| HostName::Name(name.to_ascii_lowercase()))
}

/// 200 only when the upstream answers and, with a sync token, the last good user sync is
/// recent (within three intervals, at least 90 s); 503 with the reason otherwise. The body
/// also reports the sync age and whether Redis limits fell back to local ones.
async fn readiness(state: &Shared) -> AdminResponse {
    let upstream = probe_upstream(state).await;
    let sync = sync_report(state);
    let degraded = state.limits.limiter.is_degraded();
    let mut reasons = Vec::new();
    if let Err(reason) = &upstream {
        reasons.push(format!("upstream: {reason}"));
    }
    if let Some((false, report)) = &sync {
        reasons.push(format!(
            "user sync stale: {}",
            report["last_error"].as_str().unwrap_or("no successful sync yet")
        ));
    }
    let body = serde_json::json!({
        "status": if reasons.is_empty() { "ready" } else { "not ready" },
        "reason": (!reasons.is_empty()).then(|| reasons.join("; ")),
        "upstream_status": upstream.as_ref().ok(),
        "sync": sync.map(|(_, report)| report),
        "rate_limit": { "backend": state.limits.limiter.backend_name(), "degraded_to_local": degraded },
        "credential_cache_entries": state.auth.store.entries().await,
    });
    let status = if reasons.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json(status, body)
}

/// `(fresh, details)` of the user sync, `None` without a sync token.
pub(crate) fn sync_report(state: &Shared) -> Option<(bool, serde_json::Value)> {
    let status = state.auth.sync_status.as_ref()?;
    let max_age = (state.runtime().config.frappe.sync_interval * 3).max(Duration::from_secs(90));
    let report = status.report();
    let details = serde_json::json!({
        "last_success_age_seconds": report.last_success_age.map(|a| a.as_secs_f64()),
        "last_error": report.last_error,
        "consecutive_failures": report.consecutive_failures,
        "users": report.users,
    });
    Some((status.is_fresh(max_age), details))
}

/// Largest webhook body accepted (a User document is a few KiB).
const MAX_WEBHOOK_BYTES: usize = 256 * 1024;

/// Longest a webhook body may take to arrive after its head (which has its own 10 s): Frappe
/// sends a few KiB at once, and a client trickling bytes must not hold a connection, its task
/// and buffer, and an admin connection slot for ever. Over it: 408.
const WEBHOOK_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// `POST /hooks/frappe`: a Frappe Webhook on DocType User (on_update, on_trash). The
/// signature (`X-Frappe-Webhook-Signature`, HMAC-SHA256 of the raw body) is checked in
/// constant time; the user's cached credentials are dropped at once, on every instance (Redis),
/// and the user's record is re-read from Frappe.
async fn webhook(state: &Shared, req: Request<Incoming>) -> AdminResponse {
    let (outcome, response) = receive_webhook(state, req).await;
    state.obs.metrics.record_webhook(outcome);
    response
}

async fn receive_webhook(state: &Shared, req: Request<Incoming>) -> (WebhookOutcome, AdminResponse) {
    use WebhookOutcome::{Applied, BadBody, BadSignature, Disabled, RefreshFailed};
    let runtime = state.runtime();
    let Some(secret) = &runtime.config.frappe.webhook_secret else {
        tracing::warn!("webhook refused: frappe.webhook_secret_env is not set");
        return (
            Disabled,
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "error": "webhook receiver disabled: set frappe.webhook_secret_env" }),
            ),
        );
    };
    let signature = req.headers().get("x-frappe-webhook-signature").cloned();
    let read = Limited::new(req.into_body(), MAX_WEBHOOK_BYTES).collect();
    let body = match tokio::time::timeout(WEBHOOK_BODY_TIMEOUT, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(_)) => {
            return (
                BadBody,
                json(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    serde_json::json!({ "error": "webhook body too large or unreadable" }),
                ),
            )
        }
        Err(_) => {
            tracing::warn!(timeout = ?WEBHOOK_BODY_TIMEOUT, "webhook refused: body not received in time");
            return (
                BadBody,
                json(
                    StatusCode::REQUEST_TIMEOUT,
                    serde_json::json!({ "error": format!("webhook body not received within {WEBHOOK_BODY_TIMEOUT:?}") }),
                ),
            );
        }
    };
    if !auth::webhook::verify_signature(secret, &body, signature.as_ref()) {
        tracing::warn!(signature_present = signature.is_some(), "webhook refused: bad or missing signature");
        return (
            BadSignature,
            json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({ "error": "bad or missing X-Frappe-Webhook-Signature" }),
            ),
        );
    }
    let Some(user) = auth::webhook::parse_user_name(&body) else {
        tracing::warn!("webhook refused: no user name in the body");
        return (
            BadBody,
            json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": "expected a JSON body with the User's name, e.g. {\"name\": \"{{doc.name}}\"}" }),
            ),
        );
    };
    let sync_token = runtime.config.frappe.sync_token.as_ref();
    let refreshed =
        auth::webhook::handle_user_event(&state.auth.store, state.auth.frappe.as_ref(), sync_token, &user)
            .await;
    if let Some(bus) = &state.limits.revocations {
        bus.publish(&user).await;
    }
    // A refresh that failed is answered 503, so that Frappe sends the webhook again: until a
    // read succeeds the gateway does not know whether the user was disabled.
    let (outcome, status) = match refreshed {
        Ok(_) => (Applied, StatusCode::OK),
        Err(_) => (RefreshFailed, StatusCode::SERVICE_UNAVAILABLE),
    };
    (
        outcome,
        json(status, serde_json::json!({ "revoked": user, "refreshed": matches!(refreshed, Ok(true)) })),
    )
}

/// `POST /reload`: 200 with what changed and what needs a restart, or 422 with the errors
/// (each with its key and line); the previous configuration stays in force on errors.
fn reload(state: &Shared) -> AdminResponse {
    match crate::reload::reload(state) {
        Ok(report) => json(
            StatusCode::OK,
            serde_json::json!({ "status": "reloaded", "changed": report.changed, "restart_required": report.restart_required }),
        ),
        Err(crate::reload::ReloadError::Config(e)) => {
            let errors: Vec<_> = e
                .issues
                .iter()
                .map(|i| serde_json::json!({ "key": i.key, "line": i.line, "message": i.message }))
                .collect();
            json(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({ "status": "rejected", "file": e.file, "errors": errors }),
            )
        }
        Err(other) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({ "status": "rejected", "errors": [{ "message": other.to_string() }] }),
        ),
    }
}

/// `GET /api/method/ping` on the upstream: any answer below 500 means Frappe is serving.
async fn probe_upstream(state: &Shared) -> Result<u16, String> {
    let runtime = state.runtime();
    let upstream = &runtime.config.upstream;
    let url = format!("{}api/method/ping", with_trailing_slash(&upstream.url.to_string()));
    let stats = Arc::new(BodyStats::default());
    let mut req = Request::get(url).body(UpstreamBody::empty(stats.clone())).map_err(|e| e.to_string())?;
    if let Ok(host) = HeaderValue::from_str(&upstream.host) {
        req.headers_mut().insert(HOST, host);
    }
    let (response, _) = tokio::time::timeout(PROBE_TIMEOUT, state.probe.send(req, &stats))
        .await
        .map_err(|_| format!("upstream did not answer within {PROBE_TIMEOUT:?}"))?
        .map_err(|e| e.reason.to_string())?;
    let status = response.status().as_u16();
    if status >= 500 {
        return Err(format!("upstream answered {status}"));
    }
    Ok(status)
}

/// Copies the figures other components own into the metrics (see `metrics::Scraped`).
async fn refresh_scraped(state: &Shared) {
    let m = &state.obs.metrics;
    m.cache_entries.set(i64::try_from(state.auth.store.entries().await).unwrap_or(i64::MAX));
    m.redis_degraded.set(i64::from(state.limits.limiter.is_degraded()));
    let sync = state.auth.sync_status.as_ref().map(|s| {
        let report = s.report();
        SyncFigures { runs: report.runs, failures: report.failures, last_success: report.last_success_at }
    });
    m.refresh(state.obs.access_log.dropped(), state.auth.store.verify_calls(), sync);
}

/// OpenMetrics text; figures that mirror other components are refreshed first.
async fn metrics(state: &Shared) -> AdminResponse {
    refresh_scraped(state).await;
    let m = &state.obs.metrics;
    let mut response = Response::new(Full::new(Bytes::from(m.encode())));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

fn with_trailing_slash(url: &str) -> String {
    if url.ends_with('/') {
        url.to_string()
    } else {
        format!("{url}/")
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> AdminResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(host: &str, list: &[&str]) -> bool {
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        host_allowed(Some(host), &list)
    }

    #[test]
    fn missing_or_empty_host_is_allowed() {
        assert!(host_allowed(None, &[]));
        assert!(allowed("", &[]));
    }

    #[test]
    fn ip_literals_are_allowed_with_or_without_port() {
        for host in ["127.0.0.1", "127.0.0.1:9901", "10.1.2.3:80", "[::1]", "[::1]:9901", "[2001:db8::7]:1"] {
            assert!(allowed(host, &[]), "{host}");
        }
    }

    #[test]
    fn localhost_is_allowed_in_any_case_with_port_and_trailing_dot() {
        for host in ["localhost", "localhost:9901", "LOCALHOST.", "LocalHost.:9901"] {
            assert!(allowed(host, &[]), "{host}");
        }
    }

    #[test]
    fn other_names_are_refused() {
        for host in [
            "evil.com",
            "evil.com:9901",
            "localhost.evil.com",
            "127.0.0.1.nip.io",
            "127.0.0.1.nip.io:9901",
            "sub.localhost",
            "admin.internal.evil.com",
        ] {
            assert!(!allowed(host, &["admin.internal"]), "{host}");
        }
    }

    #[test]
    fn listed_names_are_allowed_ignoring_port_case_and_trailing_dot() {
        let list = ["admin.internal", "gateway"];
        for host in
            ["admin.internal", "ADMIN.internal:9901", "admin.internal.", "admin.internal.:80", "Gateway"]
        {
            assert!(allowed(host, &list), "{host}");
        }
    }

    #[test]
    fn userinfo_and_garbage_are_refused() {
        for host in [
            "user@127.0.0.1",
            "127.0.0.1@evil.com",
            "evil.com:80@127.0.0.1",
            "localhost:99999999",
            "localhost:80:80",
            "localhost:x",
            "::1",
            "[::1",
            "[::1]x",
            "[evil.com]",
            "local host",
            "localhost/",
            "localhost\\",
            ".",
            "..localhost",
            "\u{FFFD}",
            "l\u{f6}calhost",
        ] {
            assert!(!allowed(host, &["admin.internal"]), "{host:?}");
        }
    }

    #[test]
    fn a_star_allows_any_host() {
        for host in ["evil.com", "127.0.0.1.nip.io:9901", "user@evil.com", "[junk"] {
            assert!(allowed(host, &["*"]), "{host}");
        }
    }

    fn reason(host: Option<&str>, headers: &[(&str, &str)]) -> Option<String> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        cross_site_reason(&map, host)
    }

    #[test]
    fn requests_without_browser_headers_pass() {
        assert_eq!(reason(Some("127.0.0.1:9901"), &[]), None);
        assert_eq!(reason(None, &[]), None);
    }

    #[test]
    fn same_origin_browser_requests_pass() {
        for (host, headers) in [
            ("127.0.0.1:9901", &[("origin", "http://127.0.0.1:9901"), ("sec-fetch-site", "same-origin")][..]),
            ("127.0.0.1:9901", &[("sec-fetch-site", "none")]),
            ("localhost:9901", &[("origin", "http://LOCALHOST:9901")]),
            ("[::1]:9901", &[("origin", "http://[::1]:9901")]),
        ] {
            assert_eq!(reason(Some(host), headers), None, "{host} {headers:?}");
        }
    }

    #[test]
    fn cross_site_browser_requests_are_refused() {
        let host = Some("127.0.0.1:9901");
        for headers in [
            &[("origin", "http://203.0.113.7"), ("sec-fetch-site", "cross-site")][..],
            &[("sec-fetch-site", "cross-site")],
            &[("sec-fetch-site", "Same-Site")],
            &[("origin", "http://203.0.113.7")],
            &[("origin", "null")],
            &[("origin", "http://127.0.0.1")],
            &[("origin", "http://127.0.0.1:9902")],
            &[("origin", "http://127.0.0.1:9901.evil.com")],
            &[("origin", "127.0.0.1:9901")],
            &[("origin", "http://127.0.0.1:9901"), ("origin", "http://evil.com")],
        ] {
            assert!(reason(host, headers).is_some(), "{headers:?}");
        }
        assert!(reason(None, &[("origin", "http://127.0.0.1:9901")]).is_some());
    }

    #[test]
    fn only_state_changing_requests_other_than_the_webhook_need_same_origin() {
        assert!(needs_same_origin(&Method::POST, "/reload"));
        assert!(needs_same_origin(&Method::PUT, "/reload"));
        assert!(needs_same_origin(&Method::DELETE, "/"));
        assert!(needs_same_origin(&Method::POST, "/hooks/frappe/"));
        assert!(!needs_same_origin(&Method::POST, "/hooks/frappe"));
        for path in ["/", "/status.json", "/metrics", "/reload"] {
            assert!(!needs_same_origin(&Method::GET, path), "{path}");
            assert!(!needs_same_origin(&Method::HEAD, path), "{path}");
        }
    }

    #[test]
    fn probes_and_the_webhook_are_exempt_and_nothing_else() {
        assert!(exempt_from_host_check(&Method::GET, "/healthz"));
        assert!(exempt_from_host_check(&Method::GET, "/readyz"));
        assert!(exempt_from_host_check(&Method::POST, "/hooks/frappe"));
        for (method, path) in [
            (Method::GET, "/"),
            (Method::GET, "/status.json"),
            (Method::GET, "/metrics"),
            (Method::POST, "/reload"),
            (Method::POST, "/healthz"),
            (Method::GET, "/hooks/frappe"),
            (Method::GET, "/healthz/"),
        ] {
            assert!(!exempt_from_host_check(&method, path), "{method} {path}");
        }
    }
}
