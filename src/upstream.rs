//! The upstream client: one per proxy worker, over hyper's connection API. Each worker keeps
//! its own idle keep-alive connections per backend, so a request, its upstream connection and
//! that connection's task stay on one thread, and a request takes a connection with one
//! uncontended lock — no shared pool, no cross-thread hand-off (see benches/RESULTS.md for
//! what it gave against hyper-util's pooled client).
//!
//! A connection goes back to its worker's idle list when the response body has been read to
//! its end; one dropped earlier (the client went away), an upgraded one (WebSocket) and one the
//! backend closes are not reused. A request that could not even be written on a reused
//! connection (the backend closed it while it sat idle) is sent once more on a new one.
//!
//! A WebSocket handshake never takes an idle connection: those are opened without upgrade
//! support, and hyper's client would fail the backend's `101`. It gets a new connection, opened
//! with upgrades, which never goes back to the idle list (whatever the answer).
//!
//! `upstream.max_connections` caps the connections open to each backend (in use or idle;
//! WebSocket tunnels not counted once upgraded), split evenly between the workers: each
//! connection holds one of its worker's slots for that backend. A request that finds no idle
//! connection and no free slot waits, up to `upstream.queue_timeout`, for a connection to come
//! back or a slot to free up, then gets 503 — a burst no longer opens a connection per request.
//! Reusing an idle connection touches no slot: the cap costs nothing per request.
//!
//! Why a tunnel gives its slot back at the `101`: a tunnel lives as long as its browser tab,
//! and a backend that serves both requests and WebSockets (frappe_docker's `frontend` nginx)
//! would see its slots, and with them every request of the worker, held by open sockets — a
//! few hundred tabs would 503 the API. The cap is there to spread bursts of requests over time;
//! tunnels are bounded instead by `server.max_connections` (each holds its client connection's
//! slot), `server.idle_timeout` and shutdown (see `proxy::tunnel`).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tower_service::Service;

use crate::error::{ErrorKind, GatewayError};
use crate::metrics::Metrics;
use crate::outcome::UpstreamError;
use crate::request_body::{BodyStats, UpstreamBody};

/// An idle connection is dropped after this long unused (backends close theirs too).
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Idle connections kept per backend; more are closed when they finish.
const MAX_IDLE: usize = 256;

/// How many connections a worker may open to one backend, and how long a request waits for
/// one when all are in use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionCap {
    /// Slots per backend on this worker; `None`: no cap.
    pub(crate) per_worker: Option<usize>,
    pub(crate) queue_timeout: Duration,
}

impl ConnectionCap {
    /// `max_connections` per backend and instance (0: no cap), split evenly between
    /// `workers`, rounded up so that every worker has at least one.
    pub(crate) fn split(max_connections: usize, workers: usize, queue_timeout: Duration) -> Self {
        let per_worker = (max_connections > 0).then(|| max_connections.div_ceil(workers.max(1)));
        ConnectionCap { per_worker, queue_timeout }
    }

    fn slots(&self) -> usize {
        self.per_worker.unwrap_or(Semaphore::MAX_PERMITS).min(Semaphore::MAX_PERMITS)
    }
}

/// Where and how requests go upstream (see the module docs).
pub(crate) struct Upstream {
    connector: HttpsConnector<HttpConnector>,
    pool: Arc<Pool>,
    timeout: Duration,
    queue_timeout: Duration,
    /// Where answers and failures are counted (`None`: the readiness probe's own).
    metrics: Option<Arc<Metrics>>,
}

/// Connections by backend (`scheme://authority`); a gateway has a handful of backends.
struct Pool {
    backends: Mutex<Vec<BackendPool>>,
    slots_per_backend: usize,
}

/// One backend's idle connections and connection slots on one worker.
struct BackendPool {
    backend: Backend,
    idle: VecDeque<Idle>,
    /// One permit per connection that may be open; each open connection holds one.
    slots: Arc<Semaphore>,
    /// Requests waiting for a connection (only then does a returned one wake anybody).
    waiting: usize,
    returned: Arc<Notify>,
}

