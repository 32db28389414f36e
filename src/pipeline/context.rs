//! Per-request state carried through the pipeline, from [`Ctx::begin`] to [`Ctx::finish`].

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use http::{Request, Response, Version};

use crate::body::ResponseBody;
use crate::config::Rate;
use crate::error::GatewayError;
use crate::frappe_request::Call;
use crate::outcome::AuthOutcome;
use crate::policy::rate_limit::VARYING_HEADERS;
use crate::policy::Decision as LimitDecision;
use crate::proxy::X_REQUEST_ID;
use crate::request_log::RequestLog;
use crate::routes::RouteEntry;
use crate::runtime::Runtime;
use crate::server::Lifeline;
use crate::state::{RequestId, Shared};

/// Facts about the client connection a request arrived on, and the gateway's state: each
/// request holds this per-connection handle, not a clone of the process-wide `Arc<Shared>`,
/// whose reference count every worker's requests would otherwise update on one cache line.
pub(crate) struct ConnInfo {
    pub(crate) shared: Arc<Shared>,
    pub(crate) peer: IpAddr,
    pub(crate) tls: Option<&'static str>,
    /// The proxy worker serving the connection (selects its upstream pool).
    pub(crate) worker: usize,
    /// HTTP/2 responses sent on the connection (see [`ConnInfo::seeds_hpack_names`]).
    h2_responses: AtomicU32,
    /// The head the HTTP parser refused has been answered and logged (`head_error_reply`).
    unparsed_answered: AtomicBool,
    /// Bytes of request bodies this connection's requests hold in memory now.
    pub(crate) buffered: Arc<crate::request_body::ByteGauge>,
    /// The connection's slot and reasons to close, for a WebSocket tunnel to take over (`None`
    /// outside a listener: the bench harness).
    lifeline: Option<Lifeline>,
}

/// Every this many HTTP/2 responses of a connection (the first included), one sends its
/// per-response values indexed.
const HPACK_SEED_EVERY: u32 = 256;

impl ConnInfo {
    pub(crate) fn new(shared: Arc<Shared>, peer: IpAddr, tls: Option<&'static str>, worker: usize) -> Self {
        ConnInfo {
            shared,
            peer,
            tls,
            worker,
            h2_responses: AtomicU32::new(0),
            unparsed_answered: AtomicBool::new(false),
            buffered: Arc::default(),
            lifeline: None,
        }
    }

    /// The connection's [`Lifeline`]: whoever keeps this `ConnInfo` keeps the connection's slot.
    pub(crate) fn with_lifeline(mut self, lifeline: Lifeline) -> Self {
        self.lifeline = Some(lifeline);
        self
    }

    pub(crate) fn lifeline(&self) -> Option<&Lifeline> {
        self.lifeline.as_ref()
    }

    /// Notes that the head the HTTP parser refused has been answered and logged (hyper closes
    /// the connection after it: one per connection).
    pub(crate) fn set_unparsed_answered(&self) {
        self.unparsed_answered.store(true, Ordering::Relaxed);
    }

    pub(crate) fn unparsed_answered(&self) -> bool {
        self.unparsed_answered.load(Ordering::Relaxed)
    }

    /// Whether this HTTP/2 response sends its per-response values (`X-Request-Id`,
    /// `RateLimit-Remaining`, `RateLimit-Reset`) indexed rather than never-indexed. Indexing
    /// puts their names in the connection's HPACK table, so every other response, whose
    /// values stay never-indexed literals, sends each name as a one-byte index instead of
    /// Huffman-coding it again. Repeated every [`HPACK_SEED_EVERY`] responses, in case other
    /// headers pushed the names out of the table.
    fn seeds_hpack_names(&self) -> bool {
        self.h2_responses.fetch_add(1, Ordering::Relaxed).is_multiple_of(HPACK_SEED_EVERY)
    }
}

/// See the module docs.
pub(super) struct Ctx<'a> {
    /// The connection, for a WebSocket tunnel to keep (see [`ConnInfo::with_lifeline`]).
    pub(super) conn: &'a Arc<ConnInfo>,
    pub(super) shared: &'a Shared,
    /// The runtime configuration this request started with.
    pub(super) rt: &'a Runtime,
    /// Boxed: it goes on with the response body, and half a kilobyte moved with every
    /// future and response it passes through costs more than one allocation.
    pub(super) log: Box<RequestLog>,
    pub(super) request_id: RequestId,
    /// The tightest rate-limit decision so far, echoed in `RateLimit-*` headers.
    rate: Option<LimitDecision>,
    /// The per-key bucket (scope, rate) already charged with the lockout and per-IP check.
    pub(super) key_charged: Option<(&'a str, Rate)>,
    pub(super) worker: usize,
}

