//! Administrator end to end: the user Frappe hides from the sync user. The real gateway over
//! TLS in front of the fake Frappe, which — like Frappe 15.44 — leaves Administrator out of a
//! System Manager's User list and answers 403 to reading `User/Administrator` as anyone else.

mod common;

use base64::Engine as _;
use common::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;

const ADMIN: &str = "Administrator";
const ADMIN_KEY: &str = "adadadadadadada";
const ADMIN_SECRET: &str = "5a5a5a5a5a5a5a5";
const SYNC_USER: &str = "gateway-sync@example.com";
const SYNC_KEY: &str = "5e5e5e5e5e5e5e5";
const SYNC_SECRET: &str = "7a7a7a7a7a7a7a7";
const WEBHOOK_SECRET: &str = "whsec-admin-e2e-test";

struct Setup {
    frappe: FakeFrappe,
    _certs: Certs,
    gateway: Gateway,
    client: reqwest::Client,
}

/// Administrator with keys, a System Manager sync user, and a gateway with `lines` set.
async fn setup(lines: &[(&str, &str)]) -> Setup {
    let frappe = FakeFrappe::start().await;
    frappe.add_user(ADMIN, ADMIN_KEY, ADMIN_SECRET);
    frappe.add_sync_user(SYNC_USER, SYNC_KEY, SYNC_SECRET);
    let certs = Certs::generate();
    let mut builder = ConfigBuilder::new(&frappe.url()).tls(&certs);
    for (table, line) in lines {
        builder = builder.set(table, line);
    }
    let sync_token = format!("{SYNC_KEY}:{SYNC_SECRET}");
    let envs = [("GATEWAY_SYNC_TOKEN", sync_token.as_str()), ("GATEWAY_WEBHOOK_SECRET", WEBHOOK_SECRET)];
    let gateway = Gateway::start(&builder.build(), &envs).await;
    let client = https_client(&certs.ca_pem, HttpVersion::Http2);
    Setup { frappe, _certs: certs, gateway, client }
}

impl Setup {
    async fn admin_request(&self) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .get(format!("{}/api/resource/ToDo", self.gateway.base_url()))
            .header("authorization", token_header(ADMIN_KEY, ADMIN_SECRET))
            .send()
            .await
            .expect("gateway answers");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or_default())
    }

    /// Frappe's User webhook for Administrator, signed; returns the admin listener's JSON.
    async fn webhook_for_admin(&self) -> serde_json::Value {
        let body = format!(r#"{{"name":"{ADMIN}"}}"#);
        let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let resp = http_client()
            .post(format!("{}/hooks/frappe", self.gateway.admin_url()))
            .header("x-frappe-webhook-signature", signature)
            .body(body)
            .send()
            .await
            .expect("admin answers");
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }
}

fn message(body: &serde_json::Value) -> String {
    body["exception"].as_str().unwrap_or_default().to_string()
}

/// Default config: Administrator's valid key is refused with 403 after at most one whoami,
/// never counts towards the lockout, and a webhook for it logs no misleading advice.
#[tokio::test]
async fn administrator_is_refused_by_default_after_one_whoami() {
    let s = setup(&[("rate_limit", "failed_auth_per_ip = \"2/min\"")]).await;
    for _ in 0..6 {
        let (status, body) = s.admin_request().await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["exc_type"], "PermissionError");
        assert!(
            message(&body).contains("the Administrator account cannot be used through the API gateway"),
            "{body}"
        );
    }
    assert!(s.frappe.whoami_calls() <= 1, "whoami calls: {}", s.frappe.whoami_calls());
    assert_eq!(s.frappe.user_get_calls(), 0, "its record is not read when it is refused anyway");
    let line = s
        .gateway
        .wait_for_access_log(|l| l["auth"] == "administrator", Duration::from_secs(5))
        .await
        .expect("logged");
    assert!(line["reason"].as_str().unwrap().contains("auth.allow_administrator = false"), "{line}");

    let answer = s.webhook_for_admin().await;
    assert_eq!(answer, serde_json::json!({"revoked": ADMIN, "refreshed": false}));
    let note = s
        .gateway
        .wait_for_log(
            |l| log_message(l).is_some_and(|m| m.contains("Frappe hides this user from the sync user")),
            Duration::from_secs(5),
        )
        .await
        .expect("the webhook says why Administrator is not re-read");
    assert!(log_message(&note).unwrap().contains("refused at the gateway"), "{note}");
    assert_eq!(s.frappe.user_get_calls(), 0, "no sync-token read of User/Administrator");
    let stderr = s.gateway.stderr_text();
    assert!(!stderr.contains("System Manager role"), "no misleading advice:\n{stderr}");
    assert!(!stderr.contains(ADMIN_SECRET));
}

