//! Listeners: bind (returning the real addresses, so tests can bind port 0), the accept loop
//! with its connection cap, TLS handshakes, HTTP/1.1 + HTTP/2 serving, graceful drain.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::activity_io::{Activity, ActivityIo};
use crate::config::ServerConfig;
use crate::error::ErrorKind;
use crate::head_error_reply::HeadErrorReply;
use crate::outcome::TlsFailure;
use crate::pipeline::{self, ConnInfo};
use crate::request_log::RequestLog;
use crate::state::Shared;

/// `true` once shutdown has begun.
pub(crate) type ShutdownSignal = watch::Receiver<bool>;

/// Binds a TCP listener; the returned listener knows its real address (port 0 → ephemeral).
pub(crate) async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// Binds `workers` listeners on one address with SO_REUSEPORT, so the kernel spreads new
/// connections over the proxy workers. Port 0 picks one ephemeral port for all of them.
/// Refuses (naming `server.listen`) when another process already listens on the address:
/// SO_REUSEPORT is only for this process's own workers, see [`ensure_sole_owner`].
/// Must run inside a Tokio runtime; the listeners are handed over as std sockets.
pub(crate) fn bind_workers(addr: SocketAddr, workers: usize) -> Result<Vec<std::net::TcpListener>> {
    let new_socket = |addr: SocketAddr| {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
            .with_context(|| format!("cannot create a socket for {addr}"))?;
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr).map_err(|e| in_use_error(addr, e))?;
        Ok::<_, anyhow::Error>(socket)
    };
    // Bound, not yet listening: the probe below must not collide with our own socket.
    let first = new_socket(addr)?;
    let addr = first.local_addr()?;
    ensure_sole_owner(addr)?;
    let mut sockets = vec![first];
    for _ in 1..workers.max(1) {
        sockets.push(new_socket(addr)?);
    }
    sockets
        .into_iter()
        .map(|socket| {
            let listener =
                socket.listen(1024).with_context(|| format!("cannot listen on {addr} (server.listen)"))?;
            Ok(listener.into_std()?)
        })
        .collect()
}

/// Fails when a socket of another process is listening on `addr` (which our first worker
/// socket has just bound, without listening yet).
///
/// Why a probe bind works on Linux: a socket with SO_REUSEPORT joins a port where others
/// with SO_REUSEPORT (and the same user) listen — so our own bind cannot tell a second
/// gateway instance from our own workers. A probe socket with SO_REUSEADDR but *without*
/// SO_REUSEPORT conflicts with every socket in LISTEN state on the address, whoever owns it,
/// and with none that is merely bound with SO_REUSEADDR (our first worker socket). So the
/// probe binds exactly when nobody listens there yet. It is closed at once; our workers
/// listen right after. Two instances started in the same instant could both pass (each
/// probes before the other listens), but one started next to a running gateway — the
/// mistake this guards against — always fails here.
fn ensure_sole_owner(addr: SocketAddr) -> Result<()> {
    let probe = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
        .with_context(|| format!("cannot create a socket for {addr}"))?;
    probe.set_reuseaddr(true)?;
    probe.bind(addr).map_err(|e| in_use_error(addr, e))?;
    Ok(())
}

fn in_use_error(addr: SocketAddr, e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        anyhow::anyhow!(
            "cannot listen on {addr} (server.listen): another process is already listening there \
             (is a second gateway running?)"
        )
    } else {
        anyhow::Error::new(e).context(format!("cannot listen on {addr} (server.listen)"))
    }
}

/// One proxy worker: accepts and serves connections until shutdown, then lets in-flight
/// requests finish for at most `shutdown_grace`. `slots` (shared by all workers) holds
/// `max_connections` permits: at the cap, further clients wait in the kernel's accept queue.
pub(crate) async fn serve_proxy(
    listener: TcpListener,
    state: Arc<Shared>,
    slots: Arc<Semaphore>,
    worker: usize,
    mut shutdown: ShutdownSignal,
) {
    let server = state.runtime().config.server.clone();
    let listener_ctx = Arc::new(ProxyListener {
        http: http_builder(&server),
        header_read_timeout: server.header_read_timeout,
        idle_timeout: server.idle_timeout,
        state,
        worker,
    });
    loop {
        let Some((stream, peer)) = accept(&listener, &mut shutdown).await else { break };
        // Accept first, then wait for a slot: with SO_REUSEPORT the kernel has already
        // chosen this worker for the connection, so a worker waiting for a slot *before*
        // accepting could hold the freed slot while the waiting client sits in another
        // worker's queue. At the cap, each worker holds at most one client waiting here.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.changed() => break,
        };
        let (listener_ctx, shutdown) = (listener_ctx.clone(), shutdown.clone());
        tokio::spawn(async move {
            serve_connection(stream, peer, &listener_ctx, shutdown).await;
            drop(permit);
        });
    }
    drop(listener);
    drain(&slots, server.max_connections, server.shutdown_grace).await;
}

