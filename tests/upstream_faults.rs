//! Acceptance 5: upstream faults. A refused upstream is a 502 and a slow one (past
//! `upstream.timeout`) a 504, both as Frappe-shaped JSON with the request id; `/readyz` on the
//! admin listener follows the upstream (200 / 503 with a JSON reason) while `/healthz` stays 200.

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;

use common::{
    http_client, https_client, Certs, ConfigBuilder, FakeFrappe, Gateway, HttpVersion, PUBLIC_ROUTE,
};

async fn start_gateway(upstream_url: &str, certs: &Certs, upstream_lines: &[&str]) -> Gateway {
    let mut builder = ConfigBuilder::new(upstream_url).tls(certs);
    for line in upstream_lines {
        builder = builder.set("upstream", line);
    }
    Gateway::start(&builder.extra(PUBLIC_ROUTE).build(), &[]).await
}

/// Status, exc_type and request id (body and header agree) of a gateway error.
async fn assert_gateway_error(response: reqwest::Response, status: u16, exc_type: &str) {
    assert_eq!(response.status().as_u16(), status);
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap_or("").to_string());
    assert!(content_type.as_deref().is_some_and(|c| c.starts_with("application/json")), "{content_type:?}");
    let request_id =
        response.headers().get("x-request-id").expect("X-Request-Id").to_str().expect("ascii").to_string();
    let body: Value = response.json().await.expect("JSON error body");
    assert_eq!(body["exc_type"], exc_type, "{body}");
    assert!(body["exception"]
        .as_str()
        .is_some_and(|e| e.starts_with(&format!("frappe.exceptions.{exc_type}"))));
    let messages: Vec<String> =
        serde_json::from_str(body["_server_messages"].as_str().expect("_server_messages string"))
            .expect("list");
    let first: Value = serde_json::from_str(&messages[0]).expect("message object");
    assert!(first["message"].as_str().is_some_and(|m| !m.is_empty()), "{first}");
    assert_eq!(body["request_id"], request_id.as_str(), "{body}");
    // `exc` is one line naming the error (client libraries raise on it), never a traceback.
    let exc: Vec<String> = serde_json::from_str(body["exc"].as_str().expect("exc string")).expect("exc list");
    assert_eq!(exc.len(), 1, "{body}");
    assert!(exc[0].starts_with(&format!("frappe.exceptions.{exc_type}")) && !exc[0].contains('\n'), "{body}");
}

async fn admin_get(gateway: &Gateway, path: &str) -> (u16, Value) {
    let response =
        http_client().get(format!("{}{path}", gateway.admin_url())).send().await.expect("admin request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("admin JSON"))
}

#[tokio::test]
async fn refused_upstream_is_502_and_readiness_follows_the_upstream() {
    let mut frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let gateway = start_gateway(&frappe.url(), &certs, &[]).await;
    let url = format!("{}/api/method/ping", gateway.base_url());

    assert_eq!(admin_get(&gateway, "/healthz").await.0, 200);
    let (status, ready) = admin_get(&gateway, "/readyz").await;
    assert_eq!(status, 200, "{ready}");
    for version in [HttpVersion::Http1Only, HttpVersion::Http2] {
        let response = https_client(&certs.ca_pem, version).get(&url).send().await.expect("ping");
        assert_eq!(response.status(), 200, "{version:?}");
    }

    frappe.stop().await;
    for version in [HttpVersion::Http1Only, HttpVersion::Http2] {
        let response = https_client(&certs.ca_pem, version).get(&url).send().await.expect("request");
        assert_gateway_error(response, 502, "BadGatewayError").await;
    }
    let (status, not_ready) = admin_get(&gateway, "/readyz").await;
    assert_eq!(status, 503, "{not_ready}");
    assert!(not_ready["reason"].as_str().is_some_and(|r| !r.is_empty()), "503 says why: {not_ready}");
    let (status, health) = admin_get(&gateway, "/healthz").await;
    assert_eq!(status, 200, "the process is alive: {health}");

    // Frappe comes back: so do readiness and forwarding.
    frappe.restart().await;
    let (status, ready) = admin_get(&gateway, "/readyz").await;
    assert_eq!(status, 200, "{ready}");
    let response = https_client(&certs.ca_pem, HttpVersion::Http2).get(&url).send().await.expect("ping");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn slow_upstream_is_504_after_upstream_timeout() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let gateway = start_gateway(&frappe.url(), &certs, &["timeout = \"500ms\""]).await;
    for version in [HttpVersion::Http1Only, HttpVersion::Http2] {
        let started = Instant::now();
        let response = https_client(&certs.ca_pem, version)
            .get(format!("{}/__test/slow?ms=3000", gateway.base_url()))
            .send()
            .await
            .expect("request");
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(450),
            "{version:?}: answered after {elapsed:?}, before the timeout"
        );
        assert!(
            elapsed < Duration::from_millis(2500),
            "{version:?}: answered after {elapsed:?}, not at the timeout"
        );
        assert_gateway_error(response, 504, "GatewayTimeoutError").await;
    }
    assert_eq!(
        frappe.requests().iter().filter(|r| r.path() == "/__test/slow").count(),
        2,
        "the requests did reach the upstream"
    );
    // A quick request on the same gateway is unaffected.
    let response = https_client(&certs.ca_pem, HttpVersion::Http2)
        .get(format!("{}/__test/slow?ms=10", gateway.base_url()))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
}

/// An upstream that never completes the TCP handshake (TEST-NET-1, RFC 5737) is a 502 after
/// `connect_timeout`, not a 504 after the much longer `timeout`.
#[tokio::test]
async fn upstream_connect_timeout_is_502() {
    let certs = Certs::generate();
    let gateway =
        start_gateway("http://192.0.2.1:81", &certs, &["connect_timeout = \"300ms\"", "timeout = \"20s\""])
            .await;
    let started = Instant::now();
    let response = https_client(&certs.ca_pem, HttpVersion::Http2)
        .get(format!("{}/api/method/ping", gateway.base_url()))
        .send()
        .await
        .expect("request");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(10), "answered after {elapsed:?}");
    assert_gateway_error(response, 502, "BadGatewayError").await;
    let (status, not_ready) = admin_get(&gateway, "/readyz").await;
    assert_eq!(status, 503, "{not_ready}");
}
