//! The per-worker upstream client (src/upstream.rs): keep-alive connections are reused, a
//! backend that closes them (gunicorn's `Connection: close`, a restart) costs no request, and
//! `upstream.max_connections` caps the connections open at once.

mod common;

use std::time::{Duration, Instant};

use common::{http_client, ConfigBuilder, FakeFrappe, Gateway, PUBLIC_ROUTE};

/// One worker, so every request uses the same idle list.
async fn gateway(frappe: &FakeFrappe) -> Gateway {
    let config = ConfigBuilder::new(&frappe.url()).set("server", "workers = 1").extra(PUBLIC_ROUTE).build();
    Gateway::start(&config, &[]).await
}

async fn ping(gateway: &Gateway) -> u16 {
    let response =
        http_client().get(format!("{}/api/method/ping", gateway.base_url())).send().await.expect("ping");
    let status = response.status().as_u16();
    let body = response.text().await.expect("body");
    assert!(body.contains("pong"), "{body}");
    status
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let frappe = FakeFrappe::start().await;
    let gateway = gateway(&frappe).await;
    for _ in 0..20 {
        assert_eq!(ping(&gateway).await, 200);
    }
    assert_eq!(frappe.connections_accepted(), 1, "the idle connection is reused");
}

#[tokio::test]
async fn connection_close_answers_are_not_reused() {
    let frappe = FakeFrappe::start().await;
    frappe.set_connection_close(true);
    let gateway = gateway(&frappe).await;
    for _ in 0..10 {
        assert_eq!(ping(&gateway).await, 200);
    }
    assert_eq!(frappe.connections_accepted(), 10, "one connection per request");
}

#[tokio::test]
async fn a_backend_restart_costs_no_request() {
    let mut frappe = FakeFrappe::start().await;
    let gateway = gateway(&frappe).await;
    assert_eq!(ping(&gateway).await, 200);
    // Closes the pooled connection from the backend's side while it sits idle.
    frappe.restart().await;
    for _ in 0..5 {
        assert_eq!(ping(&gateway).await, 200);
    }
    assert_eq!(frappe.connections_accepted(), 2, "one new connection after the restart");
}

#[tokio::test]
async fn concurrent_requests_open_connections_and_then_reuse_them() {
    let frappe = FakeFrappe::start().await;
    let gateway = gateway(&frappe).await;
    let burst = || futures_util::future::join_all((0..8).map(|_| ping(&gateway)));
    assert!(burst().await.iter().all(|s| *s == 200));
    let opened = frappe.connections_accepted();
    assert!((1..=8).contains(&opened), "{opened} connections for 8 concurrent requests");
    for _ in 0..3 {
        assert!(burst().await.iter().all(|s| *s == 200));
    }
    assert!(frappe.connections_accepted() <= 8, "later bursts reuse the idle connections");
}

/// One worker with at most `max` upstream connections, waiting `queue_timeout` for one.
async fn capped_gateway(frappe: &FakeFrappe, max: usize, queue_timeout: &str) -> Gateway {
    let config = ConfigBuilder::new(&frappe.url())
        .set("server", "workers = 1")
        .set("upstream", &format!("max_connections = {max}"))
        .set("upstream", &format!("queue_timeout = {queue_timeout:?}"))
        .extra(PUBLIC_ROUTE)
        .build();
    Gateway::start(&config, &[]).await
}

async fn slow(gateway: &Gateway, ms: u64) -> reqwest::Response {
    http_client().get(format!("{}/__test/slow?ms={ms}", gateway.base_url())).send().await.expect("request")
}

/// A burst larger than the cap waits for connections instead of opening one per request.
#[tokio::test]
async fn a_burst_never_opens_more_connections_than_the_cap() {
    let frappe = FakeFrappe::start().await;
    let gateway = capped_gateway(&frappe, 3, "10s").await;
    let burst = futures_util::future::join_all((0..12).map(|_| slow(&gateway, 100))).await;
    let statuses: Vec<u16> = burst.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses, [200; 12], "every request is served in turn");
    assert_eq!(frappe.connections_accepted(), 3, "never more than max_connections at once");
    let served = frappe.requests().iter().filter(|r| r.path() == "/__test/slow").count();
    assert_eq!(served, 12);
}

/// With every connection busy past `queue_timeout`: a 503 in Frappe's shape with
/// `Retry-After`, counted as `busy`, logged; the busy requests themselves are unharmed.
#[tokio::test]
async fn no_connection_within_the_queue_timeout_is_503() {
    let frappe = FakeFrappe::start().await;
    let gateway = capped_gateway(&frappe, 2, "300ms").await;
    let busy = futures_util::future::join_all((0..2).map(|_| slow(&gateway, 2000)));
    let late = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        (slow(&gateway, 10).await, started.elapsed())
    };
    let (busy, (refused, waited)) = tokio::join!(busy, late);
    assert!(busy.iter().all(|r| r.status() == 200), "the requests holding the connections finish");
    assert!(
        (Duration::from_millis(280)..Duration::from_millis(1500)).contains(&waited),
        "refused after {waited:?}, not at the queue timeout"
    );
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let request_id = refused.headers().get("x-request-id").expect("request id").to_str().unwrap().to_string();
    let body: serde_json::Value = refused.json().await.expect("JSON body");
    assert_eq!(body["exc_type"], "ServiceUnavailableError", "{body}");
    assert_eq!(frappe.connections_accepted(), 2);
    assert_eq!(
        frappe.requests().iter().filter(|r| r.path() == "/__test/slow").count(),
        2,
        "the refused request never reached the upstream"
    );

    let line = gateway
        .wait_for_access_log(|l| l["request_id"] == request_id.as_str(), Duration::from_secs(5))
        .await
        .expect("access-log line of the refused request");
    assert_eq!(line["status"], 503, "{line}");
    assert_eq!(line["decision"], "unavailable", "{line}");
    let metrics = http_client().get(format!("{}/metrics", gateway.admin_url())).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains("gateway_upstream_errors_total{kind=\"busy\"} 1"), "{metrics}");

    // Once a connection is free again the next request is served on it.
    assert_eq!(slow(&gateway, 10).await.status(), 200);
    assert_eq!(frappe.connections_accepted(), 2, "served on a returned connection");
}

/// A connection the backend closes frees its slot: the cap counts open connections, not
/// connections ever opened.
#[tokio::test]
async fn closed_connections_free_their_slots() {
    let frappe = FakeFrappe::start().await;
    frappe.set_connection_close(true);
    let gateway = capped_gateway(&frappe, 1, "2s").await;
    for _ in 0..5 {
        assert_eq!(ping(&gateway).await, 200);
    }
    assert_eq!(frappe.connections_accepted(), 5);
}
