//! The admin listener's guards against browsers: the DNS-rebinding guard (a `Host` that is
//! not an IP, `localhost` or in `admin.allowed_hosts` is refused) and the CSRF guard (a
//! state-changing request a browser marks as cross-site is refused).

use std::net::{Ipv4Addr, Ipv6Addr};

use http::header::{HeaderValue, HOST, ORIGIN};
use http::{HeaderMap, Method, Request, StatusCode};
use hyper::body::Incoming;

use super::{json, AdminResponse};
use crate::state::Shared;

/// The DNS-rebinding guard: a page on `evil.example`, whose name the attacker made resolve to
/// 127.0.0.1, is same-origin with the admin listener and could read `/status.json` or
/// `POST /reload`; but the browser still sends `Host: evil.example`, which is refused here
/// (403, one warning). Reads `admin.allowed_hosts` from the runtime config, so a reload
/// changes it for the next request.
pub(super) fn check_host(state: &Shared, req: &Request<Incoming>) -> Option<AdminResponse> {
    if exempt_from_host_check(req.method(), req.uri().path()) {
        return None;
    }
    let runtime = state.runtime();
    let host = refused_host(req, &runtime.config.admin.allowed_hosts)?;
    tracing::warn!(
        host = %host,
        method = %req.method(),
        path = req.uri().path(),
        "admin request refused: its Host is not an IP, localhost or in admin.allowed_hosts"
    );
    Some(json(
        StatusCode::FORBIDDEN,
        serde_json::json!({
            "error": "Host not allowed on the admin listener (DNS-rebinding guard): use an IP address or localhost, or list the name in admin.allowed_hosts"
        }),
    ))
}

/// Answered whatever the Host: orchestrator probes (sent to service names; they reveal
/// nothing) and the Frappe webhook (sent to the URL the operator configured, often a service
/// name; authenticated by its signature).
fn exempt_from_host_check(method: &Method, path: &str) -> bool {
    matches!((method, path), (&Method::GET, "/healthz" | "/readyz") | (&Method::POST, "/hooks/frappe"))
}

/// The CSRF guard: a page on any IP origin (`http://203.0.113.7/`) can make the operator's
/// browser submit a form to `http://127.0.0.1:9901/reload` (a `text/plain` form needs no CORS
/// preflight, and an IP `Host` passes [`check_host`]). The browser marks such a request with
/// `Sec-Fetch-Site` and `Origin`, so a state-changing request carrying either one pointing
/// elsewhere is refused (403, one warning). curl and other non-browser clients send neither
/// and pass.
pub(super) fn check_same_origin(req: &Request<Incoming>) -> Option<AdminResponse> {
    if !needs_same_origin(req.method(), req.uri().path()) {
        return None;
    }
    let host = req.headers().get(HOST).and_then(|h| h.to_str().ok());
    let host = host.or_else(|| req.uri().authority().map(|a| a.as_str()));
    let reason = cross_site_reason(req.headers(), host)?;
    tracing::warn!(
        method = %req.method(),
        path = req.uri().path(),
        reason = %reason,
        "admin request refused: sent cross-site by a browser"
    );
    Some(json(
        StatusCode::FORBIDDEN,
        serde_json::json!({ "error": format!("cross-site request refused on the admin listener: {reason}") }),
    ))
}

/// Every request that may change state (not GET or HEAD), except the Frappe webhook, which
/// its signature authenticates.
fn needs_same_origin(method: &Method, path: &str) -> bool {
    !matches!((method, path), (&Method::GET | &Method::HEAD, _) | (&Method::POST, "/hooks/frappe"))
}

/// Why the browser says the request comes from another site, or `None`: `Sec-Fetch-Site` is
/// `cross-site` or `same-site`, or an `Origin` is present whose `host[:port]` is not exactly
/// `host` (letter case aside) — `Origin: null` never is. Without either header (non-browser
/// clients) nothing says so.
fn cross_site_reason(headers: &HeaderMap, host: Option<&str>) -> Option<String> {
    for site in headers.get_all("sec-fetch-site") {
        let site = String::from_utf8_lossy(site.as_bytes()).trim().to_ascii_lowercase();
        if site == "cross-site" || site == "same-site" {
            return Some(format!("Sec-Fetch-Site is {site}"));
        }
    }
    let same_origin = |origin: &&HeaderValue| {
        let origin_host = origin.to_str().ok().and_then(|o| o.split_once("://")).map(|(_, h)| h);
        origin_host.zip(host).is_some_and(|(o, h)| o.eq_ignore_ascii_case(h))
    };
    let foreign = headers.get_all(ORIGIN).iter().find(|o| !same_origin(o))?;
    let origin = String::from_utf8_lossy(foreign.as_bytes());
    Some(format!("Origin {origin} is not this listener ({})", host.unwrap_or("no Host")))
}

