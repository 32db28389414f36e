//! No secret ever reaches a log (issue 3, acceptance 9). Named `zz_` so cargo runs it after
//! the other test binaries: besides a strict check of its own workload, it scans every
//! gateway log the suite wrote (`common::test_log_dir()`) for
//! - the secrets the suite's tests use (listed below),
//! - any `<15 hex>:<15 hex>` pair (a Frappe `api_key:api_secret`, in a header or a token),
//! - any base64 word that decodes to such a pair (a `Basic` credential).

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const USER: &str = "api.user@example.com";
const KEY: &str = "0a1b2c3d4e5f607";
const SECRET: &str = "c0ffee0ddba11ee";
const SYNC_KEY: &str = "5e5e5e5e5e5e5e5";
const SYNC_SECRET: &str = "5ec2e75ec2e75ec";
const WEBHOOK_SECRET: &str = "whsec-never-logged-91c4";
const BEARER: &str = "bearer-never-logged-77d2";

/// Secrets used by the suite's test files (auth_e2e, policy_e2e, redis_e2e, administrator,
/// request_model, this file; verify_budget's random pairs are caught by the key:secret detector).
const SUITE_SECRETS: [&str; 14] = [
    "8e7d6c5b4a39281",
    SECRET,
    SYNC_SECRET,
    WEBHOOK_SECRET,
    BEARER,
    "9f8e7d6c5b4a392",
    "7a7a7a7a7a7a7a7",
    "whsec-4b1d-e2e-test",
    "whsec-redis-e2e",
    "bearer-token-e2e-1",
    "defdefdefdefdef",
    "444444444444444",
    "5a5a5a5a5a5a5a5",
    "whsec-admin-e2e-test",
];

fn is_hex15(s: &str) -> bool {
    s.len() == 15 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `<15 hex>:<15 hex>` anywhere in `text`.
fn has_key_secret_pair(text: &str) -> bool {
    let bytes = text.as_bytes();
    (15..bytes.len().saturating_sub(15)).any(|i| {
        bytes[i] == b':' && is_hex15(&text[i - 15..i]) && text.get(i + 1..i + 16).is_some_and(is_hex15)
    })
}

/// A base64 word that decodes to `<15 hex>:<15 hex>`.
fn has_basic_credential(text: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '='))
        .filter(|w| w.len() >= 40)
        .filter_map(|w| base64::engine::general_purpose::STANDARD.decode(w).ok())
        .filter_map(|d| String::from_utf8(d).ok())
        .any(|d| has_key_secret_pair(&d))
}

fn leaks(text: &str) -> Vec<String> {
    let mut found: Vec<String> =
        SUITE_SECRETS.iter().filter(|s| text.contains(*s)).map(|s| s.to_string()).collect();
    if has_key_secret_pair(text) {
        found.push("an api_key:api_secret pair".into());
    }
    if has_basic_credential(text) {
        found.push("a Basic credential".into());
    }
    found
}

#[test]
fn the_detectors_detect() {
    assert!(has_key_secret_pair(&format!("x token {KEY}:{SECRET} y")));
    assert!(!has_key_secret_pair(&format!("\"api_key\":\"{KEY}\"")));
    let basic = basic_header(KEY, SECRET);
    assert!(has_basic_credential(&basic));
    assert!(!leaks(&format!("{{\"user\":\"{USER}\",\"api_key\":\"{KEY}\"}}")).iter().any(|l| !l.is_empty()));
}

/// A representative workload; nothing it sends as a secret may appear in stdout or stderr.
#[tokio::test]
async fn no_secret_reaches_the_logs_of_a_representative_workload() {
    let frappe = FakeFrappe::start().await;
    frappe.add_user(USER, KEY, SECRET);
    frappe.add_sync_user("gateway-sync@example.com", SYNC_KEY, SYNC_SECRET);
    frappe.add_bearer(BEARER, USER);
    let certs = Certs::generate();
    let config = ConfigBuilder::new(&frappe.url())
        .tls(&certs)
        .set("frappe", "sync_interval = \"1s\"")
        .set("frappe", "verify_timeout = \"300ms\"")
        .set("auth", "cache_ttl = \"1s\"")
        .set("log", "level = \"debug\"")
        .build();
    let sync_token = format!("{SYNC_KEY}:{SYNC_SECRET}");
    let envs = [("GATEWAY_SYNC_TOKEN", sync_token.as_str()), ("GATEWAY_WEBHOOK_SECRET", WEBHOOK_SECRET)];
    let gateway = Gateway::start(&config, &envs).await;
    let client = https_client(&certs.ca_pem, HttpVersion::Http2);
    let url = format!("{}/api/resource/ToDo?sid=abc&api_secret={SECRET}", gateway.base_url());
    let plain_url = format!("{}/api/resource/ToDo", gateway.base_url());
    let headers = [
        token_header(KEY, SECRET),
        token_header(KEY, "0123456789abcde"),
        format!("token {KEY}{SECRET}"),
        format!("token  {KEY}:{SECRET}"),
        basic_header(KEY, SECRET),
        "Basic !!notbase64!!".to_string(),
        format!("Bearer {BEARER}"),
    ];
    for header in &headers {
        for target in [&url, &plain_url] {
            let _ = client.get(target).header("authorization", header).send().await.unwrap().bytes().await;
        }
    }
    let body = format!(r#"{{"name":"{USER}"}}"#);
    let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let good = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    for signature in [good.as_str(), "bm90IGEgc2lnbmF0dXJl"] {
        let hook = format!("{}/hooks/frappe", gateway.admin_url());
        let _ = http_client()
            .post(hook)
            .header("x-frappe-webhook-signature", signature)
            .body(body.clone())
            .send()
            .await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await; // a sync round and past cache_ttl
    frappe.set_whoami_mode(WhoamiMode::Hang);
    for header in &headers[..2] {
        let _ = client.get(&plain_url).header("authorization", header).send().await.unwrap().bytes().await;
    }
    frappe.set_users_mode(UsersMode::Status401);
    tokio::time::sleep(Duration::from_millis(1200)).await; // a failing sync round

    let logs = format!("{}\n{}", gateway.stdout_text(), gateway.stderr_text());
    assert!(logs.lines().count() > headers.len(), "the workload was logged");
    assert_eq!(leaks(&logs), Vec::<String>::new(), "secrets in the gateway's output:\n{logs}");
}

/// Every gateway log the suite wrote (best effort: binaries that ran before this one).
#[test]
fn no_secret_in_any_gateway_log_of_the_suite() {
    let mut leaked = Vec::new();
    for path in all_test_logs() {
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        for leak in leaks(&text) {
            leaked.push(format!("{}: {leak}", path.display()));
        }
    }
    assert!(leaked.is_empty(), "secrets found in test logs:\n{}", leaked.join("\n"));
}
