//! Token authentication end to end (issue 3): the real gateway binary over TLS in front of the
//! Frappe-compatible fake, which counts whoami calls.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const USER: &str = "api.user@example.com";
const KEY: &str = "0a1b2c3d4e5f607";
const SECRET: &str = "9f8e7d6c5b4a392";
const SYNC_USER: &str = "gateway-sync@example.com";
const SYNC_KEY: &str = "5e5e5e5e5e5e5e5";
const SYNC_SECRET: &str = "7a7a7a7a7a7a7a7";
const WEBHOOK_SECRET: &str = "whsec-4b1d-e2e-test";

struct Setup {
    frappe: FakeFrappe,
    _certs: Certs,
    gateway: Gateway,
    client: reqwest::Client,
}

/// A fake with one integration user and a sync user, and a gateway with `lines` added to
/// its tables (`("auth", "cache_ttl = \"1s\"")`) and `extra` appended.
async fn setup(lines: &[(&str, &str)], extra: &str) -> Setup {
    let frappe = FakeFrappe::start().await;
    frappe.add_user(USER, KEY, SECRET);
    frappe.add_sync_user(SYNC_USER, SYNC_KEY, SYNC_SECRET);
    let certs = Certs::generate();
    let mut builder = ConfigBuilder::new(&frappe.url()).tls(&certs);
    for (table, line) in lines {
        builder = builder.set(table, line);
    }
    let sync_token = format!("{SYNC_KEY}:{SYNC_SECRET}");
    let envs = [("GATEWAY_SYNC_TOKEN", sync_token.as_str()), ("GATEWAY_WEBHOOK_SECRET", WEBHOOK_SECRET)];
    let gateway = Gateway::start(&builder.extra(extra).build(), &envs).await;
    let client = https_client(&certs.ca_pem, HttpVersion::Http2);
    Setup { frappe, _certs: certs, gateway, client }
}

impl Setup {
    async fn get(&self, path: &str, authorization: Option<&str>) -> reqwest::Response {
        let mut req = self.client.get(format!("{}{path}", self.gateway.base_url()));
        if let Some(value) = authorization {
            req = req.header("authorization", value);
        }
        req.send().await.expect("gateway answers")
    }

    async fn status(&self, authorization: &str) -> u16 {
        self.get("/api/resource/ToDo", Some(authorization)).await.status().as_u16()
    }

