//! The request model, proved differentially: the gateway's upstream is Frappe v15's own dispatch
//! rebuilt with werkzeug under gunicorn sync workers (`tests/differential/`), which answers with
//! what Frappe would run (`runs`) and as whom (`acts_as`). Every case is either refused by the
//! gateway with the documented status and a Frappe-shaped body (with `exc`), never completing
//! upstream, or forwarded — and then the upstream ran exactly the DocType / method the gateway
//! judged and logged (`doctype`, `rpc`), as the user in the trusted header, never a session.
//!
//! Keys are verified at the fake Frappe (`[frappe] url`); requests go to the differential
//! gunicorn (`[upstream] url`). Everything is on 127.0.0.1, over TLS, HTTP/1.1 and HTTP/2.
//!
//! Each test collects every failing case before failing, so one run shows the whole picture.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;

const USER: &str = "api.user@example.com";
const KEY: &str = "0a1b2c3d4e5f607";
const SECRET: &str = "9f8e7d6c5b4a392";
const OTHER_USER: &str = "other.user@example.com";
const OTHER_KEY: &str = "1b2c3d4e5f60718";
const OTHER_SECRET: &str = "8e7d6c5b4a39281";

const GET_PASSWORD: &str = "frappe.client.get_password";
const DENY_GET_PASSWORD: &str =
    "[[route]]\npath = \"/api/method/frappe.client.get_password\"\nauth = \"deny\"\n";
const PUBLIC_PING: &str = "[[route]]\npath = \"/api/method/ping\"\nauth = \"public\"\n";
const GENERATE_KEYS: &str = "frappe.core.doctype.user.user.generate_keys";

const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

fn token() -> String {
    token_header(KEY, SECRET)
}

// ----- setup --------------------------------------------------------------------------------

struct Env {
    _frappe: FakeFrappe,
    upstream: DifferentialUpstream,
    gateway: AnyGateway,
    certs: Certs,
}

/// In-process, except for the memory test: its gateway's RSS must be its own.
enum AnyGateway {
    InProcess(Gateway),
    Process(GatewayProcess),
}

impl AnyGateway {
    fn base_url(&self) -> String {
        match self {
            AnyGateway::InProcess(g) => g.base_url(),
            AnyGateway::Process(g) => g.base_url(),
        }
    }

    fn proxy_addr(&self) -> std::net::SocketAddr {
        match self {
            AnyGateway::InProcess(g) => g.proxy_addr(),
            AnyGateway::Process(g) => g.proxy_addr(),
        }
    }

    fn pid(&self) -> u32 {
        match self {
            AnyGateway::InProcess(_) => panic!("an in-process gateway has no pid of its own"),
            AnyGateway::Process(g) => g.pid(),
        }
    }

    async fn wait_for_access_log(
        &self,
        predicate: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<Value> {
        match self {
            AnyGateway::InProcess(g) => g.wait_for_access_log(predicate, timeout).await,
            AnyGateway::Process(g) => g.wait_for_access_log(predicate, timeout).await,
        }
    }
}

/// A TLS gateway whose upstream is the differential gunicorn (`workers` sync workers) and whose
/// `[frappe] url` is the fake (it answers whoami for the test keys). `extra` holds routes and
/// users; `lines` go into tables.
async fn env_with(workers: usize, lines: &[(&str, &str)], extra: &str) -> Env {
    env_as(false, workers, lines, extra).await
}

async fn env_as(process: bool, workers: usize, lines: &[(&str, &str)], extra: &str) -> Env {
    let frappe = FakeFrappe::start().await;
    frappe.add_user(USER, KEY, SECRET);
    frappe.add_user(OTHER_USER, OTHER_KEY, OTHER_SECRET);
    let upstream = tokio::task::spawn_blocking(move || DifferentialUpstream::start(workers))
        .await
        .expect("start the differential upstream");
    let certs = Certs::generate();
    let mut builder = ConfigBuilder::new(&upstream.url())
        .tls(&certs)
        .set("frappe", &format!("url = {}", toml_str(&frappe.url())));
    for (table, line) in lines {
        builder = builder.set(table, line);
    }
    let config = builder.extra(extra).build();
    let gateway = match process {
        true => AnyGateway::Process(GatewayProcess::start(&config, &[]).await),
        false => AnyGateway::InProcess(Gateway::start(&config, &[]).await),
    };
    Env { _frappe: frappe, upstream, gateway, certs }
}

async fn env(extra: &str) -> Env {
    env_with(4, &[], extra).await
}

// ----- requests -----------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
}

/// A request as written on the wire: the target is sent byte for byte (reqwest would resolve
/// dot segments; HTTP/1.1 goes out on a raw TLS socket).
#[derive(Clone, Debug)]
struct Req {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Req {
    fn new(method: &str, target: &str) -> Req {
        Req { method: method.into(), target: target.into(), headers: Vec::new(), body: Vec::new() }
    }
    fn get(target: &str) -> Req {
        Req::new("GET", target)
    }
    fn post(target: &str) -> Req {
        Req::new("POST", target)
    }
    fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.into(), value.into()));
        self
    }
    fn token(self) -> Req {
        self.header("authorization", &token())
    }
    fn body(mut self, content_type: &str, body: impl Into<Vec<u8>>) -> Req {
        self.body = body.into();
        self.header("content-type", content_type)
    }
    fn form(self, body: &str) -> Req {
        self.body("application/x-www-form-urlencoded", body)
    }
    fn json(self, body: Value) -> Req {
        self.body("application/json", body.to_string())
    }
    fn multipart(self, fields: &[(&str, &str)]) -> Req {
        let (content_type, body) = multipart_body(fields);
        self.body(&content_type, body)
    }
    fn describe(&self, proto: Proto) -> String {
        let fields: Vec<String> = self.headers.iter().map(|(n, v)| format!("{n}: {v}")).collect();
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(80)]).into_owned();
        format!("{proto:?} {} {} [{}] {body:?}", self.method, self.target, fields.join("; "))
    }
}

const BOUNDARY: &str = "----differential-boundary-7d1f";

fn multipart_body(fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    let mut body = String::new();
    for (name, value) in fields {
        body.push_str(&format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        ));
    }
    body.push_str(&format!("--{BOUNDARY}--\r\n"));
    (format!("multipart/form-data; boundary={BOUNDARY}"), body.into_bytes())
}

/// What came back.
#[derive(Debug)]
struct Seen {
    status: u16,
    headers: Vec<(String, String)>,
    text: String,
    body: Value,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn request_id(&self) -> Option<String> {
        self.header("x-request-id").map(str::to_string)
    }
}

