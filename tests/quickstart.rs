//! Acceptance 1: the README's quick start on a fresh clone. The repository's own sample
//! `gateway.toml` — only its two listen addresses and the upstream URL changed, so the test
//! needs no fixed port and talks to a fake Frappe — starts a TLS listener from a directory with
//! no certificates (`self_signed_if_missing = true` writes `certs/gateway.crt` and warns
//! loudly), and the README's `curl --cacert certs/gateway.crt …` commands work through it: the
//! public login and an API-key call reach the upstream, a call without a token gets the
//! gateway's 401 in Frappe's shape, and `/healthz` answers on the admin listener.

mod common;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use common::{log_message, FakeFrappe, GatewayProcess};

const SAMPLE: &str = include_str!("../gateway.toml");
const USER: &str = "quickstart@example.com";
const PASSWORD: &str = "quick-start-pw";
const API_KEY: &str = "0a1b2c3d4e5f607";
const API_SECRET: &str = "0f1e2d3c4b5a697";

/// Replaces the one uncommented line whose text starts with `prefix`; panics unless exactly
/// one matches, so a changed sample fails loudly instead of silently testing something else.
fn replace_line(toml: &str, prefix: &str, replacement: &str) -> String {
    let matches = toml.lines().filter(|l| l.trim_start().starts_with(prefix)).count();
    assert_eq!(matches, 1, "the sample gateway.toml should have exactly one line starting with {prefix:?}");
    let mut out: Vec<String> = toml
        .lines()
        .map(|l| if l.trim_start().starts_with(prefix) { replacement.to_string() } else { l.to_string() })
        .collect();
    out.push(String::new());
    out.join("\n")
}

/// The sample with only `server.listen`, `admin.listen` and `upstream.url` changed.
fn sample_for(upstream_url: &str) -> String {
    let toml = replace_line(SAMPLE, "listen = \"0.0.0.0:8443\"", "listen = \"127.0.0.1:0\"");
    let toml = replace_line(&toml, "listen = \"127.0.0.1:9901\"", "listen = \"127.0.0.1:0\"");
    replace_line(&toml, "url = \"http://127.0.0.1:8000\"", &format!("url = \"{upstream_url}\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_config_self_signs_and_curl_reaches_the_upstream() {
    let frappe = FakeFrappe::start().await;
    frappe.add_user(USER, API_KEY, API_SECRET);
    frappe.set_password(USER, PASSWORD);

    // The gateway runs from the directory holding its config, which has no certs/ yet.
    let gateway = GatewayProcess::start(&sample_for(&frappe.url()), &[]).await;
    assert!(gateway.is_tls(), "the sample serves TLS");
    let dir = gateway.config_path().parent().expect("config dir").to_path_buf();
    let cert = dir.join("certs/gateway.crt");
    assert!(cert.is_file(), "self_signed_if_missing wrote {}", cert.display());
    assert!(dir.join("certs/gateway.key").is_file());
    key_is_private(&dir.join("certs/gateway.key"));

    let warned = gateway.log_lines().into_iter().any(|line| {
        let level = line["level"].as_str().unwrap_or_default().to_ascii_uppercase();
        let message = log_message(&line).unwrap_or_default().to_ascii_lowercase();
        level == "WARN" && message.contains("self-signed")
    });
    assert!(warned, "no WARN line about the self-signed certificate:\n{}", gateway.stderr_text());

    // The README's curl, with the generated certificate as the only trust anchor. The sample
    // marks the login public, so this reaches Frappe with or without an API key.
    let port = gateway.proxy_addr().port();
    let login = ["--data-urlencode", &format!("usr={USER}"), "--data-urlencode", &format!("pwd={PASSWORD}")];
    let (status, body) = curl(&dir, port, "/api/method/login", &login).await;
    assert_eq!(status, "200", "body: {body}");
    let body: Value = serde_json::from_str(&body).expect("Frappe's JSON login answer");
    assert_eq!(body["message"], "Logged In", "{body}");
    let seen = frappe.last_request_to("/api/method/login").expect("the login reached the upstream");
    assert_eq!(seen.method, http::Method::POST);
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(seen.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));

    // The README's API-key call, and the gateway's own answer without a token.
    let token = format!("Authorization: token {API_KEY}:{API_SECRET}");
    let (status, body) = curl(&dir, port, "/api/method/frappe.auth.get_logged_user", &["-H", &token]).await;
    assert_eq!(status, "200", "body: {body}");
    let body: Value = serde_json::from_str(&body).expect("whoami JSON");
    assert_eq!(body["message"], USER, "{body}");
    let (status, body) = curl(&dir, port, "/api/resource/ToDo", &[]).await;
    assert_eq!(status, "401", "body: {body}");
    let body: Value = serde_json::from_str(&body).expect("Frappe-shaped error JSON");
    assert_eq!(body["exc_type"], "AuthenticationError", "{body}");
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{body}");

    // The README's health check, on the admin listener.
    let health = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "30", "--noproxy", "*"])
        .arg(format!("{}/healthz", gateway.admin_url()))
        .output()
        .await
        .expect("run curl");
    assert!(health.status.success());
    let health: Value = serde_json::from_slice(&health.stdout).expect("healthz JSON");
    assert_eq!(health["status"], "ok");
}

/// `curl --cacert certs/gateway.crt https://localhost:PORT{path}` run from `dir` (localhost
/// resolved to 127.0.0.1); returns (HTTP status, body).
async fn curl(dir: &Path, port: u16, path: &str, extra: &[&str]) -> (String, String) {
    let output = tokio::process::Command::new("curl")
        .current_dir(dir)
        .args(["--silent", "--show-error", "--max-time", "30", "--noproxy", "*"])
        .args(["--cacert", "certs/gateway.crt"])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["--write-out", "\n%{http_code}"])
        .args(extra)
        .arg(format!("https://localhost:{port}{path}"))
        .output();
    let output = tokio::time::timeout(Duration::from_secs(40), output)
        .await
        .expect("curl finishes")
        .expect("run curl (installed by .ci/run)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "curl {path} failed: {stderr}\n{stdout}");
    let (body, status) = stdout.rsplit_once('\n').expect("curl --write-out status");
    (status.to_string(), body.to_string())
}

fn key_is_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).expect("key metadata").permissions().mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "{} is readable by others: {mode:o}", path.display());
}
