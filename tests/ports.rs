//! One owner per port: the proxy listener's SO_REUSEPORT is for the gateway's own workers
//! only. A second instance on a running gateway's address exits 1 naming `server.listen`, as
//! does any other process's listener there (with or without SO_REUSEPORT), and the first
//! gateway keeps serving all the traffic.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{http_client, write_temp_config, ConfigBuilder, FakeFrappe, GatewayProcess};

const PUBLIC: &str = "[[route]]\npath = \"/\"\nauth = \"public\"\n";

fn config_on(frappe: &FakeFrappe, listen: &str, workers: usize) -> String {
    ConfigBuilder::new(&frappe.url())
        .set("server", &format!("listen = {listen:?}"))
        .set("server", &format!("workers = {workers}"))
        .extra(PUBLIC)
        .build()
}

/// Starts the binary on a config whose proxy address is taken; it must exit 1 promptly.
fn expect_refused(config: &str, addr: SocketAddr) -> String {
    let (_dir, path) = write_temp_config(config);
    let (status, _stdout, stderr) = GatewayProcess::run_to_exit(&["--config", path.to_str().unwrap()], &[]);
    assert_eq!(status.code(), Some(1), "second owner of {addr} must exit 1:\n{stderr}");
    assert!(stderr.contains("server.listen"), "names the key: {stderr}");
    assert!(stderr.contains(&addr.to_string()), "names the address: {stderr}");
    assert!(stderr.contains("another process is already listening there"), "{stderr}");
    stderr
}

/// Sends `requests` requests through `gateway`, each a new connection (so the kernel picks a
/// listener each time); returns the last one's request id.
async fn assert_serves(gateway: &GatewayProcess, requests: usize) -> String {
    let mut last = String::new();
    for i in 0..requests {
        let client = http_client();
        let url = format!("{}/api/method/ping?n={i}", gateway.base_url());
        let response = client.get(&url).send().await.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(response.status(), 200, "request {i} through the first gateway");
        last = response.headers()["x-request-id"].to_str().unwrap().to_string();
    }
    last
}

#[tokio::test]
async fn second_instance_on_the_same_address_exits_1_and_the_first_keeps_serving() {
    let frappe = FakeFrappe::start().await;
    let first = GatewayProcess::start(&config_on(&frappe, "127.0.0.1:0", 2), &[]).await;
    let addr = first.proxy_addr();
    assert_serves(&first, 3).await;

    let second = config_on(&frappe, &addr.to_string(), 2);
    tokio::task::spawn_blocking(move || expect_refused(&second, addr)).await.unwrap();

    // Every connection still lands on the first instance's workers.
    let last = assert_serves(&first, 20).await;
    // Each worker appends its line after its response is sent: under load the last request's
    // line can come out before an earlier one's, so wait for the count, not for the last id.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while first.access_log_lines().len() < 23 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = first.access_log_lines();
    assert_eq!(lines.len(), 23, "the first gateway served every request");
    assert!(lines.iter().any(|l| l["request_id"] == last.as_str()), "the last request is logged");
}

#[tokio::test]
async fn a_foreign_listener_with_or_without_reuseport_is_refused() {
    let frappe = FakeFrappe::start().await;
    // Another program that also set SO_REUSEPORT: the kernel would let us join its group.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.set_reuseport(true).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let foreign = socket.listen(16).unwrap();
    let addr = foreign.local_addr().unwrap();
    let config = config_on(&frappe, &addr.to_string(), 1);
    tokio::task::spawn_blocking(move || expect_refused(&config, addr)).await.unwrap();
    drop(foreign);

    // A plain listener (no SO_REUSEPORT).
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = plain.local_addr().unwrap();
    let config = config_on(&frappe, &addr.to_string(), 3);
    tokio::task::spawn_blocking(move || expect_refused(&config, addr)).await.unwrap();
    drop(plain);
}

#[tokio::test]
async fn several_workers_share_one_port_and_a_restart_on_it_works() {
    let frappe = FakeFrappe::start().await;
    let first = GatewayProcess::start(&config_on(&frappe, "127.0.0.1:0", 4), &[]).await;
    let addr = first.proxy_addr();
    assert_serves(&first, 8).await;
    drop(first);
    // Once the owner is gone, the same address is free again (SO_REUSEADDR: TIME_WAIT is fine).
    let again = GatewayProcess::start(&config_on(&frappe, &addr.to_string(), 4), &[]).await;
    assert_eq!(again.proxy_addr(), addr);
    assert_serves(&again, 4).await;
}