/// Whether the request names an allowed Host (see [`host_allowed`]); the probes, which answer
/// any Host, tell the details only then.
pub(super) fn names_allowed_host(state: &Shared, req: &Request<Incoming>) -> bool {
    refused_host(req, &state.runtime().config.admin.allowed_hosts).is_none()
}

/// The first name the request was sent to that [`host_allowed`] refuses: every `Host` header
/// (a duplicate cannot slip past), and the request target's authority when it has one
/// (absolute form; HTTP/2's `:authority`).
fn refused_host(req: &Request<Incoming>, allowed: &[String]) -> Option<String> {
    let headers = req.headers().get_all(HOST).iter().map(|v| String::from_utf8_lossy(v.as_bytes()));
    let authority = req.uri().authority().map(|a| a.as_str().into());
    headers.chain(authority).find(|host| !host_allowed(Some(host), allowed)).map(|host| host.into_owned())
}

/// Whether a request whose `Host` is `host` (`name[:port]`, `ipv4[:port]`, `[ipv6][:port]`)
/// may reach the admin pages. Allowed: no Host or an empty one (non-browser clients; a browser
/// always sends the name it resolved), IP literals, `localhost`, the names in `allowed`
/// (lowercase without a trailing dot, as the config stores them), and anything when `allowed`
/// holds `"*"`. The port is ignored; letter case and a trailing dot do not matter. Anything
/// else — another name, userinfo, an unbracketed IPv6, a bad port, stray characters — is
/// refused.
fn host_allowed(host: Option<&str>, allowed: &[String]) -> bool {
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return true;
    };
    if allowed.iter().any(|a| a == "*") {
        return true;
    }
    match host_name(host) {
        Some(HostName::Ip) => true,
        Some(HostName::Name(name)) => name == "localhost" || allowed.contains(&name),
        None => false,
    }
}

enum HostName {
    Ip,
    /// Lowercase, without a trailing dot.
    Name(String),
}

