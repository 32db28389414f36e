//! Tests of the test harness itself: the fake Frappe replays the recorded Frappe v15
//! transcripts (same status, exc_type, body shape and cookies), its counters, fault modes and
//! test endpoints work, and the certificate / client / gateway-process helpers behave.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use common::transcript::{self, Transcript};
use common::{token_header, FakeFrappe, UsersMode, WhoamiMode};

// ===== transcript replay ==================================================================

/// Transcripts the fake cannot answer faithfully, with the reason.
const SKIP: &[(&str, &str)] = &[(
    "09g-activity-log-ip-addresses",
    "Activity Log rows are written by Frappe's login bookkeeping, which the fake does not keep",
)];

// Placeholder values (15 lowercase hex, like Frappe's generate_hash(15)).
const KEY: &str = "3f9a1c07b2e4d58";
const SECRET: &str = "a71c3e95d20b4f6";
const SECRET_NEW: &str = "0be5d7c92f1a834";
const KEY_ADMIN: &str = "c4d2e8f1a9b3760";
const SECRET_ADMIN: &str = "5e0f9a2b7c1d843";
const KEY_IPUSER: &str = "8b1e4c7d0a2f963";
const SECRET_IPUSER: &str = "e2a9c5b8f1d0437";
const KEY_XFFUSER: &str = "6d3b0e9a4c7f215";
const SECRET_XFFUSER: &str = "f5c8a1d4e7b0326";
const API_USER: &str = "api.user@example.com";

/// The site state each capture was taken in (see the transcripts README, "Order").
struct Scenario {
    /// generate_keys ran again: 05d on, 11*, 12*.
    regenerated: bool,
    /// api.user saved with enabled=0: 05a, 05b, 05f–05i.
    disabled: bool,
    /// System Settings allow_error_traceback=0: 11*.
    no_traceback: bool,
    /// An Administrator cookie session exists and `SID` names it: 10d–10g.
    admin_session: bool,
    todos: Vec<Value>,
}

fn scenario(name: &str) -> Scenario {
    let prefix = |list: &[&str]| list.iter().any(|p| name.starts_with(p));
    let todos = match &name[..3] {
        "05h" => vec![
            json!({"name": "ql464ass07", "owner": API_USER, "description": "created through token auth"}),
            json!({"name": "ql4giu86m8", "owner": "Administrator", "description": "cookie post"}),
        ],
        "08d" => vec![
            json!({"name": "ql464ass07", "owner": API_USER, "description": "created through token auth"}),
        ],
        _ => vec![],
    };
    Scenario {
        regenerated: prefix(&["05d", "05e", "05f", "05g", "05h", "05i", "11", "12"]),
        disabled: prefix(&["05a", "05b", "05f", "05g", "05h", "05i"]),
        no_traceback: prefix(&["11"]),
        admin_session: prefix(&["10d", "10e", "10f", "10g"]),
        todos,
    }
}

