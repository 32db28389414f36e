//! Acceptance 8: every request, allowed or not, produces exactly one access-log line that
//! parses as JSON with the documented fields; query values (which can hold secrets) never
//! appear; the log goes to stdout or to a file.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{
    https_client, read_json_lines, toml_str, Certs, ConfigBuilder, FakeFrappe, Gateway, HttpVersion,
};

const BODY_LIMIT: usize = 1024;
const HEADER_LIMIT: usize = 4096;
const SECRET: &str = "secretvalue4242";
const LOG_WAIT: Duration = Duration::from_secs(10);

fn config(frappe: &FakeFrappe, certs: &Certs) -> ConfigBuilder {
    let routes = format!(
        "[[route]]\npath = \"/\"\nauth = \"public\"\n\n\
         [[route]]\npath = \"/api/method/frappe.client.get_password\"\nauth = \"deny\"\n\n\
         [[route]]\npath = \"/down/\"\nauth = \"public\"\nupstream = \"http://127.0.0.1:{}\"\n",
        common::refused_port()
    );
    ConfigBuilder::new(&frappe.url())
        .tls(certs)
        .set("server", &format!("max_body_bytes = {BODY_LIMIT}"))
        .set("server", &format!("max_header_bytes = {HEADER_LIMIT}"))
        .extra(&routes)
}

/// One request the test made and what its log line must say.
struct Expect {
    request_id: String,
    method: &'static str,
    path: String,
    protocol: &'static str,
    status: u16,
    upstream_status: Option<u16>,
    decision: &'static str,
    bytes_in: Option<u64>,
    bytes_out: Option<u64>,
}

async fn send(
    request: reqwest::RequestBuilder,
    method: &'static str,
    logged_path: &str,
    upstream_status: Option<u16>,
    decision: &'static str,
) -> Expect {
    let response = request.send().await.expect("request through the gateway");
    let protocol = match response.version() {
        reqwest::Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/1.1",
    };
    let status = response.status().as_u16();
    let request_id = response.headers()["x-request-id"].to_str().expect("ascii request id").to_string();
    let body = response.bytes().await.expect("response body");
    Expect {
        request_id,
        method,
        path: logged_path.to_string(),
        protocol,
        status,
        upstream_status,
        decision,
        bytes_in: None,
        bytes_out: Some(body.len() as u64),
    }
}

/// The mix of outcomes: allowed, 404 from upstream, route denied, 413, 431, upstream refused.
async fn request_mix(gateway: &Gateway, certs: &Certs) -> Vec<Expect> {
    let base = gateway.base_url();
    let mut done = Vec::new();
    for version in [HttpVersion::Http1Only, HttpVersion::Http2] {
        let c = https_client(&certs.ca_pem, version);
        let mut allowed = send(
            c.get(format!("{base}/__test/echo?sid={SECRET}&fields=name")),
            "GET",
            "/__test/echo?sid&fields",
            Some(200),
            "allow",
        )
        .await;
        allowed.bytes_in = Some(0);
        done.push(allowed);

        let mut upload = send(
            c.post(format!("{base}/__test/upload")).body(vec![b'u'; 500]),
            "POST",
            "/__test/upload",
            Some(200),
            "allow",
        )
        .await;
        upload.bytes_in = Some(500);
        done.push(upload);

        done.push(
            send(c.get(format!("{base}/no/such/page")), "GET", "/no/such/page", Some(404), "allow").await,
        );
        done.push(
            send(
                c.get(format!("{base}/api/method/frappe.client.get_password?doctype=User&name={SECRET}")),
                "GET",
                "/api/method/frappe.client.get_password?doctype&name",
                None,
                "deny",
            )
            .await,
        );
        done.push(
            send(
                c.post(format!("{base}/__test/upload")).body(vec![b'x'; 2 * BODY_LIMIT]),
                "POST",
                "/__test/upload",
                None,
                "deny",
            )
            .await,
        );
        done.push(
            send(
                c.get(format!("{base}/__test/echo")).header("x-big", "b".repeat(HEADER_LIMIT + 1024)),
                "GET",
                "/__test/echo",
                None,
                "deny",
            )
            .await,
        );
        done.push(send(c.get(format!("{base}/down/x")), "GET", "/down/x", None, "upstream_error").await);
    }
    let statuses: Vec<u16> = done.iter().map(|e| e.status).collect();
    assert_eq!(statuses, [200, 200, 404, 403, 413, 431, 502].repeat(2), "the mix of outcomes");
    done
}

