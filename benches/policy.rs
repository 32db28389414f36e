//! Policy hot paths: CIDR lookup with 10,000 rules, client-IP resolution, local rate limiting.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use frappe_gateway::config::Rate;
use frappe_gateway::policy::{ClientIpResolver, IpSet, LocalLimiter, RateLimiter, Subject};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rand::{Rng, SeedableRng};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// 5,000 random IPv4 networks (/16–/32) and 5,000 random IPv6 networks (/32–/128).
fn random_rules(rng: &mut impl Rng) -> Vec<IpNet> {
    let mut rules: Vec<IpNet> = (0..5_000)
        .map(|_| {
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(rng.random::<u32>()), rng.random_range(16..=32)).unwrap())
        })
        .collect();
    rules.extend((0..5_000).map(|_| {
        IpNet::V6(Ipv6Net::new(Ipv6Addr::from(rng.random::<u128>()), rng.random_range(32..=128)).unwrap())
    }));
    rules
}

fn ip_set(c: &mut Criterion) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let set = IpSet::new(&random_rules(&mut rng));
    eprintln!("IpSet: 10,000 CIDRs merged into {} ranges", set.range_count());
    let v4: Vec<IpAddr> = (0..1024).map(|_| IpAddr::V4(Ipv4Addr::from(rng.random::<u32>()))).collect();
    let v6: Vec<IpAddr> = (0..1024).map(|_| IpAddr::V6(Ipv6Addr::from(rng.random::<u128>()))).collect();
    let mut group = c.benchmark_group("ipset_10k_cidrs");
    group.bench_function("build", |b| {
        let rules = random_rules(&mut rand::rngs::StdRng::seed_from_u64(1));
        b.iter(|| IpSet::new(black_box(&rules)))
    });
    for (name, probes) in [("contains_v4", &v4), ("contains_v6", &v6)] {
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                set.contains(black_box(probes[i]))
            })
        });
    }
    group.finish();
}

fn client_ip(c: &mut Criterion) {
    let resolver = ClientIpResolver::new(&["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()]);
    let mut headers = HeaderMap::new();
    headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.23, 10.1.2.3, 10.0.0.7"));
    let peer: IpAddr = "10.0.0.1".parse().unwrap();
    c.bench_function("client_ip/xff_3_entries", |b| {
        b.iter(|| resolver.resolve(black_box(peer), headers.get_all(X_FORWARDED_FOR)))
    });
    let untrusted: IpAddr = "203.0.113.9".parse().unwrap();
    c.bench_function("client_ip/untrusted_peer", |b| {
        b.iter(|| resolver.resolve(black_box(untrusted), headers.get_all(X_FORWARDED_FOR)))
    });
}

fn rate_limit(c: &mut Criterion) {
    // A limit the loop never exhausts, so every iteration takes the admit path (CAS included).
    let rate = Rate { count: u32::MAX, per: Duration::from_secs(1), burst: u32::MAX };
    let limiter = LocalLimiter::new();
    c.bench_function("rate_limit/local_hot_key", |b| {
        b.iter(|| limiter.check("key", Subject::Key(black_box("abc123def456")), &rate))
    });
    let ip: IpAddr = "198.51.100.23".parse().unwrap();
    c.bench_function("rate_limit/local_hot_ip", |b| {
        b.iter(|| limiter.check("ip", Subject::Ip(black_box(ip)), &rate))
    });
    let tight = Rate { count: 60, per: Duration::from_secs(60), burst: 60 };
    c.bench_function("rate_limit/local_refused", |b| {
        b.iter(|| limiter.check("key", Subject::Key(black_box("spent")), &tight))
    });

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let shared = RateLimiter::local();
    c.bench_function("rate_limit/async_check_local_backend", |b| {
        b.to_async(&runtime).iter(|| shared.check("key", Subject::Key(black_box("abc123def456")), &rate))
    });
}

criterion_group!(benches, ip_set, client_ip, rate_limit);
criterion_main!(benches);
