//! The client's request body, read whole before the upstream is contacted, as nginx buffers
//! request bodies (`proxy_request_buffering`), so a slow client never holds one of Frappe's few
//! sync workers: in memory up to `inspect_body_bytes`, beyond that into an unnamed temporary
//! file (with the size cap, the idle timeout and, for a multipart form, the scan's verdict
//! before anything goes upstream). With `server.request_buffering = false` a large body is
//! streamed through instead, the scan aborting it before Frappe could act on a judged field.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncSeekExt, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::error::{ErrorKind, GatewayError};
use crate::frappe_request::{FormError, MultipartScan};

/// Limits on reading a body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimits {
    /// Bodies up to this are read whole before anything goes upstream.
    pub inspect: u64,
    /// No body may be larger.
    pub max: u64,
    /// Buffered: the whole body; spooled or streamed: the longest pause between two chunks.
    pub read_timeout: Duration,
    /// Bodies larger than `inspect` are spooled to a temporary file before anything goes
    /// upstream (`server.request_buffering`), else streamed.
    pub buffer_all: bool,
    /// Bytes all spooled bodies may hold at once (`server.max_spool_bytes`).
    pub max_spool: u64,
    /// Bytes all bodies being read into memory may hold at once (`server.max_buffered_bytes`).
    pub max_buffered: u64,
    /// The same for one connection (`server.max_buffered_bytes_per_connection`).
    pub max_buffered_per_connection: u64,
}

/// Bytes request bodies hold now, in memory or on disk (one gauge each, bounded by
/// `server.max_buffered_bytes` / `max_spool_bytes`): many clients sending bodies at once, on
/// many connections or HTTP/2 streams, get 503 rather than exhaust the gateway.
#[derive(Debug, Default)]
pub(crate) struct ByteGauge(AtomicU64);

impl ByteGauge {
    /// Bytes held now (`gateway_request_body_bytes`).
    pub(crate) fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A body's share of a [`ByteGauge`], given back when the body is done with (dropped).
pub(crate) struct ByteShare {
    gauge: Arc<ByteGauge>,
    bytes: u64,
}

impl ByteShare {
    fn new(gauge: &Arc<ByteGauge>) -> Self {
        ByteShare { gauge: gauge.clone(), bytes: 0 }
    }

