//! The real client IP: `X-Forwarded-For` walked right to left through trusted proxies only.

use std::net::{IpAddr, SocketAddr};

use http::HeaderValue;
use ipnet::IpNet;

use super::allowlist::IpSet;

/// Appends the address's text form: IPv4 digit by digit (the usual case, on every request's
/// `X-Forwarded-For` and log line; `Display` goes through the formatter's padding machinery).
pub(crate) fn push_ip_text(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(itoa::Buffer::new().format(octet).as_bytes());
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Decides which address a request comes from, the way nginx's `real_ip_recursive on` does.
///
/// `X-Forwarded-For` is believed only when the TCP peer is a trusted proxy; a client that is not
/// one cannot move its apparent address by sending the header. With no trusted proxies
/// configured (the default) the peer address is always the answer.
#[derive(Debug, Clone)]
pub struct ClientIpResolver {
    trusted: IpSet,
}

impl ClientIpResolver {
    /// `trusted_proxies` is `network.trusted_proxies` (IPv4-mapped entries treated as IPv4).
    pub fn new(trusted_proxies: &[IpNet]) -> Self {
        ClientIpResolver { trusted: IpSet::new(trusted_proxies) }
    }

    /// Whether `peer` is a trusted proxy (the lead keeps a client's X-Request-Id only then).
    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        self.trusted.contains(peer)
    }

    /// The client address for a request from `peer` carrying the given `X-Forwarded-For`
    /// header lines (pass `headers.get_all(X_FORWARDED_FOR)`, or an `Option<&HeaderValue>`).
    ///
    /// The lines are one list, in order. From a trusted peer the list is walked from the right,
    /// skipping trusted addresses; the first untrusted one is the client. A malformed entry
    /// (not an IP, not `ip:port`, not ASCII) stops the walk: the last good address is used, so
    /// garbage never makes the answer less trustworthy than the hop that appended it. Empty
    /// entries (`a,,b`) are skipped. If every entry is trusted, the left-most is used. IPv4-mapped
    /// IPv6 addresses come back as IPv4. Allocates nothing.
    pub fn resolve<'a, I>(&self, peer: IpAddr, xff: I) -> IpAddr
    where
        I: IntoIterator<Item = &'a HeaderValue>,
        I::IntoIter: DoubleEndedIterator,
    {
        let mut client = peer.to_canonical();
        if !self.is_trusted(client) {
            return client;
        }
        for line in xff.into_iter().rev() {
            // Split as bytes: a non-ASCII byte the client wrote on the left of the line must
            // not discard the entries the proxies appended on its right.
            for entry in line.as_bytes().rsplit(|&b| b == b',') {
                let entry = entry.trim_ascii();
                if entry.is_empty() {
                    continue;
                }
                let Some(addr) = std::str::from_utf8(entry).ok().and_then(parse_entry) else {
                    return client;
                };
                client = addr;
                if !self.is_trusted(addr) {
                    return client;
                }
            }
        }
        client
    }
}

