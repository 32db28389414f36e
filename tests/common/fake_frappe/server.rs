//! The fake's HTTP/1.1 server: accept loop, one task per connection (all dropped on
//! shutdown, so stopping the fake really closes every socket), request recording, and the
//! gunicorn-like response headers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::header::{CONNECTION, CONTENT_TYPE, SERVER};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::api::{self, ApiRequest};
use super::params::Params;
use super::reply::Body;
use super::{test_endpoints, RecordedRequest, Running, Shared};

pub(super) fn spawn(listener: TcpListener, shared: Arc<Shared>) -> Running {
    let (shutdown, watcher) = watch::channel(false);
    let accept_task = tokio::spawn(accept_loop(listener, shared, watcher));
    Running { shutdown, accept_task }
}

/// Runs until aborted by `stop()` / `Drop`, which also closes the listener.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                shared.counters.connections.fetch_add(1, Ordering::SeqCst);
                let task = serve_connection(stream, peer, shared.clone(), shutdown.clone());
                tokio::spawn(task);
            }
            // e.g. EMFILE: back off instead of spinning, then keep accepting.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let watcher = shutdown.clone();
    let service = service_fn(move |req| {
        let (shared, watcher) = (shared.clone(), watcher.clone());
        async move { Ok::<_, Infallible>(handle(req, peer, shared, watcher).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    // Dropping the connection future closes the socket, even mid-request (Hang mode).
    tokio::select! {
        _ = connection => {}
        _ = shutdown.changed() => {}
    }
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> Response<Body> {
    let response = if req.uri().path().starts_with("/__test/") {
        test_endpoints::handle(req, peer, &shared, shutdown).await
    } else {
        frappe(req, peer, &shared).await
    };
    gunicorn_headers(response, &shared)
}

/// Read the whole body (Frappe does too), record the request, answer as Frappe.
async fn frappe(req: Request<Incoming>, peer: SocketAddr, shared: &Shared) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            let mut response = Response::new(super::reply::full("client went away"));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            return response;
        }
    };
    shared.record(RecordedRequest {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body_len: body.len(),
        peer,
    });
    let content_type = parts.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let params = Params::from_request(parts.uri.query(), content_type, &body);
    let request = ApiRequest {
        method: parts.method,
        path: parts.uri.path().to_string(),
        headers: parts.headers,
        params,
        body,
    };
    api::respond(shared, request).await
}

/// `Server: gunicorn` always; `Connection: close` when switched on (gunicorn's sync workers
/// close after every response), except on protocol switches.
fn gunicorn_headers(mut response: Response<Body>, shared: &Shared) -> Response<Body> {
    let close = shared.state().connection_close;
    let headers = response.headers_mut();
    headers.insert(SERVER, HeaderValue::from_static("gunicorn"));
    if close && response.status() != StatusCode::SWITCHING_PROTOCOLS {
        response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
