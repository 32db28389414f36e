//! Attacks on the forward path, from an audit: what the gateway sends to the upstream
//! (framing, headers, upgrades, request bodies) and what it sends back. Each test asserts the
//! secure behaviour. Those for the audit's findings failed before their fixes: HTTP/2 trailers
//! releasing a streamed form before the scan's verdict, slow large bodies holding gunicorn's
//! sync workers (now spooled first), `upstream.timeout` never starting for a streamed body of
//! known length, a GET's streamed body dropped, WebSocket tunnels outside
//! `server.max_connections` / `idle_timeout`, a preflight opening a tunnel, conflicting framing
//! from the upstream cutting a response, and WebSockets failing on a reused upstream connection.
//!
//! Most tests use [`RawUpstream`], a byte-level HTTP/1.1 upstream defined here that records
//! every byte the gateway sends, parses it as strictly as gunicorn 23 does (flagging any
//! framing ambiguity), and answers with scripted raw bytes (e.g. a `101` to a plain request).

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use common::*;

const STEP: Duration = Duration::from_secs(10);

// ----- a raw, strict HTTP/1.1 upstream ---------------------------------------------------------

/// One request as the raw upstream parsed it.
#[derive(Clone, Debug)]
struct RawRequest {
    method: String,
    target: String,
    /// Lower-case names, values lossily decoded, in arrival order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Anything a strict HTTP/1.1 server (gunicorn 23) would refuse or read differently.
    anomalies: Vec<String>,
}

impl RawRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}

#[derive(Default)]
struct RawLog {
    connections: usize,
    requests: Vec<RawRequest>,
    /// Bytes that arrived on a connection after the upstream answered `101`.
    after_switch: Vec<u8>,
    /// Bytes the upstream could not read as HTTP/1.1 at all.
    errors: Vec<String>,
}

type Responder = Arc<dyn Fn(&RawRequest) -> Vec<u8> + Send + Sync>;

struct RawUpstream {
    addr: SocketAddr,
    log: Arc<Mutex<RawLog>>,
    task: tokio::task::JoinHandle<()>,
}

fn ok_response() -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok".to_vec()
}

impl RawUpstream {
    async fn start(respond: impl Fn(&RawRequest) -> Vec<u8> + Send + Sync + 'static) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind raw upstream");
        let addr = listener.local_addr().expect("addr");
        let log = Arc::new(Mutex::new(RawLog::default()));
        let respond: Responder = Arc::new(respond);
        let task = {
            let log = log.clone();
            tokio::spawn(async move {
                // Dropped (aborting every connection) when the accept task is aborted.
                let mut connections = JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    log.lock().unwrap().connections += 1;
                    connections.spawn(serve_raw(stream, log.clone(), respond.clone()));
                }
            })
        };
        RawUpstream { addr, log, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<RawRequest> {
        self.log.lock().unwrap().requests.clone()
    }

    fn after_switch(&self) -> Vec<u8> {
        self.log.lock().unwrap().after_switch.clone()
    }

    fn errors(&self) -> Vec<String> {
        self.log.lock().unwrap().errors.clone()
    }

    fn clear(&self) {
        let mut log = self.log.lock().unwrap();
        log.requests.clear();
        log.after_switch.clear();
        log.errors.clear();
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_raw(mut stream: TcpStream, log: Arc<Mutex<RawLog>>, respond: Responder) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut switched = false;
    loop {
        if switched {
            // A tunnel now: whatever arrives is recorded raw.
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => log.lock().unwrap().after_switch.extend_from_slice(&chunk[..n]),
            }
            continue;
        }
        match parse_request(&buf) {
            Parsed::Done(request, used) => {
                buf.drain(..used);
                let response = respond(&request);
                log.lock().unwrap().requests.push(request);
                if stream.write_all(&response).await.is_err() {
                    return;
                }
                if response.starts_with(b"HTTP/1.1 101") {
                    switched = true;
                    if !buf.is_empty() {
                        log.lock().unwrap().after_switch.extend_from_slice(&buf);
                        buf.clear();
                    }
                }
                continue;
            }
            Parsed::Bad(why) => {
                log.lock().unwrap().errors.push(why);
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                return;
            }
            Parsed::Incomplete => {}
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                if !buf.is_empty() {
                    log.lock().unwrap().errors.push(format!(
                        "connection closed inside a request: {:?}",
                        String::from_utf8_lossy(&buf[..buf.len().min(200)])
                    ));
                }
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

enum Parsed {
    Incomplete,
    Done(RawRequest, usize),
    Bad(String),
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A strict HTTP/1.1 request parser (the rules gunicorn 23 applies, RFC 9112): anything
/// ambiguous is an anomaly or an error, never silently resolved.
fn parse_request(buf: &[u8]) -> Parsed {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > 1 << 20 { Parsed::Bad("head over 1 MiB".into()) } else { Parsed::Incomplete };
    };
    let head = &buf[..head_end];
    let mut lines = head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let parts: Vec<&[u8]> = request_line.split(|&b| b == b' ').collect();
    if parts.len() != 3 || parts[2] != b"HTTP/1.1" {
        return Parsed::Bad(format!("bad request line {:?}", String::from_utf8_lossy(request_line)));
    }
    let mut anomalies = Vec::new();
    // Every line must end in CRLF (the head's last one ends where `\r\n\r\n` begins): a bare LF
    // or a lone CR would split lines differently for another parser.
    let raw_lines: Vec<&[u8]> = head.split(|&b| b == b'\n').collect();
    for (i, line) in raw_lines.iter().enumerate() {
        let body = if i + 1 < raw_lines.len() {
            match line.strip_suffix(b"\r") {
                Some(body) => body,
                None => {
                    anomalies.push("bare LF in the head".to_string());
                    line
                }
            }
        } else {
            line
        };
        if body.contains(&b'\r') {
            anomalies.push("bare CR in the head".to_string());
        }
    }
    let mut headers = Vec::new();
    for line in lines {
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            return Parsed::Bad("obs-fold".into());
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Parsed::Bad(format!("header line without colon {:?}", String::from_utf8_lossy(line)));
        };
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
            return Parsed::Bad(format!("bad header name {:?}", String::from_utf8_lossy(name)));
        }
        let value = &line[colon + 1..];
        let value = String::from_utf8_lossy(value).trim_matches([' ', '\t']).to_string();
        if value.contains('\0') {
            anomalies.push("NUL in a header value".into());
        }
        headers.push((String::from_utf8_lossy(name).to_ascii_lowercase(), value));
    }
    let cls: Vec<&String> = headers.iter().filter(|(n, _)| n == "content-length").map(|(_, v)| v).collect();
    let tes: Vec<&String> =
        headers.iter().filter(|(n, _)| n == "transfer-encoding").map(|(_, v)| v).collect();
    if !cls.is_empty() && !tes.is_empty() {
        anomalies.push("both Content-Length and Transfer-Encoding".into());
    }
    if cls.len() > 1 {
        anomalies.push(format!("{} Content-Length headers", cls.len()));
    }
    let body_start = head_end + 4;
    let (body, used) = if !tes.is_empty() {
        if tes.len() != 1 || !tes[0].eq_ignore_ascii_case("chunked") {
            anomalies.push(format!("Transfer-Encoding {tes:?}"));
        }
        match parse_chunked(&buf[body_start..], &mut anomalies) {
            Some(Ok((body, n))) => (body, body_start + n),
            Some(Err(why)) => return Parsed::Bad(why),
            None => return Parsed::Incomplete,
        }
    } else if let Some(cl) = cls.first() {
        let Ok(len) = cl.parse::<usize>() else { return Parsed::Bad(format!("Content-Length {cl:?}")) };
        if !cl.bytes().all(|b| b.is_ascii_digit()) {
            anomalies.push(format!("Content-Length {cl:?}"));
        }
        if buf.len() < body_start + len {
            return Parsed::Incomplete;
        }
        (buf[body_start..body_start + len].to_vec(), body_start + len)
    } else {
        (Vec::new(), body_start)
    };
    Parsed::Done(
        RawRequest {
            method: String::from_utf8_lossy(parts[0]).into_owned(),
            target: String::from_utf8_lossy(parts[1]).into_owned(),
            headers,
            body,
            anomalies,
        },
        used,
    )
}

/// `Some(Ok((body, bytes used)))`, `None` while incomplete.
fn parse_chunked(mut rest: &[u8], anomalies: &mut Vec<String>) -> Option<Result<(Vec<u8>, usize), String>> {
    let start_len = rest.len();
    let mut body = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n")?;
        let line = &rest[..line_end];
        let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
        if line.contains(&b';') {
            anomalies.push("chunk extension".into());
        }
        let Ok(size_str) = std::str::from_utf8(size_text) else { return Some(Err("chunk size".into())) };
        let Ok(size) = usize::from_str_radix(size_str, 16) else {
            return Some(Err(format!("chunk size {size_str:?}")));
        };
        rest = &rest[line_end + 2..];
        if size == 0 {
            // Trailer section, up to an empty line.
            loop {
                let end = find(rest, b"\r\n")?;
                if end == 0 {
                    rest = &rest[2..];
                    return Some(Ok((body, start_len - rest.len())));
                }
                anomalies.push(format!("trailer field {:?}", String::from_utf8_lossy(&rest[..end])));
                rest = &rest[end + 2..];
            }
        }
        if rest.len() < size + 2 {
            return None;
        }
        body.extend_from_slice(&rest[..size]);
        if &rest[size..size + 2] != b"\r\n" {
            return Some(Err("chunk not followed by CRLF".into()));
        }
        rest = &rest[size + 2..];
    }
}

// ----- client-side helpers ---------------------------------------------------------------------

/// Reads until the peer closes or `quiet` passes without a byte (bounded by 15 s overall).
async fn read_until_quiet<S: AsyncRead + Unpin>(stream: &mut S, quiet: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        match tokio::time::timeout(quiet, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
        }
    }
    out
}

