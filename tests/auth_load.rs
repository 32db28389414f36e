//! Token authentication under load (issue 3, acceptance 1 and 2), in its own test binary so
//! its 11,000 requests never compete with the timing-sensitive tests in `auth_e2e.rs`.

mod common;

use std::time::Duration;

use common::*;
use futures_util::future::join_all;

const USER: &str = "api.user@example.com";
const KEY: &str = "0a1b2c3d4e5f607";
const SECRET: &str = "9f8e7d6c5b4a392";

/// Acceptance 1 and 2: one whoami for 1,000 concurrent first requests, none for 10,000 more;
/// the upstream sees the user header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_verification_and_hits_never_reach_frappe() {
    let frappe = FakeFrappe::start().await;
    frappe.add_user(USER, KEY, SECRET);
    let certs = Certs::generate();
    let gateway = Gateway::start(&config_for(&frappe.url(), Some(&certs), ""), &[]).await;
    frappe.set_whoami_delay(Duration::from_millis(300));
    let auth = token_header(KEY, SECRET);
    // Eight HTTP/2 connections with 125 streams each: all 1,000 in flight at once, within
    // the gateway's 256 concurrent streams per connection.
    let clients: Vec<reqwest::Client> =
        (0..8).map(|_| https_client(&certs.ca_pem, HttpVersion::Http2)).collect();
    let url = format!("{}/api/resource/ToDo", gateway.base_url());
    let first: Vec<u16> = join_all((0..1000).map(|i| {
        let req = clients[i % clients.len()].get(&url).header("authorization", &auth);
        async move { req.send().await.map_or(0, |r| r.status().as_u16()) }
    }))
    .await;
    if first.iter().any(|&st| st != 200) {
        // Give the access log its 20 ms flush, then say what the gateway saw.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let reasons: Vec<String> = gateway
            .access_log_lines()
            .iter()
            .filter(|l| l["status"] != 200)
            .map(|l| format!("{} {}", l["status"], l["reason"]))
            .collect();
        panic!(
            "all 200; the others, by status (0: no answer): {:?}; the gateway's reasons: {reasons:?}",
            first.iter().filter(|&&st| st != 200).fold(std::collections::BTreeMap::new(), |mut by, st| {
                *by.entry(st).or_insert(0) += 1;
                by
            })
        );
    }
    assert_eq!(frappe.whoami_calls(), 1, "1,000 concurrent misses make exactly one whoami call");

    frappe.clear_requests();
    for _ in 0..(10_000 / 250) {
        let batch: Vec<u16> = join_all((0..250).map(|i| {
            let req = clients[i % clients.len()].get(&url).header("authorization", &auth);
            async move {
                let resp = req.send().await.expect("gateway answers");
                let status = resp.status().as_u16();
                let _ = resp.bytes().await;
                status
            }
        }))
        .await;
        assert!(batch.iter().all(|&st| st == 200));
        frappe.clear_requests();
    }
    assert_eq!(frappe.whoami_calls(), 1, "cache hits never call whoami");
    let resp = clients[0].get(&url).header("authorization", &auth).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = frappe.last_request_to("/api/resource/ToDo").expect("reached upstream");
    assert_eq!(seen.header("x-frappe-user").as_deref(), Some(USER));
    let hit = gateway.wait_for_access_log(|l| l["auth"] == "hit", Duration::from_secs(5)).await.unwrap();
    assert_eq!(hit["user"], USER);
    // Shortened with a fingerprint by default (`log.full_api_key = false`).
    let logged = hit["api_key"].as_str().expect("api_key");
    assert!(logged.starts_with(&KEY[..4]) && logged.contains('#') && !logged.contains(KEY), "{logged}");
}