#[derive(Clone, PartialEq, Eq)]
struct Backend {
    scheme: Scheme,
    authority: Authority,
}

/// An open connection and the slot it holds (freed when the connection is dropped).
/// For an upgrade's connection, dropped at the `101`: see the module docs.
struct Connection {
    sender: SendRequest<UpstreamBody>,
    slot: OwnedSemaphorePermit,
}

struct Idle {
    connection: Connection,
    since: Instant,
}

/// How a request gets its connection.
enum Checkout {
    Idle(Connection),
    /// No idle one: open a new connection in this slot.
    New(OwnedSemaphorePermit),
}

/// Why a request did not get a response head.
enum Failure {
    Connect(Box<dyn std::error::Error + Send + Sync>),
    Http(hyper::Error),
    /// Every slot stayed in use for `upstream.queue_timeout`.
    Busy(Duration),
}

impl Upstream {
    /// `connect_timeout` bounds each new connection; `timeout` the wait for a response head;
    /// `cap` how many connections this worker may open per backend.
    pub(crate) fn new(connect_timeout: Duration, timeout: Duration, cap: ConnectionCap) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let pool = Arc::new(Pool { backends: Mutex::default(), slots_per_backend: cap.slots() });
        Upstream { connector, pool, timeout, queue_timeout: cap.queue_timeout, metrics: None }
    }

    /// Counts this client's answers (time to head) and failures (by kind) in `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Sends `req` (absolute URI: the backend to use) and returns the response head and how
    /// long it took to arrive; the body streams afterwards. Refused / reset → 502; no response head within `upstream.timeout`
    /// of the request body being sent (upload time does not count) → 504; a body cut off on
    /// its way (too large, too slow, a judged field in a streamed form) → that body's own error.
    pub(crate) async fn send(
        &self,
        req: Request<UpstreamBody>,
        stats: &BodyStats,
    ) -> Result<(Response<UpstreamResponse>, Duration), GatewayError> {
        let answer_deadline = async {
            stats.sent().await;
            tokio::time::sleep(self.timeout).await;
        };
        let started = Instant::now();
        let outcome = tokio::select! {
            result = self.exchange(req) => result.map_err(|failure| match stats.failure() {
                // A request body cut off on its way is the client's doing, not the upstream's.
                Some(body) => (None, body.to_error()),
                None => (Some(failure.kind()), failure.to_error()),
            }),
            () = answer_deadline => Err((Some(UpstreamError::Timeout), GatewayError::new(ErrorKind::GatewayTimeout, "upstream did not answer in time")
                .with_reason(format!("no response within {}", humantime::format_duration(self.timeout))))),
        };
        let took = started.elapsed();
        if let Some(metrics) = &self.metrics {
            match &outcome {
                Ok(_) => metrics.record_upstream(took),
                Err((Some(kind), _)) => metrics.record_upstream_error(*kind),
                Err((None, _)) => {}
            }
        }
        outcome.map(|response| (response, took)).map_err(|(_, e)| e)
    }

    async fn exchange(&self, mut req: Request<UpstreamBody>) -> Result<Response<UpstreamResponse>, Failure> {
        let backend = Backend::of(req.uri());
        *req.uri_mut() = origin_form(req.uri());
        let upgrade = crate::proxy::is_upgrade(&req);
        // Never an idle connection for an upgrade (see the module docs).
        let idle = if upgrade { None } else { self.pool.take(&backend).await };
        let checkout = match idle {
            Some(connection) => Checkout::Idle(connection),
            // Boxed, as the connector's future below: rarely needed, and every request's
            // future would otherwise carry their size.
            None => Box::pin(self.pool.wait_for_connection(&backend, self.queue_timeout, upgrade)).await?,
        };
        let (mut connection, reused) = match checkout {
            Checkout::Idle(connection) => (connection, true),
            Checkout::New(slot) => (Box::pin(self.connect(&backend, upgrade, slot)).await?, false),
        };
        let response = match connection.sender.try_send_request(req).await {
            Ok(response) => response,
            // The idle connection was closed before the request went out: a new one in its
            // slot, once.
            Err(mut e) if reused && e.message().is_some() => {
                let req = e.take_message().expect("checked above");
                connection = Box::pin(self.connect(&backend, upgrade, connection.slot)).await?;
                connection.sender.try_send_request(req).await.map_err(|e| Failure::Http(e.into_error()))?
            }
            Err(e) => return Err(Failure::Http(e.into_error())),
        };
        let lease = Lease { pool: self.pool.clone(), backend, connection, reusable: !upgrade };
        // An upgraded connection belongs to its tunnel from now on, and its slot is free (see
        // the module docs).
        let lease = (response.status() != http::StatusCode::SWITCHING_PROTOCOLS).then_some(lease);
        Ok(response.map(|body| UpstreamResponse { body, lease }))
    }

    /// A new connection to `backend` in `slot`, its task spawned on this worker's runtime.
    async fn connect(
        &self,
        backend: &Backend,
        upgrade: bool,
        slot: OwnedSemaphorePermit,
    ) -> Result<Connection, Failure> {
        let uri = Uri::builder()
            .scheme(backend.scheme.clone())
            .authority(backend.authority.clone())
            .path_and_query(PathAndQuery::from_static("/"))
            .build()
            .map_err(|e| Failure::Connect(e.into()))?;
        let io = self.connector.clone().call(uri).await.map_err(Failure::Connect)?;
        let (sender, connection) = http1::Builder::new().handshake(io).await.map_err(Failure::Http)?;
        // Plain `tokio::spawn`, not `crate::spawn`: on a proxy worker the task stays on the
        // worker's thread, whose default subscriber is already the gateway's; re-entering it on
        // every poll (each request and response passes through this task) is measurable work.
        if upgrade {
            tokio::spawn(async move { log_connection_end(connection.with_upgrades().await) });
        } else {
            tokio::spawn(async move { log_connection_end(connection.await) });
        }
        Ok(Connection { sender, slot })
    }
}