/// Checks one line against what the request was.
fn check_line(line: &Value, e: &Expect) {
    let ctx = format!("{} {} → {}: {line}", e.method, e.path, e.status);
    assert!(line.is_object(), "{ctx}");
    let time = line["time"].as_str().unwrap_or_else(|| panic!("time: {ctx}"));
    assert!(time.len() >= 20 && time.contains('T') && time.ends_with('Z'), "RFC 3339 UTC time: {ctx}");
    assert_eq!(line["request_id"], e.request_id.as_str(), "{ctx}");
    assert_eq!(line["client_ip"], "127.0.0.1", "{ctx}");
    assert_eq!(line["method"], e.method, "{ctx}");
    assert_eq!(line["path"], e.path.as_str(), "{ctx}");
    assert_eq!(line["protocol"], e.protocol, "{ctx}");
    assert!(line["tls"].as_str().is_some_and(|t| t.starts_with("TLSv1.")), "{ctx}");
    assert_eq!(line["status"], e.status, "{ctx}");
    match e.upstream_status {
        Some(s) => assert_eq!(line["upstream_status"], s, "{ctx}"),
        None => assert!(line.get("upstream_status").is_none(), "no upstream answer: {ctx}"),
    }
    assert!(line["latency_ms"].as_f64().is_some_and(|l| l >= 0.0), "{ctx}");
    let bytes_in = line["bytes_in"].as_u64().unwrap_or_else(|| panic!("bytes_in: {ctx}"));
    if let Some(expected) = e.bytes_in {
        assert_eq!(bytes_in, expected, "{ctx}");
    }
    let bytes_out = line["bytes_out"].as_u64().unwrap_or_else(|| panic!("bytes_out: {ctx}"));
    if let Some(expected) = e.bytes_out {
        assert_eq!(bytes_out, expected, "bytes_out is the body sent: {ctx}");
    }
    assert_eq!(line["decision"], e.decision, "{ctx}");
}

/// Exactly one line per request id, each matching; then nothing else may carry a query value.
fn check_lines(lines: &[Value], raw: &str, expected: &[Expect]) {
    for e in expected {
        let matching: Vec<&Value> =
            lines.iter().filter(|l| l["request_id"] == e.request_id.as_str()).collect();
        assert_eq!(matching.len(), 1, "lines for {} {} ({}):\n{raw}", e.method, e.path, e.status);
        check_line(matching[0], e);
    }
    assert!(!raw.contains(SECRET), "a query value reached the access log:\n{raw}");
}

/// A final request whose line, once seen, proves every line complete before it was appended
/// has been written (one writer, one consistent cut of the queue per write). The gateway
/// finishes a request's line when it has handed over the response's last byte, which can be
/// after the client read it: the tests wait for each earlier request's own line as well.
async fn sentinel(gateway: &Gateway, certs: &Certs) -> String {
    let response = https_client(&certs.ca_pem, HttpVersion::Http2)
        .get(format!("{}/__test/echo?sentinel", gateway.base_url()))
        .send()
        .await
        .expect("sentinel request");
    assert_eq!(response.status(), 200);
    response.headers()["x-request-id"].to_str().expect("ascii").to_string()
}

#[tokio::test]
async fn every_request_is_logged_once_to_stdout() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let gateway = Gateway::start(&config(&frappe, &certs).build(), &[]).await;
    let expected = request_mix(&gateway, &certs).await;
    let last = sentinel(&gateway, &certs).await;
    let seen = gateway.wait_for_access_log(|l| l["request_id"] == last.as_str(), LOG_WAIT).await;
    assert!(seen.is_some(), "sentinel line missing:\n{}", gateway.stdout_text());
    for e in &expected {
        gateway.wait_for_access_log(|l| l["request_id"] == e.request_id.as_str(), LOG_WAIT).await;
    }

    let raw = gateway.stdout_text();
    for line in raw.lines().filter(|l| !l.trim().is_empty()) {
        let parsed: Result<Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok_and(|v| v.is_object()), "stdout line is not a JSON object: {line}");
    }
    check_lines(&gateway.access_log_lines(), &raw, &expected);
    assert!(
        frappe.last_request_to("/api/method/frappe.client.get_password").is_none(),
        "denied route reached Frappe"
    );
    assert!(!gateway.stderr_text().contains(SECRET), "a query value reached the application log");
}