/// The next connection, or `None` once shutdown begins. Accept errors (EMFILE and friends)
/// are logged and retried after a pause instead of spinning; the loop goes on.
pub(crate) async fn accept(
    listener: &TcpListener,
    shutdown: &mut ShutdownSignal,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => return Some(conn),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return None,
        }
    }
}

/// Waits until every connection has returned its slot, or the grace period ends.
async fn drain(slots: &Semaphore, total: usize, grace: Duration) {
    let all = u32::try_from(total).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, slots.acquire_many(all)).await.is_err() {
        tracing::warn!(grace = %humantime::format_duration(grace), "grace period over; closing remaining connections");
    }
}

fn http_builder(server: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        .keep_alive(true)
        // One flattened write per response: vectored writes through the TLS stream cost
        // 1.00–1.21× the CPU per request (benches/RESULTS.md, A/B in one run).
        .writev(false)
        // Our own 431 (JSON, logged) fires at max_header_bytes; hyper's bare one only far above.
        .max_buf_size((server.max_header_bytes * 2).max(64 * 1024));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(server.max_header_bytes * 2).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        // No server PINGs: they would count as activity and keep idle connections open
        // forever; the idle timer below closes silent connections instead.
        .keep_alive_interval(None);
    builder
}

/// What every connection of one proxy worker shares.
struct ProxyListener {
    state: Arc<Shared>,
    http: auto::Builder<TokioExecutor>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    worker: usize,
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    listener: &ProxyListener,
    shutdown: ShutdownSignal,
) {
    let _ = stream.set_nodelay(true);
    let metrics = &listener.state.obs.metrics;
    let _open = OpenConnection::new(&metrics.open_connections);
    // IPv4-mapped IPv6 peers (dual-stack sockets) are the IPv4 address they carry.
    let peer_ip = peer.ip().to_canonical();
    let worker = listener.worker;
    // The certificate in force when the client connects (a reload swaps it for later ones).
    let Some(certificate) = listener.state.tls.load_full() else {
        let info = Arc::new(ConnInfo::new(listener.state.clone(), peer_ip, None, worker));
        return serve_io(stream, info, listener, shutdown, Protocol::Sniffed).await;
    };
    let acceptor = TlsAcceptor::from(certificate.config.clone());
    let handshake = tokio::time::timeout(listener.header_read_timeout, acceptor.accept(stream));
    match handshake.await {
        Ok(Ok(stream)) => {
            let tls = stream.get_ref().1;
            let version = crate::tls::version_name(tls.protocol_version());
            let protocol = match tls.alpn_protocol() {
                Some(b"h2") => Protocol::Http2,
                _ => Protocol::Sniffed,
            };
            let info = Arc::new(ConnInfo::new(listener.state.clone(), peer_ip, version, worker));
            serve_io(stream, info, listener, shutdown, protocol).await;
        }
        Ok(Err(e)) => {
            metrics.record_tls_failure(TlsFailure::Error);
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            metrics.record_tls_failure(TlsFailure::Timeout);
            tracing::debug!(%peer, "TLS handshake timed out");
        }
    }
}