fn log_connection_end(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "upstream connection ended with an error");
    }
}

impl Backend {
    fn of(uri: &Uri) -> Self {
        Backend {
            scheme: uri.scheme().cloned().unwrap_or(Scheme::HTTP),
            authority: uri.authority().cloned().unwrap_or_else(|| Authority::from_static("localhost")),
        }
    }
}

/// `/path?query`: what goes on the request line to an origin server.
fn origin_form(uri: &Uri) -> Uri {
    let path = uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(path)
}

impl Pool {
    /// An idle connection to `backend` that is still open and ready, newest first. Stale ones
    /// are dropped on the way, freeing their slots.
    async fn take(&self, backend: &Backend) -> Option<Connection> {
        loop {
            let mut idle = self.pop(backend)?;
            if idle.since.elapsed() > IDLE_TIMEOUT || idle.connection.sender.is_closed() {
                continue;
            }
            // Ready at once unless its task has not yet seen the last response end.
            if idle.connection.sender.ready().await.is_ok() {
                return Some(idle.connection);
            }
        }
    }

    fn pop(&self, backend: &Backend) -> Option<Idle> {
        self.with_backend(backend, |pool| pool.idle.pop_back())
    }

    /// A free slot for a new connection, or a connection that another request of this worker
    /// has finished with, whichever comes first within `patience`. For an `upgrade`, never a
    /// connection: the slot of an idle one (the oldest), which is closed.
    async fn wait_for_connection(
        &self,
        backend: &Backend,
        patience: Duration,
        upgrade: bool,
    ) -> Result<Checkout, Failure> {
        let (slots, returned) =
            self.with_backend(backend, |pool| (pool.slots.clone(), pool.returned.clone()));
        if let Ok(slot) = slots.clone().try_acquire_owned() {
            return Ok(Checkout::New(slot));
        }
        let _waiting = Waiting::register(self, backend);
        let wait = async {
            loop {
                let returned = returned.notified();
                if upgrade {
                    if let Some(oldest) = self.with_backend(backend, |pool| pool.idle.pop_front()) {
                        return Checkout::New(oldest.connection.slot);
                    }
                } else if let Some(connection) = self.take(backend).await {
                    return Checkout::Idle(connection);
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => return Checkout::New(slot.expect("never closed")),
                    () = returned => {}
                }
            }
        };
        tokio::time::timeout(patience, wait).await.map_err(|_| Failure::Busy(patience))
    }