impl Env {
    async fn send(&self, proto: Proto, req: &Req) -> Seen {
        let sent = match proto {
            Proto::H1 => tokio::time::timeout(REQUEST_TIMEOUT, self.send_h1(req)).await,
            Proto::H2 => tokio::time::timeout(REQUEST_TIMEOUT, self.send_h2(req)).await,
        };
        match sent {
            Ok(Ok(seen)) => seen,
            Ok(Err(e)) => Seen {
                status: 0,
                headers: Vec::new(),
                text: format!("transport error: {e}"),
                body: Value::Null,
            },
            Err(_) => Seen { status: 0, headers: Vec::new(), text: "timed out".into(), body: Value::Null },
        }
    }

    fn host(&self) -> String {
        format!("localhost:{}", self.gateway.proxy_addr().port())
    }

    /// HTTP/1.1 on a raw TLS socket: `Connection: close`, read to EOF.
    async fn send_h1(&self, req: &Req) -> std::io::Result<Seen> {
        let mut wire =
            format!("{} {} HTTP/1.1\r\nhost: {}\r\n", req.method, req.target, self.host()).into_bytes();
        let mut has_connection = false;
        for (name, value) in &req.headers {
            has_connection |= name.eq_ignore_ascii_case("connection");
            wire.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        if !has_connection {
            wire.extend_from_slice(b"connection: close\r\n");
        }
        if !req.body.is_empty() || req.method == "POST" {
            wire.extend_from_slice(format!("content-length: {}\r\n", req.body.len()).as_bytes());
        }
        wire.extend_from_slice(b"\r\n");
        wire.extend_from_slice(&req.body);
        raw_exchange(&self.gateway, &self.certs, &wire).await
    }

    /// HTTP/2 with hyper's client on its own TLS connection (ALPN h2).
    async fn send_h2(&self, req: &Req) -> std::io::Result<Seen> {
        let io_err = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
        let tls = try_tls_connect(self.gateway.proxy_addr(), &self.certs.ca_pem, &["h2"]).await?;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| io_err(&e))?;
        let conn = tokio::spawn(conn);
        let uri = format!("https://{}{}", self.host(), req.target);
        let mut builder = http::Request::builder()
            .method(http::Method::from_bytes(req.method.as_bytes()).map_err(|e| io_err(&e))?)
            .uri(uri);
        for (name, value) in &req.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let request = builder.body(Full::new(Bytes::from(req.body.clone()))).map_err(|e| io_err(&e))?;
        let response = sender.send_request(request).await.map_err(|e| io_err(&e))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let bytes = response.into_body().collect().await.map_err(|e| io_err(&e))?.to_bytes();
        conn.abort();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Seen { status, headers, text, body })
    }

    /// The access-log line of a request (written after the response).
    async fn access_line(&self, request_id: &str) -> Option<Value> {
        self.gateway.wait_for_access_log(|l| l["request_id"] == request_id, Duration::from_secs(5)).await
    }
}

/// Writes `wire` on a fresh TLS connection (ALPN http/1.1), reads the response until EOF.
async fn raw_exchange(gateway: &AnyGateway, certs: &Certs, wire: &[u8]) -> std::io::Result<Seen> {
    let mut tls = try_tls_connect(gateway.proxy_addr(), &certs.ca_pem, &["http/1.1"]).await?;
    tls.write_all(wire).await?;
    tls.flush().await?;
    let mut raw = Vec::new();
    // A reset after the response (the gateway closing early) still leaves what was read.
    let _ = tls.read_to_end(&mut raw).await;
    parse_h1_response(&raw)
}

fn parse_h1_response(raw: &[u8]) -> std::io::Result<Seen> {
    let bad = |what: &str| std::io::Error::other(format!("{what}: {:?}", String::from_utf8_lossy(raw)));
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no response head"))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status =
        status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body);
    } else if let Some(len) =
        headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok())
    {
        body.truncate(len);
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(Seen { status, headers, text, body: json })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        data = &data[line_end + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

// ----- assertions ---------------------------------------------------------------------------

/// Collects failed checks; `finish` panics with all of them.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.0.push(message());
        }
    }

    fn finish(self) {
        if !self.0.is_empty() {
            panic!("{} failing case(s):\n- {}", self.0.len(), self.0.join("\n- "));
        }
    }
}

/// Problems with a gateway error body: Frappe's shape plus `exc`, a JSON string holding a list
/// of exactly one line (never a traceback).
fn error_body_problems(body: &Value, exc_type: Option<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    let got_type = body["exc_type"].as_str().unwrap_or("");
    match exc_type {
        Some(want) if got_type != want => problems.push(format!("exc_type {got_type:?}, want {want:?}")),
        None if got_type.is_empty() => problems.push("no exc_type".into()),
        _ => {}
    }
    let exception = body["exception"].as_str().unwrap_or("");
    if !exception.starts_with(&format!("frappe.exceptions.{got_type}")) || got_type.is_empty() {
        problems.push(format!("exception {exception:?} does not name frappe.exceptions.{got_type}"));
    }
    let messages: Option<Vec<Value>> =
        body["_server_messages"].as_str().and_then(|s| serde_json::from_str(s).ok());
    let messages_ok = messages.as_ref().is_some_and(|list| {
        !list.is_empty()
            && list.iter().all(|m| {
                m.as_str()
                    .and_then(|s| serde_json::from_str::<Value>(s).ok())
                    .is_some_and(|m| m["message"].is_string())
            })
    });
    if !messages_ok {
        problems.push(format!(
            "_server_messages is not a JSON string of JSON message strings: {}",
            body["_server_messages"]
        ));
    }
    let exc: Option<Vec<Value>> = body["exc"].as_str().and_then(|s| serde_json::from_str(s).ok());
    match exc.as_deref() {
        Some([Value::String(line)])
            if !line.is_empty() && !line.contains('\n') && !line.contains("Traceback") => {}
        _ => problems.push(format!("exc must be a JSON string holding a list of one line: {}", body["exc"])),
    }
    problems
}

/// The case was refused by the gateway with `status` / `exc_type` and never completed upstream.
fn expect_refused(f: &mut Failures, env: &Env, case: &str, seen: &Seen, status: u16, exc_type: Option<&str>) {
    if seen.status != status {
        f.check(false, || {
            format!("{case}: status {}, want {status}; body {}", seen.status, clip(&seen.text))
        });
        return;
    }
    let problems = error_body_problems(&seen.body, exc_type);
    f.check(problems.is_empty(), || {
        format!("{case}: error body: {}; body {}", problems.join("; "), clip(&seen.text))
    });
    if let Some(rid) = seen.request_id() {
        let completed: Vec<Value> =
            env.upstream.records_for(&rid).into_iter().filter(|r| r["complete"] == true).collect();
        f.check(completed.is_empty(), || format!("{case}: refused but completed upstream: {completed:?}"));
    }
}

