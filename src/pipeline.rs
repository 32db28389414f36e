//! The whole request path, top to bottom, in security order:
//!
//! client IP → limits on size → route → IP policy → pre-auth rate limit → failed-auth
//! lockout → credentials → user policy → per-key rate limit → forward.
//!
//! `handle` is the one exit: it turns refusals into Frappe-shaped responses, adds the request
//! id and rate-limit headers, and hands the access-log entry to the response body so every
//! request is logged exactly once.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, COOKIE};
use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::auth;
use crate::body::ResponseBody;
use crate::config::{AuthMode, Rate};
use crate::error::{ErrorKind, GatewayError};
use crate::policy::{check_call, route_paths, Decision, Denied, FrappeCall, Subject};
use crate::proxy::{self, BodyStats, ForwardInfo, ProxyBody, X_REQUEST_ID};
use crate::request_log::RequestLog;
use crate::state::{AppState, RouteEntry, UserRules};

/// Facts about the client connection a request arrived on.
pub struct ConnInfo {
    pub peer: IpAddr,
    pub tls: Option<&'static str>,
    /// The proxy worker serving the connection (selects its upstream pool).
    pub worker: usize,
}

/// Per-request state carried through the pipeline.
struct Ctx {
    log: RequestLog,
    request_id: HeaderValue,
    /// The tightest rate-limit decision so far, echoed in `RateLimit-*` headers.
    rate: Option<Decision>,
    /// The canonical path Frappe will serve when it differs from the URI's (see `route_path`).
    call_path: Option<String>,
    worker: usize,
}

impl Ctx {
    /// The DocType / method the request calls, parsed from what Frappe will actually serve.
    fn frappe_call<'a, B>(&'a self, req: &'a Request<B>) -> FrappeCall<'a> {
        FrappeCall::parse(self.call_path.as_deref().unwrap_or(req.uri().path()))
    }
}

impl Ctx {
    fn note_rate(&mut self, decision: Decision) {
        self.rate = Some(self.rate.map_or(decision, |d| d.tighter(decision)));
    }
}

/// Entry point for every request on the proxy listener.
pub async fn handle(
    state: Arc<AppState>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let client_ip = state.client_ip.resolve(conn.peer, req.headers().get_all("x-forwarded-for"));
    let (request_id, request_id_header) = request_id(&state, conn.peer, &req);
    let mut log = RequestLog::begin(&state.access_log, &state.metrics, &req, request_id, client_ip);
    log.tls = conn.tls;
    let mut ctx =
        Ctx { log, request_id: request_id_header, rate: None, call_path: None, worker: conn.worker };

    let mut response = match process(&state, &mut ctx, req).await {
        Ok(response) => response,
        Err(err) => {
            ctx.log.refused(&err);
            log_refusal(&ctx.log, &err);
            err.to_response(&ctx.log.request_id)
        }
    };
    let Ctx { mut log, request_id, rate, .. } = ctx;
    if let Some(decision) = rate {
        decision.write_headers(response.headers_mut());
    }
    response.headers_mut().insert(X_REQUEST_ID, request_id);
    log.status = response.status().as_u16();
    response.body_mut().attach_log(log);
    Ok(response)
}