/// One HTTP/1.1 response at the start of `buf`: (status, headers, body, bytes used). Framed
/// by Content-Length, chunked, or (neither) the rest of the buffer.
/// (status, headers, body, bytes used) of one parsed response.
type ParsedResponse = (u16, Vec<(String, String)>, Vec<u8>, usize);

fn parse_response(buf: &[u8]) -> Option<ParsedResponse> {
    let head_end = find(buf, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let start = head_end + 4;
    let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Some((status, headers, Vec::new(), start));
    }
    if get("transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        let mut ignored = Vec::new();
        let (body, used) = parse_chunked(&buf[start..], &mut ignored)?.ok()?;
        return Some((status, headers, body, start + used));
    }
    if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        let end = (start + len).min(buf.len());
        return Some((status, headers, buf[start..end].to_vec(), end));
    }
    Some((status, headers, buf[start..].to_vec(), buf.len()))
}

fn status_of(head: &str) -> u16 {
    head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

const WS_HANDSHAKE_HEADERS: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n\
     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

async fn ws_echo_works<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, text: &str) -> bool {
    let message = Message::text(text.to_string());
    if tokio::time::timeout(Duration::from_secs(2), ws.send(message.clone()))
        .await
        .map_or(true, |r| r.is_err())
    {
        return false;
    }
    matches!(tokio::time::timeout(Duration::from_secs(2), ws.next()).await, Ok(Some(Ok(m))) if m == message)
}

// ----- 1. CORS preflight + Upgrade: an unauthenticated tunnel on a token route ------------------