#[tokio::test]
async fn every_request_is_logged_once_to_a_file() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("access.log");
    let toml = config(&frappe, &certs)
        .set("log", &format!("access = {}", toml_str(&path.to_string_lossy())))
        .build();
    let gateway = Gateway::start(&toml, &[]).await;
    let expected = request_mix(&gateway, &certs).await;
    let last = sentinel(&gateway, &certs).await;
    wait_for_file_line(&path, &last).await;
    for e in &expected {
        wait_for_file_line(&path, &e.request_id).await;
    }

    let raw = std::fs::read_to_string(&path).expect("read access log");
    for line in raw.lines().filter(|l| !l.trim().is_empty()) {
        let parsed: Result<Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok_and(|v| v.is_object()), "access-log line is not a JSON object: {line}");
    }
    check_lines(&read_json_lines(&path), &raw, &expected);
    assert!(gateway.access_log_lines().is_empty(), "with a file target stdout carries no access log");
}

/// There is no readiness signal for a file: poll it, bounded.
async fn wait_for_file_line(path: &Path, request_id: &str) {
    let deadline = Instant::now() + LOG_WAIT;
    while !read_json_lines(path).iter().any(|l| l["request_id"] == request_id) {
        assert!(Instant::now() < deadline, "no line for {request_id} in {}", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client that gives up before the answer still gets its one line (status 499).
#[tokio::test]
async fn abandoned_request_is_logged_once_as_499() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let gateway = Gateway::start(&config(&frappe, &certs).build(), &[]).await;
    let mut last_started = None;
    for (version, marker) in [(HttpVersion::Http1Only, "abandoned_h1"), (HttpVersion::Http2, "abandoned_h2")]
    {
        last_started = Some(tokio::time::Instant::now());
        let client = https_client(&certs.ca_pem, version);
        let url = format!("{}/__test/slow?ms=1500&{marker}", gateway.base_url());
        let gave_up = client.get(url).timeout(Duration::from_millis(300)).send().await;
        assert!(gave_up.is_err(), "{version:?}: the client should have timed out");
        let path = format!("/__test/slow?ms&{marker}");
        let line = gateway.wait_for_access_log(|l| l["path"] == path.as_str(), LOG_WAIT).await;
        let line =
            line.unwrap_or_else(|| panic!("{version:?}: no line for {path}:\n{}", gateway.stdout_text()));
        assert_eq!(line["status"], 499, "{version:?}: {line}");
        assert_eq!(line["decision"], "client_closed", "{version:?}: {line}");
    }
    // A line written late (when the upstream finally answers) would come after this.
    let last_started = last_started.expect("requests were made");
    tokio::time::sleep_until(last_started + Duration::from_millis(1500 + 300)).await;
    let last = sentinel(&gateway, &certs).await;
    assert!(gateway.wait_for_access_log(|l| l["request_id"] == last.as_str(), LOG_WAIT).await.is_some());
    for marker in ["abandoned_h1", "abandoned_h2"] {
        let path = format!("/__test/slow?ms&{marker}");
        let count = gateway.access_log_lines().iter().filter(|l| l["path"] == path.as_str()).count();
        assert_eq!(count, 1, "{marker}: exactly one line:\n{}", gateway.stdout_text());
    }
}

/// Requests the HTTP/1.1 parser refuses before the pipeline sees them — a head larger than
/// its buffer (2 × max_header_bytes, at least 64 KiB), a line that is not a header, a control
/// byte in a value, a bad request line, an unreadable or contradictory `Content-Length` — get
/// the gateway's own answer: the parser's status, Frappe's error JSON, an `X-Request-Id`, and
/// exactly one access-log line with that id.
#[tokio::test]
async fn requests_refused_by_the_http_parser_get_json_and_one_log_line() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let gateway = Gateway::start(&config(&frappe, &certs).build(), &[]).await;
    let port = gateway.proxy_addr().port();
    let head = |lines: &str| format!("GET /bad-head HTTP/1.1\r\nHost: localhost:{port}\r\n{lines}\r\n");
    let cases = [
        (head(&format!("X-Huge: {}\r\n", "h".repeat(100 * 1024))), 431, "RequestHeaderFieldsTooLarge"),
        (head("no colon here\r\n"), 400, "ValidationError"),
        (head("X-Bell: a\x07b\r\n"), 400, "ValidationError"),
        (head("Content-Length: ten\r\n"), 400, "ValidationError"),
        (head("Content-Length: 1\r\nContent-Length: 2\r\n"), 400, "ValidationError"),
        (format!("GET /a b HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n"), 400, "ValidationError"),
    ];
    for (request, status, exc_type) in &cases {
        let mut tls = common::tls_connect(gateway.proxy_addr(), &certs.ca_pem, &["http/1.1"]).await;
        let _ = tls.write_all(request.as_bytes()).await;
        let mut answer = Vec::new();
        tokio::time::timeout(LOG_WAIT, tls.read_to_end(&mut answer)).await.expect("an answer").ok();
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("a response: {answer:?}"));
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "expected {status}: {head:?}");
        assert!(head.contains("\r\ncontent-type: application/json\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
        let id = head
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .unwrap_or_else(|| panic!("a request id: {head}"));
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.parse().ok())
            .expect("content-length");
        assert_eq!(length, body.len(), "the body is all there: {answer}");
        let json: Value = serde_json::from_str(body).expect("JSON body");
        assert_eq!(json["exc_type"], *exc_type, "{json}");
        assert_eq!(json["request_id"], id, "{json}");
        let line = gateway
            .wait_for_access_log(|l| l["request_id"] == id, LOG_WAIT)
            .await
            .unwrap_or_else(|| panic!("a log line for {id}:\n{}", gateway.stdout_text()));
        assert_eq!(line["status"], *status, "{line}");
        assert_eq!(line["decision"], "deny", "{line}");
    }
    let last = sentinel(&gateway, &certs).await;
    assert!(gateway.wait_for_access_log(|l| l["request_id"] == last.as_str(), LOG_WAIT).await.is_some());
    let lines = gateway.access_log_lines();
    for status in [431, 400] {
        let count = lines.iter().filter(|l| l["status"] == status).count();
        let expected = cases.iter().filter(|(_, s, _)| *s == status).count();
        assert_eq!(count, expected, "access-log lines with status {status}:\n{}", gateway.stdout_text());
    }
}

