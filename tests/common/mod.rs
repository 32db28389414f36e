//! Shared integration-test harness: a fake Frappe upstream, test certificates, the gateway
//! in-process (or as a process, for tests of the binary), HTTP clients, secret checks. Every test file does `mod common;`.
//!
//! Everything binds 127.0.0.1 port 0 and is torn down on `Drop`, so tests run in parallel.
#![allow(dead_code)]

pub mod certs;
pub mod client;
pub mod config;
pub mod differential;
pub mod fake_frappe;
pub mod gateway;
pub mod h2_raw;
pub mod in_process;
pub mod process;
pub mod redis;
pub mod secrets;
pub mod transcript;

#[allow(unused_imports)] // each test crate uses a different subset
pub use certs::Certs;
#[allow(unused_imports)]
pub use client::{
    http_client, https_client, https_client_builder, read_response_head, tcp_connect, tls_client_config,
    tls_connect, try_tls_connect, HttpVersion,
};
#[allow(unused_imports)]
pub use config::{config_for, toml_str, ConfigBuilder, PUBLIC_ROUTE};
#[allow(unused_imports)]
pub use differential::{read_diff_log, DifferentialUpstream};
#[allow(unused_imports)]
pub use fake_frappe::{
    download_bytes, expected_download_sha256, FakeFrappe, RecordedRequest, UsersMode, WhoamiMode,
};
#[allow(unused_imports)]
pub use gateway::{
    log_field, log_message, read_json_lines, write_temp_config, GatewayProcess, Signal, StartFailure,
};
#[allow(unused_imports)]
pub use in_process::Gateway;
#[allow(unused_imports)]
pub use process::{rss_kib, RssSampler};

use base64::Engine as _;

/// `token KEY:SECRET`, the header value Frappe documents for API keys.
pub fn token_header(api_key: &str, api_secret: &str) -> String {
    format!("token {api_key}:{api_secret}")
}

/// `Basic base64(KEY:SECRET)`: Frappe reads Basic credentials as api_key:api_secret.
pub fn basic_header(api_key: &str, api_secret: &str) -> String {
    let raw = format!("{api_key}:{api_secret}");
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
}

/// Polls `condition` every 20 ms until it holds; panics naming `what` after `timeout`. For
/// state the test cannot be told about (counters of the fake, a file); never a fixed sleep.
pub async fn eventually(what: &str, timeout: std::time::Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A loopback port that refuses connections (a down upstream): bound but never listening, and
/// held for the test's life, so no other test can take the number in the meantime.
pub struct RefusedPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

impl RefusedPort {
    pub fn new() -> RefusedPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let port = socket.local_addr().expect("addr").port();
        RefusedPort { _socket: socket, port }
    }
}

/// The number of a [`RefusedPort`] held until the test process exits.
pub fn refused_port() -> u16 {
    Box::leak(Box::new(RefusedPort::new())).port
}
