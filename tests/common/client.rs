//! Clients for talking to the gateway: reqwest clients that trust only the test CA and pin
//! `localhost` to 127.0.0.1 (so certificate names match), and raw TCP / TLS streams for tests
//! that need byte-level control (slow headers, oversized headers).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types::ServerName, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// Generous default: long enough for slow CI, short enough that a hung test fails.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Which HTTP version the client offers over TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpVersion {
    /// ALPN offers only `http/1.1`.
    Http1Only,
    /// ALPN offers `h2` then `http/1.1`; the response's `version()` shows what was agreed
    /// (prior knowledge is deliberately not used).
    Http2,
}

/// A builder trusting only `ca_pem`, resolving `localhost` to 127.0.0.1 (the URL's port is
/// used), ignoring proxy environment variables, with a 30 s overall timeout.
pub fn https_client_builder(ca_pem: &str, version: HttpVersion) -> reqwest::ClientBuilder {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("parse test CA");
    let builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], 0)))
        .no_proxy()
        .timeout(CLIENT_TIMEOUT);
    match version {
        HttpVersion::Http1Only => builder.http1_only(),
        HttpVersion::Http2 => builder,
    }
}

/// See [`https_client_builder`].
pub fn https_client(ca_pem: &str, version: HttpVersion) -> reqwest::Client {
    https_client_builder(ca_pem, version).build().expect("build https client")
}

/// A plain-HTTP client (for the admin listener, plain-mode gateways, the fake upstream).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(CLIENT_TIMEOUT).build().expect("build http client")
}

pub async fn tcp_connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("tcp connect")
}

/// A rustls client config trusting only `ca_pem`, offering `alpn` (e.g. `&["h2"]`).
pub fn tls_client_config(ca_pem: &str, alpn: &[&str]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("add CA root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// Connect and complete a TLS handshake for `localhost`. Panics if the handshake fails;
/// use [`try_tls_connect`] to observe failures.
pub async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &str,
    alpn: &[&str],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    try_tls_connect(addr, ca_pem, alpn).await.expect("TLS handshake")
}

pub async fn try_tls_connect(
    addr: SocketAddr,
    ca_pem: &str,
    alpn: &[&str],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost".to_string()).expect("server name");
    TlsConnector::from(tls_client_config(ca_pem, alpn)).connect(name, tcp).await
}

/// Read until the end of a response head (`\r\n\r\n`) or EOF; returns what was read as text.
/// Good enough for asserting on status lines of raw requests.
pub async fn read_response_head<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            break;
        }
        buf.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
