//! The whole request path, top to bottom, in security order:
//!
//! head hygiene → limits on size → the Frappe request model (path) → route → IP policy →
//! pre-auth rate limit → failed-auth lockout → credentials → body (judged where Frappe parses
//! it) → the routes of what Frappe will run → user policy → per-key rate limit → forward.
//!
//! `handle` is the one exit: it turns refusals into Frappe-shaped responses, adds the request
//! id and rate-limit headers, and hands the access-log entry to the response body so every
//! request is logged exactly once.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::request::Parts;
use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::auth;
use crate::body::ResponseBody;
use crate::config::{AuthMode, Rate};
use crate::error::{ErrorKind, GatewayError};
use crate::frappe_request::{body_kind, BodyKind, Call, FormError, FrappeRequest, MultipartScan, PathError};
use crate::policy::{check_call, Decision, Denied, Subject};
use crate::proxy::{self, ForwardInfo, X_REQUEST_ID};
use crate::request_body::{self, body_too_large, BodyStats, ReadBody, UpstreamBody};
use crate::request_head;
use crate::request_log::RequestLog;
use crate::routes::{RouteEntry, RouteMatch};
use crate::state::{AppState, UserRules};

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
    worker: usize,
}

impl Ctx {
    fn note_rate(&mut self, decision: Decision) {
        self.rate = Some(self.rate.map_or(decision, |d| d.tighter(decision)));
    }

    /// The call Frappe will run, for the access log.
    fn note_call(&mut self, route: &RouteEntry, call: &Call) {
        self.log.route = Some(route.path.clone());
        self.log.doctype = call.doctype().map(str::to_string);
        self.log.rpc = call.rpc().map(Cow::into_owned);
    }
}