/// What a forwarded request must show: the upstream ran `runs` (a subset match), as `acts_as`,
/// and the gateway's access log judged `doctype` / `rpc` (Null: absent).
struct Ran<'a> {
    runs: Value,
    acts_as: &'a str,
    doctype: Value,
    rpc: Value,
}

async fn expect_ran(f: &mut Failures, env: &Env, case: &str, seen: &Seen, want: Ran<'_>) {
    if seen.body.get("runs").is_none() {
        f.check(false, || format!("{case}: not forwarded: status {} body {}", seen.status, clip(&seen.text)));
        return;
    }
    let runs = &seen.body["runs"];
    f.check(is_subset(&want.runs, runs), || format!("{case}: upstream ran {runs}, want {}", want.runs));
    f.check(seen.body["acts_as"] == want.acts_as, || {
        format!(
            "{case}: upstream acts as {}, want {:?} (sid {}, cookie {})",
            seen.body["acts_as"], want.acts_as, seen.body["sid"], seen.body["cookie"]
        )
    });
    let Some(rid) = seen.request_id() else {
        f.check(false, || format!("{case}: no x-request-id on the response"));
        return;
    };
    let record = env.upstream.records_for(&rid).into_iter().find(|r| r["complete"] == true);
    f.check(record.as_ref().is_some_and(|r| r["runs"] == *runs), || {
        format!("{case}: DIFF_LOG record {record:?} for {rid}")
    });
    match env.access_line(&rid).await {
        None => f.check(false, || format!("{case}: no access-log line for {rid}")),
        Some(line) => {
            let (doctype, rpc) = (
                line.get("doctype").cloned().unwrap_or(Value::Null),
                line.get("rpc").cloned().unwrap_or(Value::Null),
            );
            f.check(doctype == want.doctype && rpc == want.rpc, || {
                format!("{case}: access log judged doctype {doctype} rpc {rpc}; upstream ran {runs}; want doctype {} rpc {}", want.doctype, want.rpc)
            });
        }
    }
}

fn is_subset(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            w.iter().all(|(k, v)| g.get(k).is_some_and(|gv| is_subset(v, gv)))
        }
        _ => want == got,
    }
}

fn clip(text: &str) -> String {
    text.chars().take(300).collect()
}

fn resource(doctype: &str) -> Value {
    json!({"kind": "resource", "doctype": doctype})
}

fn method(name: &str) -> Value {
    json!({"kind": "method", "method": name})
}

const BOTH: [Proto; 2] = [Proto::H1, Proto::H2];

// ----- the harness itself -------------------------------------------------------------------

/// Today's gateway already gets this right: the harness must be trusted before its verdicts.
#[tokio::test]
async fn harness_plain_resource_get_runs_as_the_token_user() {
    let env = env("").await;
    let mut f = Failures::default();
    for proto in BOTH {
        let seen = env.send(proto, &Req::get("/api/resource/ToDo").token()).await;
        let case = format!("{proto:?} GET /api/resource/ToDo");
        f.check(seen.status == 200, || format!("{case}: status {} {}", seen.status, clip(&seen.text)));
        f.check(seen.body["user_header"] == USER, || {
            format!("{case}: user header {}", seen.body["user_header"])
        });
        let want = Ran {
            runs: json!({"kind": "resource", "op": "list", "doctype": "ToDo"}),
            acts_as: USER,
            doctype: json!("ToDo"),
            rpc: Value::Null,
        };
        expect_ran(&mut f, &env, &case, &seen, want).await;
    }
    let records = env.upstream.records();
    f.check(
        records.len() == 2 && records.iter().all(|r| r["complete"] == true && r["body_len"] == 0),
        || format!("DIFF_LOG: {records:?}"),
    );
    f.finish();
}

// ----- 1. dot segments and encodings --------------------------------------------------------

const BAD_PATHS: &[&str] = &[
    "/api/method/frappe.client.get_list/..",
    "/api/method/frappe.client.get_password/..",
    "/api/method/ping/../../../api/method/frappe.client.get_password",
    "/api/method/ping/%2e%2e/%2e%2e/%2e%2e/api/method/frappe.client.get_password",
    "/api/method/ping/%2E%2e/x",
    "/api/resource/ToDo/.%2e/x",
    "/api/./resource/ToDo",
    "/api/%2e/resource/ToDo",
    "/api/method/ping%2F..%2Ffrappe.client.get_password",
    "/api/resource/ToDo%2fabc",
    "/api/resource/ToDo%5Cabc",
    "/api/resource/ToDo%00",
    "/api/resource/ToDo/abc%00def",
];

#[tokio::test]
async fn dot_segments_and_encoded_separators_are_refused() {
    let env = env(DENY_GET_PASSWORD).await;
    let mut f = Failures::default();
    for proto in BOTH {
        for path in BAD_PATHS {
            let req = Req::get(path).token();
            let seen = env.send(proto, &req).await;
            expect_refused(&mut f, &env, &req.describe(proto), &seen, 400, Some("ValidationError"));
        }
    }
    // A raw backslash cannot be written as an HTTP/2 :path by hyper's client; HTTP/1.1 only.
    for path in ["/api/method/ping\\..\\frappe.client.get_password", "/api/resource/ToDo\\abc"] {
        let req = Req::get(path).token();
        let seen = env.send(Proto::H1, &req).await;
        expect_refused(&mut f, &env, &req.describe(Proto::H1), &seen, 400, Some("ValidationError"));
    }
    f.finish();
}

/// Repeated slashes are merged, and the merged path is what goes upstream.
#[tokio::test]
async fn repeated_slashes_are_merged_before_forwarding() {
    let env = env(DENY_GET_PASSWORD).await;
    let mut f = Failures::default();
    for proto in BOTH {
        for path in ["//api//resource/ToDo", "/api///resource//ToDo"] {
            let req = Req::get(path).token();
            let seen = env.send(proto, &req).await;
            let case = req.describe(proto);
            f.check(seen.body["path"] == "/api/resource/ToDo", || {
                format!("{case}: upstream path {}", seen.body["path"])
            });
            let want =
                Ran { runs: resource("ToDo"), acts_as: USER, doctype: json!("ToDo"), rpc: Value::Null };
            expect_ran(&mut f, &env, &case, &seen, want).await;
        }
    }
    f.finish();
}