/// The pipeline proper: each stage either passes or returns the refusal.
async fn process(
    state: &AppState,
    ctx: &mut Ctx,
    mut req: Request<Incoming>,
) -> Result<Response<ResponseBody>, GatewayError> {
    proxy::strip_user_header(&mut req, &state.user_header);
    check_header_size(&req, state.config.server.max_header_bytes)?;
    check_declared_length(&req, state.config.server.max_body_bytes)?;

    let paths = route_paths(req.uri());
    let route = state.routes.find_for(&paths);
    // What Frappe will run, for DocType / RPC rules and the log (None: the path as sent).
    let call_path =
        paths.alias.or_else(|| matches!(paths.path, Cow::Owned(_)).then(|| paths.path.into_owned()));
    ctx.call_path = call_path;
    ctx.log.route = Some(route.path.clone());
    let call = ctx.frappe_call(&req);
    let (doctype, rpc) = (call.doctype().map(str::to_string), call.method().map(str::to_string));
    (ctx.log.doctype, ctx.log.rpc) = (doctype, rpc);

    let ip = ctx.log.client_ip;
    check_ip(state.network.check(ip))?;
    check_ip(route.ip_policy.check(ip))?;
    if route.auth == AuthMode::Deny {
        return Err(GatewayError::forbidden("this API path is not available through the gateway")
            .with_reason(format!("route {} is auth = \"deny\"", route.path)));
    }
    limit_ip(state, ctx, route).await?;

    let user = match route.auth {
        AuthMode::Token if !is_cors_preflight(&req) => Some(authenticate(state, ctx, route, &mut req).await?),
        _ => None,
    };
    forward(state, ctx, route, req, user.as_deref()).await
}

/// Checks credentials and everything tied to the user; returns the user to forward as.
async fn authenticate(
    state: &AppState,
    ctx: &mut Ctx,
    route: &RouteEntry,
    req: &mut Request<Incoming>,
) -> Result<Arc<str>, GatewayError> {
    check_lockout(state, ctx.log.client_ip).await?;
    reject_session_parameter(req)?;
    // Frappe prefers a valid cookie session over a token: the user header must name the
    // user Frappe acts as, so sessions never ride along on token routes.
    req.headers_mut().remove(COOKIE);
    let admitted = verify_credentials(state, ctx, req.headers().get(AUTHORIZATION)).await?;
    ctx.log.user = Some(admitted.user.clone());
    ctx.log.api_key = Some(admitted.api_key.clone());

    let ip = ctx.log.client_ip;
    if let Some(raw) = &admitted.restrict_ip {
        check_ip(state.auth.restrict_ip.get(raw).check(ip))?;
    }
    let rules = state.user_rules(&admitted.user);
    if let Some(rules) = rules {
        check_user_rules(rules, ip, req, &ctx.frappe_call(req))?;
    }
    limit_key(state, ctx, route, rules, &admitted.api_key).await?;
    if !state.config.auth.forward_authorization {
        req.headers_mut().remove(AUTHORIZATION);
    }
    Ok(admitted.user)
}

/// Parses the header and asks the credential store. Wrong and malformed credentials count
/// towards the failed-auth lockout; "cannot verify now" (Frappe unreachable, verification
/// budget spent) does not: it is not the client's fault.
async fn verify_credentials(
    state: &AppState,
    ctx: &mut Ctx,
    header: Option<&HeaderValue>,
) -> Result<auth::Admitted, GatewayError> {
    let verdict = match auth::parse(header) {
        Ok(credential) => {
            let raw = header.expect("parsed credentials come from a header");
            state.auth.store.authenticate(&credential, raw).await.map_err(|rejection| {
                let counts = rejection.counts_as_failure();
                ctx.log.auth = Some(rejection.as_str());
                (GatewayError::from(rejection), counts)
            })
        }
        Err(auth::HeaderError::Missing) => Err((GatewayError::from(auth::HeaderError::Missing), false)),
        Err(malformed) => {
            ctx.log.auth = Some("rejected");
            Err((GatewayError::from(malformed), true))
        }
    };
    match verdict {
        Ok(admitted) => {
            ctx.log.auth = Some(admitted.outcome.as_str());
            Ok(admitted)
        }
        Err((err, counts)) => {
            if counts {
                if let Some(lockout) = state.limits.failed_auth.record_failure(ctx.log.client_ip).await {
                    return Err(locked_out(lockout).with_reason(format!("{}; IP now locked out", err.reason)));
                }
            }
            Err(err)
        }
    }
}