    /// Takes `more` bytes more, unless that would pass `cap`.
    fn grow(&mut self, more: u64, cap: u64) -> bool {
        let before = self.gauge.0.fetch_add(more, Ordering::Relaxed);
        if before.saturating_add(more) > cap {
            self.gauge.0.fetch_sub(more, Ordering::Relaxed);
            return false;
        }
        self.bytes += more;
        true
    }
}

impl Drop for ByteShare {
    fn drop(&mut self) {
        self.gauge.0.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A body's bytes in memory, counted on its connection and on the whole gateway (many HTTP/2
/// streams of one connection, or many connections, sending bodies that never end).
pub(crate) struct MemoryShare {
    conn: ByteShare,
    total: ByteShare,
}

impl MemoryShare {
    fn new(conn: &Arc<ByteGauge>, total: &Arc<ByteGauge>) -> Self {
        MemoryShare { conn: ByteShare::new(conn), total: ByteShare::new(total) }
    }

    fn grow(&mut self, more: u64, limits: &BodyLimits) -> Result<(), GatewayError> {
        if !self.conn.grow(more, limits.max_buffered_per_connection) {
            return Err(too_busy(format!(
                "bodies read into memory on this connection would pass \
                 server.max_buffered_bytes_per_connection ({})",
                limits.max_buffered_per_connection
            )));
        }
        if !self.total.grow(more, limits.max_buffered) {
            return Err(too_busy(format!(
                "bodies read into memory would pass server.max_buffered_bytes ({})",
                limits.max_buffered
            )));
        }
        Ok(())
    }
}

/// A body after the buffering attempt.
pub(crate) enum ReadBody {
    /// The whole body (empty for none), and its share of the memory gauges.
    Complete(Bytes, Option<MemoryShare>),
    /// Larger than `inspect`: what was read so far (and its share), and the rest still to come.
    Partial { prefix: VecDeque<Bytes>, share: Option<MemoryShare>, rest: Incoming },
}

/// Reads up to `limits.inspect` bytes within `limits.read_timeout`. `declared` is the
/// Content-Length: a body declared larger than `inspect` is not waited for at all.
/// `conn` and `total` count the bytes held in memory (bounded by `limits.max_buffered*`); a
/// request without a body touches neither.
pub(crate) async fn read(
    body: Incoming,
    declared: Option<u64>,
    limits: &BodyLimits,
    (conn, total): (&Arc<ByteGauge>, &Arc<ByteGauge>),
) -> Result<ReadBody, GatewayError> {
    if body.is_end_stream() {
        return Ok(ReadBody::Complete(Bytes::new(), None));
    }
    if declared.is_some_and(|len| len > limits.inspect) {
        return Ok(ReadBody::Partial { prefix: VecDeque::new(), share: None, rest: body });
    }
    let reading = read_prefix(body, limits, MemoryShare::new(conn, total));
    match tokio::time::timeout(limits.read_timeout, reading).await {
        Ok(result) => result,
        Err(_) => Err(body_timeout(limits.read_timeout)),
    }
}

async fn read_prefix(
    mut body: Incoming,
    limits: &BodyLimits,
    mut share: MemoryShare,
) -> Result<ReadBody, GatewayError> {
    let mut prefix = VecDeque::new();
    let mut seen = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(client_failed)?;
        let Ok(data) = frame.into_data() else { continue };
        share.grow(data.len() as u64, limits)?;
        seen += data.len() as u64;
        prefix.push_back(data);
        if seen > limits.inspect {
            return Ok(ReadBody::Partial { prefix, share: Some(share), rest: body });
        }
    }
    Ok(ReadBody::Complete(concat(prefix, seen), Some(share)))
}

/// A body larger than `inspect`, read whole into an unnamed temporary file (gone with its last
/// handle: nothing is left behind, whatever happens to the process).
pub(crate) struct Spooled {
    file: tokio::fs::File,
    len: u64,
    share: ByteShare,
}

/// Reads the rest of a body into a temporary file, `prefix` first: cut off past `limits.max`
/// (413) or after `limits.read_timeout` without data (408); a multipart form is judged on the
/// way by `scan`, and refused (403) before the upstream hears of it. Trailers end the body
/// (they are not forwarded).
pub(crate) async fn spool(
    prefix: VecDeque<Bytes>,
    mut rest: Incoming,
    limits: &BodyLimits,
    mut scan: Option<MultipartScan>,
    gauge: &Arc<ByteGauge>,
) -> Result<Spooled, GatewayError> {
    let file = tokio::task::spawn_blocking(tempfile::tempfile)
        .await
        .map_err(|e| spool_failed(e.to_string()))?
        .map_err(|e| spool_failed(e.to_string()))?;
    let mut file = tokio::fs::File::from_std(file);
    let mut len = 0u64;
    let mut share = ByteShare::new(gauge);
    let mut chunks = prefix;
    loop {
        let chunk = match chunks.pop_front() {
            Some(chunk) => chunk,
            None => match tokio::time::timeout(limits.read_timeout, rest.frame()).await {
                Err(_) => return Err(body_timeout(limits.read_timeout)),
                Ok(None) => break,
                Ok(Some(frame)) => match frame.map_err(client_failed)?.into_data() {
                    Ok(data) => data,
                    Err(_trailers) => break,
                },
            },
        };
        len += chunk.len() as u64;
        if len > limits.max {
            return Err(BodyFailure::TooLarge.to_error());
        }
        if let Some(scan) = scan.as_mut() {
            scan.push(chunk.clone());
            refuse_on_verdict(scan)?;
        }
        if !share.grow(chunk.len() as u64, limits.max_spool) {
            return Err(too_busy(format!(
                "spooled bodies would pass server.max_spool_bytes ({})",
                limits.max_spool
            )));
        }
        file.write_all(&chunk).await.map_err(|e| spool_failed(e.to_string()))?;
    }
    if let Some(Err(e)) = scan.as_mut().map(MultipartScan::finish) {
        return Err(BodyFailure::Refused(e).to_error());
    }
    file.flush().await.map_err(|e| spool_failed(e.to_string()))?;
    file.rewind().await.map_err(|e| spool_failed(e.to_string()))?;
    Ok(Spooled { file, len, share })
}

impl Spooled {
    pub(crate) fn len(&self) -> u64 {
        self.len
    }
}

fn refuse_on_verdict(scan: &MultipartScan) -> Result<(), GatewayError> {
    match scan.verdict() {
        Some(Err(e)) => Err(BodyFailure::Refused(e).to_error()),
        _ => Ok(()),
    }
}

/// The temporary file could not be written (disk full, no temporary directory): the gateway's
/// own trouble, so "try again later", never the client's fault.
fn spool_failed(why: String) -> GatewayError {
    too_busy(format!("spooling the request body to a temporary file failed: {why}"))
}

/// 503: the gateway cannot hold this body now (its bounds are in use by other bodies, or the
/// disk failed).
fn too_busy(reason: String) -> GatewayError {
    GatewayError::new(ErrorKind::Unavailable, "the request body cannot be buffered right now; retry shortly")
        .with_reason(reason)
}

fn concat(mut chunks: VecDeque<Bytes>, len: u64) -> Bytes {
    if chunks.len() == 1 {
        return chunks.pop_front().expect("one chunk");
    }
    let mut out = BytesMut::with_capacity(len as usize);
    for chunk in chunks {
        out.extend_from_slice(&chunk);
    }
    out.freeze()
}

fn client_failed(e: hyper::Error) -> GatewayError {
    GatewayError::new(ErrorKind::BadRequest, "the request body could not be read")
        .with_reason(format!("client body: {e}"))
}

fn body_timeout(after: Duration) -> GatewayError {
    GatewayError::new(ErrorKind::RequestTimeout, "the request body did not arrive in time").with_reason(
        format!(
            "request body incomplete after {} (server.body_read_timeout)",
            humantime::format_duration(after)
        ),
    )
}

/// Every 413 the gateway sends comes from this module: declared too large, grown too large
/// while streaming, or a form too large to judge.
fn body_too_large() -> GatewayError {
    GatewayError::new(ErrorKind::PayloadTooLarge, "request body is larger than the gateway allows")
}

/// The declared Content-Length; 413 before reading anything when it is already too big.
pub(crate) fn declared_length(
    headers: &http::HeaderMap,
    limits: &BodyLimits,
) -> Result<Option<u64>, GatewayError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > limits.max => {
            Err(body_too_large().with_reason(format!("Content-Length {len} > max_body_bytes {}", limits.max)))
        }
        _ => Ok(declared),
    }
}

