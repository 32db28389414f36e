//! Test-only endpoints (not Frappe; no authentication) for proxying tests:
//! - `/__test/echo` (any method): JSON `{method, path, query, version, peer, headers, body_len, body}`
//! - `/__test/upload`: streams the body, answers `{"sha256": hex, "len": n}`
//! - `/__test/download?bytes=N`: N deterministic bytes streamed in 64 KiB chunks, with the
//!   checksum up front in `X-Sha256` (same bytes as [`download_bytes`])
//! - `/__test/slow?ms=N`: answers 200 `{"slept_ms": N}` after N ms
//! - `/__test/status?code=N`: answers status N with a small JSON body
//! - `/__test/ws`: WebSocket upgrade; echoes text and binary messages

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, UPGRADE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::params::parse_urlencoded;
use super::reply::{full, Body};
use super::{RecordedRequest, Shared};

const CHUNK: usize = 64 * 1024;

pub(super) async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    shared: &Shared,
    shutdown: watch::Receiver<bool>,
) -> Response<Body> {
    let query = parse_urlencoded(req.uri().query().unwrap_or(""));
    let number = |name: &str| query.iter().find(|(k, _)| k == name).and_then(|(_, v)| v.parse::<u64>().ok());
    match req.uri().path() {
        "/__test/echo" => echo(req, peer, shared).await,
        "/__test/upload" => upload(req, peer, shared).await,
        "/__test/download" => {
            let len = number("bytes").unwrap_or(0);
            record(shared, &req, peer, 0);
            download(len, shared)
        }
        "/__test/slow" => {
            record(shared, &req, peer, 0);
            let ms = number("ms").unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            json(200, serde_json::json!({ "slept_ms": ms }))
        }
        "/__test/status" => {
            record(shared, &req, peer, 0);
            let code = number("code").unwrap_or(200) as u16;
            json(code, serde_json::json!({ "status": code }))
        }
        "/__test/ws" => websocket(req, peer, shared, shutdown),
        _ => json(404, serde_json::json!({ "error": "unknown test endpoint" })),
    }
}

fn record(shared: &Shared, req: &Request<Incoming>, peer: SocketAddr, body_len: usize) {
    shared.record(RecordedRequest {
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        headers: req.headers().clone(),
        body_len,
        peer,
    });
}

fn json(status: u16, value: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn headers_json(headers: &HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        map.entry(name.as_str().to_string()).or_default().push(value);
    }
    map
}

async fn echo(req: Request<Incoming>, peer: SocketAddr, shared: &Shared) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let Ok(collected) = body.collect().await else {
        return json(400, serde_json::json!({ "error": "body read failed" }));
    };
    let body = collected.to_bytes();
    let answer = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "peer": peer.to_string(),
        "headers": headers_json(&parts.headers),
        "body_len": body.len(),
        // Small text bodies are echoed so form and JSON forwarding can be checked.
        "body": (body.len() <= 64 * 1024).then(|| String::from_utf8_lossy(&body).into_owned()),
    });
    shared.record(RecordedRequest {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        body_len: body.len(),
        peer,
    });
    json(200, answer)
}

/// Hash the body frame by frame, never holding it whole (for streaming / memory tests).
async fn upload(req: Request<Incoming>, peer: SocketAddr, shared: &Shared) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
    let mut hasher = Sha256::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return json(400, serde_json::json!({ "error": "body read failed", "len": len }));
        };
        if let Some(data) = frame.data_ref() {
            hasher.update(data);
            len += data.len();
        }
    }
    let request = Request::from_parts(parts, ());
    shared.record(RecordedRequest {
        method: request.method().clone(),
        uri: request.uri().clone(),
        version: request.version(),
        headers: request.headers().clone(),
        body_len: len,
        peer,
    });
    json(200, serde_json::json!({ "sha256": hex(&hasher.finalize()), "len": len }))
}

fn download(len: u64, shared: &Shared) -> Response<Body> {
    let cached = shared.state().download_sha.get(&len).cloned();
    let sha = cached.unwrap_or_else(|| {
        let sha = expected_download_sha256(len);
        shared.state().download_sha.insert(len, sha.clone());
        sha
    });
    let mut response = Response::new(DownloadBody(ByteGen::new(len)).boxed());
    let headers = response.headers_mut();
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert("x-sha256", HeaderValue::from_str(&sha).expect("hex header"));
    response
}

/// The `N` bytes `/__test/download?bytes=N` sends.
pub fn download_bytes(len: u64) -> Vec<u8> {
    let mut generator = ByteGen::new(len);
    let mut out = Vec::with_capacity(len as usize);
    while let Some(chunk) = generator.next_chunk() {
        out.extend_from_slice(&chunk);
    }
    out
}

/// SHA-256 (lowercase hex) of the `N` bytes `/__test/download?bytes=N` sends.
pub fn expected_download_sha256(len: u64) -> String {
    let mut generator = ByteGen::new(len);
    let mut hasher = Sha256::new();
    while let Some(chunk) = generator.next_chunk() {
        hasher.update(&chunk);
    }
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// splitmix64 words, little-endian: cheap, deterministic, incompressible enough.
struct ByteGen {
    state: u64,
    remaining: u64,
}

impl ByteGen {
    fn new(len: u64) -> ByteGen {
        ByteGen {
            state: 0x6672_6170_7065_2d67, // "frappe-g"
            remaining: len,
        }
    }

    /// The next chunk of at most 64 KiB. CHUNK is a multiple of 8, so only the last chunk
    /// cuts a word, and the stream does not depend on how it is chunked.
    fn next_chunk(&mut self) -> Option<Bytes> {
        if self.remaining == 0 {
            return None;
        }
        let n = (self.remaining as usize).min(CHUNK);
        let mut buf = Vec::with_capacity(n + 8);
        while buf.len() < n {
            self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            buf.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        buf.truncate(n);
        self.remaining -= n as u64;
        Some(Bytes::from(buf))
    }
}

/// Generates each chunk when hyper asks for it, so the server never holds the whole body.
struct DownloadBody(ByteGen);

impl http_body::Body for DownloadBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Poll::Ready(self.get_mut().0.next_chunk().map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.remaining)
    }
}

fn websocket(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    shared: &Shared,
    mut shutdown: watch::Receiver<bool>,
) -> Response<Body> {
    record(shared, &req, peer, 0);
    let wants_ws = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = req.headers().get("sec-websocket-key").cloned();
    let (true, Some(key)) = (wants_ws, key) else {
        return json(400, serde_json::json!({ "error": "expected a WebSocket upgrade" }));
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        tokio::select! {
            _ = echo_messages(on_upgrade) => {}
            _ = shutdown.changed() => {}
        }
    });
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    let accept = derive_accept_key(key.as_bytes());
    headers.insert(SEC_WEBSOCKET_ACCEPT, HeaderValue::from_str(&accept).expect("accept key"));
    response
}

/// Echo data messages until the peer closes; tungstenite answers pings and close frames.
async fn echo_messages(on_upgrade: hyper::upgrade::OnUpgrade) {
    let Ok(upgraded) = on_upgrade.await else {
        return;
    };
    let io = hyper_util::rt::TokioIo::new(upgraded);
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    while let Some(Ok(message)) = ws.next().await {
        if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
            break;
        }
    }
}
