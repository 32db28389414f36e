//! Attacks on the admin listener (CSRF on `POST /reload`, slow webhook bodies, metrics
//! exposition) and denial of service on the proxy listener (HTTP/2 connection slots held by
//! PINGs, unfinished bodies pinning memory, rapid reset, CONTINUATION floods), from an audit.
//! Everything on 127.0.0.1, raw sockets, bounded in count and time.
//!
//! Tests named `*_refused` passed on the audited code; the others failed on it and pass since
//! their fixes.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

const WAIT: Duration = Duration::from_secs(15);
const WEBHOOK_SECRET: &str = "audit-webhook-secret-5f3c9e21";

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1 helpers
// ---------------------------------------------------------------------------------------------

/// Writes `request` on a new connection and reads until EOF: `(status, head, body)`.
async fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let run = async {
        let mut stream = tcp_connect(addr).await;
        stream.write_all(request).await.expect("write request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read response");
        raw
    };
    let raw = tokio::time::timeout(WAIT, run).await.expect("response within WAIT");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no response head: {text:?}"));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
    (status, head.to_string(), body.to_string())
}

/// `gateway_config_reloads_total{result="ok"}` from the admin listener.
async fn reloads_ok(admin: SocketAddr) -> f64 {
    let request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let (status, _, text) = exchange(admin, request).await;
    assert_eq!(status, 200, "{text}");
    let line = text.lines().find(|l| l.starts_with("gateway_config_reloads_total{result=\"ok\"}"));
    line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// Admin listener
// ---------------------------------------------------------------------------------------------

/// A web page on any IP origin (`http://203.0.113.7/`, or a LAN device the victim browses)
/// can make the operator's browser submit a cross-site HTML form to
/// `http://127.0.0.1:9901/reload`: `enctype="text/plain"` is a "simple" request (no CORS
/// preflight), the browser sends `Host: 127.0.0.1:9901` (an IP: passes the DNS-rebinding
/// guard), `Origin: http://203.0.113.7` and `Sec-Fetch-Site: cross-site`. The gateway reloads
/// its configuration on that request. A state-changing admin endpoint must refuse a request
/// whose `Origin` is foreign (or that a plain form can produce at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_form_post_cannot_trigger_reload() {
    let frappe = FakeFrappe::start().await;
    let gateway = Gateway::start(&ConfigBuilder::new(&frappe.url()).build(), &[]).await;
    let admin = gateway.admin_addr();
    let before = reloads_ok(admin).await;

    let body = "a=b";
    let request = format!(
        "POST /reload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://203.0.113.7\r\n\
         Referer: http://203.0.113.7/innocent.html\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: navigate\r\n\
         Content-Type: text/plain\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}",
        port = admin.port(),
        len = body.len()
    );
    let (status, _, text) = exchange(admin, request.as_bytes()).await;
    let after = reloads_ok(admin).await;
    assert_eq!(
        after, before,
        "a cross-site form POST (Origin http://203.0.113.7, text/plain) reloaded the configuration: {status} {text}"
    );
    assert_eq!(status, 403, "a cross-site POST /reload must be refused: {status} {text}");
}

/// `POST /hooks/frappe` is reachable with any Host (Frappe calls it) and is read before the
/// signature can be checked. The admin listener sets only hyper's `header_read_timeout`
/// (10 s, the head): a client that sends the head and then a body slower than any limit holds
/// the connection (a task, a socket, up to 256 KiB of buffer) for as long as it likes. There is
/// no connection cap on the admin listener either, and it shares the process's file
/// descriptors with the proxy listener. Here 32 connections each send a webhook head
/// announcing 4 KiB and 10 bytes of it, then nothing: after 14 s (past any sane body timeout,
/// e.g. the 10 s the head gets) every one of them must have been answered or closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_webhook_bodies_do_not_hold_admin_connections_forever() {
    let frappe = FakeFrappe::start().await;
    let config = ConfigBuilder::new(&frappe.url()).build();
    let gateway = Gateway::start(&config, &[("GATEWAY_WEBHOOK_SECRET", WEBHOOK_SECRET)]).await;
    let admin = gateway.admin_addr();

    let mut held = Vec::new();
    for _ in 0..32 {
        let mut stream = tcp_connect(admin).await;
        let head = "POST /hooks/frappe HTTP/1.1\r\nHost: frappe-gateway:9901\r\n\
                    X-Frappe-Webhook-Signature: AAAA\r\nContent-Type: application/json\r\n\
                    Content-Length: 4096\r\n\r\n{\"name\": \"";
        stream.write_all(head.as_bytes()).await.expect("write head");
        held.push(stream);
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(14)).await;

    let mut still_open = 0;
    for mut stream in held {
        let mut buf = [0u8; 512];
        // Closed or answered: a read returns at once (EOF, an error, or response bytes).
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(_) => {}
            Err(_) => still_open += 1,
        }
    }
    assert_eq!(
        still_open,
        0,
        "{still_open} of 32 admin connections holding a partial webhook body were still open after {:?}",
        started.elapsed()
    );
}

