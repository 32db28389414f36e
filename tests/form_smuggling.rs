//! Form bodies built to make the gateway judge one call while Frappe runs another, found by
//! reading werkzeug 3.0 (`parse_options_header`, `formparser`) against the gateway's parser.
//! The upstream is Frappe's dispatch rebuilt with the real werkzeug under gunicorn
//! (`tests/differential/`), which answers with what it ran. Each request is written as raw
//! bytes (some are not valid UTF-8), and each case must end as stated: refused with the
//! status given, or forwarded and then running only what the policy allows.
//!
//! Policy: `/api/method/frappe.client.get_password` is a deny route; the token's user may
//! only touch the `ToDo` DocType and call `frappe.client.get_list`.

mod common;

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;

const USER: &str = "api.user@example.com";
const KEY: &str = "0a1b2c3d4e5f607";
const SECRET: &str = "9f8e7d6c5b4a392";
const BOUNDARY: &str = "XyZ";

/// How a case must end.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Refused(u16),
    /// Forwarded (200), and upstream ran this `kind` of call on this method or DocType.
    Runs(&'static str, &'static str),
}

struct Case {
    name: &'static str,
    target: &'static str,
    content_type: &'static [u8],
    /// Extra raw header lines (each ending in `\r\n`).
    extra_headers: &'static [u8],
    body: Vec<u8>,
    expect: Expect,
}

