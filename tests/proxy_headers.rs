//! Acceptance 2: what reaches Frappe. Over TLS, with HTTP/1.1 and HTTP/2, requests arrive at the
//! fake upstream with hop-by-hop headers removed, `X-Forwarded-*` set by the gateway (never a
//! client's), `Host` / `X-Frappe-Site-Name` from the config, every identity header a client
//! could spoof stripped, and the gateway's `X-Request-Id` both upstream and on the response.
//! Response hop-by-hop headers (gunicorn's `Connection: close`) never reach the client, whose
//! keep-alive connection stays usable.

mod common;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use common::{
    https_client, tls_connect, Certs, ConfigBuilder, FakeFrappe, Gateway, HttpVersion, RecordedRequest,
    PUBLIC_ROUTE,
};

/// Headers a client could use to claim an identity, an address, a site or a file path.
const SPOOFED: &[(&str, &str)] = &[
    ("x-forwarded-for", "6.6.6.6"),
    ("x-forwarded-for", "7.7.7.7, 8.8.8.8"),
    ("x-forwarded-proto", "http"),
    ("x-forwarded-host", "evil.example.com"),
    ("x-real-ip", "6.6.6.6"),
    ("forwarded", "for=6.6.6.6;proto=http"),
    ("x-frappe-user", "Administrator"),
    ("remote-addr", "6.6.6.6"),
    ("frappe-authorization-source", "User"),
    ("x-use-x-accel-redirect", "1"),
    ("x-frappe-site-name", "other.example.com"),
    ("x-request-id", "client-chosen-request-id"),
];

/// HTTP/1.1 connection-specific headers (RFC 9110 §7.6.1), including one named in `Connection`.
/// `Upgrade` without `Connection: upgrade` is not an upgrade and must not be forwarded either.
const HOP_BY_HOP: &[(&str, &str)] = &[
    ("connection", "keep-alive, x-hop-custom"),
    ("x-hop-custom", "named in Connection"),
    ("keep-alive", "timeout=5"),
    ("te", "trailers"),
    ("trailer", "x-checksum"),
    ("proxy-authorization", "Basic Zm9vOmJhcg=="),
    ("proxy-connection", "keep-alive"),
    ("upgrade", "websocket"),
];

const UPSTREAM_HOST: &str = "erp.example.com";
const SITE_NAME: &str = "site1.example.com";

/// A TLS gateway in front of `frappe`, every path public, `upstream_lines` added to `[upstream]`.
async fn start_gateway(frappe: &FakeFrappe, certs: &Certs, upstream_lines: &[&str], extra: &str) -> Gateway {
    let mut builder = ConfigBuilder::new(&frappe.url()).tls(certs);
    for line in upstream_lines {
        builder = builder.set("upstream", line);
    }
    Gateway::start(&builder.extra(PUBLIC_ROUTE).extra(extra).build(), &[]).await
}

fn configured_host_lines() -> [String; 2] {
    [format!("host = \"{UPSTREAM_HOST}\""), format!("site_name = \"{SITE_NAME}\"")]
}

/// The one request the fake recorded on `path`.
fn only_request_to(frappe: &FakeFrappe, path: &str) -> RecordedRequest {
    let seen: Vec<RecordedRequest> = frappe.requests().into_iter().filter(|r| r.path() == path).collect();
    assert_eq!(seen.len(), 1, "exactly one request should reach {path}: {seen:#?}");
    seen.into_iter().next().expect("one request")
}

/// What every forwarded request must look like upstream, whatever the client sent.
fn assert_forwarded_identity(seen: &RecordedRequest, proxy_port: u16, response_request_id: &str) {
    assert_eq!(seen.header_all("x-forwarded-for"), vec!["127.0.0.1"], "XFF is overwritten with the peer");
    assert_eq!(seen.header_all("x-forwarded-proto"), vec!["https"]);
    assert_eq!(seen.header_all("x-forwarded-host"), vec![format!("localhost:{proxy_port}")]);
    for gone in [
        "x-real-ip",
        "forwarded",
        "x-frappe-user",
        "remote-addr",
        "frappe-authorization-source",
        "x-use-x-accel-redirect",
    ] {
        assert!(seen.header(gone).is_none(), "client-sent {gone} reached upstream: {:?}", seen.headers);
    }
    let upstream_id = seen.header_all("x-request-id");
    assert_eq!(upstream_id.len(), 1, "one X-Request-Id upstream: {upstream_id:?}");
    assert_ne!(upstream_id[0], "client-chosen-request-id", "an untrusted client's request id is replaced");
    assert!(!upstream_id[0].is_empty());
    assert_eq!(upstream_id[0], response_request_id, "the response carries the id sent upstream");
}

async fn spoofed_headers_never_reach_upstream(version: HttpVersion, expected: reqwest::Version) {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let upstream = configured_host_lines();
    let gateway = start_gateway(&frappe, &certs, &[&upstream[0], &upstream[1]], "").await;
    let client = https_client(&certs.ca_pem, version);

    let mut request = client.get(format!("{}/__test/echo?probe=1", gateway.base_url()));
    for (name, value) in SPOOFED {
        request = request.header(*name, *value);
    }
    if version == HttpVersion::Http1Only {
        for (name, value) in HOP_BY_HOP {
            request = request.header(*name, *value);
        }
    } else {
        // The one connection-specific header HTTP/2 allows; it must not go upstream either.
        request = request.header("te", "trailers");
    }
    let response = request.send().await.expect("request through the gateway");
    assert_eq!(response.version(), expected);
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"].to_str().expect("ascii request id").to_string();
    let echo: serde_json::Value = response.json().await.expect("echo JSON");
    assert_eq!(echo["query"], "probe=1", "path and query are forwarded unchanged");

    let seen = only_request_to(&frappe, "/__test/echo");
    assert_eq!(seen.version, http::Version::HTTP_11, "the upstream hop is HTTP/1.1");
    assert_forwarded_identity(&seen, gateway.proxy_addr().port(), &request_id);
    assert_eq!(seen.header_all("host"), vec![UPSTREAM_HOST], "Host = upstream.host");
    assert_eq!(
        seen.header_all("x-frappe-site-name"),
        vec![SITE_NAME],
        "site from config, never the client's"
    );
    for (name, _) in HOP_BY_HOP {
        assert!(seen.header(name).is_none(), "hop-by-hop {name} reached upstream: {:?}", seen.headers);
    }
}