/// `allow_administrator = true`: its own record, read with its own key, decides — restrict_ip
/// is enforced, a change arrives with the webhook, and a disabled Administrator is refused.
#[tokio::test]
async fn an_allowed_administrator_is_held_to_its_own_restrict_ip_and_enabled() {
    let s = setup(&[("auth", "allow_administrator = true"), ("frappe", "sync_interval = \"1s\"")]).await;
    s.frappe.set_restrict_ip(ADMIN, Some("10.1.2.3"));
    let (status, body) = s.admin_request().await;
    assert_eq!(status, 403, "{body}");
    assert!(message(&body).contains("Access not allowed from this IP Address"), "{body}");
    let read = s.frappe.last_request_to("/api/resource/User/Administrator").expect("self-read");
    let admin_token = token_header(ADMIN_KEY, ADMIN_SECRET);
    assert_eq!(read.header("authorization").as_deref(), Some(admin_token.as_str()), "its own key");
    assert_eq!((s.frappe.whoami_calls(), s.frappe.user_get_calls()), (1, 1));
    assert_eq!(s.admin_request().await.0, 403, "cached with its restrict_ip");
    assert_eq!((s.frappe.whoami_calls(), s.frappe.user_get_calls()), (1, 1));

    s.frappe.set_restrict_ip(ADMIN, Some("127.0.0.1"));
    assert_eq!(s.webhook_for_admin().await["refreshed"], false);
    let (status, body) = s.admin_request().await;
    assert_eq!(status, 200, "the webhook dropped it; the next request read the new record: {body}");
    let seen = s.frappe.last_request_to("/api/resource/ToDo").expect("forwarded");
    assert_eq!(seen.header("x-frappe-user").as_deref(), Some(ADMIN));

    s.frappe.set_enabled(ADMIN, false);
    s.webhook_for_admin().await;
    let (status, body) = s.admin_request().await;
    assert_eq!((status, body["exc_type"].as_str()), (401, Some("AuthenticationError")), "{body}");
    assert!(message(&body).contains("this user is disabled in Frappe"), "{body}");

    s.gateway
        .wait_for_log(
            |l| log_message(l).is_some_and(|m| m.contains("verified by self-read")),
            Duration::from_secs(5),
        )
        .await
        .expect("the log says which users are verified by self-read");
    let stderr = s.gateway.stderr_text();
    assert!(!stderr.contains("System Manager role"), "no misleading advice:\n{stderr}");
}

/// Fail closed: when Administrator's own record cannot be read, 503 and nothing cached.
#[tokio::test]
async fn a_failed_self_read_is_503_and_not_cached() {
    let s = setup(&[("auth", "allow_administrator = true")]).await;
    s.frappe.set_users_mode(UsersMode::Status500);
    let (status, body) = s.admin_request().await;
    assert_eq!((status, body["exc_type"].as_str()), (503, Some("ServiceUnavailableError")), "{body}");
    s.frappe.set_users_mode(UsersMode::Normal);
    assert_eq!(s.admin_request().await.0, 200, "the failure was not cached");
    assert_eq!(s.frappe.whoami_calls(), 2);
}
