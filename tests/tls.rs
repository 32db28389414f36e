//! TLS termination: TLS 1.2 and TLS 1.3 are both accepted, ALPN agrees on `h2` or `http/1.1` as
//! the client asks (and each protocol is then really served), and without a certificate the
//! gateway serves plain HTTP (HTTP/1.1 and prior-knowledge HTTP/2).

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, SupportedProtocolVersion};
use tokio_rustls::TlsConnector;

use common::{http_client, try_tls_connect, Certs, ConfigBuilder, FakeFrappe, Gateway, PUBLIC_ROUTE};

async fn tls_gateway(frappe: &FakeFrappe, certs: &Certs) -> Gateway {
    Gateway::start(&ConfigBuilder::new(&frappe.url()).tls(certs).extra(PUBLIC_ROUTE).build(), &[]).await
}

/// A client config trusting the test CA, limited to `versions`, offering `alpn`.
fn client_config(
    ca_pem: &str,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&str],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("add CA root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

async fn connect(gateway: &Gateway, config: Arc<ClientConfig>) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(gateway.proxy_addr()).await?;
    let name = ServerName::try_from("localhost".to_string()).expect("server name");
    TlsConnector::from(config).connect(name, tcp).await
}

fn host(gateway: &Gateway) -> String {
    format!("localhost:{}", gateway.proxy_addr().port())
}

/// One GET over an HTTP/1.1 connection on `io`; returns (status, X-Request-Id).
async fn get_http1<I>(io: I, host: &str, path: &str) -> (u16, String)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.expect("h1 handshake");
    let connection = tokio::spawn(connection);
    let request = http::Request::get(path).header("host", host).body(Empty::<Bytes>::new()).expect("request");
    let response = sender.send_request(request).await.expect("HTTP/1.1 request");
    let answer = read_answer(response).await;
    connection.abort();
    answer
}

/// One GET over an HTTP/2 connection on `io` (the URI carries the authority).
async fn get_http2<I>(io: I, authority: &str, path: &str) -> (u16, String)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let uri = format!("https://{authority}{path}");
    let request = http::Request::get(uri).body(Empty::<Bytes>::new()).expect("request");
    let response = sender.send_request(request).await.expect("HTTP/2 request");
    assert_eq!(response.version(), http::Version::HTTP_2);
    let answer = read_answer(response).await;
    connection.abort();
    answer
}

async fn read_answer(response: http::Response<hyper::body::Incoming>) -> (u16, String) {
    let status = response.status().as_u16();
    let id =
        response.headers().get("x-request-id").expect("X-Request-Id").to_str().expect("ascii").to_string();
    response.into_body().collect().await.expect("response body");
    (status, id)
}

async fn logged_tls(gateway: &Gateway, request_id: &str) -> serde_json::Value {
    let line = gateway.wait_for_access_log(|l| l["request_id"] == request_id, Duration::from_secs(10)).await;
    line.unwrap_or_else(|| panic!("no access-log line for {request_id}:\n{}", gateway.stdout_text()))
}

#[tokio::test]
async fn tls12_and_tls13_are_both_accepted() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let gateway = tls_gateway(&frappe, &certs).await;
    let cases: [(&'static SupportedProtocolVersion, rustls::ProtocolVersion, &str); 2] = [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2, "TLSv1.2"),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3, "TLSv1.3"),
    ];
    for (version, expected, name) in cases {
        for alpn in [&["http/1.1"][..], &["h2"][..]] {
            let config = client_config(&certs.ca_pem, &[version], alpn);
            let tls =
                connect(&gateway, config).await.unwrap_or_else(|e| panic!("{name} {alpn:?} handshake: {e}"));
            assert_eq!(tls.get_ref().1.protocol_version(), Some(expected));
            let (status, request_id) = match alpn[0] {
                "h2" => get_http2(tls, &host(&gateway), "/__test/echo").await,
                _ => get_http1(tls, &host(&gateway), "/__test/echo").await,
            };
            assert_eq!(status, 200, "{name} {alpn:?}");
            let line = logged_tls(&gateway, &request_id).await;
            assert_eq!(line["tls"], name, "{line}");
            assert_eq!(line["protocol"], if alpn[0] == "h2" { "HTTP/2" } else { "HTTP/1.1" }, "{line}");
        }
    }
}

#[tokio::test]
async fn alpn_agrees_on_what_the_client_offers() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let gateway = tls_gateway(&frappe, &certs).await;
    let all_versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    let cases: [(&[&str], Option<&[u8]>); 4] = [
        (&["h2"], Some(b"h2")),
        (&["http/1.1"], Some(b"http/1.1")),
        (&["h2", "http/1.1"], Some(b"h2")),
        (&[], None),
    ];
    for (offered, agreed) in cases {
        let config = client_config(&certs.ca_pem, &all_versions, offered);
        let tls = connect(&gateway, config).await.unwrap_or_else(|e| panic!("ALPN {offered:?}: {e}"));
        assert_eq!(tls.get_ref().1.alpn_protocol(), agreed, "ALPN offered {offered:?}");
        let (status, _) = match agreed {
            Some(b"h2") => get_http2(tls, &host(&gateway), "/__test/echo").await,
            _ => get_http1(tls, &host(&gateway), "/__test/echo").await,
        };
        assert_eq!(status, 200, "ALPN offered {offered:?}");
    }
    // A protocol the gateway does not speak is refused at the handshake.
    let config = client_config(&certs.ca_pem, &all_versions, &["spdy/3"]);
    assert!(connect(&gateway, config).await.is_err(), "an unknown ALPN protocol must not be agreed");
}

#[tokio::test]
async fn plain_http_without_a_certificate() {
    let frappe = FakeFrappe::start().await;
    let gateway = Gateway::start(&ConfigBuilder::new(&frappe.url()).extra(PUBLIC_ROUTE).build(), &[]).await;
    assert!(!gateway.is_tls());
    assert!(gateway.base_url().starts_with("http://"));

    let response =
        http_client().get(format!("{}/__test/echo", gateway.base_url())).send().await.expect("HTTP/1.1");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    let seen = frappe.last_request_to("/__test/echo").expect("reached upstream");
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(seen.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    let request_id = response.headers()["x-request-id"].to_str().expect("ascii").to_string();
    let line = logged_tls(&gateway, &request_id).await;
    assert!(line.get("tls").is_none(), "no TLS version on a plain connection: {line}");

    // HTTP/2 with prior knowledge (h2c) is served too.
    let h2c = reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().expect("h2c client");
    let response = h2c.get(format!("{}/__test/echo", gateway.base_url())).send().await.expect("h2c request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);

    // A TLS client gets no certificate from a plain listener.
    let certs = Certs::generate();
    let handshake = tokio::time::timeout(
        Duration::from_secs(10),
        try_tls_connect(gateway.proxy_addr(), &certs.ca_pem, &["http/1.1"]),
    )
    .await
    .expect("the failed handshake ends");
    assert!(handshake.is_err(), "a TLS handshake succeeded against the plain listener");
}