/// Counts a client connection in `gateway_open_connections` while it lives.
struct OpenConnection<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> OpenConnection<'a> {
    fn new(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        OpenConnection(gauge)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What a connection speaks, as far as the TLS handshake says.
#[derive(Clone, Copy)]
enum Protocol {
    /// ALPN chose `h2`.
    Http2,
    /// HTTP/1.1, or no ALPN (plain TCP, or a client that offered none): hyper reads the first
    /// bytes to tell HTTP/1.1 from HTTP/2 with prior knowledge.
    Sniffed,
}

/// Serves one connection until it closes, it has been silent for `idle_timeout`, or
/// shutdown begins; the last two close it gracefully (in-flight requests finish first).
async fn serve_io<I>(
    io: I,
    info: Arc<ConnInfo>,
    listener: &ProxyListener,
    shutdown: ShutdownSignal,
    protocol: Protocol,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (io, activity) = ActivityIo::new(io);
    let io = TokioIo::new(HeadErrorReply::new(io, info.clone()));
    let served = Arc::new(AtomicBool::new(false));
    let closing = watch_reasons_to_close(listener, activity, served.clone(), shutdown);
    let handle = {
        let info = info.clone();
        move |req: Request<Incoming>| {
            served.store(true, Ordering::Relaxed);
            pipeline::handle(info.clone(), req)
        }
    };
    let result = match protocol {
        // hyper moves each HTTP/2 stream's future into a task of its own, copying it several
        // times on the way: boxed, the request's state (≈ 4 KiB) is copied once, and the
        // task is small. On HTTP/1.1 the future stays in the connection, unboxed.
        Protocol::Http2 => {
            let service = service_fn(move |req| Box::pin(handle(req)));
            drive(listener.http.serve_connection_with_upgrades(io, service), closing).await
        }
        Protocol::Sniffed => {
            drive(listener.http.serve_connection_with_upgrades(io, service_fn(handle)), closing).await
        }
    };
    log_connection_end(&info, result);
}

/// The reasons to close a connection, in a task of their own that says when: polled beside
/// the connection, they would be polled (timers, the shutdown watch) on every wake-up of a
/// busy connection; a oneshot receiver is one atomic load. The task ends with the receiver.
fn watch_reasons_to_close(
    listener: &ProxyListener,
    activity: Arc<Activity>,
    served: Arc<AtomicBool>,
    mut shutdown: ShutdownSignal,
) -> Closing {
    let (close, closing) = oneshot::channel();
    let (header_read_timeout, idle_timeout) = (listener.header_read_timeout, listener.idle_timeout);
    let watcher = tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = activity.idle_for(idle_timeout) => {}
            // hyper's header timer starts only once it knows the protocol: a client that
            // connects and says nothing must not hold a connection slot for idle_timeout.
            _ = first_request_overdue(&served, header_read_timeout) => {}
        }
        let _ = close.send(());
    });
    Closing { signal: closing, _watcher: AbortOnDrop(watcher) }
}

/// Fires when the connection should close gracefully; its watcher is stopped when dropped.
struct Closing {
    signal: oneshot::Receiver<()>,
    _watcher: AbortOnDrop,
}

/// Serves `conn` until it ends, or until `closing` fires and it has then closed gracefully.
async fn drive<C>(conn: C, mut closing: Closing) -> Result<(), C::Error>
where
    C: GracefulConnection,
{
    tokio::pin!(conn);
    tokio::select! {
        biased;
        result = conn.as_mut() => return result,
        _ = &mut closing.signal => {}
    }
    drop(closing);
    conn.as_mut().graceful_shutdown();
    conn.await
}

/// Aborts the task when dropped (the connection it watches has ended).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves when no request has arrived `limit` after the connection started.
async fn first_request_overdue(served: &AtomicBool, limit: Duration) {
    tokio::time::sleep(limit).await;
    if served.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
}

/// A request head hyper rejected (too large, malformed) never reached the pipeline: it still
/// gets its access-log line, here unless its answer already logged it.
fn log_connection_end(info: &Arc<ConnInfo>, result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    let Err(error) = result else { return };
    let Some(error) = error.downcast_ref::<hyper::Error>() else { return };
    if info.unparsed_answered() {
        return;
    }
    let kind = if error.is_parse_too_large() {
        ErrorKind::HeadersTooLarge
    } else if error.is_parse() {
        ErrorKind::BadRequest
    } else {
        if error.is_timeout() {
            tracing::debug!(peer = %info.peer, "client too slow sending request headers; disconnected");
        }
        return;
    };
    RequestLog::unparsed(info, kind, info.shared.obs.request_ids.next(), 0);
}
