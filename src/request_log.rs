//! Per-request facts gathered along the pipeline, written as one access-log line (and counted
//! in the metrics) by an explicit [`RequestLog::finish`] when the response is complete. The
//! only other writer is the drop guard for a request that was cancelled: its client went away
//! before the answer was finished (status 499 when no answer had begun, as nginx logs it).

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{Method, Uri, Version};

use crate::access_log::{AccessRecord, KeyLabel, LoggablePath};
use crate::error::{ErrorKind, GatewayError};
use crate::head_error_reply;
use crate::outcome::{AuthOutcome, Decision, Limiter, MethodClass};
use crate::pipeline::ConnInfo;
use crate::request_body::BodyStats;
use crate::state::RequestId;

/// Status logged for a request whose client went away before it was answered.
const CLIENT_CLOSED: u16 = 499;

pub(crate) struct RequestLog {
    /// The connection's handle to the access log and metrics (see [`ConnInfo`]).
    conn: Arc<ConnInfo>,
    started: Instant,
    wall: SystemTime,
    /// Set by `finish`; the drop guard writes only when it is still false.
    written: bool,
    pub(crate) request_id: RequestId,
    pub(crate) client_ip: IpAddr,
    /// The `Host` header (HTTP/1.1); HTTP/2's `:authority` is read from `uri` when logged.
    host: Option<http::HeaderValue>,
    user_agent: Option<http::HeaderValue>,
    /// `None` for a request hyper could not parse.
    method: Option<Method>,
    uri: Option<Uri>,
    version: Version,
    pub(crate) status: u16,
    pub(crate) upstream_status: Option<u16>,
    pub(crate) upstream: Option<Arc<str>>,
    pub(crate) upstream_time: Option<std::time::Duration>,
    /// Updated by the request body as it streams upstream.
    pub(crate) body_stats: Option<Arc<BodyStats>>,
    bytes_out: u64,
    pub(crate) route: Option<Arc<str>>,
    pub(crate) user: Option<Arc<str>>,
    /// The whole key; the line shows it as `log.full_api_key` says ([`KeyLabel`]).
    pub(crate) api_key: Option<Arc<str>>,
    pub(crate) full_api_key: bool,
    pub(crate) auth: Option<AuthOutcome>,
    pub(crate) doctype: Option<String>,
    pub(crate) rpc: Option<String>,
    decision: Decision,
    limiter: Option<Limiter>,
    reason: Option<Cow<'static, str>>,
}

impl RequestLog {
    pub(crate) fn version(&self) -> Version {
        self.version
    }

    pub(crate) fn conn(&self) -> &ConnInfo {
        &self.conn
    }

    pub(crate) fn begin<B>(
        conn: &Arc<ConnInfo>,
        req: &http::Request<B>,
        request_id: RequestId,
        client_ip: IpAddr,
    ) -> Self {
        if let Some(lifeline) = conn.lifeline() {
            lifeline.activity().request_started();
        }
        RequestLog {
            conn: conn.clone(),
            started: Instant::now(),
            wall: SystemTime::now(),
            written: false,
            request_id,
            client_ip,
            host: req.headers().get(http::header::HOST).cloned(),
            user_agent: req.headers().get(http::header::USER_AGENT).cloned(),
            method: Some(req.method().clone()),
            uri: Some(req.uri().clone()),
            version: req.version(),
            status: CLIENT_CLOSED,
            upstream_status: None,
            upstream: None,
            upstream_time: None,
            body_stats: None,
            bytes_out: 0,
            route: None,
            user: None,
            api_key: None,
            full_api_key: false,
            auth: None,
            doctype: None,
            rpc: None,
            decision: Decision::Allow,
            limiter: None,
            reason: None,
        }
    }

    /// Logs a request whose head HTTP/1.1 parsing rejected (answered with `kind`'s status,
    /// after which hyper closes the connection): there is no method or path to log.
    pub(crate) fn unparsed(conn: &Arc<ConnInfo>, kind: ErrorKind, request_id: RequestId, bytes_out: u64) {
        let req = http::Request::new(());
        let mut log = Box::new(RequestLog::begin(conn, &req, request_id, conn.peer));
        (log.method, log.uri, log.status) = (None, None, kind.status().as_u16());
        (log.decision, log.reason) = (kind.decision(), Some(Cow::Borrowed(head_error_reply::message(kind))));
        log.finish(bytes_out);
    }

    /// Records a refusal the gateway answered itself.
    pub(crate) fn refused(&mut self, err: &GatewayError) {
        self.decision = err.decision();
        self.limiter = err.limiter;
        self.reason = Some(err.reason.clone());
    }

    /// Writes the line and counts the request: the response is complete after `bytes_out`
    /// body bytes.
    pub(crate) fn finish(mut self: Box<Self>, bytes_out: u64) {
        self.bytes_out = bytes_out;
        self.write();
    }

    /// Bytes of the response body sent so far (the drop guard logs them when cancelled).
    pub(crate) fn set_bytes_out(&mut self, n: u64) {
        self.bytes_out = n;
    }

    fn write(&mut self) {
        self.written = true;
        if let Some(lifeline) = self.conn.lifeline() {
            lifeline.activity().request_finished();
        }
        if self.status == CLIENT_CLOSED {
            self.decision = Decision::ClientClosed;
        }
        let latency = self.started.elapsed();
        let metrics = &self.conn.shared.obs.metrics;
        metrics.record_request(self.decision, self.status, latency);
        if let Some(outcome) = self.auth {
            metrics.record_auth(outcome);
        }
        if let Some(limiter) = self.limiter {
            metrics.record_limited(limiter);
        }
        metrics.record_route(self.route.as_ref(), MethodClass::of(self.method.as_ref()));
        if let (Some(user), Some(key)) = (&self.user, &self.api_key) {
            metrics.top_keys.record(user, key);
        }
        let record = AccessRecord {
            time: self.wall,
            request_id: self.request_id.as_str(),
            client_ip: self.client_ip,
            peer: self.conn.peer,
            host: self
                .host
                .as_ref()
                .map(http::HeaderValue::as_bytes)
                .or_else(|| self.uri.as_ref().and_then(|u| u.authority()).map(|a| a.as_str().as_bytes())),
            user_agent: self.user_agent.as_ref().map(http::HeaderValue::as_bytes),
            method: self.method.as_ref().map_or("-", Method::as_str),
            path: LoggablePath(self.uri.as_ref()),
            protocol: protocol_name(self.version),
            tls: self.conn.tls,
            status: self.status,
            upstream_status: self.upstream_status,
            upstream: self.upstream.take(),
            upstream_time: self.upstream_time,
            latency,
            bytes_in: self.body_stats.as_ref().map_or(0, |s| s.bytes.load(Ordering::Relaxed)),
            bytes_out: self.bytes_out,
            route: self.route.take(),
            user: self.user.take(),
            api_key: self.api_key.as_deref().map(|key| KeyLabel { key, full: self.full_api_key }),
            auth: self.auth,
            doctype: self.doctype.take(),
            rpc: self.rpc.take(),
            decision: self.decision,
            reason: self.reason.take(),
        };
        self.conn.shared.obs.access_log.log(&record);
    }
}

/// The guard for cancelled requests: a request that ended normally was written by `finish`.
impl Drop for RequestLog {
    fn drop(&mut self) {
        if !self.written {
            self.write();
        }
    }
}

fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}