/// Each line says who asked (client IP and the peer it came through, user agent, host) and
/// where it went (upstream address and its time).
#[tokio::test]
async fn a_line_names_the_peer_the_agent_the_host_and_the_upstream() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let gateway = Gateway::start(&config(&frappe, &certs).build(), &[]).await;
    // HTTP/1.1 sends `Host`, HTTP/2 `:authority`: both are logged as `host`.
    for version in [HttpVersion::Http1Only, HttpVersion::Http2] {
        let client = https_client(&certs.ca_pem, version);
        let response = client
            .get(format!("{}/__test/echo?fields=1", gateway.base_url()))
            .header("user-agent", "erp-mobile/3.1")
            .send()
            .await
            .expect("response");
        let id = response.headers()["x-request-id"].to_str().expect("id").to_string();
        let line =
            gateway.wait_for_access_log(|l| l["request_id"] == id.as_str(), LOG_WAIT).await.expect("line");
        assert_eq!(line["user_agent"], "erp-mobile/3.1", "{line}");
        assert_eq!(line["host"], format!("localhost:{}", gateway.proxy_addr().port()), "{line}");
        assert_eq!(
            (line["client_ip"].as_str(), line["peer"].as_str()),
            (Some("127.0.0.1"), Some("127.0.0.1"))
        );
        assert_eq!(line["upstream"], frappe.addr().to_string(), "{line}");
        let upstream_ms = line["upstream_ms"].as_f64().expect("upstream_ms");
        assert!(upstream_ms > 0.0 && upstream_ms <= line["latency_ms"].as_f64().expect("latency"), "{line}");
    }
}

/// A disk that refuses the writes (here `/dev/full`: every write is ENOSPC) costs log lines,
/// never requests: they are served, the lost lines are counted, and said once, not per line.
#[tokio::test]
async fn a_full_disk_drops_lines_counts_them_and_says_so_once() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let toml = config(&frappe, &certs).set("log", "access = \"/dev/full\"").build();
    let gateway = Gateway::start(&toml, &[]).await;
    let client = https_client(&certs.ca_pem, HttpVersion::Http1Only);
    for _ in 0..5 {
        let status =
            client.get(format!("{}/__test/echo", gateway.base_url())).send().await.expect("ok").status();
        assert_eq!(status, 200, "requests are served while the log cannot be written");
    }
    let metrics = format!("{}/metrics", gateway.admin_url());
    let mut dropped = 0.0;
    let deadline = Instant::now() + LOG_WAIT;
    while dropped < 5.0 {
        assert!(Instant::now() < deadline, "dropped lines are counted: {dropped}");
        let text = reqwest::get(&metrics).await.expect("metrics").text().await.expect("text");
        dropped = text
            .lines()
            .find_map(|l| l.strip_prefix("gateway_access_log_dropped_total ")?.trim().parse().ok())
            .unwrap_or(0.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let said =
        |l: &Value| common::log_message(l) == Some("access-log lines dropped; requests go on unlogged");
    assert!(gateway.wait_for_log(said, LOG_WAIT).await.is_some(), "the loss is reported");
    assert_eq!(gateway.log_lines().iter().filter(|l| said(l)).count(), 1, "once a minute, not once a line");
}