/// Through `public` `/api/method/ping`, without a token, nothing but `ping` may run upstream.
#[tokio::test]
async fn a_public_route_reaches_only_what_its_prefix_covers() {
    let env = env(&format!("{PUBLIC_PING}{DENY_GET_PASSWORD}")).await;
    let mut f = Failures::default();
    let session = "Cookie: sid=0123456789abcdef0123456789abcdef0123456789abcdef01234567";
    let cookie = session.split_once(": ").expect("cookie").1;
    let cases = vec![
        Req::get("/api/method/ping/x"),
        Req::get("/api/method/ping/../frappe.client.get_list"),
        Req::get("/api/method/ping/../../../api/method/frappe.client.get_password"),
        Req::get("/api/method/ping/..%2Ffrappe.client.get_password"),
        Req::get("/api/method/ping%2F..%2Ffrappe.client.get_password"),
        Req::get("/api/method/ping/%2e%2e/frappe.client.get_list"),
        Req::get("/api/method/ping?cmd=frappe.client.get_password"),
        Req::get("/api/method/ping?cmd=frappe.client.get_list"),
        Req::get("/api/method/ping?c%6Dd=frappe.client.get_list"),
        Req::post("/api/method/ping").form("cmd=frappe.client.get_list"),
        Req::post("/api/method/ping").form("cmd=frappe.client.get_password").header("cookie", cookie),
        Req::post("/api/method/ping").json(json!({"cmd": GET_PASSWORD})).header("cookie", cookie),
        Req::get("/api/method/ping").json(json!({"cmd": "frappe.client.get_list"})),
        Req::post("/api/method/ping").multipart(&[("cmd", "frappe.client.get_list")]),
    ];
    // Control: ping itself runs.
    let seen = env.send(Proto::H1, &Req::get("/api/method/ping")).await;
    let want = Ran { runs: method("ping"), acts_as: "Guest", doctype: Value::Null, rpc: json!("ping") };
    expect_ran(&mut f, &env, "control GET /api/method/ping", &seen, want).await;
    for proto in BOTH {
        for req in &cases {
            let seen = env.send(proto, req).await;
            let case = req.describe(proto);
            match seen.body.get("runs") {
                Some(runs) => {
                    let ping =
                        runs["kind"] == "method" && runs["method"] == "ping" && runs.get("via").is_none();
                    f.check(ping, || format!("{case}: reached {runs} through the public ping route"));
                }
                None => {
                    let problems = error_body_problems(&seen.body, None);
                    f.check((400..500).contains(&seen.status) && problems.is_empty(), || {
                        format!(
                            "{case}: status {} {}; {}",
                            seen.status,
                            problems.join("; "),
                            clip(&seen.text)
                        )
                    });
                }
            }
        }
    }
    for record in env.upstream.records().iter().filter(|r| r["complete"] == true) {
        let runs = &record["runs"];
        let ping = runs["kind"] == "method" && runs["method"] == "ping" && runs.get("via").is_none();
        f.check(ping, || {
            format!("upstream ran {runs} for {} {}?{}", record["method"], record["path"], record["query"])
        });
    }
    f.finish();
}

// ----- 2. cmd precedence --------------------------------------------------------------------

#[tokio::test]
async fn cmd_in_query_or_body_is_judged_as_frappe_runs_it() {
    let env = env(DENY_GET_PASSWORD).await;
    let mut f = Failures::default();
    let denied = vec![
        Req::get("/api/resource/ToDo?cmd=frappe.client.get_password"),
        Req::get("/api/resource/ToDo?c%6Dd=frappe.client.get_password"),
        Req::get("/api/resource/ToDo?cmd=frappe.client.get_password&cmd=frappe.client.get_list"),
        Req::post("/api/resource/ToDo").form("cmd=frappe.client.get_password"),
        Req::post("/api/resource/ToDo").form("c%6Dd=frappe.client.get%5Fpassword"),
        Req::post("/api/resource/ToDo?cmd=frappe.client.get_list").form("cmd=frappe.client.get_password"),
        Req::post("/api/resource/ToDo").json(json!({"cmd": GET_PASSWORD})),
        Req::get("/api/resource/ToDo").json(json!({"cmd": GET_PASSWORD})),
        Req::post("/api/resource/ToDo")
            .body("application/vnd.api+json", json!({"cmd": GET_PASSWORD}).to_string()),
        Req::post("/api/resource/ToDo")
            .body("application/json; charset=utf-8", json!({"cmd": GET_PASSWORD}).to_string()),
        Req::post("/api/resource/ToDo").multipart(&[("doctype", "ToDo"), ("cmd", GET_PASSWORD)]),
        Req::post("/app/todo").form("cmd=frappe.client.get_password"),
    ];
    for proto in BOTH {
        for req in &denied {
            let req = req.clone().token();
            let seen = env.send(proto, &req).await;
            expect_refused(&mut f, &env, &req.describe(proto), &seen, 403, Some("PermissionError"));
        }
        // A non-empty JSON body is form_dict alone: Frappe ignores the query's cmd.
        let req =
            Req::post("/api/resource/ToDo?cmd=frappe.client.get_password").json(json!({"x": 1})).token();
        let seen = env.send(proto, &req).await;
        let want = Ran {
            runs: json!({"kind": "resource", "op": "create", "doctype": "ToDo"}),
            acts_as: USER,
            doctype: json!("ToDo"),
            rpc: Value::Null,
        };
        expect_ran(&mut f, &env, &req.describe(proto), &seen, want).await;
        // A body cmd runs instead of the resource path.
        for req in [
            Req::post("/api/resource/ToDo").json(json!({"cmd": "frappe.client.get_list"})),
            Req::post("/api/resource/ToDo").form("cmd=frappe.client.get_list"),
            Req::post("/api/resource/ToDo").multipart(&[("cmd", "frappe.client.get_list")]),
        ] {
            let req = req.clone().token();
            let seen = env.send(proto, &req).await;
            let want = Ran {
                runs: method("frappe.client.get_list"),
                acts_as: USER,
                doctype: Value::Null,
                rpc: json!("frappe.client.get_list"),
            };
            expect_ran(&mut f, &env, &req.describe(proto), &seen, want).await;
        }
    }
    f.finish();
}

