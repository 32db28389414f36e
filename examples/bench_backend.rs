//! A tiny Frappe-like backend for side-by-side benchmarks (`benches/compare_nginx.sh`):
//! answers every request with a ~300-byte JSON body, and whoami with a fixed user for the
//! benchmarks' credentials (the bench key with its secret, and `--memory`'s `k<n>:s<n>`
//! pairs) so the gateway can verify them; other credentials get Frappe's 401 (so
//! `benches/pgo.sh` trains the refusal and lockout paths). Usage: `bench_backend 127.0.0.1:18000`.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

const BODY: &str = r#"{"data":[{"name":"TODO-0001","status":"Open","priority":"Medium","description":"bench row one","owner":"bench@example.com","modified":"2026-11-28 10:00:00.000000"},{"name":"TODO-0002","status":"Open","priority":"Low","description":"bench row two","owner":"bench@example.com","modified":"2026-11-28 10:00:00.000000"}]}"#;

const WHOAMI: &str = "/api/method/frappe.auth.get_logged_user";
const REFUSED: &str = r#"{"exc_type":"AuthenticationError","_error_message":"Invalid login credentials"}"#;

async fn answer(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match req.uri().path() {
        WHOAMI if known(&req) => (StatusCode::OK, r#"{"message":"bench@example.com"}"#),
        WHOAMI => (StatusCode::UNAUTHORIZED, REFUSED),
        _ => (StatusCode::OK, BODY),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", "application/json".parse().unwrap());
    Ok(response)
}

/// The benchmarks' credentials: `token 0123456789abcde:fedcba987654321`, or `token k<n>:s<n>`.
fn known(req: &Request<hyper::body::Incoming>) -> bool {
    let header = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let Some((key, secret)) = header.strip_prefix("token ").and_then(|pair| pair.split_once(':')) else {
        return false;
    };
    (key == "0123456789abcde" && secret == "fedcba987654321")
        || key.strip_prefix('k').is_some_and(|n| secret.strip_prefix('s') == Some(n))
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
