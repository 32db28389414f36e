//! CIDR sets with fast lookup (sorted, merged ranges + binary search) and allow/deny policies.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// Why an address was refused. `Display` is the operator's reason for the log; clients only
/// ever see a generic 403 (see [`Denied::public_message`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The address is in the `{0}.deny` list.
    #[error("ip in {0}.deny")]
    InDenyList(&'static str),
    /// An allow list is set for `{0}` and the address is not in it.
    #[error("ip not in {0}.allow")]
    NotInAllowList(&'static str),
    /// The user's Frappe `restrict_ip` does not admit the address.
    #[error("ip not in the user's restrict_ip")]
    RestrictIp,
}

impl Denied {
    /// What the client is told: Frappe's own wording, nothing about which list matched.
    pub fn public_message(self) -> &'static str {
        "Access not allowed from this IP Address"
    }
}

/// A set of IPv4 and IPv6 networks, answering `contains` in O(log n).
///
/// Built once from config: networks are turned into inclusive integer ranges, sorted and merged
/// so they never overlap, then looked up by binary search. IPv4-mapped IPv6 networks and
/// addresses (`::ffff:a.b.c.d`) are treated as the IPv4 they carry, so a v4 rule covers clients
/// that reach a dual-stack socket. An empty set contains nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpSet {
    v4: Ranges<u32>,
    v6: Ranges<u128>,
}

impl IpSet {
    /// Builds the set; overlapping and adjacent networks are merged.
    pub fn new(nets: &[IpNet]) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match canonical_net(*net) {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        IpSet { v4: Ranges::merged(v4), v6: Ranges::merged(v6) }
    }