/// `[[user]]` rules: source address, HTTP method, DocTypes and RPC methods.
fn check_user_rules<B>(
    rules: &UserRules,
    ip: IpAddr,
    req: &Request<B>,
    call: &FrappeCall<'_>,
) -> Result<(), GatewayError> {
    check_ip(rules.ip_policy.check(ip))?;
    if !rules.methods.is_empty() && !rules.methods.contains(req.method()) {
        return Err(GatewayError::forbidden(format!(
            "method {} is not allowed for this API key",
            req.method()
        ))
        .with_reason(format!("[[user]] methods excludes {}", req.method())));
    }
    check_call(call, rules.doctypes.as_deref(), rules.rpc.as_deref()).map_err(|denied| {
        let message = denied.to_string();
        GatewayError::forbidden(message.clone()).with_reason(format!("[[user]] rules: {message}"))
    })
}

/// 429 while the client's IP is locked out after too many failed authentications.
async fn check_lockout(state: &AppState, ip: IpAddr) -> Result<(), GatewayError> {
    match state.limits.failed_auth.locked(ip).await {
        Some(left) => Err(locked_out(left).with_reason("IP locked out after repeated failed authentication")),
        None => Ok(()),
    }
}

fn locked_out(left: std::time::Duration) -> GatewayError {
    GatewayError::new(ErrorKind::TooManyRequests, "too many failed authentication attempts from this address")
        .with_retry_after(left)
}

/// The per-IP limit, before any credential is looked at (so brute force never reaches Frappe).
/// A route's own `per_ip` replaces the global one and counts in its own bucket.
async fn limit_ip(state: &AppState, ctx: &mut Ctx, route: &RouteEntry) -> Result<(), GatewayError> {
    let (scope, rate) = match (route.per_ip, state.config.rate_limit.per_ip) {
        (Some(rate), _) => (route.ip_scope.as_ref(), rate),
        (None, Some(rate)) => ("ip", rate),
        (None, None) => return Ok(()),
    };
    let subject = Subject::Ip(ctx.log.client_ip);
    apply_limit(state, ctx, scope, subject, &rate, "per-IP").await
}

/// The per-key limit: `[[user]] per_key`, else the route's, else the global one.
async fn limit_key(
    state: &AppState,
    ctx: &mut Ctx,
    route: &RouteEntry,
    rules: Option<&UserRules>,
    api_key: &str,
) -> Result<(), GatewayError> {
    let (scope, rate) = match (rules.and_then(|r| r.per_key), route.per_key, state.config.rate_limit.per_key)
    {
        (Some(rate), _, _) => ("user-key", rate),
        (None, Some(rate), _) => (route.key_scope.as_ref(), rate),
        (None, None, Some(rate)) => ("key", rate),
        (None, None, None) => return Ok(()),
    };
    apply_limit(state, ctx, scope, Subject::Key(api_key), &rate, "per-key").await
}

async fn apply_limit(
    state: &AppState,
    ctx: &mut Ctx,
    scope: &str,
    subject: Subject<'_>,
    rate: &Rate,
    what: &'static str,
) -> Result<(), GatewayError> {
    let decision = state.limits.limiter.check(scope, subject, rate).await;
    ctx.note_rate(decision);
    if decision.allowed {
        return Ok(());
    }
    let err = GatewayError::new(ErrorKind::TooManyRequests, "rate limit exceeded; retry later")
        .with_reason(format!("{what} limit {rate} exceeded ({scope})"));
    Err(match decision.retry_after {
        Some(after) => err.with_retry_after(after),
        None => err,
    })
}

