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
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
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
        // The slot goes with the connection (its `ConnInfo`), and on to its WebSocket tunnel.
        tokio::spawn(async move { serve_connection(stream, peer, &listener_ctx, shutdown, permit).await });
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

/// Waits until every connection (WebSocket tunnels included) has returned its slot, or the grace
/// period ends.
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
    slot: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let metrics = &listener.state.obs.metrics;
    let open = OpenConnection::new(&metrics.open_connections);
    // IPv4-mapped IPv6 peers (dual-stack sockets) are the IPv4 address they carry.
    let peer_ip = peer.ip().to_canonical();
    let held = Held { _slot: slot, _open: open };
    // The certificate in force when the client connects (a reload swaps it for later ones).
    let Some(certificate) = listener.state.tls.load_full() else {
        let conn = Conn { peer: peer_ip, tls: None, protocol: Protocol::Sniffed, held };
        return serve_io(stream, conn, listener, shutdown).await;
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
            let conn = Conn { peer: peer_ip, tls: version, protocol, held };
            serve_io(stream, conn, listener, shutdown).await;
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

/// Counts a client connection in `gateway_open_connections` while it lives (its tunnel
/// included: the guard goes with the connection's [`Lifeline`]).
struct OpenConnection(prometheus_client::metrics::gauge::Gauge);

impl OpenConnection {
    fn new(gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        OpenConnection(gauge.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What a client connection holds from accept to its end, tunnel included (released when
/// dropped).
struct Held {
    /// Its `server.max_connections` slot.
    _slot: OwnedSemaphorePermit,
    _open: OpenConnection,
}

/// A connection past its TLS handshake, before serving.
struct Conn {
    peer: std::net::IpAddr,
    tls: Option<&'static str>,
    protocol: Protocol,
    held: Held,
}

/// What a connection hands on to its WebSocket tunnel, in its [`ConnInfo`]. hyper's connection
/// future ends at the upgrade, taking [`watch_reasons_to_close`]'s watcher with it, so the
/// tunnel (which keeps the `ConnInfo`) holds the connection's slot and watches the same reasons
/// to close: `server.idle_timeout` without a byte either way, and shutdown. The slot is freed
/// when the last holder of the `ConnInfo` (the connection, its requests, its tunnel) is gone.
pub(crate) struct Lifeline {
    _held: Held,
    activity: Arc<Activity>,
    idle_timeout: Duration,
    shutdown: ShutdownSignal,
}

impl Lifeline {
    /// The connection's activity (its requests are counted there for the idle timeout).
    pub(crate) fn activity(&self) -> &Activity {
        &self.activity
    }

    /// Resolves once a tunnel should close: the client connection has moved no byte (either
    /// way: the tunnel reads and writes through it) for `server.idle_timeout`, or shutdown has
    /// begun (already, or later). Tunnels hold no request to finish, so shutdown closes them at
    /// once rather than at the end of `server.shutdown_grace`.
    pub(crate) async fn closing(&self) -> TunnelEnd {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            // Err: the sender is gone, which only happens when the gateway stops.
            _ = shutdown.wait_for(|stopping| *stopping) => TunnelEnd::Shutdown,
            () = self.activity.idle_for(self.idle_timeout) => TunnelEnd::Idle,
        }
    }
}

/// Why [`Lifeline::closing`] fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TunnelEnd {
    Idle,
    Shutdown,
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
async fn serve_io<I>(io: I, conn: Conn, listener: &ProxyListener, shutdown: ShutdownSignal)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Conn { peer, tls, protocol, held } = conn;
    let (io, activity) = ActivityIo::new(io);
    let lifeline = Lifeline {
        _held: held,
        activity: activity.clone(),
        idle_timeout: listener.idle_timeout,
        shutdown: shutdown.clone(),
    };
    let info = ConnInfo::new(listener.state.clone(), peer, tls, listener.worker).with_lifeline(lifeline);
    let info = Arc::new(info);
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
            _ = activity.idle_between_requests(idle_timeout) => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A lifeline holding one of `slots`, counted in `gauge`, with no byte ever moving.
    fn lifeline(
        slots: &Arc<Semaphore>,
        gauge: &prometheus_client::metrics::gauge::Gauge,
        idle: Duration,
    ) -> (Lifeline, watch::Sender<bool>) {
        let slot = slots.clone().try_acquire_owned().expect("a free slot");
        let (_io, activity) = ActivityIo::new(tokio::io::empty());
        let (stop, shutdown) = watch::channel(false);
        let held = Held { _slot: slot, _open: OpenConnection::new(gauge) };
        (Lifeline { _held: held, activity, idle_timeout: idle, shutdown }, stop)
    }

    #[tokio::test]
    async fn a_silent_tunnel_closes_after_the_idle_timeout() {
        let (slots, gauge) = (Arc::new(Semaphore::new(1)), Default::default());
        let (lifeline, _stop) = lifeline(&slots, &gauge, Duration::from_millis(200));
        let started = std::time::Instant::now();
        assert_eq!(lifeline.closing().await, TunnelEnd::Idle);
        assert!(started.elapsed() >= Duration::from_millis(200), "{:?}", started.elapsed());
    }

    /// Shutdown closes a tunnel at once, also one that starts after shutdown has begun (the
    /// connection saw the change already).
    #[tokio::test]
    async fn shutdown_closes_a_tunnel_at_once_even_when_it_began_before() {
        let (slots, gauge) = (Arc::new(Semaphore::new(2)), Default::default());
        let (watching, stop) = lifeline(&slots, &gauge, Duration::from_secs(3600));
        let waiting = tokio::spawn(async move { watching.closing().await });
        tokio::task::yield_now().await;
        stop.send(true).unwrap();
        let end = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("closed in time");
        assert_eq!(end.unwrap(), TunnelEnd::Shutdown);

        let (mut lifeline, stop) = lifeline(&slots, &gauge, Duration::from_secs(3600));
        stop.send(true).unwrap();
        lifeline.shutdown.mark_unchanged();
        let end = tokio::time::timeout(Duration::from_secs(5), lifeline.closing()).await;
        assert_eq!(end.expect("closed in time"), TunnelEnd::Shutdown);
    }

    /// Whoever holds the lifeline holds the connection's slot and its count in the gauge.
    #[tokio::test]
    async fn the_slot_and_the_open_count_go_with_the_lifeline() {
        let (slots, gauge) = (Arc::new(Semaphore::new(1)), Default::default());
        let (lifeline, _stop) = lifeline(&slots, &gauge, Duration::from_secs(3600));
        assert_eq!((slots.available_permits(), gauge.get()), (0, 1));
        drop(lifeline);
        assert_eq!((slots.available_permits(), gauge.get()), (1, 0));
    }
}
