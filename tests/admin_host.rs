//! The admin listener's DNS-rebinding guard (`admin.allowed_hosts`), over real sockets: a
//! request naming a Host that is not an IP, `localhost` or a listed name gets 403 with a JSON
//! body and one warning, and does nothing (`POST /reload` does not reload); probes and the
//! webhook are exempt; the list is reloadable. Raw HTTP/1.1, so the Host is exactly the one
//! the test writes.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;

const WAIT: Duration = Duration::from_secs(15);

/// One request on its own connection: `(status, body)`. `target` is the request target
/// (a path, or an absolute URL); `host` the `Host` header, `None` to send none.
async fn send(addr: SocketAddr, method: &str, target: &str, host: Option<&str>) -> (u16, String) {
    let host_line = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
    let request =
        format!("{method} {target} HTTP/1.1\r\n{host_line}Content-Length: 0\r\nConnection: close\r\n\r\n");
    let exchange = async {
        let mut stream = tcp_connect(addr).await;
        stream.write_all(request.as_bytes()).await.expect("write request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read response");
        raw
    };
    let raw = tokio::time::timeout(WAIT, exchange).await.expect("response within WAIT");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no response head: {text:?}"));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok());
    (status.unwrap_or_else(|| panic!("no status line: {head:?}")), body.to_string())
}

/// A 403 from the guard: JSON in the admin listener's error shape, naming the key to set.
fn assert_refused((status, body): &(u16, String), what: &str) {
    assert_eq!(*status, 403, "{what}: {body}");
    let json: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"));
    let error = json["error"].as_str().unwrap_or_else(|| panic!("{what}: no error field: {body}"));
    assert!(error.contains("admin.allowed_hosts"), "{what}: {body}");
}

fn config(frappe: &FakeFrappe, allowed_hosts: Option<&str>) -> String {
    let builder = ConfigBuilder::new(&frappe.url());
    match allowed_hosts {
        Some(list) => builder.set("admin", &format!("allowed_hosts = {list}")),
        None => builder,
    }
    .build()
}

