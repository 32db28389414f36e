//! The admin listener (loopback by default): the status page (`/`, `/status.json`),
//! `/healthz`, `/readyz`, `/metrics` and the Frappe webhook receiver `POST /hooks/frappe`.
//! Plain HTTP/1.1; never served on the proxy port. Requests naming a Host that is not an IP,
//! `localhost` or in `admin.allowed_hosts` are refused before routing (DNS-rebinding guard),
//! and so are state-changing requests a browser marks as cross-site (CSRF guard).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, HOST};
use http::{Method, Request, Response, StatusCode};
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

mod guard;

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
    if let Some(refused) = guard::check_host(&state, &req).or_else(|| guard::check_same_origin(&req)) {
        return Ok(refused);
    }
    let response = match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => status::page(),
        (&Method::GET, "/status.json") => {
            refresh_scraped(&state).await;
            json(StatusCode::OK, status::report(&state).await)
        }
        (&Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({ "status": "ok" })),
        (&Method::GET, "/readyz") => readiness(&state, guard::names_allowed_host(&state, &req)).await,
        (&Method::GET, "/metrics") => metrics(&state).await,
        (&Method::POST, "/hooks/frappe") => webhook(&state, req).await,
        (&Method::POST, "/reload") => reload(&state),
        _ => json(StatusCode::NOT_FOUND, serde_json::json!({ "error": "not found" })),
    };
    Ok(response)
}

/// 200 only when the upstream answers and, with a sync token, the last good user sync is
/// recent (within three intervals, at least 90 s); 503 with the reason otherwise. The body
/// also reports the sync age and whether Redis limits fell back to local ones — only to a
/// request naming an allowed Host (`detailed`): probes answer any Host, and a DNS-rebinding
/// page must not read the reasons (they name internal addresses).
async fn readiness(state: &Shared, detailed: bool) -> AdminResponse {
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
    let status = if reasons.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let word = if reasons.is_empty() { "ready" } else { "not ready" };
    if !detailed {
        return json(status, serde_json::json!({ "status": word }));
    }
    let body = serde_json::json!({
        "status": word,
        "reason": (!reasons.is_empty()).then(|| reasons.join("; ")),
        "upstream_status": upstream.as_ref().ok(),
        "sync": sync.map(|(_, report)| report),
        "rate_limit": { "backend": state.limits.limiter.backend_name(), "degraded_to_local": degraded },
        "credential_cache_entries": state.auth.store.entries().await,
    });
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
    m.body_bytes_memory.set(i64::try_from(state.buffered.bytes()).unwrap_or(i64::MAX));
    m.body_bytes_disk.set(i64::try_from(state.spooled.bytes()).unwrap_or(i64::MAX));
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