/// One list entry: a bare address, or `ip:port` / `[v6]:port` as some load balancers write.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let ip = match entry.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => entry.parse::<SocketAddr>().ok()?.ip(),
    };
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderMap, HeaderName};

    const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

    fn resolver(trusted: &[&str]) -> ClientIpResolver {
        ClientIpResolver::new(&trusted.iter().map(|s| s.parse().unwrap()).collect::<Vec<IpNet>>())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(lines: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            map.append(X_FORWARDED_FOR, HeaderValue::from_str(line).unwrap());
        }
        map
    }

    fn resolve(r: &ClientIpResolver, peer: &str, lines: &[&str]) -> IpAddr {
        r.resolve(ip(peer), xff(lines).get_all(X_FORWARDED_FOR))
    }

    #[test]
    fn untrusted_peer_cannot_spoof() {
        let r = resolver(&["10.0.0.0/8"]);
        assert_eq!(resolve(&r, "198.51.100.7", &["1.2.3.4"]), ip("198.51.100.7"));
        assert_eq!(resolve(&r, "198.51.100.7", &["10.0.0.1, 1.2.3.4"]), ip("198.51.100.7"));
        // No trusted proxies at all: the header is never read.
        assert_eq!(resolve(&resolver(&[]), "127.0.0.1", &["1.2.3.4"]), ip("127.0.0.1"));
    }

    #[test]
    fn trusted_peer_right_most_untrusted_wins() {
        let r = resolver(&["10.0.0.0/8"]);
        // The client prepended a fake address; the proxy appended the real one.
        assert_eq!(resolve(&r, "10.0.0.1", &["6.6.6.6, 203.0.113.5"]), ip("203.0.113.5"));
        // Two proxy hops.
        assert_eq!(resolve(&r, "10.0.0.1", &["6.6.6.6, 203.0.113.5, 10.0.0.2"]), ip("203.0.113.5"));
        // No header from a trusted peer: the peer itself.
        assert_eq!(resolve(&r, "10.0.0.1", &[]), ip("10.0.0.1"));
        assert_eq!(r.resolve(ip("10.0.0.1"), None), ip("10.0.0.1"));
    }

    #[test]
    fn several_header_lines_form_one_list() {
        let r = resolver(&["10.0.0.0/8"]);
        assert_eq!(resolve(&r, "10.0.0.1", &["6.6.6.6", "203.0.113.5, 10.0.0.3"]), ip("203.0.113.5"));
        assert_eq!(resolve(&r, "10.0.0.1", &["203.0.113.5", "10.0.0.3", "10.0.0.2"]), ip("203.0.113.5"));
    }

    #[test]
    fn all_trusted_uses_left_most() {
        let r = resolver(&["10.0.0.0/8"]);
        assert_eq!(resolve(&r, "10.0.0.1", &["10.0.0.9, 10.0.0.2"]), ip("10.0.0.9"));
    }

    #[test]
    fn malformed_entry_stops_the_walk() {
        let r = resolver(&["10.0.0.0/8"]);
        assert_eq!(resolve(&r, "10.0.0.1", &["1.1.1.1, unknown, 10.0.0.2"]), ip("10.0.0.2"));
        assert_eq!(resolve(&r, "10.0.0.1", &["1.1.1.1, not-an-ip"]), ip("10.0.0.1"));
        assert_eq!(resolve(&r, "10.0.0.1", &["1.1.1.1, 203.0.113.9/24"]), ip("10.0.0.1"));
        let bad_utf8 = HeaderValue::from_bytes(b"1.1.1.1, \xff").unwrap();
        assert_eq!(r.resolve(ip("10.0.0.1"), Some(&bad_utf8)), ip("10.0.0.1"));
        // Non-ASCII bytes the client wrote on the left do not discard what the proxy appended.
        for line in
            [&b"\xff, 203.0.113.5"[..], "é, 203.0.113.5".as_bytes(), b"\xff1.2.3.4,203.0.113.5, 10.0.0.2"]
        {
            let value = HeaderValue::from_bytes(line).unwrap();
            assert_eq!(r.resolve(ip("10.0.0.1"), Some(&value)), ip("203.0.113.5"), "{line:?}");
        }
    }

    #[test]
    fn ports_and_empty_entries_are_tolerated() {
        let r = resolver(&["10.0.0.0/8"]);
        assert_eq!(resolve(&r, "10.0.0.1", &["203.0.113.5:4711"]), ip("203.0.113.5"));
        assert_eq!(resolve(&r, "10.0.0.1", &["[2001:db8::5]:443"]), ip("2001:db8::5"));
        assert_eq!(resolve(&r, "10.0.0.1", &["203.0.113.5,, 10.0.0.2 ,"]), ip("203.0.113.5"));
    }

    #[test]
    fn ipv6_and_ipv4_mapped_are_normalised() {
        let r = resolver(&["10.0.0.0/8", "fd00::/8"]);
        // A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d.
        assert!(r.is_trusted(ip("::ffff:10.1.2.3")));
        assert_eq!(resolve(&r, "::ffff:10.1.2.3", &["::ffff:203.0.113.5"]), ip("203.0.113.5"));
        assert_eq!(resolve(&r, "::ffff:198.51.100.1", &["1.2.3.4"]), ip("198.51.100.1"));
        assert_eq!(resolve(&r, "fd00::1", &["2001:db8::1, fd00::2"]), ip("2001:db8::1"));
        assert!(!r.is_trusted(ip("2001:db8::1")));
    }

    #[test]
    fn ip_text_is_the_display_form() {
        for ip in [
            "0.0.0.0",
            "10.0.0.1",
            "192.168.100.255",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            push_ip_text(&mut out, ip);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
    }
}
