//! The cache-hit path of token authentication: parse the header, look the key up, digest the
//! secret, compare in constant time (Frappe is never asked: the cache is warmed first).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use frappe_gateway::auth::{parse, CredentialStore, Outcome, Verify, VerifyError};
use frappe_gateway::config::AuthConfig;
use futures_util::future::BoxFuture;
use http::header::HeaderName;
use http::HeaderValue;

/// Accepts everything at once: only the warm-up calls it.
struct InstantFrappe;

impl Verify for InstantFrappe {
    fn verify<'a>(&'a self, _: &'a HeaderValue) -> BoxFuture<'a, Result<String, VerifyError>> {
        Box::pin(async { Ok("api.user@example.com".to_owned()) })
    }
}

fn store() -> CredentialStore {
    let cfg = AuthConfig {
        user_header: HeaderName::from_static("x-frappe-user"),
        forward_authorization: true,
        cache_capacity: 100_000,
        cache_ttl: Duration::from_secs(600),
        negative_ttl: Duration::from_secs(30),
        stale_if_error: Duration::from_secs(600),
        allow_administrator: false,
    };
    CredentialStore::new(&cfg, Arc::new(InstantFrappe))
}

fn hit_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = store();
    let headers = [
        ("auth_hit/token", HeaderValue::from_static("token 0a1b2c3d4e5f607:9f8e7d6c5b4a321")),
        ("auth_hit/basic", HeaderValue::from_static("Basic MGExYjJjM2Q0ZTVmNjA3OjlmOGU3ZDZjNWI0YTMyMQ==")),
    ];
    // 10,000 other keys so the lookup is not into an almost empty table.
    runtime.block_on(async {
        for i in 0..10_000 {
            let value = HeaderValue::from_str(&format!("token k{i:014}:s{i:014}")).unwrap();
            store.authenticate(&parse(Some(&value)).unwrap(), &value).await.unwrap();
        }
        for (_, value) in &headers {
            store.authenticate(&parse(Some(value)).unwrap(), value).await.unwrap();
        }
    });
    for (name, value) in &headers {
        c.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                let credential = parse(Some(black_box(value))).unwrap();
                let admitted = store.authenticate(&credential, value).await.unwrap();
                assert_eq!(admitted.outcome, Outcome::Hit);
                admitted
            })
        });
    }
}

criterion_group!(benches, hit_path);
criterion_main!(benches);
