//! Parsers for the value types `gateway.toml` uses: durations, rates, CIDRs, addresses,
//! URLs, host names, HTTP methods and environment variable names. Each error message says
//! what was wrong and shows a valid example.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, Uri};
use ipnet::IpNet;

use super::types::Rate;

pub(super) fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `"30s"`, `"10m"`, `"1h 30m"`, `"250ms"` (humantime syntax).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?} ({e}); use e.g. \"30s\", \"10m\", \"250ms\""))
}

/// `"N/sec"`, `"N/min"`, `"N/hour"` (also `s`, `second`, `m`, `minute`, `h`, `day`),
/// optionally with an explicit burst: `"100/min burst 20"`.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let err =
        || format!("invalid rate {s:?}; use \"N/sec\", \"N/min\" or \"N/hour\" (optionally \"… burst B\")");
    let (rate, burst) = match s.split_once(" burst ") {
        Some((r, b)) => (r.trim(), Some(b.trim().parse::<u32>().map_err(|_| err())?)),
        None => (s.trim(), None),
    };
    let (count, unit) = rate.split_once('/').ok_or_else(err)?;
    let count: u32 = count.trim().parse().map_err(|_| err())?;
    let per = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86_400),
        _ => return Err(err()),
    };
    if count == 0 || burst == Some(0) {
        return Err(format!(
            "invalid rate {s:?}: count and burst must be at least 1 (use auth = \"deny\" to block)"
        ));
    }
    Ok(Rate { count, per, burst: burst.unwrap_or(count) })
}

/// A CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a single address (`/32`, `/128`).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let t = s.trim();
    t.parse::<IpNet>().or_else(|_| t.parse::<std::net::IpAddr>().map(IpNet::from)).map(|n| n.trunc()).map_err(
        |_| format!("invalid CIDR {s:?}; use e.g. \"10.0.0.0/8\", \"2001:db8::/32\" or \"203.0.113.7\""),
    )
}

pub(super) fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| format!("invalid listen address {s:?}; use e.g. \"0.0.0.0:8443\" or \"[::]:8443\""))
}

pub(super) fn parse_http_url(s: &str) -> Result<Uri, String> {
    let uri: Uri = s.parse().map_err(|_| format!("invalid URL {s:?}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => {}
        _ => return Err(format!("invalid URL {s:?}: expected http://host[:port] or https://host[:port]")),
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!("URL {s:?} must not have a path; use a [[route]] for path prefixes"));
    }
    // Credentials in the URL would be shown wherever the URL is (status page, logs); the
    // gateway never sends them anyway. The message does not repeat the URL.
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(
            "a URL must not carry credentials (user:password@); secrets come from environment variables"
                .into(),
        );
    }
    Ok(uri)
}

pub(super) fn parse_host(s: &str) -> Result<String, String> {
    let ok = !s.is_empty() && s.parse::<http::uri::Authority>().is_ok();
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("invalid host name {s:?}"))
    }
}

pub(super) fn parse_method(s: &str) -> Result<Method, String> {
    let up = s.trim().to_ascii_uppercase();
    match up.as_str() {
        "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => {
            Method::from_bytes(up.as_bytes()).map_err(|e| e.to_string())
        }
        _ => Err(format!("unknown HTTP method {s:?}")),
    }
}