/// A multipart body with one part per (raw header lines, value).
fn multipart(boundary: &str, parts: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (headers, value) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        body.extend_from_slice(headers);
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

fn one_part(disposition: &[u8], value: &[u8]) -> Vec<u8> {
    multipart(BOUNDARY, &[(disposition, value)])
}

const MULTIPART: &[u8] = b"multipart/form-data; boundary=XyZ";
const URLENCODED: &[u8] = b"application/x-www-form-urlencoded";
const GET_PASSWORD: &[u8] = b"frappe.client.get_password";
const GET_LIST: &[u8] = b"frappe.client.get_list";

fn cases() -> Vec<Case> {
    let case = |name, target, content_type, body, expect| Case {
        name,
        target,
        content_type,
        extra_headers: b"",
        body,
        expect,
    };
    vec![
        // What must keep working.
        case(
            "a plain urlencoded cmd",
            "/api/resource/Customer",
            URLENCODED,
            b"cmd=frappe.client.get_list".to_vec(),
            Expect::Runs("method", "frappe.client.get_list"),
        ),
        case(
            "a plain multipart cmd",
            "/api/resource/Customer",
            MULTIPART,
            one_part(b"Content-Disposition: form-data; name=\"cmd\"", GET_LIST),
            Expect::Runs("method", "frappe.client.get_list"),
        ),
        case(
            "an upload with an RFC 2231 file name",
            "/api/resource/ToDo",
            MULTIPART,
            one_part(
                b"Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''%C3%A9t%C3%A9.txt",
                b"data",
            ),
            Expect::Runs("resource", "ToDo"),
        ),
        case(
            "a UTF-8 file name in quotes",
            "/api/resource/ToDo",
            MULTIPART,
            one_part(
                "Content-Disposition: form-data; name=\"file\"; filename=\"été.txt\"".as_bytes(),
                b"data",
            ),
            Expect::Runs("resource", "ToDo"),
        ),
        case(
            "a query cmd the policy denies",
            "/api/resource/ToDo?cmd=frappe.client.get_password",
            b"",
            Vec::new(),
            Expect::Refused(403),
        ),
        // werkzeug drops a form it cannot decode: the query's cmd would run.
        case(
            "urlencoded body with a raw 0xff",
            "/api/method/frappe.client.get_list?cmd=frappe.client.get_password",
            URLENCODED,
            b"cmd=frappe.client.get_list&x=\xff".to_vec(),
            Expect::Refused(400),
        ),
        case(
            "urlencoded `cmd=` and a raw 0xff",
            "/api/resource/ToDo?cmd=frappe.client.get_password",
            URLENCODED,
            b"cmd=&x=\xff".to_vec(),
            Expect::Refused(400),
        ),
        case(
            "a part header with a raw 0xff",
            "/api/method/frappe.client.get_list?cmd=frappe.client.get_password",
            MULTIPART,
            one_part(b"Content-Disposition: form-data; name=\"cmd\"\r\nX-A: \xff", GET_LIST),
            Expect::Refused(400),
        ),
        // A Content-Type the gateway could not read as werkzeug does.
        case(
            "a non-ASCII urlencoded Content-Type",
            "/api/resource/ToDo",
            b"application/x-www-form-urlencoded; x=\xe9",
            b"cmd=frappe.client.get_password".to_vec(),
            Expect::Refused(400),
        ),
        case(
            "a non-ASCII JSON Content-Type",
            "/api/resource/ToDo",
            b"application/json; x=\xe9",
            br#"{"cmd":"frappe.client.get_password"}"#.to_vec(),
            Expect::Refused(400),
        ),
        case(
            "a non-ASCII multipart Content-Type",
            "/api/resource/ToDo",
            b"multipart/form-data; boundary=XyZ; x=\xe9",
            one_part(b"Content-Disposition: form-data; name=\"cmd\"", GET_PASSWORD),
            Expect::Refused(400),
        ),
        // Part names werkzeug reads as `cmd`: judged as the cmd they are.
        case(
            "name*0=c; name*1=md",
            "/api/resource/ToDo",
            MULTIPART,
            one_part(b"Content-Disposition: form-data; name*0=c; name*1=md", GET_PASSWORD),
            Expect::Refused(403),
        ),
        case(
            "a valueless parameter before name",
            "/api/resource/ToDo",
            MULTIPART,
            one_part(b"Content-Disposition: form-data; foo; name=cmd", GET_PASSWORD),
            Expect::Refused(403),
        ),
        case(
            "name=cmd x",
            "/api/resource/ToDo",
            MULTIPART,
            one_part(b"Content-Disposition: form-data; name=cmd x", GET_PASSWORD),
            Expect::Refused(403),
        ),
        // Part names werkzeug does not read as `cmd`: the path is what runs, and is judged.
        case(
            "name=\"c\\md\" keeps its backslash",
            "/api/method/frappe.client.get_value",
            MULTIPART,
            one_part(b"Content-Disposition: form-data; name=\"c\\md\"", GET_LIST),
            Expect::Refused(403),
        ),
        case(
            "the last of two names wins",
            "/api/resource/Customer",
            MULTIPART,
            one_part(b"Content-Disposition: form-data; name=cmd; name=x", GET_LIST),
            Expect::Refused(403),
        ),
        case(
            "an unterminated quote is no name",
            "/api/resource/Customer",
            MULTIPART,
            one_part(b"Content-Disposition: form-data; name=\"cmd", GET_LIST),
            Expect::Refused(403),
        ),
        case(
            "filename*0 makes the part a file",
            "/api/resource/Customer",
            MULTIPART,
            one_part(b"Content-Disposition: form-data; name=cmd; filename*0=x", GET_LIST),
            Expect::Refused(400),
        ),
        // werkzeug takes the last boundary.
        case(
            "two boundary parameters",
            "/api/resource/ToDo",
            b"multipart/form-data; boundary=AAA; boundary=BBB",
            [
                multipart("AAA", &[(b"Content-Disposition: form-data; name=\"x\"", b"1")]),
                multipart("BBB", &[(b"Content-Disposition: form-data; name=\"cmd\"", GET_PASSWORD)]),
            ]
            .concat(),
            Expect::Refused(403),
        ),
        // A session smuggled by a continuation.
        case(
            "sid by name*0=s; name*1=id",
            "/api/resource/ToDo",
            MULTIPART,
            one_part(b"Content-Disposition: form-data; name*0=s; name*1=id", b"0123456789abcdef"),
            Expect::Refused(400),
        ),
        // `Connection: content-type` would strip the header the body was judged by.
        Case {
            extra_headers: b"connection: content-type\r\n",
            ..case(
                "Connection naming Content-Type",
                "/api/method/frappe.client.get_list?cmd=frappe.client.get_password",
                URLENCODED,
                b"cmd=frappe.client.get_list".to_vec(),
                Expect::Refused(400),
            )
        },
    ]
}

async fn send(addr: std::net::SocketAddr, case: &Case) -> (u16, Value) {
    let mut wire = format!(
        "POST {} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\nauthorization: token {KEY}:{SECRET}\r\n",
        case.target
    )
    .into_bytes();
    if !case.content_type.is_empty() {
        wire.extend_from_slice(b"content-type: ");
        wire.extend_from_slice(case.content_type);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(case.extra_headers);
    wire.extend_from_slice(format!("content-length: {}\r\n\r\n", case.body.len()).as_bytes());
    wire.extend_from_slice(&case.body);
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(&wire).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut raw))
        .await
        .expect("an answer")
        .ok();
    let text = String::from_utf8_lossy(&raw);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// What ran upstream is within the policy: `ToDo`, or `frappe.client.get_list`.
fn allowed(runs: &Value) -> bool {
    match runs["kind"].as_str() {
        Some("method") => runs["method"] == "frappe.client.get_list",
        Some("resource" | "document") => runs["doctype"] == "ToDo",
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_bodies_cannot_make_frappe_run_what_the_gateway_did_not_judge() {
    let frappe = FakeFrappe::start().await;
    frappe.add_user(USER, KEY, SECRET);
    let upstream = tokio::task::spawn_blocking(|| DifferentialUpstream::start(2)).await.expect("upstream");
    let policy = format!(
        "[[route]]\npath = \"/api/method/frappe.client.get_password\"\nauth = \"deny\"\n\n\
         [[user]]\nname = {}\ndoctypes = [\"ToDo\"]\nrpc = [\"frappe.client.get_list\"]\n",
        toml_str(USER)
    );
    let config = ConfigBuilder::new(&upstream.url())
        .set("frappe", &format!("url = {}", toml_str(&frappe.url())))
        .extra(&policy)
        .build();
    let gateway = Gateway::start(&config, &[]).await;

    let mut failures = Vec::new();
    for case in cases() {
        let (status, answer) = send(gateway.proxy_addr(), &case).await;
        let runs = &answer["runs"];
        let acts_as = answer["acts_as"].as_str().unwrap_or("");
        if status == 200 && (!allowed(runs) || acts_as.starts_with("session:")) {
            failures.push(format!("{}: FORWARDED, ran {runs} as {acts_as}", case.name));
            continue;
        }
        let outcome_ok = match case.expect {
            Expect::Refused(want) => status == want && answer["exc_type"].is_string(),
            Expect::Runs(kind, what) => {
                status == 200
                    && runs["kind"] == kind
                    && (runs["method"] == what || runs["doctype"] == what)
                    && acts_as == USER
            }
        };
        if !outcome_ok {
            failures.push(format!("{}: expected {:?}, got {status} {answer}", case.name, case.expect));
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}
