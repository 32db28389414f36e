//! Acceptance 7: graceful shutdown. After SIGTERM (or SIGINT) the gateway stops accepting —
//! new connections are refused while an in-flight request is still running — lets that request
//! finish with its real answer, does not wait on idle connections, and exits 0.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use common::{
    https_client, tls_connect, Certs, ConfigBuilder, FakeFrappe, GatewayProcess, HttpVersion, Signal,
    PUBLIC_ROUTE,
};

/// How long the in-flight request takes upstream.
const SLOW_MS: u64 = 2000;

async fn start_gateway(frappe: &FakeFrappe, certs: &Certs) -> GatewayProcess {
    let config = ConfigBuilder::new(&frappe.url())
        .tls(certs)
        .set("server", "shutdown_grace = \"20s\"")
        .extra(PUBLIC_ROUTE)
        .build();
    GatewayProcess::start(&config, &[]).await
}

/// Waits (bounded) until the fake has received a request on `path`.
async fn wait_for_upstream_request(frappe: &FakeFrappe, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while frappe.last_request_to(path).is_none() {
        assert!(Instant::now() < deadline, "{path} never reached the upstream");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls until connecting to `addr` is refused; returns how long that took.
async fn wait_until_refused(addr: SocketAddr, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Some(started.elapsed()),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    None
}

/// An HTTP/1.1 keep-alive connection that has served one request and now sits idle.
async fn idle_keep_alive_connection(
    gateway: &GatewayProcess,
    certs: &Certs,
) -> (hyper::client::conn::http1::SendRequest<Empty<Bytes>>, tokio::task::JoinHandle<hyper::Result<()>>) {
    let tls = tls_connect(gateway.proxy_addr(), &certs.ca_pem, &["http/1.1"]).await;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.expect("HTTP/1.1 handshake");
    let connection = tokio::spawn(connection);
    let request = http::Request::get("/__test/echo")
        .header("host", format!("localhost:{}", gateway.proxy_addr().port()))
        .body(Empty::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("warm-up request");
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.expect("warm-up body");
    (sender, connection)
}

async fn sigterm_during_slow_request(version: HttpVersion, expected: reqwest::Version) {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let mut gateway = start_gateway(&frappe, &certs).await;
    let addr = gateway.proxy_addr();

    // Idle connections must not hold the drain for the whole grace period.
    let _silent_tls = tls_connect(addr, &certs.ca_pem, &["http/1.1"]).await;
    let (_idle_sender, idle_connection) = idle_keep_alive_connection(&gateway, &certs).await;

    let client = https_client(&certs.ca_pem, version);
    let url = format!("{}/__test/slow?ms={SLOW_MS}", gateway.base_url());
    let in_flight = tokio::spawn(async move {
        let response = client.get(url).send().await?;
        let version = response.version();
        let status = response.status().as_u16();
        let body: Value = response.json().await?;
        Ok::<_, reqwest::Error>((version, status, body))
    });
    wait_for_upstream_request(&frappe, "/__test/slow").await;

    gateway.send_signal(Signal::Term);
    let signalled = Instant::now();
    let refused = wait_until_refused(addr, Duration::from_millis(SLOW_MS * 3 / 4)).await;
    assert!(refused.is_some(), "new connections were still accepted {SLOW_MS} ms after SIGTERM");
    assert!(!in_flight.is_finished(), "the in-flight request ended before new connections were refused");

    let (got_version, status, body) = tokio::time::timeout(Duration::from_secs(15), in_flight)
        .await
        .expect("the in-flight request finishes")
        .expect("task")
        .expect("the in-flight request succeeds after SIGTERM");
    assert_eq!(got_version, expected);
    assert_eq!(status, 200);
    assert_eq!(body["slept_ms"], SLOW_MS);

    let exit = gateway.wait_exit(Duration::from_secs(10)).await.expect("the gateway exits after draining");
    assert_eq!(
        exit.code(),
        Some(0),
        "exit status after graceful shutdown: {exit:?}\n{}",
        gateway.stderr_text()
    );
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(8), "exit took {took:?}: idle connections held the drain");
    let idle = tokio::time::timeout(Duration::from_secs(5), idle_connection).await;
    assert!(idle.is_ok(), "the idle keep-alive connection was not closed by the shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_http1_in_flight_request_completes_new_connections_refused_exit_0() {
    sigterm_during_slow_request(HttpVersion::Http1Only, reqwest::Version::HTTP_11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_http2_in_flight_request_completes_new_connections_refused_exit_0() {
    sigterm_during_slow_request(HttpVersion::Http2, reqwest::Version::HTTP_2).await;
}

#[tokio::test]
async fn sigint_exits_0() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let mut gateway = start_gateway(&frappe, &certs).await;
    gateway.send_signal(Signal::Int);
    let exit = gateway.wait_exit(Duration::from_secs(10)).await.expect("the gateway exits on SIGINT");
    assert_eq!(exit.code(), Some(0), "{exit:?}\n{}", gateway.stderr_text());
}

/// The request that was in flight at SIGTERM is in the access log once the process has exited
/// (acceptance 8 holds through shutdown: the log writer is flushed before exit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_request_is_access_logged_before_exit() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let mut gateway = start_gateway(&frappe, &certs).await;
    let client = https_client(&certs.ca_pem, HttpVersion::Http2);
    let url = format!("{}/__test/slow?ms=800&draining", gateway.base_url());
    let in_flight = tokio::spawn(async move { client.get(url).send().await.map(|r| r.headers().clone()) });
    wait_for_upstream_request(&frappe, "/__test/slow").await;
    gateway.send_signal(Signal::Term);
    let headers = in_flight.await.expect("task").expect("in-flight request");
    let request_id = headers["x-request-id"].to_str().expect("ascii").to_string();
    let exit = gateway.wait_exit(Duration::from_secs(10)).await.expect("exit");
    assert_eq!(exit.code(), Some(0));
    let lines: Vec<Value> =
        gateway.access_log_lines().into_iter().filter(|l| l["request_id"] == request_id.as_str()).collect();
    assert_eq!(lines.len(), 1, "access-log lines for the drained request:\n{}", gateway.stdout_text());
    assert_eq!(lines[0]["status"], 200);
}