    /// Whether `ip` (IPv4-mapped IPv6 normalised to IPv4) lies in any network of the set.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) => self.v4.contains(u32::from(a)),
            IpAddr::V6(a) => self.v6.contains(u128::from(a)),
        }
    }

    /// True when no network was given.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Number of disjoint ranges after merging (for logs and benches).
    pub fn range_count(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

/// An allow list and a deny list for one scope (`network`, `route`, `user`, …).
///
/// Deny wins over allow. An empty allow list admits any address; the lead composes the global,
/// route and user policies by checking each in turn.
#[derive(Debug, Clone)]
pub struct IpPolicy {
    scope: &'static str,
    allow: IpSet,
    deny: IpSet,
}

impl IpPolicy {
    /// `scope` names the config table in denial reasons, e.g. `"network"` gives
    /// "ip in network.deny".
    pub fn new(scope: &'static str, allow: &[IpNet], deny: &[IpNet]) -> Self {
        IpPolicy { scope, allow: IpSet::new(allow), deny: IpSet::new(deny) }
    }

    /// `Ok` when `ip` is not denied and (no allow list, or it is in the allow list).
    pub fn check(&self, ip: IpAddr) -> Result<(), Denied> {
        if self.deny.contains(ip) {
            return Err(Denied::InDenyList(self.scope));
        }
        if !self.allow.is_empty() && !self.allow.contains(ip) {
            return Err(Denied::NotInAllowList(self.scope));
        }
        Ok(())
    }

    /// True when the policy admits every address (nothing to check on the hot path).
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// `::ffff:a.b.c.d/n` (n ≥ 96) becomes `a.b.c.d/(n-96)`: rules and clients meet in one family.
pub(crate) fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net {
        if let (Some(v4), true) = (n.network().to_ipv4_mapped(), n.prefix_len() >= 96) {
            if let Ok(v4net) = ipnet::Ipv4Net::new(v4, n.prefix_len() - 96) {
                return IpNet::V4(v4net);
            }
        }
    }
    net.trunc()
}

/// Integer types a range set can hold.
trait Bound: Copy + Ord + fmt::Debug {
    fn succ(self) -> Option<Self>;
}

impl Bound for u32 {
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl Bound for u128 {
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

/// Disjoint, sorted, inclusive ranges; `starts` and `ends` kept apart so the binary search
/// touches only the `starts` array.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Ranges<T> {
    starts: Vec<T>,
    ends: Vec<T>,
}

impl<T: Bound> Ranges<T> {
    fn merged(mut ranges: Vec<(T, T)>) -> Self {
        ranges.sort_unstable();
        let mut out: Ranges<T> =
            Ranges { starts: Vec::with_capacity(ranges.len()), ends: Vec::with_capacity(ranges.len()) };
        for (start, end) in ranges {
            match out.ends.last_mut() {
                // Overlapping or adjacent (end + 1 == start): extend the previous range.
                Some(last) if last.succ().is_none_or(|next| start <= next) => {
                    if end > *last {
                        *last = end;
                    }
                }
                _ => {
                    out.starts.push(start);
                    out.ends.push(end);
                }
            }
        }
        out.starts.shrink_to_fit();
        out.ends.shrink_to_fit();
        out
    }

    fn contains(&self, x: T) -> bool {
        // Index of the first range starting after x; the candidate is the one before it.
        let i = self.starts.partition_point(|&s| s <= x);
        i > 0 && x <= self.ends[i - 1]
    }

    fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    fn len(&self) -> usize {
        self.starts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_membership_and_edges() {
        let set = IpSet::new(&nets(&["10.0.0.0/8", "192.168.1.0/24"]));
        assert!(set.contains(ip("10.0.0.0")));
        assert!(set.contains(ip("10.255.255.255")));
        assert!(!set.contains(ip("11.0.0.0")));
        assert!(!set.contains(ip("9.255.255.255")));
        assert!(set.contains(ip("192.168.1.77")));
        assert!(!set.contains(ip("192.168.2.1")));
        assert!(!set.contains(ip("::1")));
    }

    #[test]
    fn ipv6_membership() {
        let set = IpSet::new(&nets(&["2001:db8::/32", "::1/128"]));
        assert!(set.contains(ip("2001:db8:ffff::1")));
        assert!(set.contains(ip("::1")));
        assert!(!set.contains(ip("2001:db9::1")));
        assert!(!set.contains(ip("127.0.0.1")));
    }

    #[test]
    fn ipv4_mapped_addresses_and_rules_meet_ipv4() {
        let set = IpSet::new(&nets(&["203.0.113.0/24"]));
        assert!(set.contains(ip("::ffff:203.0.113.9")));
        let mapped_rule = IpSet::new(&nets(&["::ffff:198.51.100.0/120"]));
        assert!(mapped_rule.contains(ip("198.51.100.200")));
        assert!(mapped_rule.contains(ip("::ffff:198.51.100.1")));
        assert!(!mapped_rule.contains(ip("198.51.101.1")));
    }

    #[test]
    fn whole_address_spaces_and_host_bits() {
        let set = IpSet::new(&nets(&["0.0.0.0/0", "::/0"]));
        assert!(set.contains(ip("255.255.255.255")));
        assert!(set.contains(ip("0.0.0.0")));
        assert!(set.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        // Host bits in a rule are ignored (ipnet keeps them; we truncate).
        let set = IpSet::new(&nets(&["10.1.2.3/16"]));
        assert!(set.contains(ip("10.1.200.1")));
    }

    #[test]
    fn overlapping_and_adjacent_ranges_merge() {
        let set =
            IpSet::new(&nets(&["10.0.0.0/25", "10.0.0.128/25", "10.0.0.0/8", "10.0.0.5/32", "11.0.0.0/8"]));
        assert_eq!(set.range_count(), 1);
        assert!(set.contains(ip("11.255.255.255")));
        assert!(!set.contains(ip("12.0.0.0")));
        assert!(IpSet::new(&[]).is_empty());
        assert!(!IpSet::new(&[]).contains(ip("1.2.3.4")));
    }

    #[test]
    fn matches_a_linear_scan_on_random_rules() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let rules: Vec<IpNet> = (0..500)
            .map(|_| {
                let addr = std::net::Ipv4Addr::from(rng.random::<u32>() & 0xff00_ffff);
                IpNet::V4(ipnet::Ipv4Net::new(addr, rng.random_range(12..=32)).unwrap())
            })
            .collect();
        let set = IpSet::new(&rules);
        for _ in 0..20_000 {
            let probe = IpAddr::V4(std::net::Ipv4Addr::from(rng.random::<u32>() & 0xff00_ffff));
            let linear = rules.iter().any(|n| n.contains(&probe));
            assert_eq!(set.contains(probe), linear, "{probe}");
        }
    }

    #[test]
    fn deny_wins_over_allow() {
        let policy = IpPolicy::new("network", &nets(&["10.0.0.0/8"]), &nets(&["10.9.0.0/16"]));
        assert_eq!(policy.check(ip("10.1.1.1")), Ok(()));
        assert_eq!(policy.check(ip("10.9.1.1")), Err(Denied::InDenyList("network")));
        assert_eq!(policy.check(ip("8.8.8.8")), Err(Denied::NotInAllowList("network")));
        assert_eq!(policy.check(ip("::ffff:10.9.0.1")), Err(Denied::InDenyList("network")));
        assert_eq!(Denied::InDenyList("network").to_string(), "ip in network.deny");
        assert_eq!(Denied::NotInAllowList("route").to_string(), "ip not in route.allow");
    }

    #[test]
    fn empty_allow_admits_any_address() {
        let policy = IpPolicy::new("route", &[], &nets(&["2001:db8::/32"]));
        assert!(!policy.is_open());
        assert_eq!(policy.check(ip("1.2.3.4")), Ok(()));
        assert_eq!(policy.check(ip("2001:db8::1")), Err(Denied::InDenyList("route")));
        assert!(IpPolicy::new("user", &[], &[]).is_open());
    }
}