/// A CORS preflight (`OPTIONS` with `Access-Control-Request-Method`) passes a token route
/// without credentials — by design, so that browsers can ask. But the gateway still treats it
/// as a WebSocket handshake when it carries `Upgrade: websocket`: the upgrade goes upstream
/// and, if the backend switches protocols, the gateway tunnels a connection that was never
/// authenticated. A preflight must never become a tunnel.
#[tokio::test]
async fn cors_preflight_cannot_open_an_unauthenticated_websocket_tunnel() {
    let frappe = FakeFrappe::start().await;
    // No [[route]]: every path needs a token.
    let gateway = Gateway::start(&ConfigBuilder::new(&frappe.url()).build(), &[]).await;

    // Control: the same handshake as a GET is refused without credentials.
    let mut tcp = tcp_connect(gateway.proxy_addr()).await;
    let get = format!("GET /__test/ws HTTP/1.1\r\nHost: gw\r\n{WS_HANDSHAKE_HEADERS}\r\n");
    tcp.write_all(get.as_bytes()).await.unwrap();
    let head = tokio::time::timeout(STEP, read_response_head(&mut tcp)).await.unwrap().unwrap();
    assert_eq!(status_of(&head), 401, "control: an unauthenticated GET handshake is refused: {head}");
    drop(tcp);

    let mut tcp = tcp_connect(gateway.proxy_addr()).await;
    let preflight = format!(
        "OPTIONS /__test/ws HTTP/1.1\r\nHost: gw\r\nOrigin: https://evil.example\r\n\
         Access-Control-Request-Method: GET\r\n{WS_HANDSHAKE_HEADERS}\r\n"
    );
    tcp.write_all(preflight.as_bytes()).await.unwrap();
    let head = tokio::time::timeout(STEP, read_response_head(&mut tcp)).await.unwrap().unwrap();
    let status = status_of(&head);
    let mut tunnel_works = false;
    if status == 101 {
        let mut ws = WebSocketStream::from_raw_socket(tcp, Role::Client, None).await;
        tunnel_works = ws_echo_works(&mut ws, "no credentials were ever checked").await;
    }
    let seen = frappe.last_request_to("/__test/ws");
    assert!(
        status != 101,
        "an unauthenticated OPTIONS preflight was tunneled as a WebSocket on a token route \
         (status {status}, messages echoed through the tunnel: {tunnel_works}); upstream saw: {:?}",
        seen.map(|r| (r.method, r.headers))
    );
}

// ----- 2. WebSocket tunnels escape the connection limits ---------------------------------------

/// `server.max_connections` bounds open client connections. Once a WebSocket handshake is
/// answered, hyper's connection future returns and the gateway releases the connection's slot
/// while the tunnel lives on: tunnels are unbounded.
#[tokio::test]
async fn websocket_tunnels_count_against_server_max_connections() {
    let frappe = FakeFrappe::start().await;
    let config =
        ConfigBuilder::new(&frappe.url()).set("server", "max_connections = 2").extra(PUBLIC_ROUTE).build();
    let gateway = Gateway::start(&config, &[]).await;

    let mut open = Vec::new();
    for _ in 0..5 {
        let tcp = tcp_connect(gateway.proxy_addr()).await;
        let url = format!("ws://{}/__test/ws", gateway.proxy_addr());
        match tokio::time::timeout(Duration::from_secs(2), tokio_tungstenite::client_async(url, tcp)).await {
            Ok(Ok((ws, _))) => open.push(ws),
            _ => break,
        }
    }
    let mut echoing = 0;
    for ws in &mut open {
        if ws_echo_works(ws, "still open").await {
            echoing += 1;
        }
    }
    assert!(
        open.len() <= 2,
        "{} WebSocket tunnels ({echoing} of them echoing) are open at once through a gateway with \
         server.max_connections = 2",
        open.len()
    );
}

