//! Several gateway instances sharing limits and revocations through a real `redis-server`
//! (issue 4, acceptance 5–7). Needs `redis-server` on PATH (`.ci/run` installs it).

mod common;

use common::redis::Redis;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const USER: &str = "api.user@example.com";
const KEY: &str = "0a1b2c3d4e5f607";
const SECRET: &str = "9f8e7d6c5b4a392";
const SYNC_KEY: &str = "5e5e5e5e5e5e5e5";
const SYNC_SECRET: &str = "7a7a7a7a7a7a7a7";
const WEBHOOK_SECRET: &str = "whsec-redis-e2e";

struct Cluster {
    frappe: FakeFrappe,
    a: Gateway,
    b: Gateway,
    client: reqwest::Client,
}

async fn cluster(redis: &Redis, lines: &[(&str, &str)]) -> Cluster {
    let frappe = FakeFrappe::start().await;
    frappe.add_user(USER, KEY, SECRET);
    frappe.add_sync_user("gateway-sync@example.com", SYNC_KEY, SYNC_SECRET);
    let certs = Certs::generate();
    let mut builder = ConfigBuilder::new(&frappe.url())
        .tls(&certs)
        .set("rate_limit", "backend = \"redis\"")
        .set("rate_limit", "redis_url_env = \"FGW_TEST_REDIS\"")
        .set("frappe", "sync_interval = \"1h\"");
    for (table, line) in lines {
        builder = builder.set(table, line);
    }
    let config = builder.build();
    let url = redis.url();
    let token = format!("{SYNC_KEY}:{SYNC_SECRET}");
    let envs = [
        ("FGW_TEST_REDIS", url.as_str()),
        ("GATEWAY_SYNC_TOKEN", token.as_str()),
        ("GATEWAY_WEBHOOK_SECRET", WEBHOOK_SECRET),
    ];
    let a = Gateway::start(&config, &envs).await;
    let b = Gateway::start(&config, &envs).await;
    let client = https_client(&certs.ca_pem, HttpVersion::Http1Only);
    Cluster { frappe, a, b, client }
}

impl Cluster {
    async fn status(&self, gateway: &Gateway) -> u16 {
        let url = format!("{}/api/resource/ToDo", gateway.base_url());
        let resp = self.client.get(url).header("authorization", token_header(KEY, SECRET)).send().await;
        resp.expect("gateway answers").status().as_u16()
    }

    async fn readyz(&self, gateway: &Gateway) -> serde_json::Value {
        let resp = http_client().get(format!("{}/readyz", gateway.admin_url())).send().await.unwrap();
        resp.json().await.unwrap()
    }
}

/// Acceptance 5: two instances, one budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_budget() {
    let redis = Redis::start();
    let c = cluster(&redis, &[("rate_limit", "per_key = \"100/min\"")]).await;
    let start = Instant::now();
    let mut admitted = 0;
    for i in 0..200 {
        let gateway = if i % 2 == 0 { &c.a } else { &c.b };
        if c.status(gateway).await == 200 {
            admitted += 1;
        }
    }
    // 100/min earns one more request every 600 ms.
    let earned = (start.elapsed().as_millis() / 600) as usize;
    assert!(
        admitted <= 100 + earned + 1,
        "{admitted} admitted across both instances in {:?}",
        start.elapsed()
    );
    assert!(admitted >= 100, "the shared budget is usable: {admitted}");
}

/// Acceptance 6: Redis gone → local limits, no 5xx, degraded in /readyz; back → shared again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_falls_back_to_local_limits_and_recovers() {
    let mut redis = Redis::start();
    let c = cluster(
        &redis,
        &[("rate_limit", "per_key = \"20/min\""), ("rate_limit", "redis_timeout = \"100ms\"")],
    )
    .await;
    assert_eq!(c.status(&c.a).await, 200);

    redis.stop();
    let mut statuses = Vec::new();
    for i in 0..60 {
        statuses.push(c.status(if i % 2 == 0 { &c.a } else { &c.b }).await);
    }
    assert!(statuses.iter().all(|&s| s == 200 || s == 429), "no 5xx caused by Redis: {statuses:?}");
    assert!(statuses.contains(&200), "requests keep being served");
    assert!(statuses.contains(&429), "local limits still apply");
    assert_eq!(c.readyz(&c.a).await["rate_limit"]["degraded_to_local"], true);
    assert!(c.a.stderr_text().contains("WARN"), "the switch is logged");

    redis.resume();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // Keep traffic flowing: the limiter probes Redis on requests, at most once a second.
        let _ = c.status(&c.a).await;
        let _ = c.status(&c.b).await;
        let both = c.readyz(&c.a).await["rate_limit"]["degraded_to_local"] == false
            && c.readyz(&c.b).await["rate_limit"]["degraded_to_local"] == false;
        if both {
            break;
        }
        assert!(Instant::now() < deadline, "Redis limits did not resume");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Shared again: exhaust the (fresh, Redis-side) budget through A, then B refuses.
    let mut a_statuses = Vec::new();
    for _ in 0..25 {
        a_statuses.push(c.status(&c.a).await);
    }
    assert!(a_statuses.contains(&429), "{a_statuses:?}");
    assert_eq!(c.status(&c.b).await, 429, "B sees the budget A spent");
}

/// Acceptance 7: a webhook on A revokes on B within 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_revocation_on_one_instance_reaches_the_other() {
    let redis = Redis::start();
    let c = cluster(&redis, &[]).await;
    assert_eq!(c.status(&c.a).await, 200);
    assert_eq!(c.status(&c.b).await, 200);
    // Frappe's whoami still accepts a disabled user's key: B must refresh the user, not just
    // drop its cache.
    c.frappe.set_enabled(USER, false);
    let body = format!(r#"{{"name":"{USER}"}}"#);
    let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let start = Instant::now();
    let resp = http_client()
        .post(format!("{}/hooks/frappe", c.a.admin_url()))
        .header("x-frappe-webhook-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    loop {
        if c.status(&c.b).await == 401 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(1), "B still admits the revoked key after 1 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.status(&c.a).await, 401);
}