    fn put(&self, backend: Backend, connection: Connection) {
        if connection.sender.is_closed() {
            return;
        }
        let wake = self.with_backend(&backend, |pool| {
            if pool.idle.len() >= MAX_IDLE {
                pool.idle.pop_front();
            }
            pool.idle.push_back(Idle { connection, since: Instant::now() });
            (pool.waiting > 0).then(|| pool.returned.clone())
        });
        if let Some(returned) = wake {
            returned.notify_one();
        }
    }

    /// Runs `f` on `backend`'s entry (made on first use) under the lock.
    fn with_backend<T>(&self, backend: &Backend, f: impl FnOnce(&mut BackendPool) -> T) -> T {
        let mut pools = self.backends.lock().unwrap_or_else(PoisonError::into_inner);
        let i = match pools.iter().position(|pool| pool.backend == *backend) {
            Some(i) => i,
            None => {
                pools.push(BackendPool {
                    backend: backend.clone(),
                    idle: VecDeque::new(),
                    slots: Arc::new(Semaphore::new(self.slots_per_backend)),
                    waiting: 0,
                    returned: Arc::new(Notify::new()),
                });
                pools.len() - 1
            }
        };
        f(&mut pools[i])
    }
}

/// Counts a request as waiting for a connection to `backend` while it lives.
struct Waiting<'a> {
    pool: &'a Pool,
    backend: &'a Backend,
}

impl<'a> Waiting<'a> {
    fn register(pool: &'a Pool, backend: &'a Backend) -> Self {
        pool.with_backend(backend, |entry| entry.waiting += 1);
        Waiting { pool, backend }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.pool.with_backend(self.backend, |entry| entry.waiting -= 1);
    }
}

/// The right to put a connection back once its response has been read to the end.
struct Lease {
    pool: Arc<Pool>,
    backend: Backend,
    connection: Connection,
    /// `false` for an upgrade's connection: it only holds its slot until the body is done.
    reusable: bool,
}

/// The upstream's response body; its connection returns to the pool when the body is done.
pub(crate) struct UpstreamResponse {
    body: Incoming,
    lease: Option<Lease>,
}

impl Drop for UpstreamResponse {
    fn drop(&mut self) {
        // A body dropped before its end leaves the connection mid-message: not reusable.
        if let Some(lease) = self.lease.take().filter(|lease| lease.reusable && self.body.is_end_stream()) {
            lease.pool.put(lease.backend, lease.connection);
        }
    }
}

