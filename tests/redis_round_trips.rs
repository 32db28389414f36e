//! Issue 10, target 7: on `rate_limit.backend = "redis"` a request with a cached key makes at
//! most one Redis round trip — the failed-auth lockout, per-IP and per-key decided in one
//! script call, which a worker's concurrent requests share —
//! counted by redis-server itself (`MONITOR`, which tells a client's commands from those its
//! scripts run). The refusals of that combined call name the limit that refused, and a
//! locked-out IP charges nothing. Needs `redis-server`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::redis::Redis;
use common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const USER: &str = "api.user@example.com";
const KEY: &str = "0a1b2c3d4e5f607";
const SECRET: &str = "9f8e7d6c5b4a392";
const LOG_WAIT: Duration = Duration::from_secs(5);
const SENTINEL: &str = "round-trips-sentinel";

struct Setup {
    _frappe: FakeFrappe,
    gateway: Gateway,
    client: reqwest::Client,
    redis: ::redis::aio::MultiplexedConnection,
}

/// A gateway config in front of `frappe` with TLS and the Redis backend (its URL in
/// `FGW_TEST_REDIS`).
fn redis_config(frappe: &FakeFrappe, certs: &Certs) -> ConfigBuilder {
    ConfigBuilder::new(&frappe.url())
        .tls(certs)
        .set("rate_limit", "backend = \"redis\"")
        .set("rate_limit", "redis_url_env = \"FGW_TEST_REDIS\"")
}

async fn setup(redis: &Redis, limits: &[&str]) -> Setup {
    setup_over(redis, limits, HttpVersion::Http1Only).await
}

/// [`setup`] with a client that offers `version`.
async fn setup_over(redis: &Redis, limits: &[&str], version: HttpVersion) -> Setup {
    let frappe = FakeFrappe::start().await;
    frappe.add_user(USER, KEY, SECRET);
    let certs = Certs::generate();
    let mut builder = redis_config(&frappe, &certs);
    for line in limits {
        builder = builder.set("rate_limit", line);
    }
    let url = redis.url();
    let gateway = Gateway::start(&builder.build(), &[("FGW_TEST_REDIS", url.as_str())]).await;
    let client = https_client(&certs.ca_pem, version);
    Setup { _frappe: frappe, gateway, client, redis: redis.admin().await }
}

impl Setup {
    async fn get(&self, secret: &str) -> reqwest::Response {
        let url = format!("{}/api/resource/ToDo", self.gateway.base_url());
        self.client.get(url).header("authorization", token_header(KEY, secret)).send().await.expect("answer")
    }

    /// The commands clients other than us sent while `traffic` ran, by name, as redis-server's
    /// MONITOR saw them (commands run inside scripts are not counted: MONITOR marks them `lua`).
    async fn client_commands(
        redis: &Redis,
        traffic: impl std::future::Future<Output = ()>,
    ) -> HashMap<String, u64> {
        let mut counts = HashMap::new();
        for (_, command) in Setup::monitored(redis, traffic).await {
            *counts.entry(command).or_insert(0) += 1;
        }
        counts
    }

    /// Every client command sent while `traffic` ran: (the client's address, lowercased name).
    async fn monitored(
        redis: &Redis,
        traffic: impl std::future::Future<Output = ()>,
    ) -> Vec<(String, String)> {
        let mut admin = redis.admin().await;
        let mut monitor = BufReader::new(TcpStream::connect(("127.0.0.1", redis.port)).await.unwrap());
        monitor.get_mut().write_all(b"MONITOR\r\n").await.unwrap();
        let mut line = String::new();
        monitor.read_line(&mut line).await.unwrap();
        assert_eq!(line.trim(), "+OK");
        traffic.await;
        // Everything sent before the sentinel is in the stream before it.
        let _: String = ::redis::cmd("ECHO").arg(SENTINEL).query_async(&mut admin).await.unwrap();
        let mut commands = Vec::new();
        loop {
            line.clear();
            let read = tokio::time::timeout(LOG_WAIT, monitor.read_line(&mut line)).await;
            assert!(matches!(read, Ok(Ok(n)) if n > 0), "MONITOR stream ended");
            if line.contains(SENTINEL) {
                return commands;
            }
            // `+1700000000.123456 [0 127.0.0.1:40000] "EVALSHA" "…"` or `[0 lua] "get" …`
            let Some((source, command)) = line.split_once("] \"") else { continue };
            if source.ends_with(" lua") {
                continue;
            }
            let address = source.rsplit(' ').next().unwrap_or_default().to_string();
            let name = command.split('"').next().unwrap_or_default().to_lowercase();
            commands.push((address, name));
        }
    }

