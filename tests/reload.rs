//! Live reload and signals (issue 9, acceptance 3 and 4): SIGHUP and `POST /reload` put a
//! changed allowlist in force for the next request while a request in flight finishes under
//! the old rules; a broken file changes nothing and is reported once with key and line;
//! SIGUSR1 reopens a rotated access log without losing a line; a rotated certificate is
//! presented to new handshakes while an open HTTP/2 connection keeps working; signals the
//! gateway does not act on never kill it.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const PUBLIC: &str = "[[route]]\npath = \"/\"\nauth = \"public\"\n";
const WAIT: Duration = Duration::from_secs(10);

fn config(frappe: &FakeFrappe, certs: &Certs, network: &str) -> String {
    ConfigBuilder::new(&frappe.url()).tls(certs).extra(&format!("{PUBLIC}{network}")).build()
}

/// 127.0.0.1 is refused once `[network] deny` names it.
const DENY_LOOPBACK: &str = "[network]\ndeny = [\"127.0.0.1/32\"]\n";

fn reloaded(line: &Value) -> bool {
    log_message(line) == Some("configuration reloaded")
}

fn reload_failed(line: &Value) -> bool {
    log_message(line).is_some_and(|m| m.starts_with("configuration reload failed"))
}

async fn status(client: &reqwest::Client, url: &str) -> u16 {
    client.get(url).send().await.expect("response").status().as_u16()
}