/// 413 for a form or JSON body larger than `inspect`: Frappe parses it whole, so the gateway
/// must judge it whole, and cannot.
pub(crate) fn too_large_to_judge(limits: &BodyLimits) -> GatewayError {
    body_too_large().with_reason(format!(
        "a form or JSON body over server.inspect_body_bytes ({}) cannot be judged",
        limits.inspect
    ))
}

/// Why a streamed body was cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyFailure {
    TooLarge,
    Timeout(Duration),
    /// The client's connection failed mid-body.
    Client,
    Refused(FormError),
    /// A spooled body could not be read back from its temporary file.
    Spool,
}

impl BodyFailure {
    /// The client's answer when the upstream request failed because of its own body.
    pub(crate) fn to_error(&self) -> GatewayError {
        match self {
            BodyFailure::TooLarge => {
                body_too_large().with_reason("request body outgrew server.max_body_bytes while streaming")
            }
            BodyFailure::Timeout(after) => body_timeout(*after),
            BodyFailure::Client => {
                GatewayError::new(ErrorKind::BadRequest, "the request body could not be read")
                    .with_reason("client body failed while streaming")
            }
            BodyFailure::Refused(e) => GatewayError::new(ErrorKind::Forbidden, e.to_string())
                .with_reason(format!("multipart body refused by the scan: {e}")),
            BodyFailure::Spool => spool_failed("reading the temporary file back failed".into()),
        }
    }
}

/// What the body reports while it goes upstream.
#[derive(Default)]
pub(crate) struct BodyStats {
    pub bytes: AtomicU64,
    sent: AtomicBool,
    sent_signal: Notify,
    failure: OnceLock<BodyFailure>,
}

