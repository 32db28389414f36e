//! Audit probe: request forms where the gateway judges one call and Frappe 15 (werkzeug 3.0.6
//! under gunicorn 22, `tests/differential/`) runs another. Each case is sent on a raw HTTP/1.1
//! socket (bytes as written); the test fails listing every case the gateway forwarded although
//! what ran upstream is not what its policy allows.
//!
//! Policy: `[[route]] /api/method/frappe.client.get_password` deny; `[[user]]` api.user with
//! doctypes = ["ToDo"], rpc = ["frappe.client.get_list"]; token everywhere else.

mod common;

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;

const USER: &str = "api.user@example.com";
const KEY: &str = "0a1b2c3d4e5f607";
const SECRET: &str = "9f8e7d6c5b4a392";

struct Case {
    name: &'static str,
    method: &'static str,
    target: &'static str,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Vec<u8>,
    /// Whether what ran upstream is allowed by the policy.
    allowed: fn(&Value) -> bool,
}

fn ok_call(runs: &Value) -> bool {
    let method = runs["method"].as_str().unwrap_or("");
    let doctype = runs["doctype"].as_str().unwrap_or("");
    match runs["kind"].as_str() {
        Some("method") => method == "frappe.client.get_list",
        Some("resource") | Some("document") => doctype == "ToDo",
        _ => true,
    }
}

