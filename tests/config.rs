//! Configuration errors: each kind exits 2, names the key and the line, and leaves nothing
//! listening; `check` prints the effective config with secrets redacted.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_frappe-gateway");

fn run(args: &[&str], config: &str, envs: &[(&str, &str)]) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(args).arg("--config").arg(&path).current_dir(dir.path());
    for var in ["GATEWAY_SYNC_TOKEN", "GATEWAY_WEBHOOK_SECRET", "GATEWAY_REDIS_URL"] {
        cmd.env_remove(var);
    }
    cmd.envs(envs.iter().copied());
    (cmd.output().unwrap(), dir)
}

/// A free loopback port: the test checks that a failed start left nothing listening on it.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn base(port: u16) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n"
    )
}

/// Runs the gateway with `base + extra` and expects exit 2 with `key` on `line`.
fn expect_error(extra: &str, key: &str, line: usize) {
    let port = free_port();
    let config = format!("{}{extra}", base(port));
    let (out, _dir) = run(&[], &config, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit code for {key}: {stderr}");
    let wanted = format!("line {line}: {key}");
    assert!(stderr.contains(&wanted), "expected {wanted:?} in:\n{stderr}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing may listen after a config error"
    );
}

#[test]
fn bad_cidr_names_key_and_line() {
    expect_error("[network]\nallow = [\"10.0.0.0/8\", \"10.1.2.300/24\"]\n", "network.allow[1]", 8);
}

#[test]
fn bad_duration_names_key_and_line() {
    expect_error("[auth]\ncache_ttl = \"ten minutes\"\n", "auth.cache_ttl", 8);
}

#[test]
fn bad_rate_names_key_and_line() {
    expect_error("[rate_limit]\nper_key = \"100 per minute\"\n", "rate_limit.per_key", 8);
}

#[test]
fn unknown_auth_mode_names_key_and_line() {
    expect_error("[[route]]\npath = \"/api/\"\nauth = \"tokne\"\n", "route[0].auth", 9);
}

#[test]
fn zero_verify_budget_names_key_and_line() {
    expect_error("[frappe]\nmax_verify_concurrency = 0\n", "frappe.max_verify_concurrency", 8);
    expect_error("[frappe]\nmax_verify_rate = \"0/sec\"\n", "frappe.max_verify_rate", 8);
}

#[test]
fn bad_upstream_connection_cap_names_key_and_line() {
    // The base config ends inside `[upstream]`: these lines continue it.
    expect_error("max_connections = -1\n", "upstream.max_connections", 7);
    expect_error("max_connections = 2000000\n", "upstream.max_connections", 7);
    expect_error("queue_timeout = \"soon\"\n", "upstream.queue_timeout", 7);
}

#[test]
fn unknown_key_names_key_and_line() {
    expect_error("[auth]\nuser_hedaer = \"X-User\"\n", "auth.user_hedaer", 8);
}

#[test]
fn unset_env_variable_names_key_and_line() {
    expect_error(
        "[rate_limit]\nbackend = \"redis\"\nredis_url_env = \"FGW_TEST_UNSET_VARIABLE\"\n",
        "rate_limit.redis_url_env",
        9,
    );
}

#[test]
fn bad_listen_address_and_url() {
    let config = "[server]\nlisten = \"localhost\"\n[upstream]\nurl = \"ftp://x\"\n";
    let (out, _dir) = run(&[], config, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("line 2: server.listen"), "{stderr}");
    assert!(stderr.contains("line 4: upstream.url"), "{stderr}");
    assert!(stderr.contains("2 configuration errors"), "all errors at once: {stderr}");
}

#[test]
fn missing_certificate_refuses_to_start_and_names_gen_cert() {
    let port = free_port();
    let config =
        base(port).replace("[admin]", "tls_cert = \"certs/none.crt\"\ntls_key = \"certs/none.key\"\n[admin]");
    let (out, dir) = run(&[], &config, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("certs/none.crt"), "names the missing file: {stderr}");
    assert!(stderr.contains("gen-cert"), "names the command: {stderr}");
    assert!(!Path::new(&dir.path().join("certs/none.crt")).exists());
}

#[test]
fn check_prints_effective_config_with_secrets_redacted() {
    let config = format!("{}[frappe]\nsync_token_env = \"FGW_TEST_SYNC\"\n", base(free_port()));
    let secret = "0123456789abcde:fedcba987654321";
    let (out, _dir) =
        run(&["check"], &config, &[("FGW_TEST_SYNC", secret), ("GATEWAY_WEBHOOK_SECRET", "whsecret-xyz")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("max_body_bytes = 26214400"), "defaults shown: {stdout}");
    assert!(stdout.contains("<redacted>"), "{stdout}");
    assert!(
        !stdout.contains("fedcba987654321") && !stdout.contains("whsecret-xyz"),
        "secret leaked: {stdout}"
    );
}

#[test]
fn check_reports_errors_with_exit_2() {
    let (out, _dir) =
        run(&["check"], "[upstream]\nurl = \"http://127.0.0.1:8000\"\n[log]\nlevel = \"loud\"\n", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 4: log.level"));
}

#[test]
fn sample_gateway_toml_is_valid() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml");
    let out = Command::new(BIN).args(["check", "--config"]).arg(&sample).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