/// Sends the request upstream and streams the answer back.
async fn forward(
    state: &AppState,
    ctx: &mut Ctx,
    route: &RouteEntry,
    mut req: Request<Incoming>,
    user: Option<&str>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let target = &route.target;
    let info = ForwardInfo {
        base: &target.base,
        host: &target.host,
        site_name: target.site_name.as_ref(),
        client_ip: ctx.log.client_ip,
        proto: state.proto,
        request_id: &ctx.request_id,
        user: user.map(|u| (&state.user_header, u)),
    };
    proxy::prepare(&mut req, &info);
    let client_upgrade = proxy::is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));

    let stats = Arc::new(BodyStats::default());
    ctx.log.body_stats = Some(stats.clone());
    let req = req.map(|body| ProxyBody::new(body, state.config.server.max_body_bytes, stats.clone()));
    let mut upstream_response = state.upstreams[ctx.worker].send(req, &stats).await?;
    ctx.log.upstream_status = Some(upstream_response.status().as_u16());

    if let Some(client_upgrade) = client_upgrade {
        if upstream_response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            proxy::tunnel(client_upgrade, hyper::upgrade::on(&mut upstream_response));
        }
    }
    proxy::prepare_response(&mut upstream_response, &ctx.request_id);
    Ok(upstream_response.map(ResponseBody::upstream))
}

fn check_ip(result: Result<(), Denied>) -> Result<(), GatewayError> {
    result.map_err(|denied| GatewayError::forbidden(denied.public_message()).with_reason(denied.to_string()))
}

/// A CORS preflight carries no credentials by design; Frappe answers it.
fn is_cors_preflight<B>(req: &Request<B>) -> bool {
    req.method() == Method::OPTIONS && req.headers().contains_key("access-control-request-method")
}

/// `?sid=` would let Frappe act as a session's user instead of the token's (FRAPPE.md §8).
fn reject_session_parameter<B>(req: &Request<B>) -> Result<(), GatewayError> {
    let has_sid =
        req.uri().query().is_some_and(|q| q.split('&').any(|pair| pair.split('=').next() == Some("sid")));
    if has_sid {
        return Err(GatewayError::new(
            ErrorKind::BadRequest,
            "session ids (sid) are not accepted on token routes; authenticate with `Authorization: token api_key:api_secret`",
        )
        .with_reason("sid query parameter on a token route"));
    }
    Ok(())
}

/// The request id: a trusted proxy's `X-Request-Id` is kept (so one id spans the chain),
/// anyone else's is replaced.
fn request_id<B>(state: &AppState, peer: IpAddr, req: &Request<B>) -> (Arc<str>, HeaderValue) {
    let inherited = req
        .headers()
        .get(X_REQUEST_ID)
        .filter(|_| state.client_ip.is_trusted(peer))
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()));
    let id: Arc<str> = match inherited {
        Some(id) => Arc::from(id),
        None => state.request_ids.next(),
    };
    let header = HeaderValue::from_str(&id).expect("request ids are visible ASCII");
    (id, header)
}

/// 431 when the request line and headers exceed `max_header_bytes` (hyper's own, larger
/// limit catches the rest before a request exists).
fn check_header_size<B>(req: &Request<B>, max: usize) -> Result<(), GatewayError> {
    let size = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len())
        + req.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum::<usize>();
    if size > max {
        return Err(GatewayError::new(
            ErrorKind::HeadersTooLarge,
            "request headers are larger than the gateway allows",
        )
        .with_reason(format!("{size} header bytes > max_header_bytes {max}")));
    }
    Ok(())
}

/// 413 before reading anything when Content-Length already says the body is too big.
fn check_declared_length<B>(req: &Request<B>, max: u64) -> Result<(), GatewayError> {
    let declared =
        req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
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
    // A flood of unknown keys over the verification budget would otherwise write one warning
    // per request; the budget logs a summary instead and the access log has each reason.
    let summarized = log.auth == Some("over-budget");
    if status >= 500 && !summarized {
        tracing::warn!(request_id = %log.request_id, client_ip = %log.client_ip, status, reason = %err.reason, "request failed");
    } else {
        // The access-log line already carries the reason; this is for debugging sessions.
        tracing::debug!(request_id = %log.request_id, client_ip = %log.client_ip, status, reason = %err.reason, "request refused");
    }
}