fn mp(boundary: &str, parts: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (disposition, value) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        body.extend_from_slice(disposition);
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

async fn send(addr: std::net::SocketAddr, case: &Case) -> (u16, String) {
    let mut wire =
        format!("{} {} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n", case.method, case.target)
            .into_bytes();
    wire.extend_from_slice(format!("authorization: token {KEY}:{SECRET}\r\n").as_bytes());
    for (name, value) in &case.headers {
        wire.extend_from_slice(name.as_bytes());
        wire.extend_from_slice(b": ");
        wire.extend_from_slice(value);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(format!("content-length: {}\r\n\r\n", case.body.len()).as_bytes());
    wire.extend_from_slice(&case.body);
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&wire).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_frappe_agree_on_what_runs() {
    let frappe = FakeFrappe::start().await;
    frappe.add_user(USER, KEY, SECRET);
    let upstream = tokio::task::spawn_blocking(|| DifferentialUpstream::start(2)).await.unwrap();
    let extra = format!(
        "[[route]]\npath = \"/api/method/frappe.client.get_password\"\nauth = \"deny\"\n\n\
         [[user]]\nname = {}\ndoctypes = [\"ToDo\"]\nrpc = [\"frappe.client.get_list\"]\n",
        toml_str(USER)
    );
    let config = ConfigBuilder::new(&upstream.url())
        .set("frappe", &format!("url = {}", toml_str(&frappe.url())))
        .extra(&extra)
        .build();
    let gateway = Gateway::start(&config, &[]).await;
    let addr = gateway.proxy_addr();

    let form = |ct: &[u8]| vec![("content-type", ct.to_vec())];
    let b = "XyZ";
    let mpct = format!("multipart/form-data; boundary={b}").into_bytes();
    let cases = vec![
        Case {
            name: "control: plain allowed call",
            method: "GET",
            target: "/api/resource/ToDo",
            headers: vec![],
            body: vec![],
            allowed: ok_call,
        },
        Case {
            name: "control: query cmd get_password is denied",
            method: "GET",
            target: "/api/resource/ToDo?cmd=frappe.client.get_password",
            headers: vec![],
            body: vec![],
            allowed: ok_call,
        },
        Case {
            name: "A1 urlencoded body with a raw non-UTF-8 byte: werkzeug drops the form, query cmd runs",
            method: "POST",
            target: "/api/method/frappe.client.get_list?cmd=frappe.client.get_password",
            headers: form(b"application/x-www-form-urlencoded"),
            body: b"cmd=frappe.client.get_list&x=\xff".to_vec(),
            allowed: ok_call,
        },
        Case {
            name: "A2 urlencoded body `cmd=` + raw 0xff hides the query cmd from the gateway",
            method: "POST",
            target: "/api/resource/ToDo?cmd=frappe.client.get_password",
            headers: form(b"application/x-www-form-urlencoded"),
            body: b"cmd=&x=\xff".to_vec(),
            allowed: ok_call,
        },
        Case {
            name: "C1 Content-Type with a non-ASCII parameter (urlencoded)",
            method: "POST",
            target: "/api/resource/ToDo",
            headers: form(b"application/x-www-form-urlencoded; x=\xe9"),
            body: b"cmd=frappe.client.get_password".to_vec(),
            allowed: ok_call,
        },
        Case {
            name: "C2 Content-Type with a non-ASCII parameter (JSON)",
            method: "POST",
            target: "/api/resource/ToDo",
            headers: form(b"application/json; x=\xe9"),
            body: br#"{"cmd":"frappe.client.get_password"}"#.to_vec(),
            allowed: ok_call,
        },
        Case {
            name: "C3 Content-Type with a non-ASCII parameter (multipart)",
            method: "POST",
            target: "/api/resource/ToDo",
            headers: form(&[mpct.clone(), b"; x=\xe9".to_vec()].concat()),
            body: mp(b, &[(b"Content-Disposition: form-data; name=\"cmd\"", b"frappe.client.get_password")]),
            allowed: ok_call,
        },
        Case {
            name: "B1 multipart RFC 2231 continuation name*0=c; name*1=md",
            method: "POST",
            target: "/api/resource/ToDo",
            headers: form(&mpct),
            body: mp(
                b,
                &[(b"Content-Disposition: form-data; name*0=c; name*1=md", b"frappe.client.get_password")],
            ),
            allowed: ok_call,
        },
        Case {
            name: "B2 multipart `form-data; foo; name=cmd` (valueless param first)",
            method: "POST",
            target: "/api/resource/ToDo",
            headers: form(&mpct),
            body: mp(b, &[(b"Content-Disposition: form-data; foo; name=cmd", b"frappe.client.get_password")]),
            allowed: ok_call,
        },
        Case {
            name: "B3 multipart `name=cmd x` (werkzeug reads the token `cmd`)",
            method: "POST",
            target: "/api/resource/ToDo",
            headers: form(&mpct),
            body: mp(b, &[(b"Content-Disposition: form-data; name=cmd x", b"frappe.client.get_password")]),
            allowed: ok_call,
        },
        Case {
            name: "B4 phantom cmd: name=\"c\\md\" (werkzeug keeps the backslash) on a forbidden path",
            method: "POST",
            target: "/api/method/frappe.client.get_value",
            headers: form(&mpct),
            body: mp(b, &[(b"Content-Disposition: form-data; name=\"c\\md\"", b"frappe.client.get_list")]),
            allowed: ok_call,
        },
        Case {
            name: "B5 phantom cmd: name=cmd; name=x (werkzeug: last wins) on a forbidden DocType",
            method: "POST",
            target: "/api/resource/Customer",
            headers: form(&mpct),
            body: mp(b, &[(b"Content-Disposition: form-data; name=cmd; name=x", b"frappe.client.get_list")]),
            allowed: ok_call,
        },
        Case {
            name: "B6 phantom cmd: unterminated quote name=\"cmd",
            method: "POST",
            target: "/api/resource/Customer",
            headers: form(&mpct),
            body: mp(b, &[(b"Content-Disposition: form-data; name=\"cmd", b"frappe.client.get_list")]),
            allowed: ok_call,
        },
        Case {
            name: "B7 phantom cmd: a File for werkzeug via filename*0= (gateway sees a field)",
            method: "POST",
            target: "/api/resource/Customer",
            headers: form(&mpct),
            body: mp(
                b,
                &[(b"Content-Disposition: form-data; name=cmd; filename*0=x", b"frappe.client.get_list")],
            ),
            allowed: ok_call,
        },
        Case {
            name: "D1 duplicate boundary parameter (mime: first, werkzeug: last)",
            method: "POST",
            target: "/api/resource/ToDo",
            headers: form(b"multipart/form-data; boundary=AAA; boundary=BBB"),
            body: [
                mp("AAA", &[(b"Content-Disposition: form-data; name=\"x\"", b"1")]),
                mp(
                    "BBB",
                    &[(b"Content-Disposition: form-data; name=\"cmd\"", b"frappe.client.get_password")],
                ),
            ]
            .concat(),
            allowed: ok_call,
        },
        Case {
            name: "D2 multipart part header with a raw 0xff: werkzeug drops the form, query cmd runs",
            method: "POST",
            target: "/api/method/frappe.client.get_list?cmd=frappe.client.get_password",
            headers: form(&mpct),
            body: mp(
                b,
                &[(
                    b"Content-Disposition: form-data; name=\"cmd\"\r\nX-A: \xff" as &[u8],
                    b"frappe.client.get_list",
                )],
            ),
            allowed: ok_call,
        },
        Case {
            name: "S1 sid smuggled by name*0=s; name*1=id on a token route",
            method: "POST",
            target: "/api/resource/ToDo",
            headers: form(&mpct),
            body: mp(b, &[(b"Content-Disposition: form-data; name*0=s; name*1=id", b"0123456789abcdef")]),
            allowed: |_| true,
        },
    ];

    let mut failures = Vec::new();
    for case in &cases {
        let (status, body) = send(addr, case).await;
        let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let runs = &answer["runs"];
        let acts_as = answer["acts_as"].as_str().unwrap_or("");
        eprintln!("[{status}] {}\n      runs={runs} acts_as={acts_as:?}", case.name);
        if status == 200 && (!(case.allowed)(runs) || acts_as.starts_with("session:")) {
            failures.push(format!("{}: runs {runs} as {acts_as}", case.name));
        }
    }
    assert!(failures.is_empty(), "gateway forwarded calls its policy refuses:\n{}", failures.join("\n"));
}