#[tokio::test]
async fn http1_spoofed_and_hop_by_hop_headers_never_reach_upstream() {
    spoofed_headers_never_reach_upstream(HttpVersion::Http1Only, reqwest::Version::HTTP_11).await;
}

#[tokio::test]
async fn http2_spoofed_headers_never_reach_upstream() {
    spoofed_headers_never_reach_upstream(HttpVersion::Http2, reqwest::Version::HTTP_2).await;
}

/// Without `upstream.host` the Host is the upstream URL's authority, and without
/// `upstream.site_name` no `X-Frappe-Site-Name` goes upstream at all (a client's is dropped).
#[tokio::test]
async fn default_host_is_the_upstream_authority_and_no_site_name_is_invented() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let gateway = start_gateway(&frappe, &certs, &[], "").await;
    for version in [HttpVersion::Http1Only, HttpVersion::Http2] {
        frappe.clear_requests();
        let client = https_client(&certs.ca_pem, version);
        let mut request = client.get(format!("{}/__test/echo", gateway.base_url()));
        for (name, value) in SPOOFED {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request through the gateway");
        assert_eq!(response.status(), 200, "{version:?}");
        let request_id = response.headers()["x-request-id"].to_str().expect("ascii").to_string();

        let seen = only_request_to(&frappe, "/__test/echo");
        assert_forwarded_identity(&seen, gateway.proxy_addr().port(), &request_id);
        assert_eq!(seen.header_all("host"), vec![frappe.addr().to_string()], "{version:?}");
        assert!(seen.header("x-frappe-site-name").is_none(), "{version:?}: {:?}", seen.headers);
    }
}

/// `auth.user_header` names the header Frappe-side code trusts: a client's copy is stripped.
#[tokio::test]
async fn configured_user_header_from_a_client_is_stripped() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let config = ConfigBuilder::new(&frappe.url())
        .tls(&certs)
        .set("auth", "user_header = \"X-Remote-User\"")
        .extra(PUBLIC_ROUTE)
        .build();
    let gateway = Gateway::start(&config, &[]).await;
    let client = https_client(&certs.ca_pem, HttpVersion::Http2);
    let response = client
        .get(format!("{}/__test/echo", gateway.base_url()))
        .header("x-remote-user", "Administrator")
        .header("X-Remote-User", "second@example.com")
        .send()
        .await
        .expect("request through the gateway");
    assert_eq!(response.status(), 200);
    let seen = only_request_to(&frappe, "/__test/echo");
    assert!(
        seen.header("x-remote-user").is_none(),
        "client user header reached upstream: {:?}",
        seen.headers
    );
}

/// gunicorn answers `Connection: close`; that is about the gateway's upstream hop only. The
/// client's HTTP/1.1 connection must not see it and must stay open for the next request.
#[tokio::test]
async fn upstream_connection_close_does_not_close_the_client_connection() {
    let frappe = FakeFrappe::start().await;
    frappe.set_connection_close(true);
    let certs = Certs::generate();
    let gateway = start_gateway(&frappe, &certs, &[], "").await;
    let host = format!("localhost:{}", gateway.proxy_addr().port());

    // One TLS connection, HTTP/1.1, driven by hyper's low-level client: a closed connection
    // fails the second request instead of being replaced silently by a pool.
    let tls = tls_connect(gateway.proxy_addr(), &certs.ca_pem, &["http/1.1"]).await;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.expect("HTTP/1.1 handshake");
    let connection = tokio::spawn(connection);

    for (i, path) in ["/__test/echo", "/api/method/ping", "/__test/status?code=201"].iter().enumerate() {
        sender.ready().await.unwrap_or_else(|e| panic!("connection unusable before request {i}: {e}"));
        let mut request = http::Request::get(*path).header("host", &host);
        if i == 0 {
            for (name, value) in HOP_BY_HOP {
                request = request.header(*name, *value);
            }
        }
        let request = request.body(Empty::<Bytes>::new()).expect("request");
        let response =
            sender.send_request(request).await.unwrap_or_else(|e| panic!("request {i} ({path}): {e}"));
        assert!(response.status().is_success(), "request {i} ({path}): {}", response.status());
        for hop in ["connection", "keep-alive", "proxy-connection", "upgrade", "trailer"] {
            assert!(
                response.headers().get(hop).is_none(),
                "response {i} carries {hop}: {:?}",
                response.headers()
            );
        }
        assert!(response.headers().contains_key("x-request-id"));
        response.into_body().collect().await.unwrap_or_else(|e| panic!("body of request {i}: {e}"));
    }
    assert!(!connection.is_finished(), "the client connection must still be open");
    assert_eq!(frappe.requests().len(), 3, "every request reached upstream once");
    let echoed = only_request_to(&frappe, "/__test/echo");
    for (name, _) in HOP_BY_HOP {
        assert!(echoed.header(name).is_none(), "hop-by-hop {name} reached upstream: {:?}", echoed.headers);
    }
    drop(sender);
    connection.abort();
}