/// A `cmd` sent to a public route is judged by the cmd: a token-route method needs a valid
/// token, a denied one is refused.
#[tokio::test]
async fn a_body_cmd_on_a_public_route_is_judged_by_the_cmd() {
    let env = env(&format!("{PUBLIC_PING}{DENY_GET_PASSWORD}")).await;
    let mut f = Failures::default();
    for proto in BOTH {
        let req = Req::post("/api/method/ping").form("cmd=frappe.client.get_list");
        let seen = env.send(proto, &req).await;
        expect_refused(
            &mut f,
            &env,
            &format!("{} (no token)", req.describe(proto)),
            &seen,
            401,
            Some("AuthenticationError"),
        );

        let req = req.clone().token();
        let seen = env.send(proto, &req).await;
        let want = Ran {
            runs: method("frappe.client.get_list"),
            acts_as: USER,
            doctype: Value::Null,
            rpc: json!("frappe.client.get_list"),
        };
        expect_ran(&mut f, &env, &format!("{} (token)", req.describe(proto)), &seen, want).await;
        f.check(seen.body["user_header"] == USER, || {
            format!("{proto:?} public cmd with token: user header {}", seen.body["user_header"])
        });

        for req in [
            Req::post("/api/method/ping").form("cmd=frappe.client.get_password").token(),
            Req::post("/api/method/ping").json(json!({"cmd": GET_PASSWORD})),
            Req::post("/api/method/ping").json(json!({"cmd": GET_PASSWORD})).token(),
        ] {
            let seen = env.send(proto, &req).await;
            expect_refused(&mut f, &env, &req.describe(proto), &seen, 403, Some("PermissionError"));
        }
    }
    f.finish();
}

#[tokio::test]
async fn user_rpc_rules_judge_the_body_cmd() {
    let users = format!("[[user]]\nname = {}\nrpc = [\"frappe.client.get_list\"]\n", toml_str(USER));
    let env = env(&users).await;
    let mut f = Failures::default();
    for proto in BOTH {
        for req in [
            Req::post("/api/resource/ToDo").form("cmd=frappe.client.get_value"),
            Req::post("/api/resource/ToDo").json(json!({"cmd": "frappe.client.get_value"})),
            Req::post("/api/method/frappe.client.get_list").form("cmd=frappe.client.get_value"),
            Req::get("/api/resource/ToDo?cmd=frappe.client.get_value"),
        ] {
            let req = req.clone().token();
            let seen = env.send(proto, &req).await;
            expect_refused(&mut f, &env, &req.describe(proto), &seen, 403, Some("PermissionError"));
        }
        let req = Req::post("/api/resource/ToDo").json(json!({"cmd": "frappe.client.get_list"})).token();
        let seen = env.send(proto, &req).await;
        let want = Ran {
            runs: method("frappe.client.get_list"),
            acts_as: USER,
            doctype: Value::Null,
            rpc: json!("frappe.client.get_list"),
        };
        expect_ran(&mut f, &env, &req.describe(proto), &seen, want).await;
    }
    f.finish();
}

// ----- 3. v2 DocType methods ----------------------------------------------------------------

#[tokio::test]
async fn v2_doctype_methods_are_judged_by_their_controller_path() {
    let deny = format!("[[route]]\npath = \"/api/method/{GENERATE_KEYS}\"\nauth = \"deny\"\n");
    let env = env(&deny).await;
    let mut f = Failures::default();
    for proto in BOTH {
        for req in [
            Req::post("/api/v2/method/User/generate_keys").form("user=api.user%40example.com"),
            Req::get("/api/v2/method/User/generate_keys?user=x"),
            Req::post(&format!("/api/method/{GENERATE_KEYS}")),
            Req::post(&format!("/api/v2/method/{GENERATE_KEYS}")),
            Req::post("/api/resource/ToDo").form(&format!("cmd={GENERATE_KEYS}")),
        ] {
            let req = req.clone().token();
            let seen = env.send(proto, &req).await;
            expect_refused(&mut f, &env, &req.describe(proto), &seen, 403, Some("PermissionError"));
        }
    }
    f.finish();
}

/// A method name without a dot runs the `frappe.handler` function of that name
/// (`handler.get_attr`): a `deny` on either name refuses both.
#[tokio::test]
async fn frappe_handler_shorthands_are_judged_as_the_function_they_run() {
    let deny = "[[route]]\npath = \"/api/method/frappe.handler.upload_file\"\nauth = \"deny\"\n\n\
                [[route]]\npath = \"/api/method/download_file\"\nauth = \"deny\"\n";
    let env = env(deny).await;
    let mut f = Failures::default();
    for proto in BOTH {
        for req in [
            Req::post("/api/method/upload_file"),
            Req::post("/api/v2/method/upload_file"),
            Req::post("/api/resource/ToDo").form("cmd=upload_file"),
            Req::get("/api/method/frappe.handler.download_file?file_url=/files/x"),
            Req::get("/api/resource/ToDo?cmd=frappe.handler.download_file"),
        ] {
            let req = req.clone().token();
            let seen = env.send(proto, &req).await;
            expect_refused(&mut f, &env, &req.describe(proto), &seen, 403, Some("PermissionError"));
        }
    }
    f.finish();
}

#[tokio::test]
async fn v2_doctype_methods_follow_user_doctype_and_rpc_rules() {
    let users = format!(
        "[[user]]\nname = {}\ndoctypes = [\"User\"]\nrpc = [\"{GENERATE_KEYS}\"]\n\n\
         [[user]]\nname = {}\ndoctypes = [\"ToDo\"]\nrpc = [\"{GENERATE_KEYS}\"]\n",
        toml_str(USER),
        toml_str(OTHER_USER)
    );
    let env = env(&users).await;
    let mut f = Failures::default();
    for proto in BOTH {
        let req = Req::post("/api/v2/method/User/generate_keys").form("user=api.user%40example.com").token();
        let seen = env.send(proto, &req).await;
        let want = Ran {
            runs: json!({"kind": "doctype_method", "doctype": "User", "method": "generate_keys", "resolved": GENERATE_KEYS}),
            acts_as: USER,
            doctype: json!("User"),
            // The log names a DocType controller function as `<DocType>.<method>`; the rule
            // that admitted it names the same function by its dotted controller path.
            rpc: json!("User.generate_keys"),
        };
        expect_ran(&mut f, &env, &req.describe(proto), &seen, want).await;

        let req = Req::post("/api/v2/method/User/generate_keys")
            .form("user=other.user%40example.com")
            .header("authorization", &token_header(OTHER_KEY, OTHER_SECRET));
        let seen = env.send(proto, &req).await;
        expect_refused(
            &mut f,
            &env,
            &format!("{} (doctypes = [ToDo])", req.describe(proto)),
            &seen,
            403,
            Some("PermissionError"),
        );

        // Another function of the same controller is not in rpc.
        let req = Req::post("/api/v2/method/User/reset_password").token();
        let seen = env.send(proto, &req).await;
        expect_refused(&mut f, &env, &req.describe(proto), &seen, 403, Some("PermissionError"));
    }
    f.finish();
}

// ----- 4. sessions on token routes ----------------------------------------------------------

