//! The floor under the gateway's cost: a TLS reverse proxy on exactly the gateway's stack
//! (one current-thread Tokio runtime per worker on an `SO_REUSEPORT` listener, tokio-rustls
//! with ring, hyper-util's auto server with the gateway's HTTP/1.1 and HTTP/2 settings, and a
//! per-worker list of `hyper::client::conn::http1` connections to the backend) that does
//! nothing else: no authentication, policy, limits, header hygiene or log. `benches/compare_nginx.py
//! --floor` runs it beside nginx and the gateway, so the gateway's CPU per request splits into
//! what the stack costs and what the gateway adds on top.
//!
//! Usage: `floor_proxy LISTEN BACKEND CERT KEY [WORKERS]`, e.g.
//! `floor_proxy 127.0.0.1:8443 127.0.0.1:18000 gateway.crt gateway.key 2`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsAcceptor;

type Error = Box<dyn std::error::Error + Send + Sync>;

thread_local! {
    /// This worker's keep-alive connections to the backend (the gateway's per-worker pool).
    static IDLE: RefCell<Vec<SendRequest<Incoming>>> = const { RefCell::new(Vec::new()) };
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, backend, cert, key, rest @ ..] = args.as_slice() else {
        return Err("usage: floor_proxy LISTEN BACKEND CERT KEY [WORKERS]".into());
    };
    let listen: SocketAddr = listen.parse()?;
    let backend: SocketAddr = backend.parse()?;
    let workers: usize = rest.first().map(|w| w.parse()).transpose()?.unwrap_or(2);
    let acceptor = TlsAcceptor::from(tls_config(cert, key)?);
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let acceptor = acceptor.clone();
            std::thread::spawn(move || -> Result<(), Error> {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                runtime.block_on(serve(listen, backend, acceptor))
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("worker panicked")?;
    }
    Ok(())
}

fn tls_config(cert: &str, key: &str) -> Result<Arc<rustls::ServerConfig>, Error> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(cert)?))
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(std::fs::File::open(key)?))?
        .ok_or("no private key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn serve(listen: SocketAddr, backend: SocketAddr, acceptor: TlsAcceptor) -> Result<(), Error> {
    let socket = if listen.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseport(true)?;
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    let listener: TcpListener = socket.listen(1024)?;
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1().timer(TokioTimer::new()).keep_alive(true).writev(false);
    http.http2().timer(TokioTimer::new()).max_concurrent_streams(256).keep_alive_interval(None);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (acceptor, http) = (acceptor.clone(), http.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else { return };
            let service = service_fn(move |req| forward(req, backend));
            let _ = http.serve_connection_with_upgrades(TokioIo::new(tls), service).await;
        });
    }
}

/// Sends `req` on an idle connection of this worker, or a new one, and hands the connection
/// back at once: hyper reports it ready again when the response body has been read.
async fn forward(mut req: Request<Incoming>, backend: SocketAddr) -> Result<Response<Incoming>, Error> {
    *req.version_mut() = http::Version::HTTP_11;
    let mut sender = match IDLE.with_borrow_mut(take_ready) {
        Some(sender) => sender,
        None => connect(backend).await?,
    };
    let response = sender.send_request(req).await?;
    IDLE.with_borrow_mut(|idle| idle.push(sender));
    Ok(response)
}

fn take_ready(idle: &mut Vec<SendRequest<Incoming>>) -> Option<SendRequest<Incoming>> {
    idle.retain(|sender| !sender.is_closed());
    let ready = idle.iter().position(SendRequest::is_ready)?;
    Some(idle.swap_remove(ready))
}

async fn connect(backend: SocketAddr) -> Result<SendRequest<Incoming>, Error> {
    let stream = TcpStream::connect(backend).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}