impl Body for UpstreamResponse {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Failure {
    /// What kind of failure it is, for `gateway_upstream_errors_total{kind}`.
    fn kind(&self) -> UpstreamError {
        use std::io::ErrorKind as Io;
        let http = match self {
            Failure::Connect(_) => return UpstreamError::Connect,
            Failure::Busy(_) => return UpstreamError::Busy,
            Failure::Http(e) => e,
        };
        if http.is_parse() || http.is_parse_status() || http.is_parse_too_large() {
            return UpstreamError::Protocol;
        }
        if http.is_incomplete_message()
            || http.is_canceled()
            || http.is_closed()
            || http.is_body_write_aborted()
        {
            return UpstreamError::Reset;
        }
        if http.is_timeout() {
            return UpstreamError::Timeout;
        }
        let mut source = std::error::Error::source(http);
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                match io.kind() {
                    Io::ConnectionReset | Io::ConnectionAborted | Io::BrokenPipe | Io::UnexpectedEof => {
                        return UpstreamError::Reset
                    }
                    Io::TimedOut => return UpstreamError::Timeout,
                    _ => {}
                }
            }
            source = s.source();
        }
        UpstreamError::Other
    }

    fn to_error(&self) -> GatewayError {
        let reason = match self {
            Failure::Connect(e) => format!("upstream connect failed: {}", error_chain(e.as_ref())),
            Failure::Http(e) => format!("upstream request failed: {}", error_chain(e)),
            Failure::Busy(waited) => {
                return GatewayError::new(ErrorKind::Unavailable, "upstream is busy, try again shortly")
                    .with_reason(format!(
                        "every upstream connection stayed in use for {} (upstream.max_connections)",
                        humantime::format_duration(*waited)
                    ))
                    .with_retry_after(Duration::from_secs(1));
            }
        };
        GatewayError::new(ErrorKind::BadGateway, "upstream is unavailable").with_reason(reason)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A backend that answers each request `200 ok` on a keep-alive connection, and a WebSocket
    /// handshake `101`, after which it echoes bytes; counts its connections.
    async fn backend() -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while stream.read(&mut byte).await.unwrap_or(0) == 1 {
                        head.push(byte[0]);
                        if !head.ends_with(b"\r\n\r\n") {
                            continue;
                        }
                        if String::from_utf8_lossy(&head).to_ascii_lowercase().contains("upgrade: websocket")
                        {
                            let switch = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n";
                            stream.write_all(switch).await.unwrap();
                            let (mut reader, mut writer) = stream.split();
                            let _ = tokio::io::copy(&mut reader, &mut writer).await;
                            return;
                        }
                        head.clear();
                        stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
                    }
                });
            }
        });
        (url, connections)
    }

    fn request(url: &str, upgrade: bool) -> Request<UpstreamBody> {
        let mut builder = Request::get(format!("{url}/socket.io/"));
        if upgrade {
            builder = builder.header("connection", "upgrade").header("upgrade", "websocket");
        }
        builder.body(UpstreamBody::empty(Default::default())).unwrap()
    }

    /// An upgrade after a plain request to the same backend: the idle connection (opened without
    /// upgrade support) is not used, its slot is (a cap of 1); the tunnel gives its slot back,
    /// so the next plain request does not wait for it.
    #[tokio::test]
    async fn an_upgrade_gets_a_new_connection_and_a_tunnel_holds_no_slot() {
        let (url, connections) = backend().await;
        let cap = ConnectionCap { per_worker: Some(1), queue_timeout: Duration::from_millis(300) };
        let upstream = Upstream::new(Duration::from_secs(2), Duration::from_secs(5), cap);
        let stats = BodyStats::default();

        let (plain, _) =
            upstream.send(request(&url, false), &stats).await.unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(plain.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(connections.load(Ordering::Relaxed), 1);

        let (mut switched, _) =
            upstream.send(request(&url, true), &stats).await.unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(switched.status(), http::StatusCode::SWITCHING_PROTOCOLS);
        let tunnel = hyper::upgrade::on(&mut switched).await.expect("the 101 is upgraded");
        let mut tunnel = hyper_util::rt::TokioIo::new(tunnel);
        tunnel.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        tunnel.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"ping");
        assert_eq!(connections.load(Ordering::Relaxed), 2, "the upgrade took the idle connection");

        let (plain, _) =
            upstream.send(request(&url, false), &stats).await.unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(plain.status(), http::StatusCode::OK);
        assert_eq!(connections.load(Ordering::Relaxed), 3);
        drop(tunnel);
    }
}
