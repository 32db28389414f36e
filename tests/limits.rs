//! Acceptance 4: limits. A body over `max_body_bytes` is refused with 413 (declared by
//! Content-Length: before anything goes upstream; chunked / length-less: once it grows past
//! the limit), headers over `max_header_bytes` with 431, clients slower than
//! `header_read_timeout` are disconnected, and connections over `max_connections` wait without
//! hurting the process, which keeps serving afterwards.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use common::{
    http_client, https_client, read_response_head, tcp_connect, tls_connect, Certs, ConfigBuilder,
    FakeFrappe, Gateway, HttpVersion, PUBLIC_ROUTE,
};

const BODY_LIMIT: usize = 64 * 1024;
const HEADER_LIMIT: usize = 4096;
/// How long a slow client may take to be dropped when `header_read_timeout = "1s"`.
const DROP_DEADLINE: Duration = Duration::from_secs(6);

async fn start_gateway(frappe: &FakeFrappe, certs: &Certs, server_lines: &[String]) -> Gateway {
    let mut builder = ConfigBuilder::new(&frappe.url()).tls(certs);
    for line in server_lines {
        builder = builder.set("server", line);
    }
    Gateway::start(&builder.extra(PUBLIC_ROUTE).build(), &[]).await
}

async fn limited_gateway(frappe: &FakeFrappe, certs: &Certs) -> Gateway {
    let lines = [format!("max_body_bytes = {BODY_LIMIT}"), format!("max_header_bytes = {HEADER_LIMIT}")];
    start_gateway(frappe, certs, &lines).await
}

/// A gateway error: Frappe's JSON shape with `exc_type` and the request id of the header.
fn assert_gateway_error(status: u16, expected: u16, exc_type: &str, request_id: Option<&str>, body: &str) {
    assert_eq!(status, expected, "body: {body}");
    let json: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body}"));
    assert_eq!(json["exc_type"], exc_type, "{json}");
    assert!(json["exception"].as_str().is_some_and(|e| e.contains(exc_type)), "{json}");
    let messages = json["_server_messages"].as_str().expect("_server_messages is a JSON string");
    let messages: Vec<String> =
        serde_json::from_str(messages).expect("_server_messages holds a list of strings");
    assert!(!messages.is_empty());
    let request_id = request_id.expect("X-Request-Id header");
    assert_eq!(json["request_id"], request_id, "{json}");
}

async fn check_error_response(response: reqwest::Response, expected: u16, exc_type: &str) {
    let status = response.status().as_u16();
    let request_id = response.headers().get("x-request-id").map(|v| v.to_str().expect("ascii").to_string());
    let body = response.text().await.expect("error body");
    assert_gateway_error(status, expected, exc_type, request_id.as_deref(), &body);
}

/// A raw HTTP/1.1 response: status, lower-cased headers, body (Content-Length framed).
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

