//! The whole request path, top to bottom, in security order. `handle` is the one exit: it
//! turns refusals into Frappe-shaped responses and hands the access-log entry to the body so
//! every request is logged exactly once.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::{HeaderValue, CONTENT_LENGTH};
use http::{Request, Response};
use hyper::body::Incoming;

use crate::error::{ErrorKind, GatewayError};
use crate::proxy::{self, BodyStats, ForwardInfo, ProxyBody, X_REQUEST_ID};
use crate::request_log::RequestLog;
use crate::state::{AppState, RouteEntry};
use crate::{body::ResponseBody, config::AuthMode};

/// Facts about the client connection a request arrived on.
pub struct ConnInfo {
    pub peer: IpAddr,
    pub tls: Option<&'static str>,
}

/// Entry point for every request on the proxy listener.
pub async fn handle(state: Arc<AppState>, conn: Arc<ConnInfo>, req: Request<Incoming>) -> Result<Response<ResponseBody>, Infallible> {
    let client_ip = conn.peer;
    let request_id = state.request_ids.next();
    let request_id_header = HeaderValue::from_str(&request_id).expect("hex request id");
    let mut log = RequestLog::begin(&state.access_log, &state.metrics, &req, request_id, client_ip);
    log.tls = conn.tls;

    let mut response = match process(&state, &mut log, &request_id_header, req).await {
        Ok(response) => response,
        Err(err) => {
            log.refused(&err);
            log_refusal(&log, &err);
            err.to_response(&log.request_id)
        }
    };
    response.headers_mut().insert(X_REQUEST_ID, request_id_header);
    log.status = response.status().as_u16();
    response.body_mut().attach_log(log);
    Ok(response)
}

/// The pipeline proper: each stage either passes or returns the refusal.
async fn process(
    state: &AppState,
    log: &mut RequestLog,
    request_id: &HeaderValue,
    mut req: Request<Incoming>,
) -> Result<Response<ResponseBody>, GatewayError> {
    proxy::strip_user_header(&mut req, &state.user_header);
    check_header_size(&req, state.config.server.max_header_bytes)?;
    check_declared_length(&req, state.config.server.max_body_bytes)?;

    let route = state.routes.find(req.uri().path());
    log.route = Some(route.path.clone());
    if route.auth == AuthMode::Deny {
        return Err(GatewayError::forbidden("this API path is not available through the gateway")
            .with_reason(format!("route {} is auth = \"deny\"", route.path)));
    }

    forward(state, log, route, request_id, req, None).await
}

/// Sends the request upstream and streams the answer back.
async fn forward(
    state: &AppState,
    log: &mut RequestLog,
    route: &RouteEntry,
    request_id: &HeaderValue,
    mut req: Request<Incoming>,
    user: Option<&str>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let target = &route.target;
    let info = ForwardInfo {
        base: &target.base,
        host: &target.host,
        site_name: target.site_name.as_ref(),
        client_ip: log.client_ip,
        proto: state.proto,
        request_id,
        user: user.map(|u| (&state.user_header, u)),
    };
    proxy::prepare(&mut req, &info);
    let client_upgrade = proxy::is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));

    let stats = Arc::new(BodyStats::default());
    log.body_stats = Some(stats.clone());
    let req = req.map(|body| ProxyBody::new(body, state.config.server.max_body_bytes, stats.clone()));
    let mut upstream_response = state.upstream.send(req, &stats).await?;
    log.upstream_status = Some(upstream_response.status().as_u16());

    if let Some(client_upgrade) = client_upgrade {
        if upstream_response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            proxy::tunnel(client_upgrade, hyper::upgrade::on(&mut upstream_response));
        }
    }
    proxy::prepare_response(&mut upstream_response, request_id);
    Ok(upstream_response.map(ResponseBody::upstream))
}

/// 431 when the request line and headers exceed `max_header_bytes` (hyper's own, larger
/// limit catches the rest before a request exists).
fn check_header_size<B>(req: &Request<B>, max: usize) -> Result<(), GatewayError> {
    let size = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len())
        + req.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum::<usize>();
    if size > max {
        return Err(GatewayError::new(ErrorKind::HeadersTooLarge, "request headers are larger than the gateway allows")
            .with_reason(format!("{size} header bytes > max_header_bytes {max}")));
    }
    Ok(())
}

/// 413 before reading anything when Content-Length already says the body is too big.
fn check_declared_length<B>(req: &Request<B>, max: u64) -> Result<(), GatewayError> {
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > max => {
            Err(proxy::body_too_large().with_reason(format!("Content-Length {len} > max_body_bytes {max}")))
        }
        _ => Ok(()),
    }
}

/// One application-log line per refusal, at a level that matches who is at fault.
fn log_refusal(log: &RequestLog, err: &GatewayError) {
    let status = err.kind.status().as_u16();
    if status >= 500 {
        tracing::warn!(request_id = %log.request_id, client_ip = %log.client_ip, status, reason = %err.reason, "request failed");
    } else {
        tracing::debug!(request_id = %log.request_id, client_ip = %log.client_ip, status, reason = %err.reason, "request refused");
    }
}