#[tokio::test]
async fn session_ids_never_ride_on_token_routes() {
    let env = env("").await;
    let mut f = Failures::default();
    for proto in BOTH {
        for req in [
            Req::get("/api/resource/ToDo?sid=x"),
            Req::get("/api/resource/ToDo?s%69d=x"),
            Req::get("/api/resource/ToDo?%73id=x"),
            Req::post("/api/resource/ToDo").form("sid=x"),
            Req::post("/api/resource/ToDo").form("s%69d=x"),
            Req::post("/api/resource/ToDo").json(json!({"sid": "x"})),
            Req::get("/api/resource/ToDo").json(json!({"sid": "x"})),
            Req::post("/api/resource/ToDo").multipart(&[("sid", "x")]),
            Req::post("/api/method/frappe.client.get_list").multipart(&[("doctype", "ToDo"), ("sid", "x")]),
        ] {
            let req = req.clone().token();
            let seen = env.send(proto, &req).await;
            expect_refused(&mut f, &env, &req.describe(proto), &seen, 400, Some("ValidationError"));
        }
        let req = Req::get("/api/resource/ToDo").header("cookie", "sid=0123456789abcdef; theme=dark").token();
        let seen = env.send(proto, &req).await;
        f.check(seen.body["cookie"].is_null(), || {
            format!("{proto:?} cookie reached upstream: {}", seen.body["cookie"])
        });
        let want = Ran { runs: resource("ToDo"), acts_as: USER, doctype: json!("ToDo"), rpc: Value::Null };
        expect_ran(&mut f, &env, &req.describe(proto), &seen, want).await;
    }
    f.finish();
}

// ----- 5. slow bodies -----------------------------------------------------------------------

