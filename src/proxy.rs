//! Forwarding: header hygiene (strip hop-by-hop and every header a client could claim identity
//! with, then inject the trusted ones) and WebSocket tunnels. The client is [`crate::upstream`].

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use hyper_util::rt::TokioIo;

use crate::state::RequestId;

/// Headers a client could use to claim an identity, a site, a scheme or a path: removed from
/// every request on every route (FRAPPE.md §7), before the gateway sets its own.
/// `SCRIPT_NAME` / `PATH_INFO` are gunicorn 23's default `forwarder_headers`: from a trusted
/// peer (the gateway, on 127.0.0.1) they would move the start of the path Frappe routes, so
/// `/x/api/method/m` with `SCRIPT_NAME: /x` runs `m` while the gateway judged a page. Their
/// underscore spellings (the only ones gunicorn reads) are refused by `request_head`.
/// `X-Forwarded-Protocol` / `-Ssl` are gunicorn's other `secure_scheme_headers`.
pub(crate) const SPOOFABLE: [&str; 12] = [
    "remote-addr",
    "script-name",
    "path-info",
    "x-forwarded-protocol",
    "x-forwarded-ssl",
    "frappe-authorization-source",
    "x-use-x-accel-redirect",
    "x-frappe-site-name",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
];

/// RFC 9110 §7.6.1 connection-specific headers (plus legacy ones).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FRAPPE_SITE_NAME: HeaderName = HeaderName::from_static("x-frappe-site-name");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Per-request facts the forwarder injects.
pub(crate) struct ForwardInfo<'a> {
    pub base: &'a Uri,
    pub host: &'a HeaderValue,
    pub site_name: Option<&'a HeaderValue>,
    pub client_ip: IpAddr,
    pub proto: &'static str,
    pub request_id: &'a RequestId,
    /// `(auth.user_header, user)` for authenticated requests.
    pub user: Option<(&'a HeaderName, &'a str)>,
    /// Keep the client's Authorization (the route's `forward_authorization`).
    pub authorization: bool,
    /// Keep the client's cookies (joined into one header, as HTTP/1.1 needs).
    pub cookies: bool,
    /// The path and query to send instead of the client's (slashes merged).
    pub path_and_query: Option<&'a str>,
}

/// Turns the client's request into the upstream request: hop-by-hop and spoofable headers
/// out, the trusted ones in, URI pointed at the upstream. `keep_upgrade` keeps a WebSocket
/// handshake's `Upgrade` / `Connection: upgrade`.
pub(crate) fn prepare<B>(req: &mut Request<B>, info: &ForwardInfo<'_>) {
    let upgrade = is_upgrade(req).then(|| req.headers().get(header::UPGRADE).cloned()).flatten();
    let original_host = original_host(req);
    let headers = req.headers_mut();
    strip_request_headers(headers, info.authorization, info.cookies);
    if info.cookies {
        join_cookies(headers);
    }
    if let Some((name, user)) = info.user {
        match HeaderValue::from_str(user) {
            Ok(v) => headers.insert(name.clone(), v),
            Err(_) => headers.remove(name),
        };
    }
    headers.insert(header::HOST, info.host.clone());
    if let Some(site) = info.site_name {
        headers.insert(X_FRAPPE_SITE_NAME, site.clone());
    }
    headers.insert(X_FORWARDED_FOR, ip_header(info.client_ip));
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(info.proto));
    if let Some(host) = original_host {
        headers.insert(X_FORWARDED_HOST, host);
    }
    headers.insert(X_REQUEST_ID, info.request_id.header());
    if let Some(proto) = upgrade {
        headers.insert(header::UPGRADE, proto);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    *req.uri_mut() = upstream_uri(info.base, info.path_and_query, req.uri());
    *req.version_mut() = Version::HTTP_11;
}

/// A body streamed without a length goes chunked, whatever the method: the client's own
/// `Transfer-Encoding` went with the hop-by-hop headers, and hyper would send a GET's or
/// HEAD's body of unknown length as none at all.
pub(crate) fn frame_streamed_body<B: hyper::body::Body>(req: &mut Request<B>) {
    let unknown_length = req.body().size_hint().exact().is_none();
    if unknown_length && !req.headers().contains_key(header::CONTENT_LENGTH) {
        req.headers_mut().insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
}

/// Cleans the upstream response for the client: hop-by-hop headers out (Frappe's gunicorn
/// says `Connection: close`, which must not close the client's connection). The pipeline's
/// exit sets the request id on every response, this one included.
pub(crate) fn prepare_response<B>(resp: &mut Response<B>) {
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        // Both framings from a non-conforming upstream: the body was read chunked (RFC 9112
        // §6.3), so a stale length must not frame it again for the client (it would cut it).
        if resp.headers().contains_key(header::TRANSFER_ENCODING) {
            resp.headers_mut().remove(header::CONTENT_LENGTH);
        }
        remove_where(resp.headers_mut(), is_hop_by_hop);
    }
}

