//! Policy hot paths: CIDR lookup with 10,000 rules, client-IP resolution, local rate limiting
//! (single checks and the batched lockout + per-IP + per-key check), route match with 50 routes.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use frappe_gateway::config::Rate;
use frappe_gateway::frappe_request::FrappeRequest;
use frappe_gateway::policy::rate_limit::LimitCheck;
use frappe_gateway::policy::{
    ClientIpResolver, FailedAuthTracker, IpSet, LocalLimiter, RateLimiter, Subject,
};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rand::{Rng, SeedableRng};
use std::sync::Arc;

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

/// What a token request asks of the limiter: the lockout, then per-IP and per-key — as one
/// batch and as the three sequential calls it replaces.
fn rate_limit_batch(c: &mut Criterion) {
    let rate = Rate { count: u32::MAX, per: Duration::from_secs(1), burst: u32::MAX };
    let ip: IpAddr = "198.51.100.23".parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let limiter = Arc::new(RateLimiter::local());
    let tracker = FailedAuthTracker::new(
        limiter.clone(),
        Some(Rate { count: 20, per: Duration::from_secs(60), burst: 20 }),
        Duration::from_secs(600),
    );
    let checks = [
        LimitCheck::new("ip", Subject::Ip(ip), rate),
        LimitCheck::new("key", Subject::Key("abc123def456"), rate),
    ];
    c.bench_function("rate_limit/local_batch_lockout_ip_key", |b| {
        b.to_async(&runtime).iter(|| tracker.check_batch(Some(black_box(ip)), black_box(&checks)))
    });
    c.bench_function("rate_limit/local_sequential_lockout_ip_key", |b| {
        b.to_async(&runtime).iter(|| async {
            let locked = tracker.locked(black_box(ip)).await;
            let a = limiter.check("ip", Subject::Ip(black_box(ip)), &rate).await;
            let k = limiter.check("key", Subject::Key(black_box("abc123def456")), &rate).await;
            (locked, a, k)
        })
    });
}

/// The same against a real Redis when `FGW_BENCH_REDIS_URL` names one (skipped otherwise):
/// one round trip per batch against three.
fn redis_batch(c: &mut Criterion) {
    let Ok(url) = std::env::var("FGW_BENCH_REDIS_URL") else {
        eprintln!("skipping rate_limit/redis_*: set FGW_BENCH_REDIS_URL=redis://127.0.0.1:PORT");
        return;
    };
    let rate = Rate { count: u32::MAX, per: Duration::from_secs(1), burst: u32::MAX };
    let ip: IpAddr = "198.51.100.23".parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let limiter = runtime.block_on(async {
        let clock = Arc::new(frappe_gateway::policy::MonotonicClock::new());
        let redis =
            frappe_gateway::policy::RedisLimiter::connect(&url, Duration::from_secs(1), clock).await.unwrap();
        Arc::new(RateLimiter::Redis(redis))
    });
    let tracker = FailedAuthTracker::new(
        limiter.clone(),
        Some(Rate { count: 20, per: Duration::from_secs(60), burst: 20 }),
        Duration::from_secs(600),
    );
    let checks = [
        LimitCheck::new("ip", Subject::Ip(ip), rate),
        LimitCheck::new("key", Subject::Key("bench-key"), rate),
    ];
    c.bench_function("rate_limit/redis_batch_lockout_ip_key", |b| {
        b.to_async(&runtime).iter(|| tracker.check_batch(Some(black_box(ip)), black_box(&checks)))
    });
    c.bench_function("rate_limit/redis_sequential_lockout_ip_key", |b| {
        b.to_async(&runtime).iter(|| async {
            let locked = tracker.locked(black_box(ip)).await;
            let a = limiter.check("ip", Subject::Ip(black_box(ip)), &rate).await;
            let k = limiter.check("key", Subject::Key(black_box("bench-key")), &rate).await;
            (locked, a, k)
        })
    });
    assert!(!limiter.is_degraded(), "Redis answered throughout");
}

/// A gateway.toml with 50 routes: method prefixes, DocType resources, a few denies and
/// public paths, as a large site might configure.
fn fifty_routes() -> String {
    let mut toml =
        String::from("[server]\nlisten = \"127.0.0.1:8443\"\n[upstream]\nurl = \"http://127.0.0.1:8000\"\n");
    for i in 0..20 {
        toml += &format!("[[route]]\npath = \"/api/method/app{i}.api.\"\nauth = \"token\"\n");
    }
    for i in 0..20 {
        toml += &format!(
            "[[route]]\npath = \"/api/resource/Doc Type {i}\"\nauth = \"token\"\nper_key = \"100/min\"\n"
        );
    }
    for i in 0..5 {
        toml += &format!("[[route]]\npath = \"/api/method/frappe.core.doctype.x{i}.\"\nauth = \"deny\"\n");
    }
    for i in 0..5 {
        toml += &format!("[[route]]\npath = \"/assets/site{i}/\"\nauth = \"public\"\n");
    }
    toml
}

fn route_match(c: &mut Criterion) {
    let config =
        frappe_gateway::config::parse(&fifty_routes(), "bench.toml", &|_| None).expect("valid config");
    assert_eq!(config.routes.len(), 50);
    let table = frappe_gateway::bench_api::Routes::build(config).expect("routes compile");
    let mut group = c.benchmark_group("route_match_50_routes");
    for (name, uri) in [
        ("resource_hit", "/api/resource/Doc%20Type%2017?limit=20"),
        ("method_hit", "/api/method/app13.api.orders.list"),
        ("fallback", "/api/resource/ToDo"),
    ] {
        let uri: http::Uri = uri.parse().unwrap();
        let request = FrappeRequest::from_head(&http::Method::GET, &uri).expect("a request Frappe would run");
        group.bench_function(format!("for_path/{name}"), |b| {
            b.iter(|| table.for_path(black_box(&request.path)))
        });
        group.bench_function(format!("for_request/{name}"), |b| {
            b.iter(|| table.for_request(black_box(&request)))
        });
    }
    group.finish();
}

criterion_group!(benches, ip_set, client_ip, rate_limit, rate_limit_batch, redis_batch, route_match);
criterion_main!(benches);
