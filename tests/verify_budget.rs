//! The verification budget end to end: the real gateway over TLS (HTTP/2) in front of the fake
//! Frappe, flooded with random api_keys while a known key keeps working. Its own test binary so
//! the flood does not compete with the timing-sensitive tests in `auth_e2e.rs`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::future::join_all;

const USER: &str = "api.user@example.com";
const KEY: &str = "0a1b2c3d4e5f607";
const SECRET: &str = "9f8e7d6c5b4a392";
const CONCURRENCY: usize = 4;
const RATE_PER_SEC: f64 = 20.0;
const BURST: f64 = 20.0;
const FLOOD: usize = 1000;
const WORKERS: usize = 64;

fn random_hex(len: usize) -> String {
    let mut out = String::new();
    while out.len() < len {
        out.push_str(&format!("{:016x}", rand::random::<u64>()));
    }
    out.truncate(len);
    out
}

/// One flood answer: status, Retry-After, exc_type.
type Answer = (u16, Option<String>, Option<String>);

async fn send(client: &reqwest::Client, url: &str, authorization: &str) -> Answer {
    let resp = client.get(url).header("authorization", authorization).send().await.expect("gateway answers");
    let status = resp.status().as_u16();
    let retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    let exc_type = body["exc_type"].as_str().map(str::to_string);
    if status == 503 {
        let messages = body["_server_messages"].as_str().unwrap_or_default();
        assert!(messages.contains("too many new credentials to verify right now"), "{body}");
    }
    (status, retry_after, exc_type)
}

/// 1,000 random keys in about a second over 64 concurrent HTTP/2 streams, while a cached key
/// is used in a loop: Frappe never sees more than `max_verify_concurrency` whoami calls at once
/// nor more than `max_verify_rate` (plus the burst); refusals are 503 + Retry-After and do not
/// lock the address out; the cached key never fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_keys_are_bounded_and_cached_keys_are_untouched() {
    let frappe = FakeFrappe::start().await;
    frappe.add_user(USER, KEY, SECRET);
    let certs = Certs::generate();
    let toml = ConfigBuilder::new(&frappe.url())
        .tls(&certs)
        .set("frappe", &format!("max_verify_concurrency = {CONCURRENCY}"))
        .set("frappe", "max_verify_rate = \"20/sec\"")
        // Well above the 401s the budget lets through, far below the flood: if refusals by the
        // budget counted as failed authentications, this address would be locked out (429).
        .set("rate_limit", "failed_auth_per_ip = \"100/min\"")
        .build();
    let gateway = Gateway::start(&toml, &[]).await;
    let url = format!("{}/api/resource/ToDo", gateway.base_url());
    let known = token_header(KEY, SECRET);

    let warm = https_client(&certs.ca_pem, HttpVersion::Http2);
    assert_eq!(send(&warm, &url, &known).await.0, 200, "the known key is verified and cached");
    // Each whoami holds its permit this long, so the concurrency limit is what binds first.
    frappe.set_whoami_delay(Duration::from_millis(50));
    frappe.reset_counters();

    let flooding = Arc::new(AtomicBool::new(true));
    let known_task = {
        let (client, url, known, flooding) = (warm.clone(), url.clone(), known.clone(), flooding.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            // Bounded: the flood ends well within 60 s, or the test fails anyway.
            let deadline = Instant::now() + Duration::from_secs(60);
            while flooding.load(Ordering::SeqCst) && Instant::now() < deadline {
                statuses.push(send(&client, &url, &known).await.0);
            }
            statuses
        })
    };

    let clients: Vec<reqwest::Client> =
        (0..16).map(|_| https_client(&certs.ca_pem, HttpVersion::Http2)).collect();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers = (0..WORKERS).map(|w| {
        let (client, url, next) = (clients[w % clients.len()].clone(), url.clone(), next.clone());
        async move {
            let mut answers = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= FLOOD {
                    return answers;
                }
                // Paced: request n leaves at n ms, so the flood spans about one second.
                tokio::time::sleep_until((started + Duration::from_millis(n as u64)).into()).await;
                let authorization = token_header(&random_hex(15), &random_hex(15));
                answers.push(send(&client, &url, &authorization).await);
            }
        }
    });
    let answers: Vec<Answer> = join_all(workers).await.into_iter().flatten().collect();
    let elapsed = started.elapsed();
    flooding.store(false, Ordering::SeqCst);
    let known_statuses = known_task.await.unwrap();

    assert_eq!(answers.len(), FLOOD);
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.0 == 503).collect();
    let verified = answers.iter().filter(|a| a.0 == 401).count();
    let other: Vec<&Answer> = answers.iter().filter(|a| a.0 != 503 && a.0 != 401).collect();
    assert!(
        other.is_empty(),
        "only 401 (asked Frappe) or 503 (over budget): {:?}",
        &other[..other.len().min(5)]
    );
    assert!(
        !refused.is_empty() && verified > 0,
        "the budget engaged: {verified} verified, {} refused",
        refused.len()
    );
    for (_, retry_after, exc_type) in &refused {
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert_eq!(exc_type.as_deref(), Some("ServiceUnavailableError"));
    }

    let max_in_flight = frappe.whoami_max_in_flight();
    eprintln!(
        "flood: {verified} verified, {} refused in {elapsed:?}; at most {max_in_flight} whoami in flight; \
         {} requests with the cached key",
        refused.len(),
        known_statuses.len()
    );
    assert!(max_in_flight <= CONCURRENCY, "{max_in_flight} whoami calls in flight at once");
    let calls = frappe.whoami_calls();
    let allowed = RATE_PER_SEC * elapsed.as_secs_f64() + BURST;
    assert!(calls as f64 <= allowed, "{calls} whoami calls in {elapsed:?} (at most {allowed:.0})");
    assert_eq!(calls, verified, "every 401 was one whoami call; no 503 reached Frappe");

    assert!(!known_statuses.is_empty());
    assert!(
        known_statuses.iter().all(|&s| s == 200),
        "the cached key kept working: {} of {} failed",
        known_statuses.iter().filter(|&&s| s != 200).count(),
        known_statuses.len()
    );
    assert_eq!(send(&warm, &url, &known).await.0, 200, "no lockout after the flood");

    // Logged with the reason, and counted.
    let line = gateway
        .wait_for_access_log(|l| l["auth"] == "over-budget", Duration::from_secs(5))
        .await
        .expect("refusals are in the access log");
    assert_eq!(line["status"], 503);
    assert!(line["reason"].as_str().unwrap().contains("verification budget exhausted"), "{line}");
    let summary =
        gateway.wait_for_log(|l| log_message(l) == Some(BUDGET_WARNING), Duration::from_secs(5)).await;
    assert!(summary.is_some(), "the application log summarises refusals");
    let want = format!("gateway_auth_total{{outcome=\"over-budget\"}} {}", refused.len());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = http_client().get(format!("{}/metrics", gateway.admin_url())).send().await.unwrap();
        let text = text.text().await.unwrap();
        if text.contains(&want) {
            break;
        }
        assert!(Instant::now() < deadline, "expected {want:?} in\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const BUDGET_WARNING: &str =
    "verification budget exhausted: unknown credentials get 503 until Frappe calls free up";