/// Removes the hop-by-hop and spoofable headers, `Forwarded`, names with an underscore (as
/// nginx does by default: WSGI servers read them as other headers, or as environ keys), and
/// Authorization / cookies unless kept.
fn strip_request_headers(headers: &mut HeaderMap, keep_authorization: bool, keep_cookies: bool) {
    remove_where(headers, |name| match *name {
        header::AUTHORIZATION => !keep_authorization,
        header::COOKIE => !keep_cookies,
        header::FORWARDED => true,
        _ => is_hop_by_hop(name) || SPOOFABLE.contains(&name.as_str()) || name.as_str().contains('_'),
    });
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || *name == header::UPGRADE
}

/// Removes the headers named in `Connection` (hop-by-hop too, RFC 9110 §7.6.1), then every
/// header `doomed` picks. It scans the (few) headers present rather than removing each
/// candidate by name, which would hash ~20 names per request; a typical request has one or
/// two to remove.
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in &named {
        headers.remove(name);
    }
    while let Some(name) = headers.keys().find(|name| doomed(name)).cloned() {
        headers.remove(&name);
    }
}

/// A WebSocket upgrade handshake (HTTP/1.1 GET, RFC 6455 §4.1: a CORS preflight or another
/// method asking to upgrade is not one, and its `Upgrade` is dropped).
pub(crate) fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.method() == http::Method::GET
        && req.headers().get(header::UPGRADE).is_some_and(is_websocket)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// Only WebSocket is tunnelled: another protocol (`h2c`…) is not for Frappe, and its
/// `Upgrade` goes the way of every hop-by-hop header.
fn is_websocket(upgrade: &HeaderValue) -> bool {
    upgrade.as_bytes().eq_ignore_ascii_case(b"websocket")
}

fn original_host<B>(req: &Request<B>) -> Option<HeaderValue> {
    if let Some(host) = req.headers().get(header::HOST) {
        return Some(host.clone());
    }
    req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
}

/// The address as a header value (one allocation: the header takes the text's buffer).
fn ip_header(ip: IpAddr) -> HeaderValue {
    let mut text = Vec::with_capacity(15);
    crate::policy::push_ip_text(&mut text, ip);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(text)).expect("an IP address is a valid header value")
}

/// HTTP/2 sends cookies as separate crumbs; HTTP/1.1 needs one `Cookie` line joined by
/// `"; "` (RFC 9113 §8.2.3), or a WSGI server joins them with `,` and Frappe misreads them.
fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for crumb in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb.as_bytes());
    }
    match HeaderValue::from_bytes(&joined) {
        Ok(v) => headers.insert(header::COOKIE, v),
        Err(_) => headers.remove(header::COOKIE),
    };
}