/// Reads `host[:port]`; `None` when it is not one.
fn host_name(host: &str) -> Option<HostName> {
    let is_port = |p: &str| p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = host.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(is_port);
        return (port_ok && ip.parse::<Ipv6Addr>().is_ok()).then_some(HostName::Ip);
    }
    let (name, port) = match host.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    if !port.is_none_or(is_port) {
        return None;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.parse::<Ipv4Addr>().is_ok() {
        return Some(HostName::Ip);
    }
    let label_ok =
        |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    name.split('.').all(label_ok).then(|| HostName::Name(name.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(host: &str, list: &[&str]) -> bool {
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        host_allowed(Some(host), &list)
    }

    #[test]
    fn missing_or_empty_host_is_allowed() {
        assert!(host_allowed(None, &[]));
        assert!(allowed("", &[]));
    }

    #[test]
    fn ip_literals_are_allowed_with_or_without_port() {
        for host in ["127.0.0.1", "127.0.0.1:9901", "10.1.2.3:80", "[::1]", "[::1]:9901", "[2001:db8::7]:1"] {
            assert!(allowed(host, &[]), "{host}");
        }
    }

    #[test]
    fn localhost_is_allowed_in_any_case_with_port_and_trailing_dot() {
        for host in ["localhost", "localhost:9901", "LOCALHOST.", "LocalHost.:9901"] {
            assert!(allowed(host, &[]), "{host}");
        }
    }

    #[test]
    fn other_names_are_refused() {
        for host in [
            "evil.com",
            "evil.com:9901",
            "localhost.evil.com",
            "127.0.0.1.nip.io",
            "127.0.0.1.nip.io:9901",
            "sub.localhost",
            "admin.internal.evil.com",
        ] {
            assert!(!allowed(host, &["admin.internal"]), "{host}");
        }
    }

    #[test]
    fn listed_names_are_allowed_ignoring_port_case_and_trailing_dot() {
        let list = ["admin.internal", "gateway"];
        for host in
            ["admin.internal", "ADMIN.internal:9901", "admin.internal.", "admin.internal.:80", "Gateway"]
        {
            assert!(allowed(host, &list), "{host}");
        }
    }

    #[test]
    fn userinfo_and_garbage_are_refused() {
        for host in [
            "user@127.0.0.1",
            "127.0.0.1@evil.com",
            "evil.com:80@127.0.0.1",
            "localhost:99999999",
            "localhost:80:80",
            "localhost:x",
            "::1",
            "[::1",
            "[::1]x",
            "[evil.com]",
            "local host",
            "localhost/",
            "localhost\\",
            ".",
            "..localhost",
            "\u{FFFD}",
            "l\u{f6}calhost",
        ] {
            assert!(!allowed(host, &["admin.internal"]), "{host:?}");
        }
    }

    #[test]
    fn a_star_allows_any_host() {
        for host in ["evil.com", "127.0.0.1.nip.io:9901", "user@evil.com", "[junk"] {
            assert!(allowed(host, &["*"]), "{host}");
        }
    }

    fn reason(host: Option<&str>, headers: &[(&str, &str)]) -> Option<String> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        cross_site_reason(&map, host)
    }

    #[test]
    fn requests_without_browser_headers_pass() {
        assert_eq!(reason(Some("127.0.0.1:9901"), &[]), None);
        assert_eq!(reason(None, &[]), None);
    }

    #[test]
    fn same_origin_browser_requests_pass() {
        for (host, headers) in [
            ("127.0.0.1:9901", &[("origin", "http://127.0.0.1:9901"), ("sec-fetch-site", "same-origin")][..]),
            ("127.0.0.1:9901", &[("sec-fetch-site", "none")]),
            ("localhost:9901", &[("origin", "http://LOCALHOST:9901")]),
            ("[::1]:9901", &[("origin", "http://[::1]:9901")]),
        ] {
            assert_eq!(reason(Some(host), headers), None, "{host} {headers:?}");
        }
    }

    #[test]
    fn cross_site_browser_requests_are_refused() {
        let host = Some("127.0.0.1:9901");
        for headers in [
            &[("origin", "http://203.0.113.7"), ("sec-fetch-site", "cross-site")][..],
            &[("sec-fetch-site", "cross-site")],
            &[("sec-fetch-site", "Same-Site")],
            &[("origin", "http://203.0.113.7")],
            &[("origin", "null")],
            &[("origin", "http://127.0.0.1")],
            &[("origin", "http://127.0.0.1:9902")],
            &[("origin", "http://127.0.0.1:9901.evil.com")],
            &[("origin", "127.0.0.1:9901")],
            &[("origin", "http://127.0.0.1:9901"), ("origin", "http://evil.com")],
        ] {
            assert!(reason(host, headers).is_some(), "{headers:?}");
        }
        assert!(reason(None, &[("origin", "http://127.0.0.1:9901")]).is_some());
    }

    #[test]
    fn only_state_changing_requests_other_than_the_webhook_need_same_origin() {
        assert!(needs_same_origin(&Method::POST, "/reload"));
        assert!(needs_same_origin(&Method::PUT, "/reload"));
        assert!(needs_same_origin(&Method::DELETE, "/"));
        assert!(needs_same_origin(&Method::POST, "/hooks/frappe/"));
        assert!(!needs_same_origin(&Method::POST, "/hooks/frappe"));
        for path in ["/", "/status.json", "/metrics", "/reload"] {
            assert!(!needs_same_origin(&Method::GET, path), "{path}");
            assert!(!needs_same_origin(&Method::HEAD, path), "{path}");
        }
    }

    #[test]
    fn probes_and_the_webhook_are_exempt_and_nothing_else() {
        assert!(exempt_from_host_check(&Method::GET, "/healthz"));
        assert!(exempt_from_host_check(&Method::GET, "/readyz"));
        assert!(exempt_from_host_check(&Method::POST, "/hooks/frappe"));
        for (method, path) in [
            (Method::GET, "/"),
            (Method::GET, "/status.json"),
            (Method::GET, "/metrics"),
            (Method::POST, "/reload"),
            (Method::POST, "/healthz"),
            (Method::GET, "/hooks/frappe"),
            (Method::GET, "/healthz/"),
        ] {
            assert!(!exempt_from_host_check(&method, path), "{method} {path}");
        }
    }
}