    /// Polls until `authorization` gets `want`, returning how long that took.
    async fn wait_for_status(&self, authorization: &str, want: u16, deadline: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < deadline {
            if self.status(authorization).await == want {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Waits until /readyz reports a successful user sync.
    async fn wait_for_first_sync(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let url = format!("{}/readyz", self.gateway.admin_url());
            let ready: serde_json::Value = http_client().get(url).send().await.unwrap().json().await.unwrap();
            if ready["sync"]["last_success_age_seconds"].is_number() {
                return;
            }
            assert!(Instant::now() < deadline, "no successful sync: {ready}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn webhook(&self, body: &str, signature: Option<String>) -> reqwest::Response {
        let mut req = http_client()
            .post(format!("{}/hooks/frappe", self.gateway.admin_url()))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(sig) = signature {
            req = req.header("x-frappe-webhook-signature", sig);
        }
        req.send().await.expect("admin answers")
    }
}

fn sign(secret: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

async fn json(resp: reqwest::Response) -> serde_json::Value {
    resp.json().await.expect("a JSON body")
}

/// Acceptance 3: a wrong secret is asked once; the retries are refused from memory.
#[tokio::test]
async fn wrong_secret_is_verified_once_then_refused_from_the_negative_cache() {
    let s = setup(&[], "").await;
    let auth = token_header(KEY, "000000000000000");
    for _ in 0..100 {
        let resp = s.get("/api/resource/ToDo", Some(&auth)).await;
        assert_eq!(resp.status(), 401);
        let body = json(resp).await;
        assert_eq!(body["exc_type"], "AuthenticationError");
        assert!(body["request_id"].is_string());
    }
    assert!(s.frappe.whoami_calls() <= 1, "whoami calls: {}", s.frappe.whoami_calls());
    let negative =
        s.gateway.wait_for_access_log(|l| l["auth"] == "negative-hit", Duration::from_secs(5)).await;
    assert!(negative.is_some(), "negative hits are logged as such");
}

/// Acceptance 4: sync revokes a disabled user and a regenerated secret within 2 s.
#[tokio::test]
async fn sync_revokes_disabled_users_and_regenerated_secrets() {
    let s = setup(&[("frappe", "sync_interval = \"1s\"")], "").await;
    let auth = token_header(KEY, SECRET);
    assert_eq!(s.status(&auth).await, 200);

    s.frappe.set_enabled(USER, false);
    let took = s.wait_for_status(&auth, 401, Duration::from_secs(2)).await;
    assert!(took.is_some(), "a disabled user's key must be refused within 2 s of the change");
    let body = json(s.get("/api/resource/ToDo", Some(&auth)).await).await;
    assert_eq!(body["exc_type"], "AuthenticationError");

    s.frappe.set_enabled(USER, true);
    assert!(
        s.wait_for_status(&auth, 200, Duration::from_secs(3)).await.is_some(),
        "re-enabled user admitted"
    );
    let new_secret = s.frappe.regenerate_secret(USER);
    assert!(
        s.wait_for_status(&auth, 401, Duration::from_secs(2)).await.is_some(),
        "old secret refused within 2 s"
    );
    assert_eq!(s.status(&token_header(KEY, &new_secret)).await, 200, "the new secret is admitted");
}

/// Acceptance 5: a signed webhook revokes at once (no sync in between); a bad one changes nothing.
#[tokio::test]
async fn signed_webhook_revokes_in_milliseconds_and_bad_signatures_are_refused() {
    let s = setup(&[("frappe", "sync_interval = \"1h\"")], "").await;
    let auth = token_header(KEY, SECRET);
    assert_eq!(s.status(&auth).await, 200);
    // Frappe 15.44's whoami still accepts a disabled user's key: only the webhook's refresh
    // of the user record can refuse it.
    s.frappe.set_enabled(USER, false);
    let body = format!(r#"{{"name":"{USER}"}}"#);

    let bad = s.webhook(&body, Some(sign("not-the-secret", &body))).await;
    assert_eq!(bad.status(), 401);
    let missing = s.webhook(&body, None).await;
    assert_eq!(missing.status(), 401);
    assert_eq!(s.status(&auth).await, 200, "a badly signed webhook revokes nothing");
    let whoami_before = s.frappe.whoami_calls();
    assert!(s.gateway.stderr_text().contains("bad or missing signature"), "refusals are logged");

    let start = Instant::now();
    let good = s.webhook(&body, Some(sign(WEBHOOK_SECRET, &body))).await;
    assert_eq!(good.status(), 200);
    assert_eq!(s.status(&auth).await, 401);
    let took = start.elapsed();
    assert!(took < Duration::from_millis(200), "revoked in {took:?}");
    assert!(s.frappe.whoami_calls() <= whoami_before + 1);
}

/// A webhook whose user cannot be read back is answered 503, so that Frappe sends it again
/// (its webhook job retries only on an error status); the user's cached credentials are
/// dropped all the same.
#[tokio::test]
async fn a_webhook_that_cannot_refresh_the_user_is_answered_503() {
    let s = setup(&[("frappe", "sync_interval = \"1h\"")], "").await;
    let auth = token_header(KEY, SECRET);
    assert_eq!(s.status(&auth).await, 200);
    let whoami_before = s.frappe.whoami_calls();
    s.frappe.set_users_mode(UsersMode::Status500);
    let body = format!(r#"{{"name":"{USER}"}}"#);
    let answer = s.webhook(&body, Some(sign(WEBHOOK_SECRET, &body))).await;
    assert_eq!(answer.status(), 503);
    assert_eq!(s.status(&auth).await, 200, "verified again after the drop");
    assert_eq!(s.frappe.whoami_calls(), whoami_before + 1, "the cached credential was dropped");
    s.frappe.set_users_mode(UsersMode::Normal);
    assert_eq!(s.webhook(&body, Some(sign(WEBHOOK_SECRET, &body))).await.status(), 200);
}

/// Acceptance 6: Frappe unreachable → 503 for unknown keys, stale entries keep working.
#[tokio::test]
async fn frappe_down_means_503_for_unknown_keys_and_stale_service_for_known_ones() {
    let s = setup(
        &[
            ("auth", "cache_ttl = \"1s\""),
            ("auth", "stale_if_error = \"1h\""),
            ("frappe", "verify_timeout = \"500ms\""),
        ],
        "",
    )
    .await;
    // The first user sync counts as a change for keys verified before it (conservative: a
    // secret regenerated before the sync is only caught that way), so verify after it.
    s.wait_for_first_sync().await;
    let known = token_header(KEY, SECRET);
    assert_eq!(s.status(&known).await, 200);
    s.frappe.add_user("new.user@example.com", "abcabcabcabcabc", "defdefdefdefdef");
    tokio::time::sleep(Duration::from_millis(1200)).await; // past cache_ttl: re-verification needed

    s.frappe.set_whoami_mode(WhoamiMode::Hang);
    let unknown = token_header("abcabcabcabcabc", "defdefdefdefdef");
    let resp = s.get("/api/resource/ToDo", Some(&unknown)).await;
    assert_eq!(resp.status(), 503, "cannot verify now is 503, not 401");
    assert_eq!(json(resp).await["exc_type"], "ServiceUnavailableError");
    assert_eq!(s.status(&known).await, 200, "a key verified within stale_if_error keeps working");
    assert!(s.gateway.wait_for_access_log(|l| l["auth"] == "stale", Duration::from_secs(5)).await.is_some());

    s.frappe.set_whoami_mode(WhoamiMode::Status500);
    assert_eq!(s.status(&unknown).await, 503);
    s.frappe.set_whoami_mode(WhoamiMode::Normal);
    assert_eq!(s.status(&unknown).await, 200, "503s are not cached");
}

/// Acceptance 7: each malformed header gets Frappe's status and a helpful message.
#[tokio::test]
async fn malformed_headers_get_frappes_status_and_a_helpful_message() {
    let s = setup(&[], "").await;
    let basic = basic_header(KEY, SECRET);
    let cases: Vec<(Option<String>, u16)> = vec![
        (None, 401),
        (Some(String::new()), 401),
        (Some("token".into()), 401),
        (Some(format!("token  {KEY}:{SECRET}")), 401),
        (Some(format!("token {KEY}{SECRET}")), 401),
        (Some(format!("token {KEY}:{SECRET}:extra")), 401),
        (Some(format!("token {KEY}:")), 401),
        (Some("Digest abc".into()), 401),
        (Some("Basic !!notbase64!!".into()), 400),
        (Some(format!("Token {KEY}:{SECRET}")), 200),
        (Some(format!("TOKEN {KEY}:{SECRET}")), 200),
        (Some(format!("token {}:{SECRET}", KEY.to_uppercase())), 200),
        (Some(basic), 200),
    ];
    for (header, want) in cases {
        let resp = s.get("/api/resource/ToDo", header.as_deref()).await;
        assert_eq!(resp.status().as_u16(), want, "header {header:?}");
        if want != 200 {
            let body = json(resp).await;
            let text = body.to_string();
            assert!(!text.contains(SECRET), "the secret is never echoed: {text}");
            let expected = if want == 400 { "InvalidAuthorizationToken" } else { "AuthenticationError" };
            assert_eq!(body["exc_type"], expected, "{header:?}");
            let messages: Vec<String> =
                serde_json::from_str(body["_server_messages"].as_str().unwrap()).unwrap();
            assert!(!messages[0].is_empty());
        }
    }
    let missing = json(s.get("/api/resource/ToDo", None).await).await;
    assert!(missing["exception"].as_str().unwrap().contains("Authorization: token api_key:api_secret"));

    s.frappe.add_bearer("bearer-token-e2e-1", USER);
    assert_eq!(s.status("Bearer bearer-token-e2e-1").await, 200);
    let calls = s.frappe.whoami_calls();
    assert_eq!(s.status("Bearer bearer-token-e2e-1").await, 200);
    assert_eq!(s.frappe.whoami_calls(), calls, "bearer tokens are cached too");
    assert_eq!(s.status("Bearer unknown-bearer-e2e").await, 401);

    let preflight = s
        .client
        .request(reqwest::Method::OPTIONS, format!("{}/api/resource/ToDo", s.gateway.base_url()))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_ne!(preflight.status(), 401, "CORS preflight needs no credentials");
}

/// Acceptance 8: restrict_ip, [[user]] allow / methods, disabled users, cookies and sid.
#[tokio::test]
async fn user_policies_and_session_stripping() {
    let extra = "[[user]]\nname = \"ip.user@example.com\"\nallow = [\"10.0.0.0/8\"]\n\n\
                 [[user]]\nname = \"get.only@example.com\"\nmethods = [\"GET\"]\n\n\
                 [[route]]\npath = \"/public/\"\nauth = \"public\"\n";
    let s = setup(&[("frappe", "sync_interval = \"1s\"")], extra).await;
    let auth = token_header(KEY, SECRET);
    for (restrict, want) in [
        ("127.0.0", 200),
        ("10.1.2.3", 403),
        ("127.0.0.0/8", 200),
        ("10.0.0.0/8, , 127.0.0.1", 200),
        ("10.9.9.9,", 403),
    ] {
        s.frappe.set_restrict_ip(USER, Some(restrict));
        let took = s.wait_for_status(&auth, want, Duration::from_secs(4)).await;
        assert!(took.is_some(), "restrict_ip {restrict:?} should give {want}");
        if want == 403 {
            let body = json(s.get("/api/resource/ToDo", Some(&auth)).await).await;
            assert!(body["exception"].as_str().unwrap().contains("Access not allowed from this IP Address"));
        }
    }
    s.frappe.set_restrict_ip(USER, None);
    assert!(s.wait_for_status(&auth, 200, Duration::from_secs(4)).await.is_some());

    s.frappe.add_user("ip.user@example.com", "111111111111111", "222222222222222");
    assert_eq!(s.status(&token_header("111111111111111", "222222222222222")).await, 403);
    s.frappe.add_user("get.only@example.com", "333333333333333", "444444444444444");
    let get_only = token_header("333333333333333", "444444444444444");
    assert_eq!(s.status(&get_only).await, 200);
    let post = s
        .client
        .post(format!("{}/api/resource/ToDo", s.gateway.base_url()))
        .header("authorization", &get_only)
        .json(&serde_json::json!({"description": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 403);

    let with_cookie = s
        .client
        .get(format!("{}/api/resource/ToDo?x=1", s.gateway.base_url()))
        .header("authorization", &auth)
        .header("cookie", "sid=abcdef0123456789")
        .header("x-frappe-user", "Administrator")
        .send()
        .await
        .unwrap();
    assert_eq!(with_cookie.status(), 200);
    let seen = s.frappe.last_request_to("/api/resource/ToDo").unwrap();
    assert_eq!(seen.header("cookie"), None, "cookies never ride along on token routes");
    assert_eq!(seen.header("x-frappe-user").as_deref(), Some(USER));
    assert_eq!(s.get("/api/resource/ToDo?sid=abcdef0123456789", Some(&auth)).await.status(), 400);

    let public = s
        .client
        .get(format!("{}/public/page", s.gateway.base_url()))
        .header("cookie", "sid=abcdef0123456789")
        .send()
        .await
        .unwrap();
    assert!(public.status().as_u16() < 500);
    assert_eq!(
        s.frappe.last_request_to("/public/").unwrap().header("cookie").as_deref(),
        Some("sid=abcdef0123456789")
    );

    s.frappe.set_enabled(USER, false);
    assert!(s.wait_for_status(&auth, 401, Duration::from_secs(3)).await.is_some(), "disabled user refused");
}

/// The admin listener reports what authentication did: Prometheus counters and the sync age.
#[tokio::test]
async fn metrics_and_readiness_report_authentication() {
    let s = setup(&[("frappe", "sync_interval = \"1s\"")], "").await;
    // Keys verified before the first sync are verified again after it (see README).
    s.gateway.wait_ready(Duration::from_secs(10)).await;
    let auth = token_header(KEY, SECRET);
    assert_eq!(s.status(&auth).await, 200);
    assert_eq!(s.status(&auth).await, 200);
    assert_eq!(s.status(&token_header(KEY, "000000000000000")).await, 401);
    // A request is counted when its access-log line is written.
    let counted = s.gateway.wait_for_access_log(|l| l["status"] == 401, Duration::from_secs(5)).await;
    assert!(counted.is_some(), "the refused request was logged");
    let metrics = http_client().get(format!("{}/metrics", s.gateway.admin_url())).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    assert!(text.contains("gateway_auth_total{outcome=\"hit\"} 1"), "{text}");
    assert!(text.contains("gateway_auth_total{outcome=\"miss-verified\"} 1"), "{text}");
    assert!(text.contains("gateway_requests_total{decision=\"deny\",status=\"4xx\"} 1"), "{text}");
    assert!(!text.contains(SECRET));
    let ready: serde_json::Value = http_client()
        .get(format!("{}/readyz", s.gateway.admin_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    assert!(ready["sync"]["last_success_age_seconds"].is_number(), "{ready}");
}

/// Sync failures are logged with their reason, retried, and turn readiness off when stale.
#[tokio::test]
async fn sync_failures_are_logged_with_the_reason_and_retried() {
    let s = setup(&[("frappe", "sync_interval = \"1s\"")], "").await;
    let first = |l: &serde_json::Value| l["message"] == "credential sync failed";
    s.frappe.set_users_mode(UsersMode::Status401);
    let failed =
        s.gateway.wait_for_log(first, Duration::from_secs(5)).await.expect("a sync failure is logged");
    assert!(failed["error"].as_str().unwrap().contains("401"), "the reason names Frappe's answer: {failed}");
    assert!(failed["retry_in"].is_string(), "and when it retries: {failed}");
    assert!(!s.gateway.stderr_text().contains(SYNC_SECRET));
    let before = s.frappe.user_list_calls();
    s.frappe.set_users_mode(UsersMode::Normal);
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.frappe.user_list_calls() == before {
        assert!(Instant::now() < deadline, "sync is retried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A user without API keys (OAuth only) is not in sync's list of keyed users; the gateway reads
/// it when its bearer token is first verified, then asks for it by name with every sync: its
/// `restrict_ip` applies from the first request, and disabling it is noticed by sync alone and
/// not undone by the next sync after a webhook.
#[tokio::test]
async fn oauth_only_users_are_followed_by_sync() {
    const OAUTH_USER: &str = "oauth.only@example.com";
    const TOKEN: &str = "Bearer 7f3a9c1e5b2d4f6a8c0e";
    let s = setup(&[("frappe", "sync_interval = \"300ms\"")], "").await;
    s.frappe.add_user_without_keys(OAUTH_USER);
    s.frappe.add_bearer(&TOKEN["Bearer ".len()..], OAUTH_USER);
    s.frappe.set_restrict_ip(OAUTH_USER, Some("10.20.0.0/16"));
    s.wait_for_first_sync().await;

    // Refused from the first request: 127.0.0.1 is outside its restrict_ip.
    assert_eq!(s.status(TOKEN).await, 403);
    let body = json(s.get("/api/resource/ToDo", Some(TOKEN)).await).await;
    assert!(body["exception"].as_str().unwrap().contains("Access not allowed from this IP Address"));
    let reads = s.frappe.user_get_calls();
    assert!(reads >= 1, "the user was read when its token was first verified");

    // Sync follows it by name: a widened restrict_ip is seen without a webhook.
    s.frappe.set_restrict_ip(OAUTH_USER, Some("127.0.0.1"));
    assert!(s.wait_for_status(TOKEN, 200, Duration::from_secs(3)).await.is_some(), "restrict_ip widened");
    let asked_by_name = s.frappe.requests().iter().any(|r| {
        let query = r.uri.query().unwrap_or_default();
        let query = percent_encoding::percent_decode_str(query).decode_utf8_lossy();
        r.path() == "/api/resource/User" && query.contains(r#"[["name","in",["oauth.only@example.com"]]]"#)
    });
    assert!(asked_by_name, "sync asks for the user by name");

    // Disabled (Frappe still accepts its token): refused after a sync, and kept refused by
    // every later sync.
    s.frappe.set_enabled(OAUTH_USER, false);
    assert!(s.wait_for_status(TOKEN, 401, Duration::from_secs(3)).await.is_some(), "disabled user refused");
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(s.status(TOKEN).await, 401, "still refused after later syncs");

    // Re-enabled, then disabled through the webhook: the next syncs keep it refused.
    s.frappe.set_enabled(OAUTH_USER, true);
    assert!(s.wait_for_status(TOKEN, 200, Duration::from_secs(3)).await.is_some(), "re-enabled");
    s.frappe.set_enabled(OAUTH_USER, false);
    let body = format!(r#"{{"name":"{OAUTH_USER}"}}"#);
    assert_eq!(s.webhook(&body, Some(sign(WEBHOOK_SECRET, &body))).await.status(), 200);
    assert_eq!(s.status(TOKEN).await, 401);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(s.status(TOKEN).await, 401, "still refused after the syncs that followed the webhook");

    // Deleted: its token stops working in Frappe too; the gateway forgets the user.
    s.frappe.delete_user(OAUTH_USER);
    assert!(s.wait_for_status(TOKEN, 401, Duration::from_secs(3)).await.is_some());
}