impl<'a> Ctx<'a> {
    pub(super) fn begin<B>(conn: &'a Arc<ConnInfo>, rt: &'a Runtime, req: &Request<B>) -> Self {
        let shared = &*conn.shared;
        let client_ip = rt.client_ip.resolve(conn.peer, req.headers().get_all("x-forwarded-for"));
        let request_id = request_id(shared, rt, conn.peer, req);
        let log = Box::new(RequestLog::begin(conn, req, request_id.clone(), client_ip));
        Ctx { conn, shared, rt, log, request_id, rate: None, key_charged: None, worker: conn.worker }
    }

    pub(super) fn client_ip(&self) -> IpAddr {
        self.log.client_ip
    }

    pub(super) fn note_rate(&mut self, decision: LimitDecision) {
        self.rate = Some(self.rate.map_or(decision, |d| d.tighter(decision)));
    }

    /// The call Frappe will run and the route judging it, for the access log.
    pub(super) fn note_call(&mut self, route: &RouteEntry, call: &Call) {
        self.log.route = Some(route.path.clone());
        // Called again once the body is judged: copy only what changed.
        if self.log.doctype.as_deref() != call.doctype() {
            self.log.doctype = call.doctype().map(str::to_string);
        }
        let rpc = call.rpc();
        if self.log.rpc.as_deref() != rpc.as_deref() {
            self.log.rpc = rpc.map(Cow::into_owned);
        }
    }

    /// The one exit: the response (a refusal becomes Frappe's error JSON), with the request id
    /// and `RateLimit-*` headers; the access-log entry goes with the body, which writes it
    /// once the response is complete.
    pub(super) fn finish(
        self,
        outcome: Result<Response<ResponseBody>, GatewayError>,
    ) -> Response<ResponseBody> {
        let Ctx { mut log, request_id, rate, .. } = self;
        let mut response = match outcome {
            Ok(response) => response,
            Err(err) => {
                log_refusal(&log, &err);
                log.refused(&err);
                err.to_response(log.request_id.as_str())
            }
        };
        if let Some(decision) = rate {
            decision.write_headers(response.headers_mut());
        }
        response.headers_mut().insert(X_REQUEST_ID, request_id.header());
        if log.version() == Version::HTTP_2 && log.conn().seeds_hpack_names() {
            index_varying_values(response.headers_mut());
        }
        log.status = response.status().as_u16();
        response.body_mut().log_when_complete(log);
        response
    }
}

/// Lets HPACK index this response's per-response values (and so their names).
fn index_varying_values(headers: &mut http::HeaderMap) {
    for name in VARYING_HEADERS.iter().chain([&X_REQUEST_ID]) {
        if let Some(value) = headers.get_mut(name) {
            value.set_sensitive(false);
        }
    }
}

/// The request id: a trusted proxy's `X-Request-Id` is kept (so one id spans the chain),
/// anyone else's is replaced.
fn request_id<B>(shared: &Shared, rt: &Runtime, peer: IpAddr, req: &Request<B>) -> RequestId {
    req.headers()
        .get(X_REQUEST_ID)
        .filter(|_| rt.client_ip.is_trusted(peer))
        .and_then(RequestId::inherited)
        .unwrap_or_else(|| shared.obs.request_ids.next())
}

/// One application-log line per refusal, at a level that matches who is at fault.
fn log_refusal(log: &RequestLog, err: &GatewayError) {
    let status = err.kind.status().as_u16();
    // A flood of unknown keys over the verification budget would otherwise write one warning
    // per request; the budget logs a summary instead and the access log has each reason.
    let summarized = log.auth == Some(AuthOutcome::OverBudget);
    if status >= 500 && !summarized {
        tracing::warn!(request_id = %log.request_id, client_ip = %log.client_ip, status, reason = %err.reason, "request failed");
    } else {
        // The access-log line already carries the reason; this is for debugging sessions.
        tracing::debug!(request_id = %log.request_id, client_ip = %log.client_ip, status, reason = %err.reason, "request refused");
    }
}
