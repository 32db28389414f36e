//! No secret ever reaches a log (issue 3, acceptance 9). Every gateway the harness runs checks
//! its own output when dropped (`common::secrets`); this file proves the detectors detect and
//! runs a representative workload of every credential form, right and wrong, through a TLS
//! gateway with sync and webhooks, asserting explicitly on its whole output.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::secrets::{has_basic_credential, has_key_secret_pair, leaks};
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

#[test]
fn the_detectors_detect() {
    assert!(has_key_secret_pair(&format!("x token {KEY}:{SECRET} y")));
    assert!(!has_key_secret_pair(&format!("\"api_key\":\"{KEY}\"")));
    let basic = basic_header(KEY, SECRET);
    assert!(has_basic_credential(&basic));
    common::secrets::remember(WEBHOOK_SECRET);
    assert_eq!(leaks(&format!("{{\"user\":\"{USER}\",\"api_key\":\"{KEY}\"}}")), Vec::<String>::new());
    assert_eq!(leaks(&format!("sig {WEBHOOK_SECRET}")).len(), 1);
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
    // Two more sync rounds: past cache_ttl, so the next requests go to (hanging) whoami.
    let synced = frappe.user_list_calls();
    eventually("two sync rounds", Duration::from_secs(10), || frappe.user_list_calls() >= synced + 2).await;
    frappe.set_whoami_mode(WhoamiMode::Hang);
    for header in &headers[..2] {
        let _ = client.get(&plain_url).header("authorization", header).send().await.unwrap().bytes().await;
    }
    frappe.set_users_mode(UsersMode::Status401);
    let synced = frappe.user_list_calls();
    eventually("a failing sync round", Duration::from_secs(10), || frappe.user_list_calls() > synced).await;

    let logs = format!("{}\n{}", gateway.stdout_text(), gateway.stderr_text());
    assert!(logs.lines().count() > headers.len(), "the workload was logged");
    assert_eq!(leaks(&logs), Vec::<String>::new(), "secrets in the gateway's output:\n{logs}");
}