/// `gateway_route_requests_total{route=...}` writes the configured `[[route]] path` into the
/// exposition unescaped (prometheus-client 0.23 does not escape label values). A route path
/// holding a `"` (accepted by config validation: it starts with `/`) breaks the exposition:
/// Prometheus refuses the whole scrape, or, with a crafted path, reads forged series. Label
/// values must be escaped (`\\`, `\"`, `\n`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_label_values_are_escaped_in_the_exposition() {
    let frappe = FakeFrappe::start().await;
    let path = "/odd\"} 1\nforged_metric_total{x=\"1/";
    let config = ConfigBuilder::new(&frappe.url())
        .extra(&format!("[[route]]\npath = {}\nauth = \"public\"\n", toml_str(path)))
        .build();
    let gateway = Gateway::start(&config, &[]).await;
    let request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let (status, _, text) = exchange(gateway.admin_addr(), request).await;
    assert_eq!(status, 200);
    let forged: Vec<&str> = text.lines().filter(|l| l.starts_with("forged_metric_total")).collect();
    assert!(forged.is_empty(), "a route path injected series into /metrics: {forged:?}");
    assert!(
        text.contains(r#"route="/odd\"} 1\nforged_metric_total{x=\"1/""#),
        "the route label is not escaped:\n{}",
        text.lines().filter(|l| l.contains("route_requests")).collect::<Vec<_>>().join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/2 (prior knowledge, plain TCP: the proxy listener without TLS sniffs the preface)
// ---------------------------------------------------------------------------------------------

use common::h2_raw::*;

/// `GET path` over plain HTTP, literals without indexing (no Huffman).
fn request_block(authority: &str, path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    for (index, value) in [(1u8, authority), (4, path)] {
        block.push(index);
        block.push(u8::try_from(value.len()).unwrap());
        block.extend_from_slice(value.as_bytes());
    }
    block
}

async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await?;
    Ok((head[3], head[4], id, payload))
}

/// Opens an HTTP/2 connection and completes one `GET /__test/echo` on stream 1 (which makes
/// the connection "served": the first-request timer no longer applies).
async fn h2_served(addr: SocketAddr) -> TcpStream {
    let mut s = tcp_connect(addr).await;
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let authority = format!("127.0.0.1:{}", addr.port());
    let block = request_block(&authority, "/__test/echo");
    s.write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &block)).await.unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            let (kind, flags, id, _) = read_frame(&mut s).await.expect("frame");
            if kind == SETTINGS && flags & ACK == 0 {
                s.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
            }
            if id == 1 && (kind == HEADERS || kind == DATA) && flags & END_STREAM != 0 {
                break;
            }
        }
    })
    .await
    .expect("the first request is answered");
    s
}

fn h2_gateway_config(frappe: &FakeFrappe, server: &[&str]) -> String {
    let mut builder = ConfigBuilder::new(&frappe.url()).extra(PUBLIC_ROUTE);
    for line in server {
        builder = builder.set("server", line);
    }
    builder.build()
}

/// `server.idle_timeout` counts "bytes moving", so an HTTP/2 PING (17 bytes) is activity: a
/// client that makes one request (any, unauthenticated: a 401 counts) and then PINGs once
/// per `idle_timeout` keeps the connection — and its `server.max_connections` slot — forever
/// (no maximum connection age, no per-IP connection cap). `max_connections` such connections
/// (4096 by default, ≈ 60 PINGs a second at the default 75 s) lock every other client out;
/// they wait in the accept queue. Here max_connections = 2, idle_timeout = 2 s: two pinging
/// connections, and a third client must still be served within 8 s (4 × idle_timeout), i.e.
/// a connection with no open stream whose peer only sends control frames must count as idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_alone_do_not_keep_an_idle_h2_connection_and_its_slot() {
    let frappe = FakeFrappe::start().await;
    let config = h2_gateway_config(
        &frappe,
        &["workers = 1", "max_connections = 2", "idle_timeout = \"2s\"", "header_read_timeout = \"2s\""],
    );
    let gateway = Gateway::start(&config, &[]).await;
    let addr = gateway.proxy_addr();

    let mut pingers = Vec::new();
    for _ in 0..2 {
        let mut s = h2_served(addr).await;
        pingers.push(tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let reader = async {
                // Drain PING ACKs; return when the gateway closes the connection.
                while let Ok((kind, ..)) = read_frame(&mut r).await {
                    if kind == GOAWAY {
                        break;
                    }
                }
            };
            let writer = async {
                for i in 0u64.. {
                    if w.write_all(&frame(PING, 0, 0, &i.to_be_bytes())).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            };
            tokio::select! { _ = reader => {}, _ = writer => {} }
        }));
    }

    let started = Instant::now();
    let request =
        format!("GET /__test/echo HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n", addr.port());
    let third = tokio::time::timeout(Duration::from_secs(8), async {
        let mut s = tcp_connect(addr).await;
        s.write_all(request.as_bytes()).await.unwrap();
        read_response_head(&mut s).await
    })
    .await;
    for p in &pingers {
        p.abort();
    }
    match third {
        Ok(Ok(head)) => assert!(head.starts_with("HTTP/1.1 200"), "{head}"),
        other => panic!(
            "a third client was not served within {:?} while two connections only sent PINGs \
             (max_connections = 2, idle_timeout = 2s): {other:?}",
            started.elapsed()
        ),
    }
}

