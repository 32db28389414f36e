//! A tiny Frappe-like backend for side-by-side benchmarks (`benches/compare_nginx.sh`):
//! answers every request with a ~300-byte JSON body, and whoami with a fixed user so the
//! gateway can verify a benchmark key. Usage: `bench_backend 127.0.0.1:18000`.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

const BODY: &str = r#"{"data":[{"name":"TODO-0001","status":"Open","priority":"Medium","description":"bench row one","owner":"bench@example.com","modified":"2026-11-28 10:00:00.000000"},{"name":"TODO-0002","status":"Open","priority":"Low","description":"bench row two","owner":"bench@example.com","modified":"2026-11-28 10:00:00.000000"}]}"#;

async fn answer(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = if req.uri().path() == "/api/method/frappe.auth.get_logged_user" {
        Bytes::from_static(br#"{"message":"bench@example.com"}"#)
    } else {
        Bytes::from_static(BODY.as_bytes())
    };
    let mut response = Response::new(Full::new(body));
    response.headers_mut().insert("content-type", "application/json".parse().unwrap());
    Ok(response)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18000".into());
    let listener = TcpListener::bind(&addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}