async fn metric(admin_url: &str, series: &str) -> Option<f64> {
    let text = http_client().get(format!("{admin_url}/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_puts_a_new_allowlist_in_force_while_a_started_request_finishes() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let mut gateway = GatewayProcess::start(&config(&frappe, &certs, ""), &[]).await;
    let client = https_client(&certs.ca_pem, HttpVersion::Http2);
    assert_eq!(status(&client, &format!("{}/__test/echo", gateway.base_url())).await, 200);

    // A slow request admitted under the old rules, still running during the reload.
    let slow = {
        let (client, url) = (client.clone(), format!("{}/__test/slow?ms=1500", gateway.base_url()));
        tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) })
    };
    let started = |l: &Value| l["path"] == "/__test/slow?ms";
    let upstream_has_it = || frappe.requests().iter().any(|r| r.path() == "/__test/slow");
    eventually("the slow request reached upstream", WAIT, upstream_has_it).await;
    assert!(gateway.access_log_lines().iter().all(|l| !started(l)), "still in flight");

    gateway.write_config(&config(&frappe, &certs, DENY_LOOPBACK));
    gateway.send_signal(Signal::Hup);
    let line = gateway.wait_for_log(reloaded, WAIT).await.expect("reload logged");
    assert!(line.to_string().contains("network"), "the change is named: {line}");
    assert_eq!(status(&client, &format!("{}/__test/echo", gateway.base_url())).await, 403, "new rules");
    let slow = tokio::time::timeout(WAIT, slow).await.expect("slow request ends").expect("task");
    assert_eq!(slow.expect("slow response"), 200, "the request started before the reload completes");
    assert!(gateway.wait_exit(Duration::from_millis(1)).await.is_none(), "still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_file_keeps_the_old_config_and_says_why_once() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let gateway = GatewayProcess::start(&config(&frappe, &certs, ""), &[]).await;
    let client = https_client(&certs.ca_pem, HttpVersion::Http1Only);
    let url = format!("{}/__test/echo", gateway.base_url());

    let broken = config(&frappe, &certs, "[[route]]\npth = \"/x\"\nauth = \"token\"\n");
    let line = broken.lines().position(|l| l.starts_with("pth")).expect("the typo") + 1;
    gateway.write_config(&broken);
    gateway.send_signal(Signal::Hup);
    let failed = gateway.wait_for_log(reload_failed, WAIT).await.expect("failure logged");
    let text = failed.to_string();
    assert!(text.contains(".pth"), "names the key: {text}");
    assert!(text.contains(&format!("line {line}")), "names the line {line}: {text}");
    assert_eq!(status(&client, &url).await, 200, "the old config keeps serving");
    let series = "gateway_config_reloads_total{result=\"error\"}";
    assert_eq!(metric(&gateway.admin_url(), series).await, Some(1.0));
    let failures = gateway.log_lines().iter().filter(|l| reload_failed(l)).count();
    assert_eq!(failures, 1, "one error line per failed reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reload_answers_with_what_changed_or_the_errors() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let gateway = Gateway::start(&config(&frappe, &certs, ""), &[]).await;
    let client = https_client(&certs.ca_pem, HttpVersion::Http1Only);
    let url = format!("{}/__test/echo", gateway.base_url());
    let reload = || http_client().post(format!("{}/reload", gateway.admin_url())).send();

    gateway.write_config(&config(&frappe, &certs, DENY_LOOPBACK));
    let ok = reload().await.expect("reload");
    assert_eq!(ok.status(), 200);
    let body: Value = ok.json().await.expect("json");
    assert!(body["changed"].as_array().expect("changed").contains(&Value::from("network")), "{body}");
    assert_eq!(status(&client, &url).await, 403);

    gateway.write_config(&format!("{}\n[server]\nmax_connections = \"many\"\n", config(&frappe, &certs, "")));
    let bad = reload().await.expect("reload");
    assert_eq!(bad.status(), 422);
    let body: Value = bad.json().await.expect("json");
    let error = &body["errors"][0];
    assert!(
        error["key"].as_str().is_some_and(|k| !k.is_empty()) && error["line"].as_u64() > Some(0),
        "{body}"
    );
    assert_eq!(status(&client, &url).await, 403, "the last good config stays");
    assert_eq!(metric(&gateway.admin_url(), "gateway_config_reloads_total{result=\"ok\"}").await, Some(1.0));
    assert_eq!(
        metric(&gateway.admin_url(), "gateway_config_reloads_total{result=\"error\"}").await,
        Some(1.0)
    );

    // Settings built into running parts are reported, not silently ignored.
    let restart = format!("{}\n[auth]\ncache_ttl = \"7m\"\n", config(&frappe, &certs, ""));
    gateway.write_config(&restart);
    let body: Value = reload().await.expect("reload").json().await.expect("json");
    let needs = body["restart_required"].as_array().expect("restart_required");
    assert!(needs.contains(&Value::from("auth.cache_ttl")), "{body}");
    assert_eq!(status(&client, &url).await, 200, "the allowlist change is in force");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_a_rotated_access_log_without_losing_a_line() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("access.log");
    let toml = ConfigBuilder::new(&frappe.url())
        .tls(&certs)
        .set("log", &format!("access = {}", toml_str(&path.to_string_lossy())))
        .extra(PUBLIC)
        .build();
    let gateway = GatewayProcess::start(&toml, &[]).await;
    let client = https_client(&certs.ca_pem, HttpVersion::Http1Only);
    let mut ids = Vec::new();
    let send = async |n: usize, ids: &mut Vec<String>| {
        for _ in 0..n {
            let response =
                client.get(format!("{}/__test/echo", gateway.base_url())).send().await.expect("ok");
            ids.push(response.headers()["x-request-id"].to_str().expect("id").to_string());
        }
    };
    send(20, &mut ids).await;
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&path, &rotated).expect("rotate");
    send(5, &mut ids).await; // still written to the renamed file
    gateway.send_signal(Signal::Usr1);
    let reopened = |l: &Value| log_message(l) == Some("access log reopened");
    assert!(gateway.wait_for_log(reopened, WAIT).await.is_some(), "reopen logged");
    send(20, &mut ids).await;

    let logged = |ids: &[String]| {
        let mut all = read_json_lines(&rotated);
        all.extend(read_json_lines(&path));
        ids.iter().all(|id| all.iter().filter(|l| l["request_id"] == id.as_str()).count() == 1)
    };
    eventually("every request logged exactly once", WAIT, || logged(&ids)).await;
    let last = ids.last().expect("ids");
    assert!(
        read_json_lines(&path).iter().any(|l| l["request_id"] == last.as_str()),
        "new lines go to the new file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_presented_to_new_handshakes_while_open_h2_keeps_working() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let gateway = GatewayProcess::start(&config(&frappe, &certs, ""), &[]).await;
    let h2 = https_client(&certs.ca_pem, HttpVersion::Http2);
    let url = format!("{}/__test/echo", gateway.base_url());
    let first = h2.get(&url).send().await.expect("h2");
    assert_eq!(first.version(), reqwest::Version::HTTP_2);

    let leaf = certs.rotate_server_cert();
    gateway.send_signal(Signal::Hup);
    let line = gateway.wait_for_log(reloaded, WAIT).await.expect("reload logged");
    assert!(line.to_string().contains("tls_certificate"), "the new certificate is named: {line}");

    let tls = tls_connect(gateway.proxy_addr(), &certs.ca_pem, &["h2"]).await;
    let presented = tls.get_ref().1.peer_certificates().expect("peer certificate")[0].to_vec();
    let expected = rustls_pemfile::certs(&mut leaf.as_bytes()).next().expect("pem").expect("der").to_vec();
    assert_eq!(presented, expected, "a new handshake gets the new certificate");

    for _ in 0..5 {
        let again = h2.get(&url).send().await.expect("the open connection keeps working");
        assert_eq!((again.status().as_u16(), again.version()), (200, reqwest::Version::HTTP_2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_it_does_not_act_on_are_logged_and_never_kill() {
    let frappe = FakeFrappe::start().await;
    let certs = Certs::generate();
    let mut gateway = GatewayProcess::start(&config(&frappe, &certs, ""), &[]).await;
    gateway.send_signal(Signal::Usr2);
    for name in ["PWR", "XFSZ", "PROF"] {
        let sent = std::process::Command::new("kill").args(["-s", name, &gateway.pid().to_string()]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -s {name}");
    }
    let ignored = |l: &Value| log_message(l) == Some("signal ignored");
    let all_logged = gateway.output_lines_matching(ignored, 4, WAIT).await;
    assert!(all_logged, "each signal is logged: {}", gateway.stderr_text());
    let client = https_client(&certs.ca_pem, HttpVersion::Http1Only);
    assert_eq!(status(&client, &format!("{}/__test/echo", gateway.base_url())).await, 200);
    assert!(gateway.wait_exit(Duration::from_millis(1)).await.is_none(), "still running");
}