/// `server.idle_timeout` closes a connection with no bytes moving; an upgraded connection is
/// no longer watched, so a silent tunnel (and its upstream socket) is held forever.
#[tokio::test]
async fn an_idle_websocket_tunnel_is_closed_after_idle_timeout() {
    let frappe = FakeFrappe::start().await;
    let config =
        ConfigBuilder::new(&frappe.url()).set("server", "idle_timeout = \"1s\"").extra(PUBLIC_ROUTE).build();
    let gateway = Gateway::start(&config, &[]).await;

    // Control: an idle HTTP/1.1 connection is closed.
    let mut idle_http = tcp_connect(gateway.proxy_addr()).await;
    idle_http.write_all(b"GET /__test/echo HTTP/1.1\r\nHost: gw\r\n\r\n").await.unwrap();
    let _ = read_response_head(&mut idle_http).await;

    let tcp = tcp_connect(gateway.proxy_addr()).await;
    let url = format!("ws://{}/__test/ws", gateway.proxy_addr());
    let (mut ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::client_async(url, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    assert!(ws_echo_works(&mut ws, "before").await, "the tunnel works at first");
    tokio::time::sleep(Duration::from_secs(4)).await;

    let rest = read_until_quiet(&mut idle_http, Duration::from_millis(500)).await;
    let http_closed = idle_http.read(&mut [0u8; 1]).await.map_or(true, |n| n == 0);
    assert!(http_closed, "control: an idle HTTP connection is closed after idle_timeout ({rest:?})");
    assert!(
        !ws_echo_works(&mut ws, "after 4 s of silence").await,
        "a WebSocket tunnel silent for 4 s is still open through a gateway with idle_timeout = 1s"
    );
}

// ----- 3. Streamed bodies and upstream.timeout -------------------------------------------------

/// `upstream.timeout` counts from when the request body has been sent, which the body learns
/// when it returns its end (`Ready(None)`). hyper's client never asks for that end when it
/// already knows the body is complete: a Content-Length body whose last byte has been written,
/// or a GET / HEAD with a streamed body of unknown length (sent without a body at all). The
/// "sent" signal never fires and the request waits for the upstream forever (no 504). Only a
/// chunked POST (the control) gets its 504.
#[tokio::test]
async fn streamed_bodies_are_still_bounded_by_upstream_timeout() {
    for buffering in [false, true] {
        large_bodies_are_bounded_by_upstream_timeout(buffering).await;
    }
}

async fn large_bodies_are_bounded_by_upstream_timeout(buffering: bool) {
    let frappe = FakeFrappe::start().await;
    let config = ConfigBuilder::new(&frappe.url())
        .set("server", "inspect_body_bytes = 1024")
        .set("server", &format!("request_buffering = {buffering}"))
        .set("upstream", "timeout = \"1s\"")
        .extra(PUBLIC_ROUTE)
        .build();
    let gateway = Gateway::start(&config, &[]).await;

    let chunked_body = {
        let mut b = format!("{:x}\r\n", 4096).into_bytes();
        b.extend(std::iter::repeat_n(b'x', 4096));
        b.extend_from_slice(b"\r\n0\r\n\r\n");
        b
    };
    let plain_body = vec![b'x'; 4096];
    let cases: [(&str, &str, &[u8]); 3] = [
        ("POST", "Transfer-Encoding: chunked", &chunked_body),
        ("POST", "Content-Length: 4096", &plain_body),
        ("GET", "Transfer-Encoding: chunked", &chunked_body),
    ];
    let mut results = Vec::new();
    for (method, framing, body) in cases {
        let mut tcp = tcp_connect(gateway.proxy_addr()).await;
        let head = format!(
            "{method} /__test/slow?ms=4000 HTTP/1.1\r\nHost: gw\r\nContent-Type: application/octet-stream\r\n\
             {framing}\r\nConnection: close\r\n\r\n"
        );
        let started = Instant::now();
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(body).await.unwrap();
        let head = tokio::time::timeout(STEP, read_response_head(&mut tcp)).await.unwrap().unwrap();
        results.push((method, framing, status_of(&head), started.elapsed()));
    }
    assert_eq!(results[0].2, 504, "control: a chunked POST gets 504 after upstream.timeout: {results:?}");
    let escaped: Vec<_> =
        results.iter().filter(|r| r.2 != 504 || r.3 > Duration::from_millis(3500)).collect();
    assert!(
        escaped.is_empty(),
        "requests escaped upstream.timeout = 1s (request_buffering = {buffering}): {escaped:?}"
    );
}

/// What the upstream receives for a GET whose streamed body has no length: nothing of it.
#[tokio::test]
async fn a_get_with_a_large_body_of_unknown_length_goes_upstream_whole() {
    for buffering in [false, true] {
        a_get_keeps_its_large_body(buffering).await;
    }
}

async fn a_get_keeps_its_large_body(buffering: bool) {
    let upstream = RawUpstream::start(|_| ok_response()).await;
    let config = ConfigBuilder::new(&upstream.url())
        .set("server", "inspect_body_bytes = 1024")
        .set("server", &format!("request_buffering = {buffering}"))
        .extra(PUBLIC_ROUTE)
        .build();
    let gateway = Gateway::start(&config, &[]).await;
    let mut tcp = tcp_connect(gateway.proxy_addr()).await;
    let mut wire = b"GET /get-body HTTP/1.1\r\nHost: gw\r\nContent-Type: application/octet-stream\r\n\
        Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n1000\r\n"
        .to_vec();
    wire.extend(std::iter::repeat_n(b'x', 4096));
    wire.extend_from_slice(b"\r\n0\r\n\r\n");
    tcp.write_all(&wire).await.unwrap();
    let answer = read_until_quiet(&mut tcp, Duration::from_millis(700)).await;
    let seen = upstream.requests();
    let get = seen.iter().find(|r| r.target == "/get-body").expect("forwarded");
    assert_eq!(
        get.body.len(),
        4096,
        "the upstream got a {}-byte body with headers {:?} (client got {:?}; request_buffering = {buffering})",
        get.body.len(),
        get.headers,
        String::from_utf8_lossy(&answer[..answer.len().min(60)])
    );
}

// ----- 4. Bodies larger than inspect_body_bytes hold Frappe's sync workers ----------------------

/// FRAPPE.md §11 and the README: "a slow client never holds one of Frappe's few sync workers"
/// because bodies are buffered first. That holds only up to `inspect_body_bytes`: a declared
/// larger body is streamed, and the upstream connection is taken before a single body byte
/// arrives; `body_read_timeout` then bounds only the pause between chunks. Two unauthenticated
/// clients on a public route trickling such bodies take both workers of a 2-worker gunicorn
/// (the differential upstream, real gunicorn sync workers), and a well-behaved request starves.
async fn trickle(addr: SocketAddr, content_length: usize, first: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tcp = tcp_connect(addr).await;
        let head = format!(
            "POST /api/method/login HTTP/1.1\r\nHost: gw\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {content_length}\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&vec![b'x'; first]).await.unwrap();
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if tcp.write_all(b"x").await.is_err() {
                return;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_large_bodies_do_not_starve_gunicorn_sync_workers() {
    let upstream = tokio::task::spawn_blocking(|| DifferentialUpstream::start(2)).await.unwrap();
    let config = ConfigBuilder::new(&upstream.url())
        .set("server", "inspect_body_bytes = 1024")
        .set("server", "body_read_timeout = \"2s\"")
        .extra("[[route]]\npath = \"/api/method/\"\nauth = \"public\"\n")
        .build();
    let gateway = Gateway::start(&config, &[]).await;
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(4)).build().unwrap();
    let ping = format!("{}/api/method/ping", gateway.base_url());
    let control = client.get(&ping).send().await.expect("control request");
    assert_eq!(control.status(), 200, "control: the site answers");

    // Control: bodies within inspect_body_bytes are buffered; trickling them costs Frappe nothing.
    let small =
        [trickle(gateway.proxy_addr(), 1000, 500).await, trickle(gateway.proxy_addr(), 1000, 500).await];
    tokio::time::sleep(Duration::from_secs(1)).await;
    let served = client.get(&ping).send().await;
    small.iter().for_each(|t| t.abort());
    assert!(
        served.as_ref().is_ok_and(|r| r.status() == 200),
        "control: trickled small bodies must not starve the site: {served:?}"
    );

    let large = [
        trickle(gateway.proxy_addr(), 100_000, 2048).await,
        trickle(gateway.proxy_addr(), 100_000, 2048).await,
    ];
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let starved = client.get(&ping).send().await;
    let waited = started.elapsed();
    large.iter().for_each(|t| t.abort());
    assert!(
        starved.as_ref().is_ok_and(|r| r.status() == 200),
        "a well-behaved request starved ({waited:?}: {:?}) while 2 unauthenticated clients trickled \
         bodies declared larger than inspect_body_bytes to a public route",
        starved.map(|r| r.status())
    );
}

/// Spooled bodies share `server.max_spool_bytes`: a body that would pass it gets 503 (the
/// gateway's own limit, "retry shortly") and never reaches the upstream; the share comes back
/// when a request ends, so the next one fits again.
#[tokio::test]
async fn spooled_bodies_are_bounded_by_max_spool_bytes() {
    let frappe = FakeFrappe::start().await;
    let config = ConfigBuilder::new(&frappe.url())
        .set("server", "inspect_body_bytes = 1024")
        .set("server", "max_spool_bytes = 3000")
        .extra(PUBLIC_ROUTE)
        .build();
    let gateway = Gateway::start(&config, &[]).await;
    let client = http_client();
    let upload = |len: usize| {
        client
            .post(format!("{}/__test/upload", gateway.base_url()))
            .header("content-type", "application/octet-stream")
            .body(vec![b'x'; len])
            .send()
    };
    for round in 0..3 {
        let fits = upload(2500).await.unwrap();
        assert_eq!(fits.status(), 200, "round {round}: a body within the spool's bound");
    }
    frappe.clear_requests();
    let too_big = upload(4000).await.unwrap();
    assert_eq!(too_big.status(), 503);
    let body: serde_json::Value = too_big.json().await.unwrap();
    assert_eq!(body["exc_type"], "ServiceUnavailableError", "{body}");
    assert!(frappe.last_request_to("/__test/upload").is_none(), "nothing reached the upstream");
    assert_eq!(upload(2500).await.unwrap().status(), 200, "the refused body gave its share back");
}

// ----- 5. Request framing towards the upstream ------------------------------------------------

/// Byte-level HTTP/1.1 framing tricks a client can send. Whatever the gateway answers, every
/// request that reaches the upstream must be one unambiguous message (one framing header, no
/// trailer fields, no chunk extensions), carry no client-chosen identity header, and carry
/// the body the client framed; nothing the client smuggled after a body may reach the
/// upstream as a request of its own unless the gateway judged it as one.
#[tokio::test]
async fn framing_tricks_reach_the_upstream_as_single_well_framed_requests() {
    let upstream = RawUpstream::start(|_| ok_response()).await;
    let gateway = Gateway::start(&ConfigBuilder::new(&upstream.url()).extra(PUBLIC_ROUTE).build(), &[]).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: gw\r\nX-Frappe-User: Administrator\r\n\r\n";
    let cases: Vec<(&str, String, Option<&[u8]>)> = vec![
        (
            "CL before TE, then a smuggled request",
            format!(
                "POST /f1 HTTP/1.1\r\nHost: gw\r\nContent-Type: application/octet-stream\r\nContent-Length: 4\r\n\
                 Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}"
            ),
            Some(b"hello"),
        ),
        (
            "TE before CL, then a smuggled request",
            format!(
                "POST /f2 HTTP/1.1\r\nHost: gw\r\nContent-Type: application/octet-stream\r\n\
                 Transfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}"
            ),
            Some(b"hello"),
        ),
        (
            "chunk extensions and trailers naming identity and framing headers",
            "POST /f3 HTTP/1.1\r\nHost: gw\r\nContent-Type: application/octet-stream\r\nTE: trailers\r\n\
             Trailer: X-Frappe-User, Content-Length\r\nTransfer-Encoding: chunked\r\n\r\n\
             5;ext=\"1\"\r\nhello\r\n0\r\nX-Frappe-User: Administrator\r\nContent-Length: 999\r\n\r\n"
                .to_string(),
            Some(b"hello"),
        ),
        (
            "a GET with a Content-Length body",
            "GET /f4 HTTP/1.1\r\nHost: gw\r\nContent-Type: application/octet-stream\r\nContent-Length: 5\r\n\r\nhello"
                .to_string(),
            Some(b"hello"),
        ),
        (
            "Transfer-Encoding chunked twice, then identity",
            format!(
                "POST /f5 HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\
                 Content-Length: 5\r\n\r\nhello{smuggled}"
            ),
            None,
        ),
        (
            "two pipelined requests, the second with a user header",
            format!("GET /f6 HTTP/1.1\r\nHost: gw\r\n\r\n{smuggled}"),
            Some(b""),
        ),
        (
            "an empty chunked body beside Content-Length",
            "POST /f7 HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
             GET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n"
                .to_string(),
            Some(b""),
        ),
        (
            "a chunk size that overflows",
            format!(
                "POST /f8 HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n\
                 10000000000000005\r\nhello\r\n0\r\n\r\n{smuggled}"
            ),
            None,
        ),
        (
            "an obs-folded header hiding the user header",
            "GET /f9 HTTP/1.1\r\nHost: gw\r\nX-A: 1\r\n X-Frappe-User: Administrator\r\n\r\n".to_string(),
            None,
        ),
    ];
    let mut failures = Vec::new();
    for (name, wire, expected_body) in &cases {
        upstream.clear();
        let mut tcp = tcp_connect(gateway.proxy_addr()).await;
        tcp.write_all(wire.as_bytes()).await.unwrap();
        let answer = read_until_quiet(&mut tcp, Duration::from_millis(700)).await;
        let answer = String::from_utf8_lossy(&answer);
        let seen = upstream.requests();
        let errors = upstream.errors();
        let statuses: Vec<&str> = answer.lines().filter(|l| l.starts_with("HTTP/1.1")).collect();
        let upstream_saw: Vec<(String, String, usize)> =
            seen.iter().map(|r| (r.method.clone(), r.target.clone(), r.body.len())).collect();
        eprintln!("{name}: client got {statuses:?}; upstream saw {upstream_saw:?}");
        if !errors.is_empty() {
            failures.push(format!("{name}: upstream could not parse what it got: {errors:?}"));
        }
        for r in &seen {
            if !r.anomalies.is_empty() {
                failures.push(format!(
                    "{name}: ambiguous request upstream {} {}: {:?}",
                    r.method, r.target, r.anomalies
                ));
            }
            if r.has("x-frappe-user") || r.has("trailer") || r.has("te") {
                failures.push(format!("{name}: {} reached upstream with {:?}", r.target, r.headers));
            }
            if let (Some(expected), true) = (expected_body, r.target.starts_with("/f")) {
                if r.body != *expected {
                    failures.push(format!(
                        "{name}: upstream body {:?}, client framed {:?}",
                        String::from_utf8_lossy(&r.body),
                        String::from_utf8_lossy(expected)
                    ));
                }
            }
        }
        if expected_body.is_none() && seen.iter().any(|r| r.target.starts_with("/f")) {
            failures.push(format!("{name}: forwarded although malformed: {seen:?} (client got {answer:?})"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// HTTP/2 framing: a `content-length` that disagrees with the DATA frames (more, fewer, or a
/// body-less stream declaring one) must never reach the upstream as a differently framed body.
#[tokio::test]
async fn http2_content_length_mismatches_never_reach_the_upstream() {
    let upstream = RawUpstream::start(|_| ok_response()).await;
    let certs = Certs::generate();
    let config = ConfigBuilder::new(&upstream.url()).tls(&certs).extra(PUBLIC_ROUTE).build();
    let gateway = Gateway::start(&config, &[]).await;
    let host = format!("localhost:{}", gateway.proxy_addr().port());
    let cases: [(&str, &str, &str, &[u8]); 4] = [
        ("/h1", "POST", "5", b"hello world, longer than declared"),
        ("/h2", "POST", "100", b"shorter"),
        ("/h3", "GET", "10", b""),
        ("/h4", "POST", "0", b"x"),
    ];
    let mut outcomes = Vec::new();
    for (path, method, declared, body) in cases {
        let tls = tls_connect(gateway.proxy_addr(), &certs.ca_pem, &["h2"]).await;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.expect("h2");
        let conn = tokio::spawn(conn);
        let request = http::Request::builder()
            .method(method)
            .uri(format!("https://{host}{path}"))
            .header("content-type", "application/octet-stream")
            .header("content-length", declared)
            .body(Full::new(Bytes::from_static(body)))
            .unwrap();
        let outcome = match tokio::time::timeout(STEP, sender.send_request(request)).await {
            Ok(Ok(response)) => {
                let status = response.status().as_u16();
                let _ = tokio::time::timeout(STEP, response.into_body().collect()).await;
                format!("{status}")
            }
            Ok(Err(e)) => format!("error: {e:?}"),
            Err(_) => "timeout".into(),
        };
        outcomes.push((path, outcome));
        conn.abort();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = upstream.requests();
    eprintln!(
        "h2 outcomes {outcomes:?}; upstream saw {:?}",
        seen.iter().map(|r| (&r.target, r.body.len())).collect::<Vec<_>>()
    );
    let bad: Vec<_> = seen
        .iter()
        .filter(|r| {
            let sent = cases.iter().find(|c| c.0 == r.target).map(|c| c.3).unwrap_or_default();
            !r.anomalies.is_empty() || r.body != sent
        })
        .map(|r| (r.target.clone(), r.headers.clone(), String::from_utf8_lossy(&r.body).into_owned()))
        .collect();
    assert!(
        bad.is_empty(),
        "h2 bodies reached the upstream framed differently: {bad:#?} (client saw {outcomes:?})"
    );
    assert!(upstream.errors().is_empty(), "{:?}", upstream.errors());
}

// ----- 6. Upgrades the upstream switches unexpectedly -------------------------------------------

/// `Upgrade: h2c` (or any non-WebSocket upgrade) is dropped, the request goes up as a plain
/// one; if the upstream still answers `101`, no tunnel may open: bytes the client sends
/// afterwards must never reach the upstream raw (where they would be requests nobody judged).
#[tokio::test]
async fn an_upstream_101_to_a_plain_request_opens_no_tunnel() {
    let upstream = RawUpstream::start(|r| {
        if r.target.starts_with("/switch") {
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n".to_vec()
        } else {
            ok_response()
        }
    })
    .await;
    let gateway = Gateway::start(&ConfigBuilder::new(&upstream.url()).extra(PUBLIC_ROUTE).build(), &[]).await;
    for upgrade in ["h2c", "websocket-but-not-really"] {
        upstream.clear();
        let mut tcp = tcp_connect(gateway.proxy_addr()).await;
        let first = format!(
            "GET /switch HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: {upgrade}\r\n\
             HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
        );
        tcp.write_all(first.as_bytes()).await.unwrap();
        let head = tokio::time::timeout(STEP, read_response_head(&mut tcp)).await.unwrap().unwrap();
        let raw = "GET /api/method/frappe.client.get_password HTTP/1.1\r\nHost: gw\r\nX-Frappe-User: Administrator\r\n\r\n";
        let _ = tcp.write_all(raw.as_bytes()).await;
        let _ = read_until_quiet(&mut tcp, Duration::from_millis(700)).await;

        let seen = upstream.requests();
        let switch = seen.iter().find(|r| r.target == "/switch").expect("the request reached the upstream");
        for hop in ["upgrade", "connection", "http2-settings"] {
            assert!(!switch.has(hop), "{upgrade}: {hop} reached the upstream: {:?}", switch.headers);
        }
        let tunneled = upstream.after_switch();
        assert!(
            tunneled.is_empty(),
            "{upgrade}: bytes sent after the upstream's 101 reached it raw (client got {head:?}): {:?}",
            String::from_utf8_lossy(&tunneled)
        );
        assert!(seen.iter().all(|r| !r.has("x-frappe-user")), "{seen:?}");
    }
}

/// A WebSocket handshake that lands on a pooled keep-alive connection: the connection was
/// opened without upgrade support, so the upstream's 101 cannot be tunneled.
/// (Functional, not a bypass: socket.io's polling requests leave such connections behind.)
#[tokio::test]
async fn a_websocket_after_a_plain_request_on_the_same_backend_is_tunneled() {
    let frappe = FakeFrappe::start().await;
    let config = ConfigBuilder::new(&frappe.url()).set("server", "workers = 1").extra(PUBLIC_ROUTE).build();
    let gateway = Gateway::start(&config, &[]).await;
    let plain = http_client().get(format!("{}/__test/echo", gateway.base_url())).send().await.expect("plain");
    assert_eq!(plain.status(), 200);
    let _ = plain.bytes().await;
    let tcp = tcp_connect(gateway.proxy_addr()).await;
    let url = format!("ws://{}/__test/ws", gateway.proxy_addr());
    let (mut ws, response) = tokio::time::timeout(STEP, tokio_tungstenite::client_async(url, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    assert_eq!(response.status(), 101);
    assert!(
        ws_echo_works(&mut ws, "through a reused connection").await,
        "the tunnel does not carry messages"
    );
}

// ----- 7. Response framing and hop-by-hop headers from the upstream -----------------------------

/// An upstream response with both `Transfer-Encoding: chunked` and a `Content-Length` (RFC
/// 9112 §6.3: the length is ignored and a proxy must remove it) and hop-by-hop headers named
/// in `Connection`: the client must get the whole chunked body, framed once, and none of the
/// connection-specific headers.
#[tokio::test]
async fn an_upstream_response_with_conflicting_framing_reaches_the_client_whole() {
    let upstream = RawUpstream::start(|r| {
        if r.target == "/conflict" {
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\
              Connection: keep-alive, X-Internal-Secret\r\nX-Internal-Secret: s3cr3t\r\n\
              Proxy-Authenticate: Basic realm=\"internal\"\r\nKeep-Alive: timeout=5\r\n\r\n\
              11\r\nhello, whole body\r\n0\r\n\r\n"
                .to_vec()
        } else {
            ok_response()
        }
    })
    .await;
    let gateway = Gateway::start(&ConfigBuilder::new(&upstream.url()).extra(PUBLIC_ROUTE).build(), &[]).await;
    let mut tcp = tcp_connect(gateway.proxy_addr()).await;
    tcp.write_all(b"GET /conflict HTTP/1.1\r\nHost: gw\r\n\r\nGET /after HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let bytes = read_until_quiet(&mut tcp, Duration::from_millis(700)).await;
    let (status, headers, body, used) =
        parse_response(&bytes).unwrap_or_else(|| panic!("a response: {:?}", String::from_utf8_lossy(&bytes)));
    let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    for hop in ["x-internal-secret", "proxy-authenticate", "keep-alive", "connection"] {
        assert!(!names.contains(&hop), "{hop} reached the client: {headers:?}");
    }
    let framing = names.iter().filter(|n| **n == "content-length" || **n == "transfer-encoding").count();
    let second =
        parse_response(&bytes[used..]).map(|(s, _, b, _)| (s, String::from_utf8_lossy(&b).into_owned()));
    assert!(
        status == 200 && body == b"hello, whole body" && framing == 1,
        "the client got status {status}, body {:?}, headers {headers:?}; then {second:?}",
        String::from_utf8_lossy(&body)
    );
}

// ----- 8. The streamed multipart scan and request trailers --------------------------------------

const SCAN_BOUNDARY: &str = "XyZ";

/// A multipart form over `inspect_body_bytes` (so it streams through the scan) whose last
/// field is `cmd`: the scan may only let its last bytes go once it has judged the whole form.
fn form_with_cmd_last(cmd: &str) -> Vec<u8> {
    form_with_field_last("cmd", cmd)
}

fn form_with_field_last(field: &str, value: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{SCAN_BOUNDARY}\r\nContent-Disposition: form-data; name=\"pad\"\r\n\r\n").as_bytes(),
    );
    body.extend(std::iter::repeat_n(b'a', 4000));
    body.extend_from_slice(
        format!(
            "\r\n--{SCAN_BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"\r\n\r\n{value}\r\n--{SCAN_BOUNDARY}--\r\n"
        )
        .as_bytes(),
    );
    body
}

/// `buffering`: `server.request_buffering` (spooled first, or streamed through the scan).
async fn scan_env(buffering: bool) -> (DifferentialUpstream, Gateway) {
    let upstream = tokio::task::spawn_blocking(|| DifferentialUpstream::start(2)).await.unwrap();
    let config = ConfigBuilder::new(&upstream.url())
        .set("server", "inspect_body_bytes = 1024")
        .set("server", &format!("request_buffering = {buffering}"))
        .extra(
            "[[route]]\npath = \"/api/method/ping\"\nauth = \"public\"\n\n\
             [[route]]\npath = \"/api/method/frappe.client.get_password\"\nauth = \"deny\"\n",
        )
        .build();
    let gateway = Gateway::start(&config, &[]).await;
    (upstream, gateway)
}

/// An HTTP/2 request (prior knowledge, plain TCP) with `content-length`, the form as one
/// DATA frame and, when `trailers`, a trailing HEADERS frame. Returns (status, body).
async fn h2_form(gateway: &Gateway, body: Vec<u8>, trailers: bool) -> (u16, String) {
    h2_form_to(gateway, "/api/method/ping", None, body, trailers).await
}

async fn h2_form_to(
    gateway: &Gateway,
    path: &str,
    authorization: Option<&str>,
    body: Vec<u8>,
    trailers: bool,
) -> (u16, String) {
    let tcp = tcp_connect(gateway.proxy_addr()).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.expect("h2c");
    let conn = tokio::spawn(conn);
    let len = body.len();
    let mut frames = vec![Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(body)))];
    if trailers {
        let mut map = http::HeaderMap::new();
        map.insert("x-checksum", http::HeaderValue::from_static("0"));
        frames.push(Ok(http_body::Frame::trailers(map)));
    }
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}{path}", gateway.proxy_addr()))
        .header("content-type", format!("multipart/form-data; boundary={SCAN_BOUNDARY}"))
        .header("content-length", len);
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    let request = request.body(http_body_util::StreamBody::new(futures_util::stream::iter(frames))).unwrap();
    let result = match tokio::time::timeout(STEP, sender.send_request(request)).await {
        Ok(Ok(response)) => {
            let status = response.status().as_u16();
            let body = tokio::time::timeout(STEP, response.into_body().collect()).await;
            let body = body.ok().and_then(|b| b.ok()).map(|b| b.to_bytes()).unwrap_or_default();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
        Ok(Err(e)) => (0, format!("error: {e}")),
        Err(_) => (0, "timeout".into()),
    };
    conn.abort();
    result
}

/// The streaming scan holds back the body's last DATA frame until it has judged the whole
/// form, but a non-data frame (HTTP/2 trailers) releases the held frame before the scan has
/// seen the body's end. With a `content-length`, that frame completes the upstream body:
/// hyper's client then stops polling the body (its length is reached), the scan's final
/// verdict never comes, and Frappe runs the form's `cmd` — here a method behind a `deny`
/// route, sent to a public path. Without trailers the same form is refused (control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_trailers_cannot_release_a_streamed_form_before_the_scan_has_judged_it() {
    for buffering in [false, true] {
        trailers_cannot_release_a_form(buffering).await;
    }
}

async fn trailers_cannot_release_a_form(buffering: bool) {
    let (upstream, gateway) = scan_env(buffering).await;

    let control = h2_form(&gateway, form_with_cmd_last("frappe.client.get_password"), false).await;
    assert_eq!(control.0, 403, "control: without trailers the scan refuses the form's cmd: {control:?}");
    let refused =
        upstream.records().iter().filter(|r| r["runs"]["method"] == "frappe.client.get_password").count();
    assert_eq!(refused, 0, "control: the refused form ran upstream");

    let attack = h2_form(&gateway, form_with_cmd_last("frappe.client.get_password"), true).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ran: Vec<_> = upstream
        .records()
        .into_iter()
        .filter(|r| r["runs"]["method"] == "frappe.client.get_password")
        .map(|r| r["runs"].clone())
        .collect();
    assert!(
        ran.is_empty(),
        "a streamed multipart form with HTTP/2 trailers ran the denied method upstream: {ran:?}; \
         the client got {attack:?} (request_buffering = {buffering})"
    );
}

/// The same trick on a token route: a `sid` field (refused by the scan, since Frappe prefers a
/// session to the token) reaches Frappe, which then acts as the session's user while the
/// gateway vouched for the token's user in `X-Frappe-User`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_trailers_cannot_smuggle_a_sid_past_the_scan_on_a_token_route() {
    for buffering in [false, true] {
        trailers_cannot_smuggle_a_sid(buffering).await;
    }
}

async fn trailers_cannot_smuggle_a_sid(buffering: bool) {
    const USER: &str = "api.user@example.com";
    const KEY: &str = "0a1b2c3d4e5f607";
    const SECRET: &str = "9f8e7d6c5b4a392";
    const SID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef01234567";
    let frappe = FakeFrappe::start().await;
    frappe.add_user(USER, KEY, SECRET);
    let upstream = tokio::task::spawn_blocking(|| DifferentialUpstream::start(2)).await.unwrap();
    let config = ConfigBuilder::new(&upstream.url())
        .set("server", "inspect_body_bytes = 1024")
        .set("server", &format!("request_buffering = {buffering}"))
        .set("frappe", &format!("url = {}", toml_str(&frappe.url())))
        .extra("[[route]]\npath = \"/api/\"\nauth = \"token\"\n")
        .build();
    let gateway = Gateway::start(&config, &[]).await;
    let token = token_header(KEY, SECRET);

    let control =
        h2_form_to(&gateway, "/api/resource/ToDo", Some(&token), form_with_field_last("sid", SID), false)
            .await;
    assert_eq!(control.0, 403, "control: without trailers the scan refuses the sid: {control:?}");

    let attack =
        h2_form_to(&gateway, "/api/resource/ToDo", Some(&token), form_with_field_last("sid", SID), true)
            .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hijacked: Vec<_> = upstream
        .records()
        .into_iter()
        .filter(|r| r["acts_as"].as_str().is_some_and(|a| a.starts_with("session:")))
        .map(|r| (r["acts_as"].clone(), r["runs"].clone()))
        .collect();
    assert!(
        hijacked.is_empty(),
        "with HTTP/2 trailers a sid reached Frappe on a token route: {hijacked:?}; the client got {attack:?}"
    );
}

/// The same over HTTP/1.1 (chunked body with a trailer section): the upstream body is chunked,
/// so the early-released frame does not complete it and the scan's refusal aborts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_chunked_trailers_cannot_release_a_streamed_form_before_the_scan_has_judged_it() {
    let (upstream, gateway) = scan_env(false).await;
    let body = form_with_cmd_last("frappe.client.get_password");
    let mut wire = format!(
        "POST /api/method/ping HTTP/1.1\r\nHost: gw\r\nContent-Type: multipart/form-data; boundary={SCAN_BOUNDARY}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n",
        body.len()
    )
    .into_bytes();
    wire.extend_from_slice(&body);
    wire.extend_from_slice(b"\r\n0\r\nX-Checksum: 0\r\n\r\n");
    let mut tcp = tcp_connect(gateway.proxy_addr()).await;
    tcp.write_all(&wire).await.unwrap();
    let answer = read_until_quiet(&mut tcp, Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ran: Vec<_> = upstream
        .records()
        .into_iter()
        .filter(|r| r["runs"]["method"] == "frappe.client.get_password")
        .collect();
    assert!(ran.is_empty(), "ran {ran:?}; client got {:?}", String::from_utf8_lossy(&answer));
}

/// HTTP/2 CONNECT (hyper treats it as a tunnel request of its own) is refused like HTTP/1.1's,
/// before anything reaches the upstream.
#[tokio::test]
async fn http2_connect_is_refused_before_the_upstream() {
    let upstream = RawUpstream::start(|_| ok_response()).await;
    let gateway = Gateway::start(&ConfigBuilder::new(&upstream.url()).extra(PUBLIC_ROUTE).build(), &[]).await;
    let tcp = tcp_connect(gateway.proxy_addr()).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.expect("h2c");
    let conn = tokio::spawn(conn);
    let request = http::Request::builder()
        .method("CONNECT")
        .uri(format!("{}", upstream.addr))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(STEP, sender.send_request(request)).await.expect("in time");
    let status = response.as_ref().map(|r| r.status().as_u16());
    conn.abort();
    assert!(matches!(status, Ok(405)), "h2 CONNECT answered {status:?}");
    assert_eq!(upstream.log.lock().unwrap().connections, 0, "h2 CONNECT reached the upstream");
}