async fn read_raw_response<S: AsyncRead + Unpin>(stream: &mut S) -> RawResponse {
    let head = read_response_head(stream).await.expect("read response head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize =
        headers.iter().find(|(n, _)| n == "content-length").map_or(0, |(_, v)| v.parse().unwrap_or(0));
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.expect("read response body");
    RawResponse { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
}

// ===== body size =========================================================================

/// The declared length alone decides: the gateway answers without reading a byte of the body,
/// so the client here never sends one.
#[tokio::test]
async fn content_length_over_limit_is_413_and_never_reaches_upstream() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let gateway = limited_gateway(&frappe, &certs).await;
    let port = gateway.proxy_addr().port();

    let mut tls = tls_connect(gateway.proxy_addr(), &certs.ca_pem, &["http/1.1"]).await;
    let head = format!(
        "POST /__test/upload HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\n\r\n",
        50 * 1024 * 1024
    );
    tls.write_all(head.as_bytes()).await.expect("send request head");
    let response = tokio::time::timeout(Duration::from_secs(10), read_raw_response(&mut tls))
        .await
        .expect("the gateway answers without waiting for the body");
    assert_gateway_error(
        response.status,
        413,
        "RequestEntityTooLarge",
        response.header("x-request-id"),
        &response.body,
    );

    // A client asking `Expect: 100-continue` gets the 413 instead of a go-ahead.
    let mut tls = tls_connect(gateway.proxy_addr(), &certs.ca_pem, &["http/1.1"]).await;
    let head = format!(
        "PUT /__test/upload HTTP/1.1\r\nHost: localhost:{port}\r\nExpect: 100-continue\r\n\
         Content-Length: {}\r\n\r\n",
        BODY_LIMIT + 1
    );
    tls.write_all(head.as_bytes()).await.expect("send request head");
    let response = tokio::time::timeout(Duration::from_secs(10), read_raw_response(&mut tls))
        .await
        .expect("the gateway answers the Expect request");
    assert_gateway_error(
        response.status,
        413,
        "RequestEntityTooLarge",
        response.header("x-request-id"),
        &response.body,
    );

    // HTTP/2 too, with a body the client actually starts sending.
    let client = https_client(&certs.ca_pem, HttpVersion::Http2);
    let response = client
        .post(format!("{}/__test/upload", gateway.base_url()))
        .body(vec![b'x'; BODY_LIMIT + 1])
        .send()
        .await
        .expect("HTTP/2 request");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    check_error_response(response, 413, "RequestEntityTooLarge").await;

    assert!(frappe.last_request_to("/__test/upload").is_none(), "upstream saw a refused body");
    // At the limit exactly is fine.
    let response = client
        .post(format!("{}/__test/upload", gateway.base_url()))
        .body(vec![b'x'; BODY_LIMIT])
        .send()
        .await
        .expect("request at the limit");
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("upload JSON");
    assert_eq!(answer["len"], BODY_LIMIT);
}

/// A chunked body has no length up front: the gateway starts streaming it upstream and cuts
/// it off with 413 once it passes the limit. The client sends a little more than the limit
/// and then stalls, never finishing the body: the answer must not wait for the end.
#[tokio::test]
async fn chunked_body_growing_past_limit_is_413() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let gateway = limited_gateway(&frappe, &certs).await;
    let port = gateway.proxy_addr().port();

    let mut tls = tls_connect(gateway.proxy_addr(), &certs.ca_pem, &["http/1.1"]).await;
    let head = format!(
        "POST /__test/upload HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Type: application/octet-stream\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).await.expect("send request head");
    let chunk = vec![b'c'; 16 * 1024];
    let mut sent = 0;
    while sent <= BODY_LIMIT {
        tls.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.expect("chunk size");
        tls.write_all(&chunk).await.expect("chunk data");
        tls.write_all(b"\r\n").await.expect("chunk end");
        sent += chunk.len();
    }
    tls.flush().await.expect("flush");
    let response = tokio::time::timeout(Duration::from_secs(10), read_raw_response(&mut tls))
        .await
        .expect("413 arrives while the body is still open");
    assert_gateway_error(
        response.status,
        413,
        "RequestEntityTooLarge",
        response.header("x-request-id"),
        &response.body,
    );

    // HTTP/2: a length-less streamed body, same rule.
    let client = https_client(&certs.ca_pem, HttpVersion::Http2);
    let chunks = (0..5).map(|_| Ok::<_, Infallible>(Bytes::from(vec![b'h'; 16 * 1024])));
    let body = stream::iter(chunks).chain(stream::pending());
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        client
            .post(format!("{}/__test/upload", gateway.base_url()))
            .body(reqwest::Body::wrap_stream(body))
            .send(),
    )
    .await
    .expect("413 arrives while the HTTP/2 body is still open")
    .expect("HTTP/2 request");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    check_error_response(response, 413, "RequestEntityTooLarge").await;

    // A completed upload never arrived whole upstream.
    assert!(frappe.requests().iter().all(|r| r.path() != "/__test/upload" || r.body_len <= BODY_LIMIT));
}

// ===== header size =======================================================================

