//! Frappe's `User.restrict_ip`: comma-separated CIDRs, addresses and textual prefixes.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::allowlist::{Denied, IpSet};

/// A parsed `restrict_ip` value (FRAPPE.md §6).
///
/// Entries are separated by commas and trimmed; empty entries are ignored (Frappe would treat
/// one as "allow all"; we do not). An entry that parses as a CIDR or a full IP address matches
/// as that network or exact address; anything else is a plain string prefix of the client
/// address's text, as Frappe documents it (`"192.168.1"` admits `192.168.1.7` and also
/// `192.168.10.5`). A value with no usable entry restricts nothing.
///
/// The client text is the canonical form: dotted IPv4 (IPv4-mapped IPv6 is unwrapped), and
/// RFC 5952 lower-case IPv6 (`2001:db8::1`); prefix entries are lower-cased to match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestrictIp {
    nets: IpSet,
    prefixes: Vec<Box<str>>,
}

impl RestrictIp {
    /// Parses the raw field; never fails (an unparsable entry is a textual prefix).
    pub fn parse(raw: &str) -> Self {
        let mut nets = Vec::new();
        let mut prefixes = Vec::new();
        for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match parse_net(entry) {
                Some(net) => nets.push(net),
                None => prefixes.push(entry.to_ascii_lowercase().into_boxed_str()),
            }
        }
        RestrictIp { nets: IpSet::new(&nets), prefixes }
    }

    /// True when the value has no usable entry: every address is allowed.
    pub fn is_unrestricted(&self) -> bool {
        self.nets.is_empty() && self.prefixes.is_empty()
    }

    /// Whether a client at `ip` may use this user's keys.
    pub fn allows(&self, ip: IpAddr) -> bool {
        if self.is_unrestricted() {
            return true;
        }
        let ip = ip.to_canonical();
        if self.nets.contains(ip) {
            return true;
        }
        if self.prefixes.is_empty() {
            return false;
        }
        let text = IpText::of(ip);
        self.prefixes.iter().any(|p| text.as_str().starts_with(&**p))
    }

    /// [`allows`](Self::allows) as a policy result: `Err(Denied::RestrictIp)` when refused.
    pub fn check(&self, ip: IpAddr) -> Result<(), Denied> {
        if self.allows(ip) {
            Ok(())
        } else {
            Err(Denied::RestrictIp)
        }
    }
}

fn parse_net(entry: &str) -> Option<IpNet> {
    if let Ok(net) = entry.parse::<IpNet>() {
        return Some(net);
    }
    entry.parse::<IpAddr>().ok().map(IpNet::from)
}

/// An address's text on the stack: the longest IPv6 form is 39 bytes (45 with an embedded v4).
struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    fn of(ip: IpAddr) -> Self {
        let mut text = IpText { buf: [0; 48], len: 0 };
        // Cannot fail: the buffer is larger than any address's text.
        let _ = write!(text, "{ip}");
        text
    }

    fn as_str(&self) -> &str {
        // Only whole `&str`s are ever copied in, so the bytes are UTF-8.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Parsed `restrict_ip` values keyed by the raw string, so a request pays one hash lookup.
///
/// Bounded (`capacity` distinct values, TinyLFU eviction) and idle entries expire after
/// `idle`; a changed value in Frappe is simply a different key.
#[derive(Clone)]
pub struct RestrictIpCache {
    cache: moka::sync::Cache<Box<str>, Arc<RestrictIp>>,
}

impl RestrictIpCache {
    /// Defaults used by [`Default`]: 10,000 values, 1 hour idle.
    pub fn new(capacity: u64, idle: Duration) -> Self {
        RestrictIpCache {
            cache: moka::sync::Cache::builder().max_capacity(capacity).time_to_idle(idle).build(),
        }
    }

    /// The parsed form of `raw`, parsing it on first use.
    pub fn get(&self, raw: &str) -> Arc<RestrictIp> {
        if let Some(parsed) = self.cache.get(raw) {
            return parsed;
        }
        let parsed = Arc::new(RestrictIp::parse(raw));
        self.cache.insert(raw.into(), parsed.clone());
        parsed
    }
}

impl Default for RestrictIpCache {
    fn default() -> Self {
        Self::new(10_000, Duration::from_secs(3600))
    }
}

impl std::fmt::Debug for RestrictIpCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestrictIpCache").field("entries", &self.cache.entry_count()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn textual_prefix_as_frappe_documents() {
        let r = RestrictIp::parse("192.168.1");
        assert!(r.allows(ip("192.168.1.7")));
        assert!(r.allows(ip("192.168.10.5")));
        assert!(!r.allows(ip("192.168.2.1")));
        assert!(!r.allows(ip("10.192.168.1")));
    }

    #[test]
    fn cidr_and_full_address_entries_match_as_networks() {
        let r = RestrictIp::parse(" 10.0.0.0/8 , 203.0.113.7 ");
        assert!(r.allows(ip("10.200.1.1")));
        assert!(r.allows(ip("203.0.113.7")));
        // A full address is exact, not a prefix of 203.0.113.70.
        assert!(!r.allows(ip("203.0.113.70")));
        assert!(!r.allows(ip("11.0.0.1")));
        assert_eq!(r.check(ip("11.0.0.1")), Err(Denied::RestrictIp));
        assert_eq!(r.check(ip("10.0.0.1")), Ok(()));
    }

    #[test]
    fn empty_entries_are_ignored_and_all_empty_restricts_nothing() {
        for raw in ["", "   ", ",", " , ,, "] {
            let r = RestrictIp::parse(raw);
            assert!(r.is_unrestricted(), "{raw:?}");
            assert!(r.allows(ip("8.8.8.8")));
        }
        // An empty entry next to a real one does not open everything (Frappe's would).
        let r = RestrictIp::parse("192.168.1.0/24, ,");
        assert!(!r.is_unrestricted());
        assert!(!r.allows(ip("8.8.8.8")));
    }

    #[test]
    fn ipv6_and_ipv4_mapped() {
        let r = RestrictIp::parse("2001:DB8:, 198.51.100.0/24");
        assert!(r.allows(ip("2001:db8::42")));
        assert!(!r.allows(ip("2001:db9::42")));
        assert!(r.allows(ip("::ffff:198.51.100.9")));
        let r = RestrictIp::parse("192.168.");
        assert!(r.allows(ip("::ffff:192.168.3.4")));
        let r = RestrictIp::parse("2001:db8::/32");
        assert!(r.allows(ip("2001:db8:1::1")));
        assert!(!r.allows(ip("192.0.2.1")));
    }

    #[test]
    fn longest_textual_forms_fit_the_stack_buffer() {
        let r = RestrictIp::parse("ffff:");
        assert!(r.allows(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        let t = IpText::of(ip("::ffff:255.255.255.255"));
        assert_eq!(t.as_str(), "::ffff:255.255.255.255");
    }

    #[test]
    fn cache_returns_the_same_parse() {
        let cache = RestrictIpCache::default();
        let a = cache.get("10.0.0.0/8");
        let b = cache.get("10.0.0.0/8");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(a.allows(ip("10.1.1.1")));
        assert!(cache.get("").is_unrestricted());
    }
}