/// Issue acceptance 3: 32 connections trickling bodies at 1 byte/s (unauthenticated CORS
/// preflights and authenticated POSTs, `Content-Length: 100000`) must not take the 4 sync
/// workers from a well-behaved client: the gateway buffers bodies before it uses an upstream
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_do_not_starve_sync_workers() {
    const TRICKLERS: usize = 32;
    const WANTED: usize = 200;
    const LOAD: Duration = Duration::from_secs(20);
    let env = Arc::new(env("").await);
    let client = https_client_builder(&env.certs.ca_pem, HttpVersion::Http2)
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let url = format!("{}/api/resource/ToDo", env.gateway.base_url());
    // Warm the credential cache, so the measurement is about upstream capacity.
    let warm = client.get(&url).header("authorization", token()).send().await.expect("warm-up");
    assert_eq!(warm.status(), 200, "warm-up request");

    // Control: without the trickle every request succeeds, so a failure below is starvation.
    for i in 0..20 {
        let response = client.get(&url).header("authorization", token()).send().await;
        assert!(response.as_ref().is_ok_and(|r| r.status() == 200), "control request {i}: {response:?}");
    }

    let started = Instant::now();
    let mut tricklers = Vec::new();
    let trickling = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for i in 0..TRICKLERS {
        let (env, trickling) = (env.clone(), trickling.clone());
        tricklers.push(tokio::spawn(async move {
            let host = env.host();
            let head = if i % 2 == 0 {
                format!(
                    "OPTIONS /api/resource/ToDo HTTP/1.1\r\nhost: {host}\r\norigin: https://app.example.com\r\n\
                     access-control-request-method: POST\r\ncontent-length: 100000\r\n\r\n"
                )
            } else {
                format!(
                    "POST /api/resource/ToDo HTTP/1.1\r\nhost: {host}\r\nauthorization: {}\r\n\
                     content-type: application/octet-stream\r\ncontent-length: 100000\r\n\r\n",
                    token()
                )
            };
            let Ok(mut tls) = try_tls_connect(env.gateway.proxy_addr(), &env.certs.ca_pem, &["http/1.1"]).await else {
                return;
            };
            if tls.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            trickling.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            loop {
                if tls.write_all(b"x").await.is_err() || tls.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }
    let all_trickling = || trickling.load(std::sync::atomic::Ordering::SeqCst) == TRICKLERS;
    eventually("every trickler sent its head", Duration::from_secs(10), all_trickling).await;

    let (mut ok, mut attempted, mut first_failure) = (0usize, 0usize, None);
    while attempted < WANTED && started.elapsed() < LOAD {
        attempted += 1;
        let result = client.get(&url).header("authorization", token()).send().await;
        let outcome = match result {
            Ok(response) if response.status() == 200 => match response.json::<Value>().await {
                Ok(body) if body["runs"]["kind"] == "resource" => Ok(()),
                other => Err(format!("body {other:?}")),
            },
            Ok(response) => Err(format!("status {}", response.status())),
            Err(e) => Err(format!("{e}")),
        };
        match outcome {
            Ok(()) => ok += 1,
            Err(e) => {
                first_failure.get_or_insert(e);
            }
        }
    }
    for trickler in &tricklers {
        trickler.abort();
    }
    let needed = WANTED * 99 / 100;
    assert!(
        ok >= needed,
        "{ok} of {WANTED} well-behaved GETs succeeded ({attempted} attempted in {:?}) while {TRICKLERS} \
         connections trickled bodies; need {needed}; first failure: {first_failure:?}",
        started.elapsed()
    );
}

/// Preflights pass without credentials, but go upstream with no body and no cookies.
#[tokio::test]
async fn cors_preflights_go_upstream_without_body_or_cookies() {
    let env = env("").await;
    let mut f = Failures::default();
    for proto in BOTH {
        let req = Req::new("OPTIONS", "/api/resource/ToDo")
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", "POST")
            .header("cookie", "sid=0123456789abcdef")
            .body("application/x-www-form-urlencoded", "cmd=frappe.client.get_password");
        let seen = env.send(proto, &req).await;
        let case = req.describe(proto);
        f.check(seen.body["runs"] == json!({"kind": "options"}), || {
            format!("{case}: status {} {}", seen.status, clip(&seen.text))
        });
        f.check(seen.body["body_len"] == 0, || {
            format!("{case}: upstream read a {} byte body", seen.body["body_len"])
        });
        f.check(seen.body["cookie"].is_null(), || format!("{case}: cookie upstream {}", seen.body["cookie"]));
        f.check(seen.body["acts_as"] == "Guest", || format!("{case}: acts as {}", seen.body["acts_as"]));
    }
    f.finish();
}

// ----- 6. header forms ----------------------------------------------------------------------

#[tokio::test]
async fn ambiguous_header_forms_are_refused() {
    let env = env(PUBLIC_PING).await;
    let mut f = Failures::default();
    for proto in BOTH {
        let req = Req::get("/api/resource/ToDo").header("x_frappe_user", "Administrator").token();
        let seen = env.send(proto, &req).await;
        expect_refused(&mut f, &env, &req.describe(proto), &seen, 400, Some("ValidationError"));
        let req = Req::get("/api/method/ping").header("X_Frappe_User", "Administrator");
        let seen = env.send(proto, &req).await;
        expect_refused(&mut f, &env, &req.describe(proto), &seen, 400, Some("ValidationError"));

        let req = Req::get("/api/resource/ToDo")
            .token()
            .header("authorization", &token_header(OTHER_KEY, OTHER_SECRET));
        let seen = env.send(proto, &req).await;
        expect_refused(&mut f, &env, &req.describe(proto), &seen, 400, Some("ValidationError"));
        let req = Req::get("/api/resource/ToDo").token().token();
        let seen = env.send(proto, &req).await;
        expect_refused(
            &mut f,
            &env,
            &format!("{} (same token twice)", req.describe(proto)),
            &seen,
            400,
            Some("ValidationError"),
        );
    }
    // gunicorn 23 reads `SCRIPT_NAME` / `PATH_INFO` from the gateway (a trusted peer) and
    // routes the path after it: refused, never forwarded.
    for (name, path) in
        [("SCRIPT_NAME", "/x/api/method/frappe.client.get_password"), ("PATH_INFO", "/api/method/ping")]
    {
        for proto in BOTH {
            let req = Req::get(path).token().header(name, "/x");
            let seen = env.send(proto, &req).await;
            expect_refused(&mut f, &env, &req.describe(proto), &seen, 400, Some("ValidationError"));
        }
    }
    // Other underscore names are dropped on the way, as nginx drops them; the dash spelling of
    // SCRIPT_NAME (which gunicorn does not read) too.
    for proto in BOTH {
        let req = Req::get("/x/api/method/frappe.client.get_password").token().header("Script-Name", "/x");
        let seen = env.send(proto, &req).await;
        let runs = &seen.body["runs"];
        f.check(seen.status == 200 && runs["kind"] == "page", || {
            format!("{}: status {}, ran {runs}", req.describe(proto), seen.status)
        });
    }
    for named in ["authorization", "cookie", "x-frappe-user", "keep-alive, Authorization"] {
        let req = Req::get("/api/resource/ToDo").token().header("connection", named);
        let seen = env.send(Proto::H1, &req).await;
        expect_refused(&mut f, &env, &req.describe(Proto::H1), &seen, 400, Some("ValidationError"));
    }
    for (wire, status) in [
        (
            format!("CONNECT {0} HTTP/1.1\r\nhost: {0}\r\nauthorization: {1}\r\n\r\n", env.host(), token()),
            405,
        ),
        (format!("OPTIONS * HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n", env.host()), 400),
    ] {
        let case = wire.lines().next().unwrap_or("").to_string();
        let exchanged =
            tokio::time::timeout(REQUEST_TIMEOUT, raw_exchange(&env.gateway, &env.certs, wire.as_bytes()))
                .await;
        match exchanged {
            Ok(Ok(seen)) => expect_refused(&mut f, &env, &case, &seen, status, None),
            other => f.check(false, || format!("{case}: no response: {other:?}")),
        }
    }
    f.finish();
}

#[tokio::test]
async fn only_the_gateway_sets_the_user_header_and_h2_cookie_crumbs_are_joined() {
    let env = env(PUBLIC_PING).await;
    let mut f = Failures::default();
    for proto in BOTH {
        let req = Req::get("/api/resource/ToDo").header("x-frappe-user", "Administrator").token();
        let seen = env.send(proto, &req).await;
        f.check(seen.body["user_header"] == USER, || {
            format!("{proto:?} token route: user header {}", seen.body["user_header"])
        });
        let want = Ran { runs: resource("ToDo"), acts_as: USER, doctype: json!("ToDo"), rpc: Value::Null };
        expect_ran(&mut f, &env, &req.describe(proto), &seen, want).await;

        let req = Req::get("/api/method/ping").header("x-frappe-user", "Administrator");
        let seen = env.send(proto, &req).await;
        f.check(seen.status == 200 && seen.body["user_header"].is_null(), || {
            format!("{proto:?} public route: status {} user header {}", seen.status, seen.body["user_header"])
        });
    }
    // RFC 9113 §8.2.3: cookie crumbs are joined with "; " before an HTTP/1.1 hop.
    let req = Req::get("/api/method/ping").header("cookie", "a=1").header("cookie", "b=2");
    let seen = env.send(Proto::H2, &req).await;
    f.check(seen.status == 200 && seen.body["cookie"] == "a=1; b=2", || {
        format!("HTTP/2 cookie crumbs arrived upstream as {} (status {})", seen.body["cookie"], seen.status)
    });
    f.finish();
}

// ----- 7. non-Frappe upstream ---------------------------------------------------------------

#[tokio::test]
async fn a_non_frappe_upstream_gets_the_user_header_but_never_the_credentials() {
    // The route's upstream is the same differential app: what matters is what it receives.
    let frappe = FakeFrappe::start().await;
    frappe.add_user(USER, KEY, SECRET);
    let upstream = tokio::task::spawn_blocking(|| DifferentialUpstream::start(2)).await.expect("upstream");
    let certs = Certs::generate();
    let reports = format!(
        "[[route]]\npath = \"/reports/\"\nauth = \"token\"\nupstream = {}\n",
        toml_str(&upstream.url())
    );
    let config = ConfigBuilder::new(&upstream.url())
        .tls(&certs)
        .set("frappe", &format!("url = {}", toml_str(&frappe.url())))
        .extra(&reports)
        .build();
    let gateway = AnyGateway::InProcess(Gateway::start(&config, &[]).await);
    let env = Env { _frappe: frappe, upstream, gateway, certs };
    let mut f = Failures::default();
    for proto in BOTH {
        let seen = env.send(proto, &Req::get("/reports/daily?x=1").token().header("cookie", "sid=abc")).await;
        f.check(seen.status == 200, || {
            format!("{proto:?} /reports/: status {} {}", seen.status, clip(&seen.text))
        });
        f.check(seen.body["authorization"].is_null(), || {
            format!("{proto:?} /reports/ received Authorization {}", seen.body["authorization"])
        });
        f.check(seen.body["user_header"] == USER, || {
            format!("{proto:?} /reports/ user header {}", seen.body["user_header"])
        });
        f.check(seen.body["cookie"].is_null(), || {
            format!("{proto:?} /reports/ cookie {}", seen.body["cookie"])
        });
        // Frappe itself still verifies the token (auth.forward_authorization = true).
        let seen = env.send(proto, &Req::get("/api/resource/ToDo").token()).await;
        f.check(seen.body["authorization"] == token(), || {
            format!("{proto:?} Frappe route authorization {}", seen.body["authorization"])
        });
    }
    f.finish();
}

// ----- 8. multipart streaming ---------------------------------------------------------------

const MIB: usize = 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// A multipart body streamed in 64 KiB chunks: one file part of `file_len` bytes, then `after`
/// fields. Returns (content type, exact length, body).
fn streamed_multipart(file_len: usize, after: &[(&str, &str)]) -> (String, u64, reqwest::Body) {
    let head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    let mut tail = String::from("\r\n");
    for (name, value) in after {
        tail.push_str(&format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        ));
    }
    tail.push_str(&format!("--{BOUNDARY}--\r\n"));
    let len = (head.len() + file_len + tail.len()) as u64;
    let chunks = file_len / CHUNK;
    assert_eq!(chunks * CHUNK, file_len, "file length is whole chunks");
    let block = Bytes::from(vec![b'z'; CHUNK]);
    let parts = stream::iter(std::iter::once(Bytes::from(head)))
        .chain(stream::iter(0..chunks).map(move |_| block.clone()))
        .chain(stream::iter(std::iter::once(Bytes::from(tail))))
        .map(Ok::<_, std::convert::Infallible>);
    (format!("multipart/form-data; boundary={BOUNDARY}"), len, reqwest::Body::wrap_stream(parts))
}

/// Issue acceptance 2: a 20 MiB upload streams through (gateway RSS growth < 8 MiB) and
/// completes upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_multipart_upload_streams_through() {
    let env = env_as(true, 4, &[], "").await;
    let mut f = Failures::default();
    let url = format!("{}/api/method/frappe.handler.upload_file", env.gateway.base_url());
    for (version, name) in [(HttpVersion::Http1Only, "HTTP/1.1"), (HttpVersion::Http2, "HTTP/2")] {
        let client = https_client(&env.certs.ca_pem, version);
        // Warm up: key verified, connections and buffers allocated.
        let (content_type, len, body) = streamed_multipart(4 * CHUNK, &[("is_private", "1")]);
        let warm = client
            .post(&url)
            .header("authorization", token())
            .header("content-type", content_type)
            .header("content-length", len)
            .body(body)
            .send()
            .await;
        f.check(warm.as_ref().is_ok_and(|r| r.status() == 200), || {
            format!("{name} warm-up upload: {warm:?}")
        });
        let baseline = rss_kib(env.gateway.pid()).expect("gateway RSS");
        let sampler = RssSampler::start(env.gateway.pid());
        let (content_type, len, body) = streamed_multipart(20 * MIB, &[("is_private", "1")]);
        let response = client
            .post(&url)
            .header("authorization", token())
            .header("content-type", content_type)
            .header("content-length", len)
            .body(body)
            .send()
            .await;
        let peak = sampler.peak();
        drop(sampler);
        let seen = match response {
            Ok(r) => {
                let (status, headers) = (r.status().as_u16(), r.headers().clone());
                let text = r.text().await.unwrap_or_default();
                let headers = headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect();
                Seen { status, headers, body: serde_json::from_str(&text).unwrap_or(Value::Null), text }
            }
            Err(e) => Seen { status: 0, headers: Vec::new(), text: e.to_string(), body: Value::Null },
        };
        let case = format!("{name} 20 MiB multipart upload");
        f.check(seen.body["body_len"] == len, || {
            format!("{case}: upstream read {} of {len} bytes", seen.body["body_len"])
        });
        let want = Ran {
            runs: method("frappe.handler.upload_file"),
            acts_as: USER,
            doctype: Value::Null,
            rpc: json!("frappe.handler.upload_file"),
        };
        expect_ran(&mut f, &env, &case, &seen, want).await;
        let growth = peak.saturating_sub(baseline);
        f.check(growth < 8 * 1024, || {
            format!("{case}: gateway RSS grew {growth} KiB (baseline {baseline} KiB, peak {peak} KiB)")
        });
    }
    f.finish();
}

/// A `cmd` for a denied method after a file part larger than the inspected prefix: refused,
/// and the body never completes upstream (Frappe would have run the cmd).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_cmd_after_a_large_file_part_never_completes_upstream() {
    let env = env(DENY_GET_PASSWORD).await;
    let mut f = Failures::default();
    let url = format!("{}/api/method/frappe.handler.upload_file?probe=late-cmd", env.gateway.base_url());
    for (version, name) in [(HttpVersion::Http1Only, "HTTP/1.1"), (HttpVersion::Http2, "HTTP/2")] {
        let client = https_client(&env.certs.ca_pem, version);
        let (content_type, len, body) = streamed_multipart(2 * MIB, &[("cmd", GET_PASSWORD), ("name", USER)]);
        let response = client
            .post(&url)
            .header("authorization", token())
            .header("content-type", content_type)
            .header("content-length", len)
            .body(body)
            .send()
            .await;
        let case = format!("{name} 2 MiB file part then cmd={GET_PASSWORD}");
        match response {
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let problems = error_body_problems(&body, None);
                f.check((400..500).contains(&status) && problems.is_empty(), || {
                    format!(
                        "{case}: status {status}, want a refusal; {}; body {}",
                        problems.join("; "),
                        clip(&text)
                    )
                });
            }
            // The gateway may stop reading and reset the stream once it has refused.
            Err(e) => f.check(false, || format!("{case}: no response ({e})")),
        }
    }
    // Give an aborted upstream body time to be noticed by the worker.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let completed: Vec<Value> = env
        .upstream
        .records()
        .into_iter()
        .filter(|r| r["query"] == "probe=late-cmd" && r["complete"] == true)
        .collect();
    f.check(completed.is_empty(), || {
        format!("the body completed upstream, where Frappe ran it: {completed:?}")
    });
    f.finish();
}

// ----- 9. exc -------------------------------------------------------------------------------

#[tokio::test]
async fn gateway_error_bodies_carry_a_one_line_exc() {
    let env = env(DENY_GET_PASSWORD).await;
    let mut f = Failures::default();
    for proto in BOTH {
        for (req, status, exc_type) in [
            (Req::get("/api/resource/ToDo"), 401, "AuthenticationError"),
            (
                Req::get("/api/resource/ToDo").header("authorization", &token_header(KEY, "000000000000000")),
                401,
                "AuthenticationError",
            ),
            (Req::get("/api/method/frappe.client.get_password").token(), 403, "PermissionError"),
            (Req::get("/api/resource/ToDo?sid=x").token(), 400, "ValidationError"),
        ] {
            let seen = env.send(proto, &req).await;
            expect_refused(&mut f, &env, &req.describe(proto), &seen, status, Some(exc_type));
        }
    }
    f.finish();
}