fn upstream_uri(base: &Uri, rewritten: Option<&str>, original: &Uri) -> Uri {
    // The client's own path shares the request's buffer; only a rewritten one is parsed.
    let path_and_query = match rewritten {
        Some(rewritten) => rewritten.parse().ok(),
        None => Some(original.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"))),
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = base.scheme().cloned();
    parts.authority = base.authority().cloned();
    parts.path_and_query = path_and_query;
    Uri::from_parts(parts).unwrap_or_else(|_| base.clone())
}

/// Tunnels an upgraded connection (WebSocket) between client and upstream until either closes,
/// or until the client connection's [`Lifeline`](crate::server::Lifeline) says to: no byte
/// either way for `server.idle_timeout`, or shutdown. The tunnel keeps `conn`, and with it the
/// connection's `server.max_connections` slot, to its end.
pub(crate) fn tunnel(
    conn: std::sync::Arc<crate::pipeline::ConnInfo>,
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
) {
    /// How long closing a tunnel may take to say goodbye (TLS close_notify, FIN) on each side.
    const GOODBYE: std::time::Duration = std::time::Duration::from_secs(1);
    tokio::spawn(async move {
        let closing = async {
            match conn.lifeline() {
                Some(lifeline) => lifeline.closing().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(closing);
        let upgraded = tokio::select! {
            upgraded = async { (client.await, upstream.await) } => upgraded,
            end = &mut closing => {
                tracing::debug!(peer = %conn.peer, ?end, "tunnel closed before the upgrade completed");
                return;
            }
        };
        let (Ok(client), Ok(upstream)) = upgraded else {
            tracing::debug!("upgrade failed on one side");
            return;
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        let end = tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => return,
            end = closing => end,
        };
        tracing::debug!(peer = %conn.peer, ?end, "tunnel closed by the gateway");
        let goodbye = async {
            use tokio::io::AsyncWriteExt as _;
            let _ = tokio::join!(client.shutdown(), upstream.shutdown());
        };
        let _ = tokio::time::timeout(GOODBYE, goodbye).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info<'a>(
        base: &'a Uri,
        host: &'a HeaderValue,
        rid: &'a RequestId,
        user: Option<(&'a HeaderName, &'a str)>,
    ) -> ForwardInfo<'a> {
        ForwardInfo {
            base,
            host,
            site_name: None,
            client_ip: "203.0.113.9".parse().unwrap(),
            proto: "https",
            request_id: rid,
            user,
            authorization: true,
            cookies: true,
            path_and_query: None,
        }
    }

    #[test]
    fn spoofed_and_hop_by_hop_headers_are_replaced() {
        let mut req = Request::builder()
            .uri("/api/resource/ToDo?limit=1")
            .header("host", "api.example.com")
            .header("x-forwarded-for", "1.2.3.4")
            .header("remote-addr", "1.2.3.4")
            .header("frappe-authorization-source", "User")
            .header("connection", "keep-alive, x-secret-hop")
            .header("x-secret-hop", "1")
            .header("te", "trailers")
            .header("x-frappe-user", "Administrator")
            .body(())
            .unwrap();
        let base: Uri = "http://127.0.0.1:8000".parse().unwrap();
        let host = HeaderValue::from_static("erp.example.com");
        let rid = RequestId::inherited(&HeaderValue::from_static("rid")).unwrap();
        let user_header = HeaderName::from_static("x-frappe-user");
        prepare(&mut req, &info(&base, &host, &rid, Some((&user_header, "api@example.com"))));
        let h = req.headers();
        assert_eq!(h["x-forwarded-for"], "203.0.113.9");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert_eq!(h["host"], "erp.example.com");
        assert_eq!(h["x-frappe-user"], "api@example.com");
        for gone in ["remote-addr", "frappe-authorization-source", "connection", "x-secret-hop", "te"] {
            assert!(!h.contains_key(gone), "{gone} should be stripped");
        }
        assert_eq!(req.uri(), "http://127.0.0.1:8000/api/resource/ToDo?limit=1");
    }

    #[test]
    fn cookie_crumbs_are_joined_and_authorization_follows_the_route() {
        let mut req = Request::builder()
            .uri("/x")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("authorization", "token k:s")
            .body(())
            .unwrap();
        let base: Uri = "http://127.0.0.1:7000".parse().unwrap();
        let host = HeaderValue::from_static("reports");
        let rid = RequestId::inherited(&HeaderValue::from_static("rid")).unwrap();
        let mut forward = info(&base, &host, &rid, None);
        forward.authorization = false;
        forward.path_and_query = Some("/y?z=1");
        prepare(&mut req, &forward);
        assert_eq!(req.headers().get_all("cookie").iter().collect::<Vec<_>>(), ["a=1; b=2"]);
        assert!(!req.headers().contains_key("authorization"));
        assert_eq!(req.uri(), "http://127.0.0.1:7000/y?z=1");
    }

    /// A few or many headers to strip, without a Connection header: all of them go.
    #[test]
    fn few_or_many_stripped_headers_leave_the_same_request() {
        let base: Uri = "http://127.0.0.1:8000".parse().unwrap();
        let host = HeaderValue::from_static("erp");
        let rid = RequestId::inherited(&HeaderValue::from_static("rid")).unwrap();
        let mut forward = info(&base, &host, &rid, None);
        forward.authorization = false;
        forward.cookies = false;
        let few = ["authorization", "x-real-ip", "cookie"];
        let many = ["authorization", "x-real-ip", "cookie", "forwarded", "te", "remote-addr", "upgrade"];
        for stripped in [&few[..], &many[..]] {
            let mut builder = Request::builder().uri("/api/resource/ToDo").header("accept", "*/*");
            for name in stripped {
                builder = builder.header(*name, "1");
            }
            let mut req = builder.body(()).unwrap();
            prepare(&mut req, &forward);
            for name in stripped {
                assert!(!req.headers().contains_key(*name), "{name} should be stripped");
            }
            assert_eq!(req.headers()["accept"], "*/*");
            assert_eq!(req.headers()["x-forwarded-for"], "203.0.113.9");
        }
    }

    #[test]
    fn hop_by_hop_response_headers_are_removed() {
        let mut resp = Response::builder()
            .header("connection", "close, x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        prepare_response(&mut resp);
        assert_eq!(resp.headers().keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["content-type"]);
    }

    #[test]
    fn websocket_handshake_keeps_upgrade() {
        let mut req = Request::builder()
            .uri("/socket.io/?EIO=4")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(is_upgrade(&req));
        let base: Uri = "http://127.0.0.1:8000".parse().unwrap();
        let host = HeaderValue::from_static("erp");
        let rid = RequestId::inherited(&HeaderValue::from_static("rid")).unwrap();
        prepare(&mut req, &info(&base, &host, &rid, None));
        assert_eq!(req.headers()["upgrade"], "websocket");
        assert_eq!(req.headers()["connection"], "upgrade");
    }

    #[test]
    fn only_websocket_is_an_upgrade() {
        let mut req = Request::builder()
            .uri("/api/resource/ToDo")
            .header("connection", "Upgrade, HTTP2-Settings")
            .header("upgrade", "h2c")
            .header("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA")
            .body(())
            .unwrap();
        assert!(!is_upgrade(&req));
        let base: Uri = "http://127.0.0.1:8000".parse().unwrap();
        let host = HeaderValue::from_static("erp");
        let rid = RequestId::inherited(&HeaderValue::from_static("rid")).unwrap();
        prepare(&mut req, &info(&base, &host, &rid, None));
        for gone in ["upgrade", "connection", "http2-settings"] {
            assert!(!req.headers().contains_key(gone), "{gone} forwarded");
        }
    }
}