impl BodyStats {
    pub(crate) fn failure(&self) -> Option<&BodyFailure> {
        self.failure.get()
    }

    /// Resolves once the whole body has been handed upstream (upload time does not count
    /// against `upstream.timeout`).
    pub(crate) async fn sent(&self) {
        let notified = self.sent_signal.notified();
        if self.sent.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }

    fn mark_sent(&self) {
        self.sent.store(true, Ordering::Release);
        self.sent_signal.notify_waiters();
    }

    fn fail(&self, failure: BodyFailure) {
        let _ = self.failure.set(failure);
    }
}

/// The request body sent upstream.
pub(crate) struct UpstreamBody {
    inner: Inner,
    stats: Arc<BodyStats>,
    /// Its bytes in memory, counted until the body is dropped (`None` for no body).
    _held: Option<MemoryShare>,
}

enum Inner {
    Full(Option<Bytes>),
    Spooled(Box<SpooledBody>),
    Stream(Box<Streamed>),
}

/// A spooled body on its way upstream, read back in chunks of [`SPOOL_CHUNK`].
struct SpooledBody {
    file: tokio::fs::File,
    remaining: u64,
    _share: ByteShare,
}

const SPOOL_CHUNK: usize = 64 * 1024;

impl SpooledBody {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyFailure>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let mut chunk = vec![0; SPOOL_CHUNK.min(self.remaining as usize)];
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut self.file).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(_)) => Poll::Ready(Some(Err(BodyFailure::Spool))),
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Some(Err(BodyFailure::Spool))),
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len();
                chunk.truncate(read);
                self.remaining -= read as u64;
                Poll::Ready(Some(Ok(Bytes::from(chunk))))
            }
        }
    }
}

struct Streamed {
    prefix: VecDeque<Bytes>,
    rest: Option<Incoming>,
    limit: u64,
    seen: u64,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    scan: Option<MultipartScan>,
    /// With a scan, one data frame is held back until the next arrives (or the scan ends), so
    /// the upstream never has a complete body that the scan has not cleared (the scan judges
    /// werkzeug's 64 KiB reads, the last one only once the body has ended).
    held: Option<Frame<Bytes>>,
}

impl UpstreamBody {
    /// A body read whole into memory; `held` is its share of the memory gauge.
    pub(crate) fn full(bytes: Bytes, held: Option<MemoryShare>, stats: Arc<BodyStats>) -> Self {
        stats.bytes.store(bytes.len() as u64, Ordering::Relaxed);
        stats.mark_sent();
        UpstreamBody { inner: Inner::Full(Some(bytes).filter(|b| !b.is_empty())), stats, _held: held }
    }

    pub(crate) fn empty(stats: Arc<BodyStats>) -> Self {
        Self::full(Bytes::new(), None, stats)
    }

    /// A body read whole into a temporary file ([`spool`]); its length is known.
    pub(crate) fn spooled(spooled: Spooled, stats: Arc<BodyStats>) -> Self {
        stats.bytes.store(spooled.len, Ordering::Relaxed);
        let body = SpooledBody { file: spooled.file, remaining: spooled.len, _share: spooled.share };
        UpstreamBody { inner: Inner::Spooled(Box::new(body)), stats, _held: None }
    }