/// A fake seeded like the real site was for this capture, and the placeholder values.
async fn seed(t: &Transcript) -> (FakeFrappe, Vec<(&'static str, String)>) {
    let s = scenario(&t.name);
    let frappe = FakeFrappe::start().await;
    frappe.set_site_name(Some("test.localhost"));
    frappe.set_connection_close(true);
    frappe.set_known_doctypes(&["ToDo"]); // plain frappe: no ERPNext doctypes (08b)
    let api_secret = if s.regenerated { SECRET_NEW } else { SECRET };
    let users = [
        ("Administrator", KEY_ADMIN, SECRET_ADMIN, "admin", None),
        (API_USER, KEY, api_secret, "Api-User-Pass-123", None),
        ("ip.user@example.com", KEY_IPUSER, SECRET_IPUSER, "Ip-User-Pass-123", Some("10.1.2.3")),
        ("xff.user@example.com", KEY_XFFUSER, SECRET_XFFUSER, "Xff-User-Pass-123", Some("1.2.3.4")),
    ];
    for (name, key, secret, password, restrict_ip) in users {
        frappe.add_sync_user(name, key, secret);
        frappe.set_password(name, password);
        frappe.set_restrict_ip(name, restrict_ip);
    }
    frappe.set_enabled(API_USER, !s.disabled);
    frappe.set_allow_error_traceback(!s.no_traceback);
    for todo in s.todos {
        frappe.insert_doc("ToDo", todo);
    }
    let mut values = vec![
        ("SECRET_XFFUSER", SECRET_XFFUSER.to_string()),
        ("SECRET_IPUSER", SECRET_IPUSER.to_string()),
        ("SECRET_ADMIN", SECRET_ADMIN.to_string()),
        ("SECRET_NEW", SECRET_NEW.to_string()),
        ("KEY_XFFUSER", KEY_XFFUSER.to_string()),
        ("KEY_IPUSER", KEY_IPUSER.to_string()),
        ("KEY_ADMIN", KEY_ADMIN.to_string()),
        ("SECRET", SECRET.to_string()),
        ("KEY", KEY.to_string()),
    ];
    if s.admin_session {
        values.push(("SID", frappe.create_session("Administrator")));
    }
    (frappe, values)
}

/// Replace placeholders, longest first so `KEY_ADMIN` is not read as `KEY`; `BASE64(x)`
/// becomes the base64 of x.
fn substitute(text: &str, values: &[(&'static str, String)]) -> String {
    let plain = |s: &str| {
        values.iter().fold(s.to_string(), |acc, (placeholder, value)| acc.replace(placeholder, value))
    };
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("BASE64(") {
        let end = start + rest[start..].find(')').expect("BASE64( without )");
        out.push_str(&plain(&rest[..start]));
        let inner = plain(&rest[start + "BASE64(".len()..end]);
        out.push_str(&base64::engine::general_purpose::STANDARD.encode(inner));
        rest = &rest[end + 1..];
    }
    out.push_str(&plain(rest));
    out
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

async fn replay(
    client: &reqwest::Client,
    frappe: &FakeFrappe,
    t: &Transcript,
    values: &[(&'static str, String)],
) -> Answer {
    let request = &t.request;
    let url = format!("{}{}", frappe.url(), substitute(&request.path_and_query(), values));
    let method = reqwest::Method::from_bytes(request.method.as_bytes()).expect("method");
    let mut builder = client.request(method, url);
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), substitute(value, values));
    }
    if let Some(body) = &request.body {
        builder = builder.body(substitute(body, values));
    }
    let response = builder.send().await.expect("fake answers");
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.expect("body"),
    }
}

/// Everything in the answer that differs from the capture, as readable lines.
fn differences(t: &Transcript, values: &[(&'static str, String)], got: &Answer) -> Vec<String> {
    let expected = &t.response;
    let mut diffs = Vec::new();
    let header = |name: &str| got.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    if got.status != expected.status {
        diffs.push(format!("status {} != expected {}", got.status, expected.status));
    }
    let media = |v: Option<String>| v.map(|v| v.split(';').next().unwrap_or("").trim().to_string());
    if media(header("content-type")) != media(expected.header("content-type").map(str::to_string)) {
        diffs.push(format!(
            "content-type {:?} != {:?}",
            header("content-type"),
            expected.header("content-type")
        ));
    }
    let cookies = got.headers.get_all("set-cookie").iter().count();
    if cookies != expected.header_all("set-cookie").len() {
        diffs.push(format!(
            "{cookies} Set-Cookie lines, expected {}",
            expected.header_all("set-cookie").len()
        ));
    }
    for name in ["connection", "server"] {
        if header(name).as_deref() != expected.header(name) {
            diffs.push(format!("{name}: {:?} != {:?}", header(name), expected.header(name)));
        }
    }
    let expected_body = substitute(&expected.body, values);
    match serde_json::from_str::<Value>(&expected_body) {
        Ok(want) => match serde_json::from_str::<Value>(&got.body) {
            Ok(have) => compare_body(&t.name, &want, &have, &mut diffs),
            Err(_) => diffs.push(format!("body is not JSON: {}", got.body)),
        },
        Err(_) if got.body.trim_end() != expected_body.trim_end() => {
            diffs.push(format!("body {:?} != {:?}", got.body, expected_body));
        }
        Err(_) => {}
    }
    diffs
}

fn compare_body(name: &str, want: &Value, have: &Value, diffs: &mut Vec<String>) {
    if name.starts_with("06c") {
        return compare_user_doc(want, have, diffs);
    }
    // Created documents get a fresh random name, as in Frappe.
    let volatile: &[&str] = match &name[..3] {
        "08c" | "10e" => &["modified", "creation", "date", "name"],
        _ => &["modified", "creation", "date"],
    };
    let (Some(want), Some(have)) = (want.as_object(), have.as_object()) else {
        return json_match("", &Value::Null, &Value::Null, volatile, diffs);
    };
    let keys = |m: &serde_json::Map<String, Value>| m.keys().cloned().collect::<Vec<_>>();
    if keys(want) != keys(have) {
        diffs.push(format!("top-level keys {:?} != expected {:?}", keys(have), keys(want)));
    }
    for (key, w) in want {
        let Some(h) = have.get(key) else { continue };
        match key.as_str() {
            "exc" => {} // a traceback: presence is enough
            "_server_messages" => compare_server_messages(w, h, diffs),
            _ => json_match(key, w, h, volatile, diffs),
        }
    }
}

fn json_match(path: &str, want: &Value, have: &Value, volatile: &[&str], diffs: &mut Vec<String>) {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => {
            let (mut wk, mut hk): (Vec<_>, Vec<_>) = (w.keys().collect(), h.keys().collect());
            wk.sort();
            hk.sort();
            if wk != hk {
                diffs.push(format!("{path}: keys {hk:?} != expected {wk:?}"));
            }
            for (key, wv) in w {
                if let (Some(hv), false) = (h.get(key), volatile.contains(&key.as_str())) {
                    json_match(&format!("{path}.{key}"), wv, hv, volatile, diffs);
                }
            }
        }
        (Value::Array(w), Value::Array(h)) if w.len() == h.len() => {
            for (i, (wv, hv)) in w.iter().zip(h).enumerate() {
                json_match(&format!("{path}[{i}]"), wv, hv, volatile, diffs);
            }
        }
        (w, h) if w != h => diffs.push(format!("{path}: {h} != expected {w}")),
        _ => {}
    }
}

/// `_server_messages` is a JSON string holding a list of JSON strings; compare each
/// message's text and title (the `__frappe_exc_id` is random).
fn compare_server_messages(want: &Value, have: &Value, diffs: &mut Vec<String>) {
    let decode = |v: &Value| -> Option<Vec<(Value, Value)>> {
        let list: Vec<String> = serde_json::from_str(v.as_str()?).ok()?;
        list.iter()
            .map(|item| {
                let m: Value = serde_json::from_str(item).ok()?;
                Some((m["message"].clone(), m["title"].clone()))
            })
            .collect()
    };
    match (decode(want), decode(have)) {
        (Some(w), Some(h)) if w == h => {}
        (w, h) => diffs.push(format!("_server_messages {h:?} != expected {w:?}")),
    }
}

/// 06c is the full User document; the fake models the fields the gateway could care about.
fn compare_user_doc(want: &Value, have: &Value, diffs: &mut Vec<String>) {
    for field in [
        "name",
        "enabled",
        "email",
        "first_name",
        "full_name",
        "username",
        "user_type",
        "api_key",
        "api_secret",
        "doctype",
    ] {
        if want["data"][field] != have["data"][field] {
            diffs.push(format!("data.{field}: {} != expected {}", have["data"][field], want["data"][field]));
        }
    }
    let roles = |v: &Value| -> Vec<Value> {
        v["data"]["roles"].as_array().into_iter().flatten().map(|r| r["role"].clone()).collect()
    };
    if roles(want) != roles(have) {
        diffs.push(format!("roles {:?} != expected {:?}", roles(have), roles(want)));
    }
}

#[tokio::test]
async fn fake_answers_every_transcript_like_frappe() {
    let transcripts = transcript::load_all(&transcript::transcripts_dir());
    for (skipped, _) in SKIP {
        assert!(transcripts.iter().any(|t| t.name == *skipped), "stale SKIP entry {skipped}");
    }
    let client = common::http_client();
    let mut failures = Vec::new();
    let mut replayed = 0;
    for t in transcripts.iter().filter(|t| !SKIP.iter().any(|(n, _)| *n == t.name)) {
        let (frappe, values) = seed(t).await;
        let answer = replay(&client, &frappe, t, &values).await;
        let diffs = differences(t, &values, &answer);
        if !diffs.is_empty() {
            failures.push(format!("{}:\n    {}\n    body: {}", t.name, diffs.join("\n    "), answer.body));
        }
        replayed += 1;
    }
    assert!(
        failures.is_empty(),
        "{} of {replayed} transcripts differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(replayed >= 60, "only {replayed} transcripts replayed");
}

#[test]
fn transcript_copy_matches_the_shared_originals() {
    let shared = transcript::shared_transcripts_dir();
    if !shared.is_dir() {
        eprintln!("skipped: {} not present (fresh clone)", shared.display());
        return;
    }
    let copy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts");
    let names = |dir: &std::path::Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(&copy), names(&shared), "tests/transcripts/ is out of date");
    for name in names(&shared) {
        let read = |dir: &std::path::Path| std::fs::read(dir.join(&name)).expect("read transcript");
        assert!(read(&copy) == read(&shared), "tests/transcripts/{name} differs from the original");
    }
}

#[test]
fn curl_lines_are_parsed_like_curl_sends_them() {
    let dir = transcript::transcripts_dir();
    let all = transcript::load_all(&dir);
    let get = |prefix: &str| all.iter().find(|t| t.name.starts_with(prefix)).expect("transcript");

    let t = get("05f");
    assert_eq!(t.request.method, "GET");
    assert_eq!(t.request.path, "/api/resource/User");
    assert_eq!(
        t.request.query,
        "fields=%5B%22name%22%2C%22enabled%22%2C%22api_key%22%5D&filters=%5B%5B%22name%22%2C%22%3D%22%2C%22api.user%40example.com%22%5D%5D"
    );
    assert_eq!(t.notes.len(), 1);

    let t = get("10a");
    assert_eq!(t.request.method, "POST");
    assert_eq!(t.request.body.as_deref(), Some("usr=Administrator&pwd=admin"));
    assert!(t.request.headers.contains(&("Content-Type".into(), "application/x-www-form-urlencoded".into())));

    assert!(get("04f").request.headers.contains(&("Authorization".into(), String::new())));
    assert!(get("12a").request.headers.contains(&("Authorization".into(), " token KEY:SECRET_NEW".into())));
    assert_eq!(get("09g").request.path, "/api/resource/Activity%20Log");
    assert_eq!(get("04p").response.status, 404);
    assert_eq!(get("01").response.header_all("set-cookie").len(), 5);
    assert_eq!(get("01").response.json(), Some(json!({"message": "api.user@example.com"})));
}

// ===== the fake's own behaviour ============================================================

async fn get_json(client: &reqwest::Client, url: &str, auth: Option<&str>) -> (u16, Value) {
    let mut request = client.get(url);
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn whoami(frappe: &FakeFrappe, auth: Option<&str>) -> (u16, Value) {
    let url = format!("{}/api/method/frappe.auth.get_logged_user", frappe.url());
    get_json(&common::http_client(), &url, auth).await
}

#[tokio::test]
async fn authentication_edge_cases_follow_frappe() {
    let frappe = FakeFrappe::start().await;
    frappe.add_user("a@example.com", "aaaaaaaaaaaaaa1", "sssssssssssss01");
    let ok = |(status, body): (u16, Value)| status == 200 && body["message"] == "a@example.com";

    // api_key matches case-insensitively (MariaDB collation); the secret does not.
    assert!(ok(whoami(&frappe, Some("token AAAAAAAAAAAAAA1:sssssssssssss01")).await));
    assert_eq!(whoami(&frappe, Some("token aaaaaaaaaaaaaa1:SSSSSSSSSSSSS01")).await.0, 401);
    assert!(ok(whoami(&frappe, Some(&common::basic_header("aaaaaaaaaaaaaa1", "sssssssssssss01"))).await));
    // A disabled user's key still works in 15.44 (05a): the gateway has to refuse it.
    frappe.set_enabled("a@example.com", false);
    assert!(ok(whoami(&frappe, Some(&token_header("aaaaaaaaaaaaaa1", "sssssssssssss01"))).await));
    // Unknown scheme with two parts → 401; three parts → Guest → 403.
    assert_eq!(whoami(&frappe, Some("Digest x")).await.0, 401);
    assert_eq!(whoami(&frappe, Some("token a b")).await.0, 403);
    // Bearer tokens.
    frappe.add_bearer("bearer-token-1", "a@example.com");
    assert!(ok(whoami(&frappe, Some("Bearer bearer-token-1")).await));
    frappe.remove_bearer("bearer-token-1");
    assert_eq!(whoami(&frappe, Some("Bearer bearer-token-1")).await.0, 401);
    // Undecodable Basic → 400 InvalidAuthorizationToken.
    // Python's lenient b64decode drops the `!`s; "!!!" alone decodes to b"" (→ 401).
    assert_eq!(whoami(&frappe, Some("Basic !!!")).await.0, 401);
    let (status, body) = whoami(&frappe, Some("Basic !!notbase64!!")).await;
    assert_eq!((status, body["exc_type"].as_str()), (400, Some("InvalidAuthorizationToken")));
}

#[tokio::test]
async fn a_valid_cookie_session_wins_over_a_valid_token() {
    // FRAPPE.md §8: why the gateway strips Cookie on token routes.
    let frappe = FakeFrappe::start().await;
    frappe.add_user("a@example.com", "aaaaaaaaaaaaaa1", "sssssssssssss01");
    frappe.add_user("b@example.com", "bbbbbbbbbbbbbb1", "sssssssssssss02");
    let sid = frappe.create_session("b@example.com");
    let response = common::http_client()
        .get(format!("{}/api/method/frappe.auth.get_logged_user", frappe.url()))
        .header("authorization", token_header("aaaaaaaaaaaaaa1", "sssssssssssss01"))
        .header("cookie", format!("sid={sid}"))
        .send()
        .await
        .expect("request");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["message"], "b@example.com");
}

#[tokio::test]
async fn regenerate_delete_and_modified_stamps() {
    let frappe = FakeFrappe::start().await;
    frappe.add_user("a@example.com", "aaaaaaaaaaaaaa1", "sssssssssssss01");
    let before = frappe.user_modified("a@example.com").expect("modified");
    assert_eq!(before.len(), "2026-11-28 20:38:34.300564".len());

    let new_secret = frappe.regenerate_secret("a@example.com");
    assert_eq!(new_secret.len(), 15);
    assert!(new_secret.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(frappe.user_api_key("a@example.com").as_deref(), Some("aaaaaaaaaaaaaa1"));
    assert_ne!(frappe.user_modified("a@example.com").expect("modified"), before);
    assert_eq!(whoami(&frappe, Some(&token_header("aaaaaaaaaaaaaa1", "sssssssssssss01"))).await.0, 401);
    assert_eq!(whoami(&frappe, Some(&token_header("aaaaaaaaaaaaaa1", &new_secret))).await.0, 200);

    frappe.delete_user("a@example.com");
    assert_eq!(whoami(&frappe, Some(&token_header("aaaaaaaaaaaaaa1", &new_secret))).await.0, 401);
    assert!(frappe.user_modified("a@example.com").is_none());
}

/// 45 users with keys, listed by a System Manager sync user in pages.
#[tokio::test]
async fn user_list_pages_filters_and_hides_fields() {
    let frappe = FakeFrappe::start().await;
    frappe.add_sync_user("sync@example.com", "5555555555555a1", "5555555555555b1");
    for i in 0..44 {
        frappe.add_user(&format!("user{i:02}@example.com"), &format!("{i:015x}"), "secretsecret123");
    }
    frappe.set_restrict_ip("user07@example.com", Some("10.0.0.1"));
    let client = common::http_client();
    let sync = token_header("5555555555555a1", "5555555555555b1");
    let fields = r#"["name","enabled","api_key","user_type","modified","restrict_ip"]"#;
    let page = |start: usize, len: Option<usize>| {
        let mut url = format!(
            "{}/api/resource/User?fields={}&filters={}&limit_start={start}",
            frappe.url(),
            enc(fields),
            enc(r#"[["api_key","is","set"]]"#)
        );
        if let Some(len) = len {
            url.push_str(&format!("&limit_page_length={len}"));
        }
        url
    };

    let mut names = Vec::new();
    for start in [0, 20, 40] {
        let (status, body) = get_json(&client, &page(start, None), Some(&sync)).await;
        assert_eq!(status, 200);
        let rows = body["data"].as_array().expect("data array").clone();
        assert_eq!(rows.len(), if start == 40 { 5 } else { 20 }, "default page is 20");
        names.extend(rows.iter().map(|r| r["name"].as_str().expect("name").to_string()));
    }
    let (_, all) = get_json(&client, &page(0, Some(0)), Some(&sync)).await;
    let all = all["data"].as_array().expect("data").clone();
    assert_eq!(all.len(), 45, "limit_page_length=0 means all; Administrator/Guest hidden");
    assert_eq!(names.len(), 45);
    let row = all.iter().find(|r| r["name"] == "user07@example.com").expect("row");
    assert_eq!(row["restrict_ip"], "10.0.0.1");
    assert_eq!(row["enabled"], 1);
    assert_eq!(row["user_type"], "System User");
    assert_eq!(row.as_object().expect("object").len(), 6);

    // Lookup by key, as the gateway could do on a miss.
    let url = format!(
        "{}/api/resource/User?fields={}&filters={}",
        frappe.url(),
        enc(r#"["name","enabled"]"#),
        enc(&format!(r#"[["api_key","=","{:015x}"]]"#, 3))
    );
    let (_, one) = get_json(&client, &url, Some(&sync)).await;
    assert_eq!(one, json!({"data": [{"name": "user03@example.com", "enabled": 1}]}));

    // Without System Manager, api_key and restrict_ip are silently left out.
    frappe.set_system_manager("sync@example.com", false);
    let (_, limited) = get_json(&client, &page(0, Some(1)), Some(&sync)).await;
    let keys: Vec<&String> = limited["data"][0].as_object().expect("row").keys().collect();
    assert_eq!(keys, ["enabled", "modified", "name", "user_type"]);
    assert_eq!(frappe.user_list_calls(), 6);

    // A single user, URL-encoded name; an unknown one is 404 DoesNotExistError.
    frappe.set_system_manager("sync@example.com", true);
    let url = format!("{}/api/resource/User/user07%40example.com", frappe.url());
    let (status, doc) = get_json(&client, &url, Some(&sync)).await;
    assert_eq!((status, doc["data"]["api_key"].as_str()), (200, Some("000000000000007")));
    let url = format!("{}/api/resource/User/nobody%40example.com", frappe.url());
    let (status, body) = get_json(&client, &url, Some(&sync)).await;
    assert_eq!((status, body["exc_type"].as_str()), (404, Some("DoesNotExistError")));
    assert_eq!(frappe.user_get_calls(), 2);

    // FRAPPE.md §12: Administrator is invisible to a System Manager and readable only by itself.
    let url = format!("{}/api/resource/User/Administrator", frappe.url());
    let (status, body) = get_json(&client, &url, Some(&sync)).await;
    assert_eq!((status, body["exc_type"].as_str()), (403, Some("PermissionError")));
    frappe.add_user("Administrator", "adminkey0000001", "adminsecret0001");
    frappe.set_restrict_ip("Administrator", Some("10.9.9.9"));
    let admin = token_header("adminkey0000001", "adminsecret0001");
    let (status, doc) = get_json(&client, &url, Some(&admin)).await;
    assert_eq!(status, 200);
    assert_eq!(
        (doc["data"]["name"].as_str(), doc["data"]["enabled"].as_i64()),
        (Some("Administrator"), Some(1))
    );
    assert_eq!(doc["data"]["restrict_ip"], "10.9.9.9");
    let (_, all) = get_json(&client, &page(0, Some(0)), Some(&sync)).await;
    let listed = all["data"].as_array().expect("data").iter().any(|r| r["name"] == "Administrator");
    assert!(!listed, "a System Manager's list never shows Administrator, keys or not");
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[tokio::test]
async fn documents_and_doctypes() {
    let frappe = FakeFrappe::start().await;
    frappe.add_user("a@example.com", "aaaaaaaaaaaaaa1", "sssssssssssss01");
    let auth = token_header("aaaaaaaaaaaaaa1", "sssssssssssss01");
    let client = common::http_client();
    for doctype in ["Customer", "Sales%20Invoice", "ToDo"] {
        let url = format!("{}/api/resource/{doctype}", frappe.url());
        assert_eq!(get_json(&client, &url, Some(&auth)).await, (200, json!({"data": []})));
    }
    let url = format!("{}/api/v2/document/Item", frappe.url());
    let (status, body) = get_json(&client, &url, Some(&auth)).await;
    assert_eq!((status, body["errors"][0]["type"].as_str()), (404, Some("DoesNotExistError")));

    let created: Value = client
        .post(format!("{}/api/resource/ToDo", frappe.url()))
        .header("authorization", &auth)
        .json(&json!({"description": "hello"}))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let name = created["data"]["name"].as_str().expect("name").to_string();
    assert_eq!(created["data"]["owner"], "a@example.com");
    let url = format!("{}/api/v2/document/ToDo/{name}", frappe.url());
    let (status, doc) = get_json(&client, &url, Some(&auth)).await;
    assert_eq!((status, doc["data"]["description"].as_str()), (200, Some("hello")));
    let deleted = client.delete(&url).header("authorization", &auth).send().await.expect("delete");
    assert_eq!(deleted.status().as_u16(), 202);
    assert_eq!(deleted.json::<Value>().await.expect("json"), json!({"data": "ok"}));
    assert!(frappe.docs("ToDo").is_empty());
}

#[tokio::test]
async fn preflight_runs_as_guest_and_gets_an_empty_200() {
    let frappe = FakeFrappe::start().await;
    let response = common::http_client()
        .request(reqwest::Method::OPTIONS, format!("{}/api/resource/ToDo", frappe.url()))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.text().await.expect("body"), "");
}

#[tokio::test]
async fn counters_and_recorded_requests() {
    let frappe = FakeFrappe::start().await;
    frappe.add_user("a@example.com", "aaaaaaaaaaaaaa1", "sssssssssssss01");
    for auth in [None, Some("token x:y"), Some("token aaaaaaaaaaaaaa1:sssssssssssss01")] {
        whoami(&frappe, auth).await;
    }
    let v2 = format!("{}/api/v2/method/frappe.auth.get_logged_user", frappe.url());
    let auth = token_header("aaaaaaaaaaaaaa1", "sssssssssssss01");
    assert_eq!(
        get_json(&common::http_client(), &v2, Some(&auth)).await,
        (200, json!({"data": "a@example.com"}))
    );
    assert_eq!(frappe.whoami_calls(), 4);
    assert_eq!(frappe.user_list_calls(), 0);

    let recorded = frappe.requests();
    assert_eq!(recorded.len(), 4);
    assert_eq!(recorded[1].header("authorization").as_deref(), Some("token x:y"));
    let last = frappe.last_request_to("/api/v2/").expect("recorded");
    assert_eq!(last.method, http::Method::GET);
    assert_eq!(last.peer.ip().to_string(), "127.0.0.1");
    frappe.clear_requests();
    assert!(frappe.requests().is_empty());
    frappe.reset_counters();
    assert_eq!(frappe.whoami_calls(), 0);
}

#[tokio::test]
async fn whoami_fault_modes() {
    let frappe = FakeFrappe::start().await;
    frappe.add_user("a@example.com", "aaaaaaaaaaaaaa1", "sssssssssssss01");
    let auth = token_header("aaaaaaaaaaaaaa1", "sssssssssssss01");

    frappe.set_whoami_delay(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(whoami(&frappe, Some(&auth)).await.0, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(frappe.whoami_max_in_flight(), 1);
    // Three at once, each held by the delay: the fake saw all three in flight together.
    let three = futures_util::future::join_all((0..3).map(|_| whoami(&frappe, Some(&auth)))).await;
    assert!(three.iter().all(|(status, _)| *status == 200));
    assert_eq!(frappe.whoami_max_in_flight(), 3);
    frappe.set_whoami_delay(Duration::ZERO);

    frappe.set_whoami_mode(WhoamiMode::Status500);
    let (status, body) = whoami(&frappe, Some(&auth)).await;
    assert_eq!((status, body["exc_type"].as_str()), (500, Some("OperationalError")));

    frappe.set_whoami_mode(WhoamiMode::Hang);
    let client =
        reqwest::Client::builder().no_proxy().timeout(Duration::from_millis(300)).build().expect("client");
    let url = format!("{}/api/method/frappe.auth.get_logged_user", frappe.url());
    let err = client.get(&url).header("authorization", &auth).send().await.expect_err("hangs");
    assert!(err.is_timeout());
    assert_eq!(frappe.whoami_calls(), 6);
    // Other endpoints are unaffected.
    let ping = format!("{}/api/method/ping", frappe.url());
    assert_eq!(get_json(&client, &ping, None).await, (200, json!({"message": "pong"})));
}

#[tokio::test]
async fn users_fault_modes_break_sync() {
    let frappe = FakeFrappe::start().await;
    frappe.add_sync_user("sync@example.com", "5555555555555a1", "5555555555555b1");
    let auth = token_header("5555555555555a1", "5555555555555b1");
    let url = format!("{}/api/resource/User?limit_page_length=0", frappe.url());
    let client = common::http_client();
    frappe.set_users_mode(UsersMode::Status401);
    let (status, body) = get_json(&client, &url, Some(&auth)).await;
    assert_eq!((status, body["exc_type"].as_str()), (401, Some("AuthenticationError")));
    frappe.set_users_mode(UsersMode::Status500);
    assert_eq!(get_json(&client, &url, Some(&auth)).await.0, 500);
    frappe.set_users_mode(UsersMode::Normal);
    assert_eq!(get_json(&client, &url, Some(&auth)).await.0, 200);
    assert_eq!(frappe.user_list_calls(), 3);
}

#[tokio::test]
async fn stop_refuses_connections_and_restart_keeps_state() {
    let mut frappe = FakeFrappe::start().await;
    frappe.add_user("a@example.com", "aaaaaaaaaaaaaa1", "sssssssssssss01");
    let auth = token_header("aaaaaaaaaaaaaa1", "sssssssssssss01");
    assert_eq!(whoami(&frappe, Some(&auth)).await.0, 200);
    frappe.stop().await;
    let refused = tokio::net::TcpStream::connect(frappe.addr()).await;
    assert_eq!(refused.expect_err("refused").kind(), std::io::ErrorKind::ConnectionRefused);
    frappe.restart().await;
    assert_eq!(whoami(&frappe, Some(&auth)).await.0, 200);
}

#[tokio::test]
async fn connection_close_mode_like_gunicorn() {
    let frappe = FakeFrappe::start().await;
    let client = common::http_client();
    let ping = format!("{}/api/method/ping", frappe.url());
    for _ in 0..3 {
        let response = client.get(&ping).send().await.expect("ping");
        assert_eq!(response.headers()["server"], "gunicorn");
        assert!(response.headers().get("connection").is_none());
        response.bytes().await.expect("body");
    }
    assert_eq!(frappe.connections_accepted(), 1, "keep-alive reuses the connection");

    frappe.set_connection_close(true);
    for _ in 0..3 {
        let response = client.get(&ping).send().await.expect("ping");
        assert_eq!(response.headers()["connection"], "close");
        response.bytes().await.expect("body");
    }
    // The first close-mode answer still travels on the pooled connection, then closes it.
    assert_eq!(frappe.connections_accepted(), 3, "one connection per request");
}

#[tokio::test]
async fn echo_slow_and_status_endpoints() {
    let frappe = FakeFrappe::start().await;
    let client = common::http_client();
    let echo: Value = client
        .put(format!("{}/__test/echo?a=1", frappe.url()))
        .header("x-multi", "one")
        .header("x-multi", "two")
        .body("hello")
        .send()
        .await
        .expect("echo")
        .json()
        .await
        .expect("json");
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/__test/echo");
    assert_eq!(echo["query"], "a=1");
    assert_eq!(echo["headers"]["x-multi"], json!(["one", "two"]));
    assert_eq!((echo["body_len"].as_u64(), echo["body"].as_str()), (Some(5), Some("hello")));
    assert_eq!(frappe.last_request_to("/__test/echo").expect("recorded").body_len, 5);

    let started = Instant::now();
    let slow = format!("{}/__test/slow?ms=200", frappe.url());
    assert_eq!(get_json(&client, &slow, None).await, (200, json!({"slept_ms": 200})));
    assert!(started.elapsed() >= Duration::from_millis(200));
    let status = format!("{}/__test/status?code=503", frappe.url());
    assert_eq!(get_json(&client, &status, None).await.0, 503);
}

#[tokio::test]
async fn download_streams_deterministic_bytes_with_checksum() {
    let frappe = FakeFrappe::start().await;
    let len = 3 * 1024 * 1024 + 5; // not a multiple of the chunk or word size
    let response = common::http_client()
        .get(format!("{}/__test/download?bytes={len}", frappe.url()))
        .send()
        .await
        .expect("download");
    assert_eq!(response.content_length(), Some(len));
    let announced = response.headers()["x-sha256"].to_str().expect("hex").to_string();
    let mut stream = response.bytes_stream();
    let (mut hasher, mut received, mut chunks) = (Sha256::new(), 0u64, 0);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        hasher.update(&chunk);
        received += chunk.len() as u64;
        chunks += 1;
    }
    let hex: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(received, len);
    assert!(chunks > 1, "streamed, not one buffer");
    assert_eq!(hex, announced);
    assert_eq!(announced, common::expected_download_sha256(len));
    assert_eq!(&common::download_bytes(16)[..], &common::download_bytes(len)[..16]);
}

#[tokio::test]
async fn upload_hashes_a_streamed_body() {
    let frappe = FakeFrappe::start().await;
    let data = common::download_bytes(2 * 1024 * 1024 + 3);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = data.chunks(100_000).map(|c| Ok(c.to_vec())).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let answer: Value = common::http_client()
        .post(format!("{}/__test/upload", frappe.url()))
        .body(body)
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("json");
    let hex: String = Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(answer, json!({"sha256": hex, "len": data.len()}));
    assert_eq!(frappe.last_request_to("/__test/upload").expect("recorded").body_len, data.len());
}

#[tokio::test]
async fn websocket_echo() {
    let frappe = FakeFrappe::start().await;
    let url = format!("ws://{}/__test/ws", frappe.addr());
    let (mut ws, response) = tokio_tungstenite::connect_async(url).await.expect("ws connect");
    assert_eq!(response.status().as_u16(), 101);
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text("hello")).await.expect("send");
    let echoed = ws.next().await.expect("message").expect("ok");
    assert_eq!(echoed, Message::text("hello"));
    ws.close(None).await.expect("close");
    assert!(frappe.last_request_to("/__test/ws").is_some());
}

// ===== certificates and clients ============================================================

/// A tiny TLS server (hyper-util auto: h2 + http/1.1 via ALPN) with the test certificate,
/// answering the negotiated HTTP version.
async fn tls_version_server(certs: &common::Certs) -> std::net::SocketAddr {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio_rustls::rustls;
    let chain: Vec<_> = rustls_pemfile::certs(&mut std::fs::read(&certs.cert_path).expect("crt").as_slice())
        .collect::<Result<_, _>>()
        .expect("chain");
    assert_eq!(chain.len(), 2, "server.crt holds leaf + CA");
    let key = rustls_pemfile::private_key(&mut std::fs::read(&certs.key_path).expect("key").as_slice())
        .expect("key pem")
        .expect("a key");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service =
                    hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                        let body = format!("{:?}", req.version());
                        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(body),
                        )))
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn certificates_and_clients_negotiate_tls_and_alpn() {
    let certs = common::Certs::generate();
    for path in [&certs.ca_path, &certs.cert_path, &certs.key_path] {
        assert!(path.starts_with(certs.dir()) && path.is_file());
    }
    let addr = tls_version_server(&certs).await;
    let url = format!("https://localhost:{}/", addr.port());
    for (mode, version) in [
        (common::HttpVersion::Http2, reqwest::Version::HTTP_2),
        (common::HttpVersion::Http1Only, reqwest::Version::HTTP_11),
    ] {
        let response = common::https_client(&certs.ca_pem, mode).get(&url).send().await.expect("https");
        assert_eq!(response.version(), version, "{mode:?}");
    }
    // Raw TLS with a chosen ALPN, and a rotated certificate from the same CA.
    let stream = common::tls_connect(addr, &certs.ca_pem, &["h2"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let old_leaf = certs.server_chain_pem();
    certs.rotate_server_cert();
    assert_ne!(certs.server_chain_pem(), old_leaf);
    // Another CA is not trusted.
    let other = common::Certs::generate();
    assert!(common::try_tls_connect(addr, &other.ca_pem, &[]).await.is_err());
}

#[test]
fn config_builder_writes_valid_toml() {
    let certs = common::Certs::generate();
    let text = common::ConfigBuilder::new("http://127.0.0.1:8000")
        .tls(&certs)
        .set("server", "max_header_bytes = 1024")
        .set("log", "access = \"/tmp/access.log\"")
        .set("frappe", "sync_interval = \"1s\"")
        .extra("[[route]]\npath = \"/api/\"\nauth = \"token\"")
        .build();
    let value: toml::Value = toml::from_str(&text).expect("valid TOML");
    assert_eq!(value["server"]["listen"].as_str(), Some("127.0.0.1:0"));
    assert_eq!(value["server"]["max_header_bytes"].as_integer(), Some(1024));
    assert_eq!(value["server"]["tls_key"].as_str(), certs.key_path.to_str());
    assert_eq!(value["admin"]["listen"].as_str(), Some("127.0.0.1:0"));
    assert_eq!(value["upstream"]["url"].as_str(), Some("http://127.0.0.1:8000"));
    assert_eq!(value["log"]["access"].as_str(), Some("/tmp/access.log"));
    assert_eq!(value["frappe"]["sync_interval"].as_str(), Some("1s"));
    assert_eq!(value["route"][0]["auth"].as_str(), Some("token"));

    let plain = common::config_for("http://127.0.0.1:1", None, "[auth]\nnegative_ttl = \"1s\"\n");
    let value: toml::Value = toml::from_str(&plain).expect("valid TOML");
    assert!(value["server"].get("tls_cert").is_none());
    assert_eq!(value["auth"]["negative_ttl"].as_str(), Some("1s"));
    assert_eq!(common::toml_str("a\"b\\c"), r#""a\"b\\c""#);
}

// ===== the gateway process harness, with a shell stand-in ==================================

/// A stand-in that behaves like the gateway's logging contract, then waits for a signal.
fn stand_in_script(listening_line: &str) -> String {
    format!(
        "echo \"starting ${{GATEWAY_SYNC_TOKEN:-clean}} $A $(pwd)\" >&2; echo '{listening_line}' >&2; \
         echo '{{\"status\":200,\"path\":\"/x\"}}'; exec sleep 30"
    )
}

#[tokio::test]
async fn gateway_harness_reads_listening_line_logs_and_exit() {
    let layouts = [
        r#"{"level":"INFO","message":"listening","proxy_addr":"127.0.0.1:4100","admin_addr":"127.0.0.1:4101","tls":true}"#,
        r#"{"level":"INFO","fields":{"message":"listening","proxy_addr":"127.0.0.1:4200","admin_addr":"127.0.0.1:4201"}}"#,
    ];
    for (i, line) in layouts.iter().enumerate() {
        let script = stand_in_script(line);
        // The developer's GATEWAY_* variables never leak into a test gateway.
        std::env::set_var("GATEWAY_SYNC_TOKEN", "from-the-developer-shell");
        let mut gateway = common::GatewayProcess::try_start_program(
            "sh",
            &["-c", &script, "sh"],
            "[server]\n",
            &[("A", "1")],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        if i == 0 {
            assert_eq!(gateway.base_url(), "https://localhost:4100");
            assert_eq!(gateway.admin_addr().port(), 4101);
        } else {
            assert_eq!(gateway.base_url(), "http://127.0.0.1:4200");
        }
        let access = gateway
            .wait_for_access_log(|v| v["path"] == "/x", Duration::from_secs(10))
            .await
            .expect("access line");
        assert_eq!(access["status"], 200);
        assert_eq!(gateway.access_log_lines().len(), 1);
        let cwd = gateway.config_path().parent().expect("dir").to_string_lossy().into_owned();
        assert_eq!(gateway.stderr_text().lines().next(), Some(format!("starting clean 1 {cwd}").as_str()));
        assert_eq!(std::fs::read_to_string(gateway.config_path()).expect("config"), "[server]\n");
        assert!(common::rss_kib(gateway.pid()).is_some());

        gateway.send_signal(common::Signal::Term);
        let status = gateway.wait_exit(Duration::from_secs(10)).await.expect("exited");
        assert!(!status.success());
    }
}

#[tokio::test]
async fn gateway_harness_reports_a_process_that_never_listens() {
    let failure = common::GatewayProcess::try_start_program(
        "sh",
        &["-c", "echo 'bad config: nope' >&2; exit 2", "sh"],
        "",
        &[],
    )
    .await
    .err()
    .expect("start fails");
    assert_eq!(failure.status.and_then(|s| s.code()), Some(2));
    assert!(failure.stderr.contains("bad config: nope"));
}

#[test]
fn rss_of_this_process_is_readable() {
    assert!(common::rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
    assert!(common::rss_kib(u32::MAX).is_none());
}