/// CVE-2023-44487 (rapid reset): HEADERS immediately followed by RST_STREAM, 200 times in one
/// write. h2 counts streams reset before they were accepted and answers GOAWAY
/// ENHANCE_YOUR_CALM past 20; the gateway must stay up and Frappe must not see hundreds of
/// requests. Passes on current code (h2 0.4.20's default `max_pending_accept_reset_streams`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_flood_is_refused() {
    let frappe = FakeFrappe::start().await;
    let gateway = Gateway::start(&h2_gateway_config(&frappe, &["workers = 1"]), &[]).await;
    let addr = gateway.proxy_addr();
    let authority = format!("127.0.0.1:{}", addr.port());
    let before = frappe.requests().len();

    let mut s = tcp_connect(addr).await;
    let mut flood = PREFACE.to_vec();
    flood.extend(frame(SETTINGS, 0, 0, &[]));
    let block = request_block(&authority, "/__test/echo");
    for i in 0..200u32 {
        let id = 1 + 2 * i;
        flood.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
        flood.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
    }
    let _ = s.write_all(&flood).await;
    let goaway = tokio::time::timeout(WAIT, async {
        loop {
            match read_frame(&mut s).await {
                Ok((GOAWAY, _, _, payload)) => {
                    break Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()))
                }
                Ok(_) => {}
                Err(_) => break None,
            }
        }
    })
    .await
    .expect("the gateway ends the connection");
    assert_eq!(goaway, Some(0xb), "GOAWAY ENHANCE_YOUR_CALM expected");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reached = frappe.requests().len() - before;
    assert!(reached <= 40, "{reached} of 200 reset requests reached Frappe");
    // Still serving.
    let _ = h2_served(addr).await;
}

/// CONTINUATION flood: a HEADERS frame without END_HEADERS, then 16 KiB CONTINUATION frames
/// that never end (4 MiB offered). h2 caps the header list (`max_header_list_size`, here
/// 2 × max_header_bytes) and the number of CONTINUATION frames; the connection must be ended
/// long before 4 MiB is taken in, and the gateway must keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_is_refused() {
    let frappe = FakeFrappe::start().await;
    let gateway = Gateway::start(&h2_gateway_config(&frappe, &["workers = 1"]), &[]).await;
    let addr = gateway.proxy_addr();
    let authority = format!("127.0.0.1:{}", addr.port());

    let mut s = tcp_connect(addr).await;
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    s.write_all(&frame(HEADERS, 0, 1, &request_block(&authority, "/__test/echo"))).await.unwrap();
    // One literal header (new name, not indexed) of ~16 KiB per frame.
    let mut chunk = vec![0x00, 0x01, b'x', 0x7f];
    let mut len = 16_000 - 127;
    let mut enc = Vec::new();
    while len >= 128 {
        enc.push((len % 128) as u8 | 0x80);
        len /= 128;
    }
    enc.push(len as u8);
    chunk.extend(enc);
    chunk.resize(chunk.len() + 16_000, b'a');
    let cont = frame(CONTINUATION, 0, 1, &chunk);
    let (mut r, mut w) = s.split();
    let writer = async {
        let mut sent = 0usize;
        for _ in 0..256 {
            if w.write_all(&cont).await.is_err() {
                break;
            }
            sent += cont.len();
        }
        sent
    };
    let reader = async {
        loop {
            match read_frame(&mut r).await {
                Ok((GOAWAY, _, _, p)) => {
                    eprintln!(
                        "continuation flood: GOAWAY {:#x}",
                        u32::from_be_bytes(p[4..8].try_into().unwrap())
                    );
                    break true;
                }
                Err(e) => {
                    eprintln!("continuation flood: connection ended: {e}");
                    break true;
                }
                Ok((RST_STREAM, _, 1, _)) => break true,
                Ok((HEADERS, _, 1, _)) => break true, // a 431 answer
                Ok(_) => {}
            }
        }
    };
    let (sent, ended) = tokio::time::timeout(WAIT, async { tokio::join!(writer, reader) })
        .await
        .expect("the flood is cut off within WAIT");
    assert!(ended, "the gateway did not end the stream or connection");
    eprintln!("continuation flood: {sent} bytes written before the gateway ended it");
    let _ = h2_served(addr).await;
}