    async fn reason_of(&self, response: &reqwest::Response) -> String {
        let id = response.headers()["x-request-id"].to_str().unwrap().to_string();
        let line = self.gateway.wait_for_access_log(|l| l["request_id"] == id.as_str(), LOG_WAIT).await;
        line.expect("access-log line")["reason"].as_str().unwrap_or_default().to_string()
    }
}

#[tokio::test]
async fn a_cached_key_costs_one_redis_round_trip() {
    let redis = Redis::start();
    let limits = ["per_ip = \"1000/min\"", "per_key = \"25/min\"", "failed_auth_per_ip = \"20/min\""];
    let s = setup(&redis, &limits).await;
    // The first request verifies the key with Frappe (a miss: lockout + per-IP, then per-key).
    assert_eq!(s.get(SECRET).await.status(), 200);
    let mut last = None;
    let traffic = async {
        for _ in 0..20 {
            let response = s.get(SECRET).await;
            assert_eq!(response.status(), 200);
            last = Some(response);
        }
    };
    let calls = Setup::client_commands(&redis, traffic).await;
    assert_eq!(
        calls,
        HashMap::from([("evalsha".to_string(), 20)]),
        "one script call per request, nothing else"
    );
    // The per-key bucket was charged by those calls: 25 − 21 requests.
    let last = last.unwrap();
    assert_eq!(last.headers()["ratelimit-limit"], "25");
    assert_eq!(last.headers()["ratelimit-remaining"], "4");
}

#[tokio::test]
async fn the_combined_call_names_the_limit_that_refused() {
    let redis = Redis::start();
    let s = setup(&redis, &["per_ip = \"1000/min\"", "per_key = \"3/min\""]).await;
    for _ in 0..3 {
        assert_eq!(s.get(SECRET).await.status(), 200);
    }
    let refused = s.get(SECRET).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(refused.headers()["ratelimit-remaining"], "0");
    let reason = s.reason_of(&refused).await;
    assert!(reason.starts_with("per_key limit"), "{reason}");

    let redis = Redis::start();
    let s = setup(&redis, &["per_ip = \"2/min\"", "per_key = \"1000/min\""]).await;
    for _ in 0..2 {
        assert_eq!(s.get(SECRET).await.status(), 200);
    }
    let refused = s.get(SECRET).await;
    assert_eq!(refused.status(), 429);
    let reason = s.reason_of(&refused).await;
    assert!(reason.starts_with("per_ip limit"), "{reason}");
}

#[tokio::test]
async fn a_locked_out_ip_with_a_cached_key_charges_nothing() {
    let redis = Redis::start();
    let limits = ["per_key = \"100/min\"", "failed_auth_per_ip = \"3/min\"", "lockout = \"10m\""];
    let mut s = setup(&redis, &limits).await;
    assert_eq!(s.get(SECRET).await.status(), 200);
    let bucket = format!("fgw:rl:key:{USER}");
    // Wrong secrets until the lockout answers (the limit is 3 a minute).
    let mut statuses = Vec::new();
    while statuses.last() != Some(&429) && statuses.len() < 10 {
        statuses.push(s.get("wrong-secret-000").await.status().as_u16());
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    let tat_before: Option<String> =
        ::redis::cmd("GET").arg(&bucket).query_async(&mut s.redis).await.unwrap();
    assert!(tat_before.is_some(), "the per-key bucket exists in Redis");
    let locked = s.get(SECRET).await;
    assert_eq!(locked.status(), 429, "a valid cached key does not lift the lockout");
    let reason = s.reason_of(&locked).await;
    assert!(reason.contains("locked out"), "{reason}");
    let tat_after: Option<String> = ::redis::cmd("GET").arg(&bucket).query_async(&mut s.redis).await.unwrap();
    assert_eq!(tat_before, tat_after, "the locked-out request was not charged to the key");
}

#[tokio::test]
async fn a_body_that_changes_the_route_is_charged_to_that_routes_key_limit() {
    let redis = Redis::start();
    let frappe = FakeFrappe::start().await;
    frappe.add_user(USER, KEY, SECRET);
    let certs = Certs::generate();
    let config = redis_config(&frappe, &certs)
        .set("rate_limit", "per_key = \"100/min\"")
        .extra("[[route]]\npath = \"/api/method/frappe.client.get_list\"\nauth = \"token\"\nper_key = \"2/min\"\n")
        .build();
    let url = redis.url();
    let gateway = Gateway::start(&config, &[("FGW_TEST_REDIS", url.as_str())]).await;
    let client = https_client(&certs.ca_pem, HttpVersion::Http1Only);
    let send = |body: &'static str| {
        client
            .post(format!("{}/api/method/frappe.auth.get_logged_user", gateway.base_url()))
            .header("authorization", token_header(KEY, SECRET))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    // Cached first, so the rest take the one-batch path for the route as sent.
    assert_eq!(send("x=1").await.unwrap().status(), 200);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        // Frappe runs `cmd`, not the path: the get_list route's own 2/min applies too.
        statuses.push(send("cmd=frappe.client.get_list&doctype=ToDo").await.unwrap().status().as_u16());
    }
    assert_ne!(statuses[0], 429, "{statuses:?}");
    assert_ne!(statuses[1], 429, "{statuses:?}");
    assert_eq!(statuses[2], 429, "the judged route's per-key bucket is charged: {statuses:?}");
    // The route as sent still admits plain calls (its bucket is far from empty).
    assert_eq!(send("x=1").await.unwrap().status(), 200);
}

