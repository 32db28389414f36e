//! Policy end to end (issue 4): client IP through trusted proxies, allowlists, rate limits,
//! lockouts and DocType / RPC rules, with the real gateway binary over TLS in front of the fake.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::future::join_all;

const USER: &str = "api.user@example.com";
const KEY: &str = "0a1b2c3d4e5f607";
const SECRET: &str = "9f8e7d6c5b4a392";

struct Setup {
    frappe: FakeFrappe,
    gateway: Gateway,
    client: reqwest::Client,
}

async fn setup(lines: &[(&str, &str)], extra: &str) -> Setup {
    let frappe = FakeFrappe::start().await;
    frappe.add_user(USER, KEY, SECRET);
    let certs = Certs::generate();
    let mut builder = ConfigBuilder::new(&frappe.url()).tls(&certs);
    for (table, line) in lines {
        builder = builder.set(table, line);
    }
    let gateway = Gateway::start(&builder.extra(extra).build(), &[]).await;
    let client = https_client(&certs.ca_pem, HttpVersion::Http2);
    Setup { frappe, gateway, client }
}

impl Setup {
    async fn get(&self, path: &str, xff: Option<&str>, auth: Option<&str>) -> reqwest::Response {
        let mut req = self.client.get(format!("{}{path}", self.gateway.base_url()));
        if let Some(xff) = xff {
            req = req.header("x-forwarded-for", xff);
        }
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        req.send().await.expect("gateway answers")
    }

    async fn status(&self, path: &str, xff: Option<&str>, auth: Option<&str>) -> u16 {
        self.get(path, xff, auth).await.status().as_u16()
    }
}

fn token() -> String {
    token_header(KEY, SECRET)
}

