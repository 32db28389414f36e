//! Per-request facts gathered along the pipeline, written as one access-log line when the
//! entry is dropped — whatever the outcome, exactly once (a request abandoned by its client
//! before any answer is logged with status 499, as nginx does).

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{Method, Uri, Version};

use crate::access_log::{loggable_path, timestamp, AccessLog, AccessRecord};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::request_body::BodyStats;

/// Status logged for a request whose client went away before it was answered.
const CLIENT_CLOSED: u16 = 499;

pub struct RequestLog {
    sink: AccessLog,
    metrics: Arc<Metrics>,
    started: Instant,
    wall: SystemTime,
    pub request_id: Arc<str>,
    pub client_ip: IpAddr,
    /// `None` for a request hyper could not parse.
    method: Option<Method>,
    uri: Option<Uri>,
    version: Version,
    pub tls: Option<&'static str>,
    pub status: u16,
    pub upstream_status: Option<u16>,
    /// Updated by the request body as it streams upstream.
    pub body_stats: Option<Arc<BodyStats>>,
    bytes_out: u64,
    pub route: Option<Arc<str>>,
    pub user: Option<Arc<str>>,
    pub api_key: Option<Arc<str>>,
    pub auth: Option<&'static str>,
    pub doctype: Option<String>,
    pub rpc: Option<String>,
    pub decision: &'static str,
    pub reason: Option<Cow<'static, str>>,
}

impl RequestLog {
    pub fn begin<B>(
        sink: &AccessLog,
        metrics: &Arc<Metrics>,
        req: &http::Request<B>,
        request_id: Arc<str>,
        client_ip: IpAddr,
    ) -> Self {
        RequestLog {
            sink: sink.clone(),
            metrics: metrics.clone(),
            started: Instant::now(),
            wall: SystemTime::now(),
            request_id,
            client_ip,
            method: Some(req.method().clone()),
            uri: Some(req.uri().clone()),
            version: req.version(),
            tls: None,
            status: CLIENT_CLOSED,
            upstream_status: None,
            body_stats: None,
            bytes_out: 0,
            route: None,
            user: None,
            api_key: None,
            auth: None,
            doctype: None,
            rpc: None,
            decision: "allow",
            reason: None,
        }
    }

    /// The entry for a request whose head HTTP/1.1 parsing rejected (hyper answered it with a
    /// bare 400 / 431 and closed the connection): there is no method or path to log.
    pub fn unparsed(
        sink: &AccessLog,
        metrics: &Arc<Metrics>,
        request_id: Arc<str>,
        client_ip: IpAddr,
        status: u16,
        reason: &'static str,
    ) -> Self {
        let req = http::Request::new(());
        let mut log = RequestLog::begin(sink, metrics, &req, request_id, client_ip);
        (log.method, log.uri, log.status) = (None, None, status);
        (log.decision, log.reason) = ("deny", Some(Cow::Borrowed(reason)));
        log
    }

    /// Records a refusal the gateway answered itself.
    pub fn refused(&mut self, err: &GatewayError) {
        self.decision = err.kind.decision();
        self.reason = Some(err.reason.clone());
    }

    pub fn set_bytes_out(&mut self, n: u64) {
        self.bytes_out = n;
    }

    fn record(&mut self) -> AccessRecord {
        AccessRecord {
            time: timestamp(self.wall),
            request_id: self.request_id.clone(),
            client_ip: self.client_ip,
            method: self.method.as_ref().map_or_else(|| "-".to_string(), Method::to_string),
            path: self.uri.as_ref().map_or_else(|| "-".to_string(), loggable_path),
            protocol: protocol_name(self.version),
            tls: self.tls,
            status: self.status,
            upstream_status: self.upstream_status,
            latency_ms: (self.started.elapsed().as_micros() as f64) / 1000.0,
            bytes_in: self.body_stats.as_ref().map_or(0, |s| s.bytes.load(Ordering::Relaxed)),
            bytes_out: self.bytes_out,
            route: self.route.take(),
            user: self.user.take(),
            api_key: self.api_key.take(),
            auth: self.auth,
            doctype: self.doctype.take(),
            rpc: self.rpc.take(),
            decision: if self.status == CLIENT_CLOSED { "client_closed" } else { self.decision },
            reason: self.reason.take(),
        }
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let record = self.record();
        self.metrics.record_request(record.decision, record.status, self.started.elapsed());
        if let Some(outcome) = record.auth {
            self.metrics.record_auth(outcome);
        }
        self.sink.log(&record);
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
