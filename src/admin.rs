//! The admin listener (loopback by default): `/healthz`, `/readyz`, and later metrics and
//! Frappe webhooks. Plain HTTP/1.1; never exposed on the proxy port.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, HOST};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::proxy::{BodyStats, ProxyBody};
use crate::server::ShutdownSignal;
use crate::state::AppState;

type AdminResponse = Response<Full<Bytes>>;

/// A readiness probe must answer quickly even when the upstream hangs.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves admin requests until shutdown.
pub async fn serve_admin(listener: TcpListener, state: Arc<AppState>, mut shutdown: ShutdownSignal) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| route(state.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn route(state: Arc<AppState>, req: Request<Incoming>) -> Result<AdminResponse, Infallible> {
    let response = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({ "status": "ok" })),
        (&Method::GET, "/readyz") => readiness(&state).await,
        (&Method::GET, "/metrics") => metrics(&state),
        _ => json(StatusCode::NOT_FOUND, serde_json::json!({ "error": "not found" })),
    };
    Ok(response)
}

/// 200 only when the upstream answers; 503 with the reason otherwise.
async fn readiness(state: &AppState) -> AdminResponse {
    match probe_upstream(state).await {
        Ok(status) => json(StatusCode::OK, serde_json::json!({ "status": "ready", "upstream_status": status })),
        Err(reason) => json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({ "status": "not ready", "reason": reason })),
    }
}

/// `GET /api/method/ping` on the upstream: any answer below 500 means Frappe is serving.
async fn probe_upstream(state: &AppState) -> Result<u16, String> {
    let url = format!("{}api/method/ping", with_trailing_slash(&state.config.upstream.url.to_string()));
    let stats = Arc::new(BodyStats::default());
    let mut req = Request::get(url).body(ProxyBody::empty(stats.clone())).map_err(|e| e.to_string())?;
    if let Ok(host) = HeaderValue::from_str(&state.config.upstream.host) {
        req.headers_mut().insert(HOST, host);
    }
    let response = tokio::time::timeout(PROBE_TIMEOUT, state.upstream.send(req, &stats))
        .await
        .map_err(|_| format!("upstream did not answer within {PROBE_TIMEOUT:?}"))?
        .map_err(|e| e.reason.to_string())?;
    let status = response.status().as_u16();
    if status >= 500 {
        return Err(format!("upstream answered {status}"));
    }
    Ok(status)
}

/// Prometheus text format; gauges that mirror other components are refreshed first.
fn metrics(state: &AppState) -> AdminResponse {
    let m = &state.metrics;
    m.access_log_dropped.set(i64::try_from(state.access_log.dropped()).unwrap_or(i64::MAX));
    let mut response = Response::new(Full::new(Bytes::from(m.encode())));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

fn with_trailing_slash(url: &str) -> String {
    if url.ends_with('/') { url.to_string() } else { format!("{url}/") }
}

fn json(status: StatusCode, body: serde_json::Value) -> AdminResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