/// How a request was let through; [`forward`] cannot be called without one.
enum Admission {
    /// A `public` route: forwarded as the client sent it (Frappe checks sessions itself).
    Public,
    /// A CORS preflight: carries no credentials, so none go upstream, and no body.
    Preflight,
    /// A `token` route: the user the gateway vouches for in the trusted user header.
    Authenticated(Arc<str>),
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
    let mut ctx = Ctx { log, request_id: request_id_header, rate: None, worker: conn.worker };

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

/// The pipeline proper, in security order; each stage either passes or returns the refusal.
///
/// The route of the path as sent is checked first (cheap refusals need no body); then the
/// body is read where Frappe would parse it, the Frappe request model says what Frappe will
/// run, and the routes of every spelling of that call are judged.
async fn process(
    state: &AppState,
    ctx: &mut Ctx,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let (mut head, body) = req.into_parts();
    request_head::check(&mut head, &state.user_header)?;
    check_header_size(&head, state.config.server.max_header_bytes)?;
    let declared = declared_length(&head, state.config.server.max_body_bytes)?;
    let mut frappe = FrappeRequest::from_head(&head.method, &head.uri).map_err(path_refused)?;

    let sent = state.routes.for_path(&frappe.path);
    ctx.note_call(sent, &frappe.call);
    let ip = ctx.log.client_ip;
    check_ip(state.network.check(ip))?;
    admit_route(sent, ip)?;
    limit_ip(state, ctx, sent).await?;

    let preflight = is_cors_preflight(&head);
    let mut admitted = None;
    if sent.auth == AuthMode::Token && !preflight {
        admitted = Some(authenticate(state, ctx, &head).await?);
    }
    let body = read_body(state, ctx, &mut head, body, declared, sent, &mut frappe, preflight).await?;

    let routes = state.routes.for_request(&frappe);
    ctx.note_call(routes.judged, &frappe.call);
    if !std::ptr::eq(routes.judged, sent) {
        admit_route(routes.judged, ip)?;
    }
    let admission = match routes.judged.auth {
        _ if preflight => Admission::Preflight,
        AuthMode::Public => Admission::Public,
        AuthMode::Deny => return Err(route_denied(routes.judged)),
        AuthMode::Token => {
            let admitted = match admitted {
                Some(admitted) => admitted,
                None => authenticate(state, ctx, &head).await?,
            };
            authorize(state, ctx, &routes, &head, &frappe, &admitted).await?;
            Admission::Authenticated(admitted.user)
        }
    };
    forward(state, ctx, routes.sent, head, body, &frappe, admission).await
}

/// A route's own allowlist and `deny`.
fn admit_route(route: &RouteEntry, ip: IpAddr) -> Result<(), GatewayError> {
    check_ip(route.ip_policy.check(ip))?;
    if route.auth == AuthMode::Deny {
        return Err(route_denied(route));
    }
    Ok(())
}

fn route_denied(route: &RouteEntry) -> GatewayError {
    GatewayError::forbidden("this API path is not available through the gateway")
        .with_reason(format!("route {} is auth = \"deny\"", route.path))
}

/// Checks the credentials (after the failed-auth lockout); returns who they belong to.
async fn authenticate(state: &AppState, ctx: &mut Ctx, head: &Parts) -> Result<auth::Admitted, GatewayError> {
    check_lockout(state, ctx.log.client_ip).await?;
    let admitted = verify_credentials(state, ctx, head.headers.get(AUTHORIZATION)).await?;
    ctx.log.user = Some(admitted.user.clone());
    ctx.log.api_key = Some(match state.config.log.full_api_key {
        true => admitted.api_key.clone(),
        false => Arc::from(short_key(&admitted.api_key)),
    });
    Ok(admitted)
}

/// Everything tied to the authenticated user: no session beside the token, Frappe's
/// `restrict_ip`, the `[[user]]` rules on the call Frappe will run, the per-key limit.
async fn authorize(
    state: &AppState,
    ctx: &mut Ctx,
    routes: &RouteMatch<'_>,
    head: &Parts,
    frappe: &FrappeRequest,
    admitted: &auth::Admitted,
) -> Result<(), GatewayError> {
    if frappe.sid && routes.sent.target.frappe {
        return Err(session_refused());
    }
    let ip = ctx.log.client_ip;
    if let Some(raw) = &admitted.restrict_ip {
        check_ip(state.auth.restrict_ip.get(raw).check(ip))?;
    }
    let rules = state.user_rules(&admitted.user);
    if let Some(rules) = rules {
        check_user_rules(rules, ip, &head.method, &frappe.call)?;
    }
    limit_key(state, ctx, routes.judged, rules, &admitted.api_key).await
}

/// Reads the body where it must be judged or buffered, and hands back what goes upstream.
/// Small bodies are read whole first, so no upstream connection waits on a slow client.
#[allow(clippy::too_many_arguments)]
async fn read_body(
    state: &AppState,
    ctx: &mut Ctx,
    head: &mut Parts,
    body: Incoming,
    declared: Option<u64>,
    route: &RouteEntry,
    frappe: &mut FrappeRequest,
    preflight: bool,
) -> Result<UpstreamBody, GatewayError> {
    let stats = Arc::new(BodyStats::default());
    ctx.log.body_stats = Some(stats.clone());
    if preflight {
        head.headers.remove(CONTENT_LENGTH);
        return Ok(UpstreamBody::empty(stats));
    }
    let kind = match route.target.frappe {
        true => {
            body_kind(head.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok())).map_err(form_refused)?
        }
        false => BodyKind::Opaque,
    };
    let limits = &state.body_limits;
    match request_body::read(body, declared, limits).await? {
        ReadBody::Complete(bytes) => {
            if route.target.frappe {
                frappe.judge_body(&head.method, &head.uri, &kind, &bytes).map_err(form_refused)?;
            }
            head.headers.remove(TRANSFER_ENCODING);
            if !bytes.is_empty() {
                head.headers.insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            }
            Ok(UpstreamBody::full(bytes, stats))
        }
        ReadBody::Partial { prefix, rest } => {
            let scan = match kind {
                BodyKind::Multipart { boundary } => Some(MultipartScan::new(&boundary)),
                BodyKind::Opaque => None,
                BodyKind::Json | BodyKind::UrlEncoded => {
                    return Err(body_too_large().with_reason(format!(
                        "a form or JSON body over server.inspect_body_bytes ({}) cannot be judged",
                        limits.inspect
                    )))
                }
            };
            Ok(UpstreamBody::streamed(prefix, rest, limits, scan, stats))
        }
    }
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
fn check_user_rules(rules: &UserRules, ip: IpAddr, method: &Method, call: &Call) -> Result<(), GatewayError> {
    check_ip(rules.ip_policy.check(ip))?;
    if !rules.methods.is_empty() && !rules.methods.contains(method) {
        return Err(GatewayError::forbidden(format!("method {method} is not allowed for this API key"))
            .with_reason(format!("[[user]] methods excludes {method}")));
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

/// Sends the request upstream as admitted and streams the answer back.
async fn forward(
    state: &AppState,
    ctx: &mut Ctx,
    route: &RouteEntry,
    head: Parts,
    body: UpstreamBody,
    frappe: &FrappeRequest,
    admission: Admission,
) -> Result<Response<ResponseBody>, GatewayError> {
    let target = &route.target;
    // A public route to Frappe keeps the client's Authorization: Frappe checks it itself.
    let (user, authorization, cookies) = match &admission {
        Admission::Authenticated(user) => (Some(&**user), route.forward_authorization, false),
        Admission::Public => (None, target.frappe || route.forward_authorization, true),
        Admission::Preflight => (None, false, false),
    };
    let info = ForwardInfo {
        base: &target.base,
        host: &target.host,
        site_name: target.site_name.as_ref(),
        client_ip: ctx.log.client_ip,
        proto: state.proto,
        request_id: &ctx.request_id,
        user: user.map(|u| (&state.user_header, u)),
        authorization,
        cookies,
        path_and_query: frappe.forward.as_deref(),
    };
    let mut req = Request::from_parts(head, body);
    let client_upgrade =
        proxy::is_upgrade(&req).then(|| req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>()).flatten();
    proxy::prepare(&mut req, &info);
    let stats = ctx.log.body_stats.clone().unwrap_or_default();
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

/// `0a1b…#5f3c9e21`: enough to tell keys apart in a log, not enough to use one.
fn short_key(api_key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(api_key.as_bytes());
    let prefix: String = api_key.chars().take(4).collect();
    format!("{prefix}…#{:02x}{:02x}{:02x}{:02x}", digest[0], digest[1], digest[2], digest[3])
}

/// A CORS preflight carries no credentials by design; Frappe answers it.
fn is_cors_preflight(head: &Parts) -> bool {
    head.method == Method::OPTIONS && head.headers.contains_key("access-control-request-method")
}

/// A `sid` anywhere in `form_dict` would let Frappe act as a session's user instead of the
/// token's (FRAPPE.md §8, §11).
fn session_refused() -> GatewayError {
    GatewayError::new(
        ErrorKind::BadRequest,
        "session ids (sid) are not accepted on token routes; authenticate with `Authorization: token api_key:api_secret`",
    )
    .with_reason("sid in form_dict on a token route")
}

fn path_refused(e: PathError) -> GatewayError {
    GatewayError::new(ErrorKind::BadRequest, format!("{e}; send the path without it"))
        .with_reason(format!("path refused: {e}"))
}

fn form_refused(e: FormError) -> GatewayError {
    GatewayError::new(ErrorKind::BadRequest, e.to_string()).with_reason(format!("body refused: {e}"))
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
fn check_header_size(head: &Parts, max: usize) -> Result<(), GatewayError> {
    let size = head.uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        + head.headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum::<usize>();
    if size > max {
        return Err(GatewayError::new(
            ErrorKind::HeadersTooLarge,
            "request headers are larger than the gateway allows",
        )
        .with_reason(format!("{size} header bytes > max_header_bytes {max}")));
    }
    Ok(())
}

/// The declared Content-Length; 413 before reading anything when it is already too big.
fn declared_length(head: &Parts, max: u64) -> Result<Option<u64>, GatewayError> {
    let declared =
        head.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > max => {
            Err(body_too_large().with_reason(format!("Content-Length {len} > max_body_bytes {max}")))
        }
        _ => Ok(declared),
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