async fn reloads_ok(admin: SocketAddr) -> f64 {
    let (status, text) = send(admin, "GET", "/metrics", Some("127.0.0.1")).await;
    assert_eq!(status, 200, "{text}");
    let line = text.lines().find(|l| l.starts_with("gateway_config_reloads_total{result=\"ok\"}"));
    line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_host_is_refused_and_ips_and_localhost_are_not() {
    let frappe = FakeFrappe::start().await;
    let gateway = Gateway::start(&config(&frappe, None), &[]).await;
    let admin = gateway.admin_addr();
    let port = admin.port();
    let evil = format!("evil.example:{port}");

    for (method, path) in [("GET", "/metrics"), ("GET", "/status.json"), ("GET", "/"), ("POST", "/reload")] {
        assert_refused(&send(admin, method, path, Some(&evil)).await, &format!("{method} {path}"));
    }
    let refused = gateway
        .wait_for_log(
            |l| {
                log_message(l).is_some_and(|m| m.starts_with("admin request refused"))
                    && log_field(l, "host").and_then(Value::as_str) == Some(evil.as_str())
                    && log_field(l, "path").and_then(Value::as_str) == Some("/metrics")
            },
            WAIT,
        )
        .await;
    let refused = refused.expect("the refusal is logged with host and path");
    assert_eq!(log_field(&refused, "level").and_then(Value::as_str), Some("WARN"), "{refused}");

    // A name the attacker points at 127.0.0.1 is still refused, in any disguise.
    for host in [
        format!("localhost.evil.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
        format!("user@127.0.0.1:{port}"),
    ] {
        assert_refused(&send(admin, "GET", "/status.json", Some(&host)).await, &host);
    }
    // The absolute form names its own authority, which is judged too.
    let absolute = format!("http://{evil}/metrics");
    assert_refused(&send(admin, "GET", &absolute, Some(&format!("127.0.0.1:{port}"))).await, "absolute form");

    for host in [
        Some(format!("127.0.0.1:{port}")),
        Some(format!("localhost:{port}")),
        Some("LOCALHOST.".to_string()),
        Some(format!("[::1]:{port}")),
        None,
    ] {
        for (method, path) in [("GET", "/metrics"), ("GET", "/status.json")] {
            let (status, body) = send(admin, method, path, host.as_deref()).await;
            assert_eq!(status, 200, "{method} {path} with Host {host:?}: {body}");
        }
        let (status, body) = send(admin, "POST", "/reload", host.as_deref()).await;
        assert_ne!(status, 403, "POST /reload with Host {host:?}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_the_webhook_answer_any_host() {
    let frappe = FakeFrappe::start().await;
    let gateway = Gateway::start(&config(&frappe, None), &[]).await;
    let admin = gateway.admin_addr();
    let evil = format!("evil.example:{}", admin.port());

    let (status, body) = send(admin, "GET", "/healthz", Some(&evil)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = send(admin, "GET", "/readyz", Some(&evil)).await;
    assert_ne!(status, 403, "{body}");
    // To a foreign Host, only the verdict: no reasons, counts or addresses.
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json.as_object().map(|o| o.len()), Some(1), "{body}");
    assert!(json["status"].is_string(), "{body}");
    let (_, body) = send(admin, "GET", "/readyz", Some("127.0.0.1")).await;
    let json: Value = serde_json::from_str(&body).unwrap();
    assert!(json["rate_limit"].is_object() && json.get("credential_cache_entries").is_some(), "{body}");
    // No webhook secret is configured: the receiver's own 503, not the guard's 403.
    let (status, body) = send(admin, "POST", "/hooks/frappe", Some("frappe-gateway:9901")).await;
    assert_eq!(status, 503, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_names_are_allowed_and_a_refused_reload_does_nothing() {
    let frappe = FakeFrappe::start().await;
    let gateway = Gateway::start(&config(&frappe, Some("[\"gateway.internal\"]")), &[]).await;
    let admin = gateway.admin_addr();
    let port = admin.port();

    for host in [format!("gateway.internal:{port}"), format!("Gateway.Internal.:{port}")] {
        let (status, body) = send(admin, "GET", "/metrics", Some(&host)).await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    let other = format!("prometheus.internal:{port}");
    assert_refused(&send(admin, "GET", "/metrics", Some(&other)).await, "an unlisted name");

    // A rebinding page asking for a reload that would let it in: refused, nothing reloaded.
    let before = reloads_ok(admin).await;
    gateway.write_config(&config(&frappe, Some("[\"gateway.internal\", \"prometheus.internal\"]")));
    assert_refused(&send(admin, "POST", "/reload", Some(&other)).await, "POST /reload");
    assert_eq!(reloads_ok(admin).await, before, "the refused reload was not performed");
    assert_refused(&send(admin, "GET", "/metrics", Some(&other)).await, "still unlisted");

    // The list is reloadable: the same reload from an allowed Host puts the new name in force.
    let (status, body) = send(admin, "POST", "/reload", Some(&format!("127.0.0.1:{port}"))).await;
    assert_eq!(status, 200, "{body}");
    let report: Value = serde_json::from_str(&body).expect("JSON");
    assert!(report["changed"].as_array().is_some_and(|c| c.contains(&Value::from("admin"))), "{report}");
    // (The in-process harness runs with its own `log.access`, reported as restart-only.)
    let restart = report["restart_required"].as_array().expect("restart_required");
    assert!(!restart.iter().any(|k| k.as_str().is_some_and(|k| k.starts_with("admin."))), "{report}");
    assert_eq!(reloads_ok(admin).await, before + 1.0);
    let (status, body) = send(admin, "GET", "/metrics", Some(&other)).await;
    assert_eq!(status, 200, "{body}");

    // `*` opts out of the check.
    gateway.write_config(&config(&frappe, Some("[\"*\"]")));
    gateway.reload().expect("reload");
    let (status, body) = send(admin, "GET", "/status.json", Some("evil.example")).await;
    assert_eq!(status, 200, "{body}");
}