/// Bodies up to `server.inspect_body_bytes` (1 MiB) are read whole into memory before
/// anything else happens, on a `public` route before any credential is asked for; HTTP/2 lets
/// one connection carry 256 such requests at once, and the gateway releases flow-control
/// window as it buffers. There is no cap on the memory all such bodies hold together
/// (`max_spool_bytes` covers only the temporary files): one unauthenticated connection pins
/// 256 MiB for `body_read_timeout` (30 s) by never sending END_STREAM, and `max_connections`
/// connections multiply it. Here one connection opens 48 POSTs to a public route and sends
/// 1,000,000 bytes of each body (≈ 2,950 DATA frames), never ending them; the gateway's
/// resident memory must not grow by more than 16 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_h2_bodies_cannot_pin_unbounded_memory() {
    let frappe = FakeFrappe::start().await;
    let config = h2_gateway_config(&frappe, &["workers = 1"]);
    let gateway = GatewayProcess::start(&config, &[]).await;
    let addr = gateway.proxy_addr();
    let authority = format!("127.0.0.1:{}", addr.port());
    // Warm up (one served request on its own connection), then take the baseline.
    drop(h2_served(addr).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = rss_kib(gateway.pid()).expect("rss");

    // POST /__test/echo, content-type application/octet-stream (opaque: read up to inspect).
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
                                      // Literals without indexing, indexed names: :authority (1), :path (4), content-type (31:
                                      // over the 4-bit prefix, so 0x0f then 31 - 15).
    for (index, value) in
        [(&[1u8][..], authority.as_str()), (&[4], "/__test/echo"), (&[0x0f, 16], "application/octet-stream")]
    {
        block.extend_from_slice(index);
        block.push(u8::try_from(value.len()).unwrap());
        block.extend_from_slice(value.as_bytes());
    }
    let mut s = tcp_connect(addr).await;
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    // The connection-level send window (RFC 9113 §6.9.2: 65,535 until WINDOW_UPDATE).
    let window = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(65_535));
    let notify = std::sync::Arc::new(tokio::sync::Notify::new());
    let chunk = vec![b'z'; 16_000];
    let (mut r, mut w) = s.into_split();
    let reader = {
        let (window, notify) = (window.clone(), notify.clone());
        tokio::spawn(async move {
            while let Ok((kind, _, id, payload)) = read_frame(&mut r).await {
                if kind == 0x8 && id == 0 {
                    let inc = u32::from_be_bytes(payload[..4].try_into().unwrap()) & 0x7fff_ffff;
                    window.fetch_add(i64::from(inc), std::sync::atomic::Ordering::SeqCst);
                    notify.notify_one();
                }
                if kind == GOAWAY {
                    eprintln!("h2 bodies: GOAWAY {:?}", &payload[..8]);
                }
            }
        })
    };
    let writer = async {
        w.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
        for i in 0..48u32 {
            let id = 1 + 2 * i;
            w.write_all(&frame(HEADERS, END_HEADERS, id, &block)).await.unwrap();
            let mut sent = 0;
            while sent < 1_000_000 {
                let n = chunk.len().min(1_000_000 - sent);
                while window.load(std::sync::atomic::Ordering::SeqCst) < n as i64 {
                    let _ = tokio::time::timeout(Duration::from_millis(50), notify.notified()).await;
                }
                window.fetch_sub(n as i64, std::sync::atomic::Ordering::SeqCst);
                w.write_all(&frame(DATA, 0, id, &chunk[..n])).await.unwrap();
                sent += n;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), writer).await.expect("48 MB written within 20 s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = rss_kib(gateway.pid()).expect("rss");
    let grown_mib = (held.saturating_sub(baseline)) as f64 / 1024.0;
    eprintln!(
        "h2 bodies: baseline {baseline} KiB, with 48 unfinished 1 MB bodies {held} KiB (+{grown_mib:.1} MiB)"
    );
    reader.abort();
    assert!(
        grown_mib <= 16.0,
        "one unauthenticated HTTP/2 connection made the gateway hold {grown_mib:.1} MiB more memory \
         (48 unfinished 1 MB bodies on a public route; 256 are allowed per connection)"
    );
}