#[tokio::test]
async fn headers_over_limit_are_431() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let gateway = limited_gateway(&frappe, &certs).await;
    let big = "b".repeat(6 * 1024);
    for version in [HttpVersion::Http1Only, HttpVersion::Http2] {
        let client = https_client(&certs.ca_pem, version);
        let response = client
            .get(format!("{}/__test/echo", gateway.base_url()))
            .header("x-big", &big)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{version:?}: {e}"));
        check_error_response(response, 431, "RequestHeaderFieldsTooLarge").await;

        // Just under the limit passes.
        let response = client
            .get(format!("{}/__test/echo", gateway.base_url()))
            .header("x-big", "b".repeat(HEADER_LIMIT / 2))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{version:?}: {e}"));
        assert_eq!(response.status(), 200, "{version:?}");
    }
    assert_eq!(frappe.requests().len(), 2, "only the requests under the limit reached upstream");

    // Far beyond the limit (HTTP/1.1, 100 KiB): still 431, never a hang or a crash.
    let mut tls = tls_connect(gateway.proxy_addr(), &certs.ca_pem, &["http/1.1"]).await;
    let request = format!(
        "GET /__test/echo HTTP/1.1\r\nHost: localhost:{}\r\nX-Huge: {}\r\n\r\n",
        gateway.proxy_addr().port(),
        "h".repeat(100 * 1024)
    );
    // The gateway may stop reading (and close) before the whole request is written.
    let _ = tls.write_all(request.as_bytes()).await;
    let head = tokio::time::timeout(Duration::from_secs(10), read_response_head(&mut tls))
        .await
        .expect("an answer to a huge header")
        .unwrap_or_default();
    assert!(head.starts_with("HTTP/1.1 431"), "expected 431, got {head:?}");
    assert_eq!(frappe.requests().len(), 2);
    let response =
        http_client().get(format!("{}/healthz", gateway.admin_url())).send().await.expect("healthz");
    assert_eq!(response.status(), 200);
}

// ===== slow clients ======================================================================

/// Reads (discarding anything the server sends) until EOF or an error; `Some(elapsed)` when
/// the server closed the connection within `limit`.
async fn closed_within<S: AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let read_to_end = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read_to_end).await.ok().map(|()| started.elapsed())
}

async fn slow_gateway(frappe: &FakeFrappe, certs: &Certs) -> Gateway {
    start_gateway(frappe, certs, &["header_read_timeout = \"1s\"".to_string()]).await
}

/// A TCP connection that never starts the TLS handshake.
#[tokio::test]
async fn client_that_never_starts_tls_is_dropped() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let gateway = slow_gateway(&frappe, &certs).await;
    let mut tcp = tcp_connect(gateway.proxy_addr()).await;
    let elapsed = closed_within(&mut tcp, DROP_DEADLINE).await;
    assert!(elapsed.is_some(), "a silent TCP client was not dropped within {DROP_DEADLINE:?}");
}

/// Half a request line, then nothing.
#[tokio::test]
async fn partial_request_line_is_dropped_after_header_read_timeout() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let gateway = slow_gateway(&frappe, &certs).await;
    let mut tls = tls_connect(gateway.proxy_addr(), &certs.ca_pem, &["http/1.1"]).await;
    tls.write_all(b"GET /__test/echo HTT").await.expect("partial request line");
    tls.flush().await.expect("flush");
    let elapsed = closed_within(&mut tls, DROP_DEADLINE).await;
    let elapsed =
        elapsed.unwrap_or_else(|| panic!("a stalled request line was not dropped within {DROP_DEADLINE:?}"));
    assert!(elapsed >= Duration::from_millis(800), "dropped after {elapsed:?}, before the timeout");
    assert!(frappe.requests().is_empty());
}

/// A complete TLS handshake and then not a single byte of HTTP.
#[tokio::test]
async fn silent_client_after_tls_handshake_is_dropped_after_header_read_timeout() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let gateway = slow_gateway(&frappe, &certs).await;
    for alpn in [&["http/1.1"][..], &["h2"][..]] {
        let mut tls = tls_connect(gateway.proxy_addr(), &certs.ca_pem, alpn).await;
        let elapsed = closed_within(&mut tls, DROP_DEADLINE).await;
        assert!(elapsed.is_some(), "ALPN {alpn:?}: a silent client was not dropped within {DROP_DEADLINE:?}");
    }
}

/// Slowloris: the head trickles in a byte at a time, never completing in time.
#[tokio::test]
async fn trickling_headers_are_dropped() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let gateway = slow_gateway(&frappe, &certs).await;
    let tls = tls_connect(gateway.proxy_addr(), &certs.ca_pem, &["http/1.1"]).await;
    let (mut reader, mut writer) = tokio::io::split(tls);
    let request = format!(
        "GET /__test/echo HTTP/1.1\r\nHost: localhost:{}\r\nX-Padding: {}\r\n\r\n",
        gateway.proxy_addr().port(),
        "p".repeat(64)
    );
    let trickle = async move {
        for byte in request.as_bytes() {
            if writer.write_all(std::slice::from_ref(byte)).await.is_err() || writer.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Whole head sent (~10 s): keep the connection open so the read side decides.
        std::future::pending::<()>().await;
    };
    let closed = tokio::select! {
        elapsed = closed_within(&mut reader, DROP_DEADLINE) => elapsed,
        () = trickle => None,
    };
    assert!(closed.is_some(), "a trickling client was not dropped within {DROP_DEADLINE:?}");
    assert!(frappe.requests().is_empty(), "a trickled request must not reach upstream");
}

