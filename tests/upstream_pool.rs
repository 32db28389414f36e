//! The per-worker upstream client (src/upstream.rs): keep-alive connections are reused, and a
//! backend that closes them (gunicorn's `Connection: close`, a restart) costs no request.

mod common;

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