    /// Streams `prefix` then `rest`, cut off past `limits.max` or after `limits.read_timeout`
    /// without data; `scan` judges a multipart form on the way.
    pub(crate) fn streamed(
        prefix: VecDeque<Bytes>,
        held: Option<MemoryShare>,
        rest: Incoming,
        limits: &BodyLimits,
        scan: Option<MultipartScan>,
        stats: Arc<BodyStats>,
    ) -> Self {
        let streamed = Streamed {
            prefix,
            rest: Some(rest),
            limit: limits.max,
            seen: 0,
            idle: limits.read_timeout,
            deadline: Box::pin(tokio::time::sleep(limits.read_timeout)),
            scan,
            held: None,
        };
        UpstreamBody { inner: Inner::Stream(Box::new(streamed)), stats, _held: held }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("request body refused while streaming")]
pub(crate) struct BodyRefused;

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyRefused;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyRefused>>> {
        let this = &mut *self;
        match &mut this.inner {
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Spooled(f) => match f.poll_chunk(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    if f.remaining == 0 {
                        this.stats.mark_sent();
                    }
                    Poll::Ready(Some(Ok(Frame::data(chunk))))
                }
                Poll::Ready(Some(Err(failure))) => {
                    this.stats.fail(failure);
                    Poll::Ready(Some(Err(BodyRefused)))
                }
                Poll::Ready(None) => {
                    this.stats.mark_sent();
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            },
            Inner::Stream(s) => match s.poll_next(cx, &this.stats) {
                Poll::Ready(Some(Err(failure))) => {
                    this.stats.fail(failure);
                    s.rest = None;
                    Poll::Ready(Some(Err(BodyRefused)))
                }
                Poll::Ready(None) => {
                    this.stats.mark_sent();
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // hyper stops polling a body of known length after its last byte: the end
                    // (which starts `upstream.timeout`) is noticed here, not at a `None`.
                    if s.drained() {
                        this.stats.mark_sent();
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(bytes) => bytes.is_none(),
            Inner::Spooled(f) => f.remaining == 0,
            Inner::Stream(s) => s.drained(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Spooled(f) => SizeHint::with_exact(f.remaining),
            Inner::Stream(_) => SizeHint::default(),
        }
    }
}

impl Streamed {
    /// Nothing left to hand over: the client's body has ended (its last byte has arrived)
    /// and nothing is queued or held.
    fn drained(&self) -> bool {
        self.prefix.is_empty() && self.held.is_none() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        stats: &BodyStats,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyFailure>>> {
        loop {
            let frame = match self.next_client_frame(cx) {
                Poll::Ready(Ok(Some(frame))) => frame,
                Poll::Ready(Ok(None)) => return self.poll_end(),
                Poll::Ready(Err(failure)) => return Poll::Ready(Some(Err(failure))),
                Poll::Pending => return Poll::Pending,
            };
            let Some(data) = frame.data_ref() else {
                // Trailers end the body (HTTP/2 sends them with END_STREAM). They are not
                // forwarded, and must not release the held frame before the scan's verdict.
                self.rest = None;
                return self.poll_end();
            };
            self.seen += data.len() as u64;
            stats.bytes.store(self.seen, Ordering::Relaxed);
            if self.seen > self.limit {
                return Poll::Ready(Some(Err(BodyFailure::TooLarge)));
            }
            let Some(scan) = self.scan.as_mut() else { return Poll::Ready(Some(Ok(frame))) };
            // An empty frame (HTTP/2's END_STREAM alone) must not release the held one: that
            // one holds the body's last bytes, which wait for the scan's verdict.
            if data.is_empty() {
                continue;
            }
            scan.push(data.clone());
            if let Poll::Ready(Err(e)) = scan.poll(cx) {
                return Poll::Ready(Some(Err(BodyFailure::Refused(e))));
            }
            if let Some(previous) = self.held.replace(frame) {
                return Poll::Ready(Some(Ok(previous)));
            }
        }
    }

    /// The next frame from the prefix or the client; `Ready(None)` at the body's end,
    /// `Pending` while the client is quiet (up to the idle timeout).
    fn next_client_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Frame<Bytes>>, BodyFailure>> {
        if let Some(chunk) = self.prefix.pop_front() {
            return Poll::Ready(Ok(Some(Frame::data(chunk))));
        }
        let Some(rest) = self.rest.as_mut() else { return Poll::Ready(Ok(None)) };
        match Pin::new(rest).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.deadline.as_mut().reset(Instant::now() + self.idle);
                Poll::Ready(Ok(Some(frame)))
            }
            Poll::Ready(Some(Err(_))) => Poll::Ready(Err(BodyFailure::Client)),
            Poll::Ready(None) => {
                self.rest = None;
                Poll::Ready(Ok(None))
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(BodyFailure::Timeout(self.idle))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    /// The client's body has ended: with a scan, release the held frame only once the scan
    /// has judged the whole form.
    fn poll_end(&mut self) -> Poll<Option<Result<Frame<Bytes>, BodyFailure>>> {
        if let Some(Err(e)) = self.scan.as_mut().map(MultipartScan::finish) {
            return Poll::Ready(Some(Err(BodyFailure::Refused(e))));
        }
        Poll::Ready(self.held.take().map(Ok))
    }
}