// ===== connection cap ====================================================================

/// With `max_connections = 2` and two connections held open, a third client waits (it is not
/// served), the process survives, and the third is served as soon as a slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_wait_and_are_served_when_a_slot_frees() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    // A long header timeout, so the held connections stay open however the gateway treats them.
    let lines = ["max_connections = 2".to_string(), "header_read_timeout = \"60s\"".to_string()];
    let gateway = start_gateway(&frappe, &certs, &lines).await;
    let addr: SocketAddr = gateway.proxy_addr();

    let first = tls_connect(addr, &certs.ca_pem, &["http/1.1"]).await;
    let second = tls_connect(addr, &certs.ca_pem, &["http/1.1"]).await;

    let client = https_client(&certs.ca_pem, HttpVersion::Http1Only);
    let url = format!("{}/__test/echo?third=1", gateway.base_url());
    let mut third = tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) });
    let waited = tokio::time::timeout(Duration::from_millis(1500), &mut third).await;
    assert!(waited.is_err(), "the third connection was served while two were held: {waited:?}");
    assert!(frappe.requests().is_empty(), "the third request reached upstream early");

    drop(first);
    let status = tokio::time::timeout(Duration::from_secs(15), &mut third)
        .await
        .expect("the third request is served once a slot frees")
        .expect("task")
        .expect("third request");
    assert_eq!(status, 200);

    // Still serving: the held connection is fine and new clients get through.
    drop(second);
    for version in [HttpVersion::Http1Only, HttpVersion::Http2] {
        let response = https_client(&certs.ca_pem, version)
            .get(format!("{}/__test/echo", gateway.base_url()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{version:?} after the cap: {e}"));
        assert_eq!(response.status(), 200);
    }
    let response =
        http_client().get(format!("{}/healthz", gateway.admin_url())).send().await.expect("healthz");
    assert_eq!(response.status(), 200);
}

// ===== idle connections ==================================================================

async fn idle_gateway(frappe: &FakeFrappe, certs: &Certs) -> Gateway {
    let lines = ["idle_timeout = \"2s\"".to_string(), "header_read_timeout = \"60s\"".to_string()];
    start_gateway(frappe, certs, &lines).await
}

fn get(uri: String, host: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(uri).header("host", host).body(Empty::new()).expect("request")
}

/// An HTTP/1.1 connection that has served a request and then carries nothing for
/// `idle_timeout` is closed by the gateway (instead of holding a connection slot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http1_connection_is_closed_after_idle_timeout() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let gateway = idle_gateway(&frappe, &certs).await;
    let host = format!("localhost:{}", gateway.proxy_addr().port());
    let tls = tls_connect(gateway.proxy_addr(), &certs.ca_pem, &["http/1.1"]).await;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.expect("h1 handshake");
    let connection = tokio::spawn(connection);
    let response = sender.send_request(get("/__test/echo".into(), &host)).await.expect("h1 request");
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.expect("h1 body");
    let closed = tokio::time::timeout(DROP_DEADLINE, connection).await;
    assert!(closed.is_ok(), "an idle HTTP/1.1 connection was still open after {DROP_DEADLINE:?}");
}

/// The same for HTTP/2: the gateway's own keep-alive pings (and the client's automatic acks)
/// are not requests and must not keep an idle connection open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connection_is_closed_after_idle_timeout() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let gateway = idle_gateway(&frappe, &certs).await;
    let host = format!("localhost:{}", gateway.proxy_addr().port());
    let tls = tls_connect(gateway.proxy_addr(), &certs.ca_pem, &["h2"]).await;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let response =
        sender.send_request(get(format!("https://{host}/__test/echo"), &host)).await.expect("h2 request");
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.expect("h2 body");
    let closed = tokio::time::timeout(DROP_DEADLINE, connection).await;
    assert!(closed.is_ok(), "an idle HTTP/2 connection was still open after {DROP_DEADLINE:?}");
}
