//! WebSocket upgrades (Frappe's socket.io) are tunneled: an HTTP/1.1 upgrade through the
//! gateway, over TLS and over plain HTTP, reaches the fake's echo endpoint with the upgrade
//! headers intact and the usual forwarding headers, and messages flow both ways.

mod common;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use common::{tcp_connect, tls_connect, Certs, ConfigBuilder, FakeFrappe, Gateway, PUBLIC_ROUTE};

const STEP: Duration = Duration::from_secs(10);

async fn echo_round_trips<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) {
    let big = "x".repeat(200 * 1024);
    let messages = [
        Message::text("hello through the gateway"),
        Message::binary(vec![0u8, 1, 2, 3, 254, 255]),
        Message::text(big),
    ];
    for message in messages {
        tokio::time::timeout(STEP, ws.send(message.clone())).await.expect("send in time").expect("send");
        let echoed = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("echo in time")
            .expect("the tunnel stays open")
            .expect("a message");
        assert_eq!(echoed, message);
    }
    tokio::time::timeout(STEP, ws.close(None)).await.expect("close in time").expect("close");
}

fn assert_upgrade_reached_upstream(frappe: &FakeFrappe, proto: &str) {
    let seen = frappe.last_request_to("/__test/ws").expect("the handshake reached the upstream");
    assert_eq!(seen.header("upgrade").map(|v| v.to_ascii_lowercase()).as_deref(), Some("websocket"));
    let connection = seen.header("connection").unwrap_or_default().to_ascii_lowercase();
    assert!(connection.contains("upgrade"), "Connection: {connection:?}");
    assert!(seen.header("sec-websocket-key").is_some());
    assert_eq!(seen.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some(proto));
    assert!(seen.header("x-frappe-user").is_none());
}

#[tokio::test]
async fn websocket_over_tls_is_tunneled() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let config = ConfigBuilder::new(&frappe.url()).tls(&certs).extra(PUBLIC_ROUTE).build();
    let gateway = Gateway::start(&config, &[]).await;

    let tls = tls_connect(gateway.proxy_addr(), &certs.ca_pem, &["http/1.1"]).await;
    let url = format!("wss://localhost:{}/__test/ws?EIO=4&transport=websocket", gateway.proxy_addr().port());
    let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
        .expect("ws request");
    request.headers_mut().insert("x-frappe-user", "Administrator".parse().expect("header"));
    let (mut ws, response) = tokio::time::timeout(STEP, tokio_tungstenite::client_async(request, tls))
        .await
        .expect("handshake in time")
        .expect("WebSocket handshake through the gateway");
    assert_eq!(response.status(), 101);
    assert!(response.headers().contains_key("x-request-id"), "{:?}", response.headers());
    echo_round_trips(&mut ws).await;
    assert_upgrade_reached_upstream(&frappe, "https");
}

#[tokio::test]
async fn websocket_over_plain_http_is_tunneled() {
    let frappe = FakeFrappe::start().await;
    let config = ConfigBuilder::new(&frappe.url()).extra(PUBLIC_ROUTE).build();
    let gateway = Gateway::start(&config, &[]).await;

    let tcp = tcp_connect(gateway.proxy_addr()).await;
    let url = format!("ws://{}/__test/ws", gateway.proxy_addr());
    let (mut ws, response) = tokio::time::timeout(STEP, tokio_tungstenite::client_async(url, tcp))
        .await
        .expect("handshake in time")
        .expect("WebSocket handshake through the gateway");
    assert_eq!(response.status(), 101);
    echo_round_trips(&mut ws).await;
    assert_upgrade_reached_upstream(&frappe, "http");

    // The gateway keeps serving ordinary requests afterwards.
    let response =
        common::http_client().get(format!("{}/__test/echo", gateway.base_url())).send().await.expect("echo");
    assert_eq!(response.status(), 200);
}