/// Acceptance 1: XFF is believed only from trusted proxies, right-most untrusted entry wins.
#[tokio::test]
async fn client_ip_comes_from_trusted_proxies_only() {
    let public = "[[route]]\npath = \"/__test/\"\nauth = \"public\"\nallow = [\"127.0.0.0/8\"]\n";
    let untrusted = setup(&[], public).await;
    let resp = untrusted.get("/__test/echo", Some("9.9.9.9"), None).await;
    assert_eq!(resp.status(), 200, "a spoofed XFF from an untrusted peer does not move the client");
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let seen = untrusted.frappe.last_request_to("/__test/echo").unwrap();
    assert_eq!(seen.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    let line = untrusted
        .gateway
        .wait_for_access_log(|l| l["request_id"] == rid.as_str(), Duration::from_secs(5))
        .await;
    assert_eq!(line.unwrap()["client_ip"], "127.0.0.1");

    let trusted_cfg = "[[route]]\npath = \"/__test/\"\nauth = \"public\"\nallow = [\"9.9.9.0/24\"]\n";
    let trusted =
        setup(&[("network", "trusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]")], trusted_cfg).await;
    let resp = trusted.get("/__test/echo", Some("1.2.3.4, 9.9.9.9, 10.0.0.5"), None).await;
    assert_eq!(resp.status(), 200, "the right-most untrusted address (9.9.9.9) is allowed");
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let seen = trusted.frappe.last_request_to("/__test/echo").unwrap();
    assert_eq!(seen.header_all("x-forwarded-for"), vec!["9.9.9.9"], "Frappe sees exactly the decided IP");
    let line = trusted
        .gateway
        .wait_for_access_log(|l| l["request_id"] == rid.as_str(), Duration::from_secs(5))
        .await;
    assert_eq!(line.unwrap()["client_ip"], "9.9.9.9");
    assert_eq!(
        trusted.status("/__test/echo", Some("9.9.9.9, 8.8.8.8"), None).await,
        403,
        "8.8.8.8 is not allowed"
    );
}

/// Acceptance 2: global, route and user lists and Frappe restrict_ip, IPv4 / IPv6 / mapped.
#[tokio::test]
async fn allowlists_admit_and_deny_for_ipv4_ipv6_and_mapped_addresses() {
    let extra = "[[route]]\npath = \"/__test/\"\nauth = \"public\"\nallow = [\"203.0.113.0/24\", \"2001:db8::/32\"]\n\n\
                 [[user]]\nname = \"api.user@example.com\"\nallow = [\"198.51.100.0/24\"]\n";
    let s = setup(
        &[
            ("network", "trusted_proxies = [\"127.0.0.0/8\"]"),
            ("network", "allow = [\"203.0.113.0/24\", \"198.51.100.0/24\", \"2001:db8::/32\"]"),
            ("network", "deny = [\"203.0.113.66/32\", \"2001:db8:bad::/48\"]"),
        ],
        extra,
    )
    .await;
    let cases = [
        ("203.0.113.7", 200),
        ("::ffff:203.0.113.7", 200),
        ("2001:db8::1", 200),
        ("203.0.113.66", 403),
        ("::ffff:203.0.113.66", 403),
        ("2001:db8:bad::1", 403),
        ("192.0.2.1", 403),
        ("198.51.100.9", 403),
    ];
    for (ip, want) in cases {
        let resp = s.get("/__test/echo", Some(ip), None).await;
        assert_eq!(resp.status().as_u16(), want, "{ip}");
        if want == 403 {
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(body["exc_type"], "PermissionError");
            assert!(body["exception"].as_str().unwrap().contains("Access not allowed from this IP Address"));
        }
    }
    assert_eq!(s.status("/api/resource/ToDo", Some("198.51.100.9"), Some(&token())).await, 200, "user allow");
    assert_eq!(
        s.status("/api/resource/ToDo", Some("203.0.113.7"), Some(&token())).await,
        403,
        "outside user allow"
    );
    let denied =
        s.gateway.wait_for_access_log(|l| l["reason"] == "ip in network.deny", Duration::from_secs(5)).await;
    assert!(denied.is_some(), "the operator reason is logged");
}

/// Acceptance 3: a 60/min key sending 200 at once gets exactly 60, the rest 429 with headers.
#[tokio::test]
async fn burst_of_200_on_a_60_per_minute_key_gets_exactly_60() {
    let s = setup(&[("rate_limit", "per_key = \"60/min\"")], "").await;
    let auth = token();
    assert_eq!(s.status("/api/resource/ToDo", None, Some(&auth)).await, 200); // warm the cache: 1 of 60
    let start = Instant::now();
    let responses = join_all((0..199).map(|_| s.get("/api/resource/ToDo", None, Some(&auth)))).await;
    let elapsed = start.elapsed();
    let ok = responses.iter().filter(|r| r.status() == 200).count() + 1;
    // One more request is earned every second (60/min): tolerate it only if the burst took that long.
    let earned = elapsed.as_secs() as usize;
    assert!(ok >= 60 && ok <= 60 + earned, "{ok} admitted in {elapsed:?}");
    let limited: Vec<_> = responses.iter().filter(|r| r.status() == 429).collect();
    assert_eq!(limited.len() + ok, 200);
    let h = limited[0].headers();
    assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(h["ratelimit-limit"], "60");
    assert_eq!(h["ratelimit-remaining"], "0");
    assert!(h.contains_key("ratelimit-reset"));
    let admitted = responses.iter().find(|r| r.status() == 200).unwrap();
    assert_eq!(admitted.headers()["ratelimit-limit"], "60");
}

/// Frappe finds an api_key under MariaDB's collation (trailing spaces, case and accents do not
/// count): a spelling with a space or a non-ASCII character is refused outright, and every
/// other spelling that authenticates as the user spends the user's one per-key bucket.
#[tokio::test]
async fn spellings_of_one_key_share_its_per_key_bucket() {
    let s = setup(&[("rate_limit", "per_key = \"2/min\"")], "").await;
    for _ in 0..2 {
        assert_eq!(s.status("/api/resource/ToDo", None, Some(&token())).await, 200);
    }
    assert_eq!(s.status("/api/resource/ToDo", None, Some(&token())).await, 429);
    let upper = basic_header(&KEY.to_uppercase(), SECRET);
    assert_eq!(s.status("/api/resource/ToDo", None, Some(&upper)).await, 429, "upper case");
    let whoami_calls = s.frappe.whoami_calls();
    for spelling in [format!("{KEY} "), format!("{KEY}   ")] {
        let auth = basic_header(&spelling, SECRET);
        assert_eq!(s.status("/api/resource/ToDo", None, Some(&auth)).await, 401, "{spelling:?}");
    }
    assert_eq!(s.frappe.whoami_calls(), whoami_calls, "refused without asking Frappe");
}

/// An IPv6 client's /64 is one per-IP subject: rotating addresses inside it gains nothing.
#[tokio::test]
async fn ipv6_clients_are_limited_by_their_64() {
    let s = setup(
        &[("rate_limit", "per_ip = \"2/min\""), ("network", "trusted_proxies = [\"127.0.0.0/8\"]")],
        "",
    )
    .await;
    let auth = token();
    for ip in ["2001:db8:1:2::1", "2001:db8:1:2:ffff::7"] {
        assert_eq!(s.status("/api/resource/ToDo", Some(ip), Some(&auth)).await, 200, "{ip}");
    }
    assert_eq!(s.status("/api/resource/ToDo", Some("2001:db8:1:2::99"), Some(&auth)).await, 429);
    assert_eq!(
        s.status("/api/resource/ToDo", Some("2001:db8:1:3::1"), Some(&auth)).await,
        200,
        "another /64"
    );
}

/// Acceptance 3 (route override) and the pre-auth per-IP limit.
#[tokio::test]
async fn per_ip_limits_apply_before_authentication_and_routes_override_them() {
    let extra = "[[route]]\npath = \"/api/method/login\"\nauth = \"public\"\nper_ip = \"3/min\"\n";
    let s = setup(&[("rate_limit", "per_ip = \"20/min\"")], extra).await;
    for i in 0..3 {
        assert_ne!(s.status("/api/method/login", None, None).await, 429, "login {i}");
    }
    assert_eq!(s.status("/api/method/login", None, None).await, 429, "the route's own 3/min");
    let wrong = token_header(KEY, "000000000000000");
    let before = s.frappe.whoami_calls();
    let statuses = join_all((0..25).map(|_| s.status("/api/resource/ToDo", None, Some(&wrong)))).await;
    assert!(statuses.contains(&429), "per-IP limit reached: {statuses:?}");
    assert!(s.frappe.whoami_calls() - before <= 1);
}

/// Acceptance 4: 30 wrong secrets lock the IP out; even a valid key then gets 429, no whoami.
#[tokio::test]
async fn repeated_failures_lock_the_ip_out() {
    let s =
        setup(&[("rate_limit", "failed_auth_per_ip = \"20/min\""), ("rate_limit", "lockout = \"10m\"")], "")
            .await;
    for i in 0..30 {
        let wrong = token_header(KEY, &format!("{i:015}"));
        let status = s.status("/api/resource/ToDo", None, Some(&wrong)).await;
        assert!(status == 401 || status == 429, "{status}");
    }
    let before = s.frappe.whoami_calls();
    let resp = s.get("/api/resource/ToDo", None, Some(&token())).await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(s.frappe.whoami_calls(), before, "a locked-out IP never reaches Frappe");
    let starts = s.gateway.stderr_text().lines().filter(|l| l.contains("lockout started")).count();
    assert_eq!(starts, 1, "the lockout start is logged once:\n{}", s.gateway.stderr_text());
}

/// Acceptance 8: DocType and RPC rules; deny routes cover every spelling of a path.
#[tokio::test]
async fn doctype_and_rpc_rules_and_deny_aliases() {
    let extra = "[[user]]\nname = \"api.user@example.com\"\ndoctypes = [\"ToDo\"]\nrpc = [\"frappe.client.get_list\"]\n\n\
                 [[route]]\npath = \"/api/method/frappe.client.get_password\"\nauth = \"deny\"\n";
    let s = setup(&[], extra).await;
    let auth = token();
    for path in ["/api/resource/ToDo", "/api/v2/document/ToDo"] {
        assert_eq!(s.status(path, None, Some(&auth)).await, 200, "{path}");
    }
    // The fake has no such document: Frappe's own 404 proves the gateway let the call through.
    assert_eq!(s.status("/api/resource/ToDo/abc123", None, Some(&auth)).await, 404);
    let resp = s.get("/api/resource/Sales%20Invoice", None, Some(&auth)).await;
    assert_eq!(resp.status(), 403);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["exception"].as_str().unwrap().contains("Sales Invoice"), "{body}");
    assert_ne!(s.status("/api/method/frappe.client.get_list", None, Some(&auth)).await, 403);
    let resp = s.get("/api/method/frappe.client.get_count", None, Some(&auth)).await;
    assert_eq!(resp.status(), 403);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["exception"].as_str().unwrap().contains("frappe.client.get_count"));
    let line =
        s.gateway.wait_for_access_log(|l| l["doctype"] == "Sales Invoice", Duration::from_secs(5)).await;
    assert!(line.is_some(), "the DocType is logged");
    assert!(s
        .gateway
        .wait_for_access_log(|l| l["rpc"] == "frappe.client.get_count", Duration::from_secs(5))
        .await
        .is_some());

    s.frappe.clear_requests();
    for path in [
        "/api/method/frappe.client.get_password",
        "/api/v1/method/frappe.client.get_password",
        "/api/v2/method/frappe.client.get_password",
        "/api/method/frappe.client.get%5Fpassword",
        "//api/method/frappe.client.get_password",
        "/?cmd=frappe.client.get_password",
    ] {
        assert_eq!(s.status(path, None, Some(&auth)).await, 403, "{path}");
    }
    assert!(s.frappe.requests().is_empty(), "denied paths never reach Frappe");
}