/// The addresses of the clients connected to `redis` (`CLIENT LIST`).
async fn client_addresses(admin: &mut ::redis::aio::MultiplexedConnection) -> Vec<String> {
    let list: String = ::redis::cmd("CLIENT").arg("LIST").query_async(admin).await.unwrap();
    list.lines()
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("addr=")).map(str::to_string))
        .collect()
}

/// Each proxy worker calls Redis on a connection of its own, made on its own thread: the
/// shared connection lives on the main runtime, and going through it would cost two
/// cross-thread wake-ups per request. Once the workers' connections are up, every script call
/// comes from one of them, none from a connection the gateway had before serving traffic.
#[tokio::test]
async fn each_worker_calls_redis_on_its_own_connection() {
    let redis = Redis::start();
    let frappe = FakeFrappe::start().await;
    frappe.add_user(USER, KEY, SECRET);
    let certs = Certs::generate();
    let config = redis_config(&frappe, &certs)
        .set("server", "workers = 2")
        .set("rate_limit", "per_key = \"100000/min\"")
        .build();
    let url = redis.url();
    let gateway = Gateway::start(&config, &[("FGW_TEST_REDIS", url.as_str())]).await;
    let mut admin = redis.admin().await;
    let before = client_addresses(&mut admin).await;
    // 16 clients, one TCP connection each: the kernel spreads them over both workers
    // (SO_REUSEPORT; all on one worker has odds of 2^-15).
    let clients: Vec<_> = (0..16).map(|_| https_client(&certs.ca_pem, HttpVersion::Http1Only)).collect();
    let get_all = || async {
        for client in &clients {
            let url = format!("{}/api/resource/ToDo", gateway.base_url());
            let response =
                client.get(url).header("authorization", token_header(KEY, SECRET)).send().await.unwrap();
            assert_eq!(response.status(), 200);
        }
    };
    // Each worker's first call starts its connection (and uses the shared one meanwhile).
    let deadline = tokio::time::Instant::now() + LOG_WAIT;
    loop {
        get_all().await;
        if client_addresses(&mut admin).await.len() >= before.len() + 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no connection per worker: {before:?}");
    }
    let after = client_addresses(&mut admin).await;
    assert_eq!(after.len(), before.len() + 2, "one new connection per worker: {before:?} → {after:?}");
    let calls = Setup::monitored(&redis, get_all()).await;
    let sources: std::collections::BTreeSet<_> =
        calls.iter().filter(|(_, c)| c == "evalsha").map(|(a, _)| a.clone()).collect();
    assert_eq!(calls.iter().filter(|(_, c)| c == "evalsha").count(), 16, "{calls:?}");
    assert_eq!(sources.len(), 2, "both workers' connections: {sources:?}");
    for source in &sources {
        assert!(!before.contains(source), "{source} is a connection the gateway had before traffic");
    }
}

/// Requests of one worker that arrive together share a script call (`group.rs`), and the
/// limit stays exact: 30 concurrent requests over one HTTP/2 connection (one worker) against a
/// per-key limit with 9 left admit exactly 9, and Redis sees fewer script calls than requests.
#[tokio::test]
async fn concurrent_requests_share_script_calls_and_the_limit_stays_exact() {
    let redis = Redis::start();
    let s =
        setup_over(&redis, &["per_ip = \"100000/min\"", "per_key = \"10/min\""], HttpVersion::Http2).await;
    // Verifies the key (and spends 1 of the 10) and opens the one HTTP/2 connection.
    let first = s.get(SECRET).await;
    assert_eq!((first.status().as_u16(), first.version()), (200, reqwest::Version::HTTP_2));

    const REQUESTS: usize = 30;
    let mut statuses = Vec::new();
    let traffic = async {
        let answers = futures_util::future::join_all((0..REQUESTS).map(|_| s.get(SECRET))).await;
        statuses = answers.into_iter().map(|a| a.status().as_u16()).collect();
    };
    let calls = Setup::monitored(&redis, traffic).await;
    let scripts = calls.iter().filter(|(_, c)| c == "evalsha").count();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 9, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), REQUESTS - 9, "{statuses:?}");
    assert!(
        (1..REQUESTS).contains(&scripts),
        "{REQUESTS} concurrent requests made {scripts} script calls: {calls:?}"
    );
}
