//! `frappe-gateway check` as a pre-deploy gate: each risky-setting warning, the certificate
//! and key checks, exit codes 0 / 1 (`--strict`) / 2, the effective config as TOML, type
//! errors named by key with index and by file, the Redis URL, and no panic on a closed pipe.
//! Also the `health` subcommand against a running gateway.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

use common::{Certs, ConfigBuilder, FakeFrappe, Gateway};

const BIN: &str = env!("CARGO_BIN_EXE_frappe-gateway");
const SYNC: (&str, &str) = ("GATEWAY_SYNC_TOKEN", "0123456789abcde:fedcba987654321");
const WEBHOOK: (&str, &str) = ("GATEWAY_WEBHOOK_SECRET", "whsecret-xyz");

/// A config `check --strict` accepts: TLS with the test certificate, loopback listeners, a
/// global rate limit; the secrets come from `SYNC` and `WEBHOOK`.
fn clean(certs: &Certs) -> ConfigBuilder {
    ConfigBuilder::new("http://127.0.0.1:8000")
        .tls(certs)
        .set("server", "listen = \"127.0.0.1:8443\"")
        .set("admin", "listen = \"127.0.0.1:9901\"")
        .extra("[rate_limit]\nper_ip = \"600/min\"\n[[route]]\npath = \"/api/\"\nauth = \"token\"\n")
}

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    _dir: tempfile::TempDir,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// `frappe-gateway <args> --config <dir>/gateway.toml` run in that temp dir, with only `envs`
/// of the gateway's variables set.
fn run(args: &[&str], config: &str, envs: &[(&str, &str)]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let out = command(args, &path, envs).current_dir(dir.path()).output().unwrap();
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        _dir: dir,
    }
}

fn command(args: &[&str], config: &Path, envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).arg("--config").arg(config).stdin(Stdio::null());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("GATEWAY_") || name == "RUST_LOG" {
            cmd.env_remove(name);
        }
    }
    cmd.envs(envs.iter().copied());
    cmd
}

fn check(config: &str, strict: bool) -> Run {
    let args: &[&str] = if strict { &["check", "--strict"] } else { &["check"] };
    run(args, config, &[SYNC, WEBHOOK])
}

/// `check` passes without `--strict` and fails with exit 1 under it, naming `key`.
fn expect_warning(config: &str, key: &str, words: &str) -> String {
    let loose = check(config, false);
    assert_eq!(loose.code(), Some(0), "warnings alone pass without --strict:\n{}", loose.stderr);
    let strict = check(config, true);
    assert_eq!(strict.code(), Some(1), "warnings fail under --strict:\n{}", strict.stderr);
    let line = strict
        .stderr
        .lines()
        .find(|l| l.starts_with(&format!("warning: {key}: ")))
        .unwrap_or_else(|| panic!("no warning for {key} in:\n{}", strict.stderr))
        .to_string();
    assert!(line.contains(words), "{line}");
    assert!(strict.stderr.contains("check failed (--strict)"), "{}", strict.stderr);
    line
}

/// `check` exits 2 naming `key`, the error line containing `words`.
fn expect_error(config: &str, key: &str, words: &str) -> String {
    let out = check(config, false);
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with(&format!("error: {key}: ")))
        .unwrap_or_else(|| panic!("no error for {key} in:\n{}", out.stderr))
        .to_string();
    assert!(line.contains(words), "{line}");
    line
}

#[test]
fn clean_config_passes_strict_and_prints_effective_toml() {
    let certs = Certs::generate();
    let out = check(&clean(&certs).build(), true);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(!out.stderr.contains("warning:"), "{}", out.stderr);
    assert!(out.stderr.trim_end().ends_with("gateway.toml: check passed"), "{}", out.stderr);
    // The certificate's names and dates are listed.
    let note = out.stderr.lines().find(|l| l.starts_with("note: certificate ")).expect("certificate note");
    assert!(note.contains("SANs localhost, 127.0.0.1"), "{note}");
    assert!(
        note.contains("CN=localhost") && note.contains("days left") && note.contains("2 in the chain"),
        "{note}"
    );
    // stdout is TOML (not a debug dump), defaults filled in, secrets never shown.
    let table: toml::Table = toml::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", out.stdout));
    assert_eq!(table["server"]["max_body_bytes"].as_integer(), Some(26_214_400));
    assert_eq!(table["auth"]["cache_ttl"].as_str(), Some("10m"));
    assert_eq!(table["route"][0]["path"].as_str(), Some("/api/"));
    assert!(
        out.stdout.contains("sync_token_env = \"GATEWAY_SYNC_TOKEN\"  # set: <redacted>"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("fedcba987654321") && !out.stdout.contains("whsecret-xyz"));
    assert!(!out.stdout.contains("ServerConfig {"), "no Rust debug dump");
}

#[test]
fn effective_config_is_a_config_check_accepts() {
    let certs = Certs::generate();
    let first = check(&clean(&certs).build(), true);
    assert_eq!(first.code(), Some(0), "{}", first.stderr);
    let again = check(&first.stdout, true);
    assert_eq!(again.code(), Some(0), "{}", again.stderr);
}

#[test]
fn warns_open_token_route_without_rate_limit() {
    let certs = Certs::generate();
    let config = clean(&certs).build().replace(
        "[rate_limit]\nper_ip = \"600/min\"\n",
        "[network]\nallow = [\"10.0.0.0/8\", \"0.0.0.0/0\"]\n",
    );
    let line = expect_warning(&config, "route[0]", "accepts every address");
    assert!(line.contains("network.allow[1] is 0.0.0.0/0") && line.contains("no rate limit"), "{line}");
    // A network.allow that leaves addresses out closes the route.
    let config = clean(&certs)
        .build()
        .replace("[rate_limit]\nper_ip = \"600/min\"\n", "[network]\nallow = [\"10.0.0.0/8\"]\n");
    assert_eq!(check(&config, true).code(), Some(0), "network.allow closes the route");
}

#[test]
fn warns_open_route_allow_v6() {
    let certs = Certs::generate();
    let config = clean(&certs)
        .build()
        .replace("[rate_limit]\nper_ip = \"600/min\"\n", "[network]\nallow = [\"10.0.0.0/8\"]\n")
        + "[[route]]\npath = \"/files/\"\nauth = \"token\"\nallow = [\"::/0\"]\n";
    // A narrow network.allow still closes it: nothing to warn about.
    assert_eq!(check(&config, true).code(), Some(0));
    let open = config.replace("allow = [\"10.0.0.0/8\"]\n", "allow = []\n");
    let line = expect_warning(&open, "route[1]", "route[1].allow[0] is ::/0");
    assert!(line.contains("\"/files/\""), "{line}");
}

#[test]
fn warns_trusted_proxies_public_or_all() {
    let certs = Certs::generate();
    let config =
        clean(&certs).extra("[network]\ntrusted_proxies = [\"10.0.0.0/8\", \"0.0.0.0/0\"]\n").build();
    expect_warning(&config, "network.trusted_proxies[1]", "trusts every address");
    let config = clean(&certs).extra("[network]\ntrusted_proxies = [\"198.51.100.7\"]\n").build();
    expect_warning(&config, "network.trusted_proxies[0]", "public addresses");
}

#[test]
fn warns_plain_http_on_non_loopback_listener() {
    let config = ConfigBuilder::new("http://127.0.0.1:8000")
        .set("server", "listen = \"0.0.0.0:8080\"")
        .set("admin", "listen = \"127.0.0.1:9901\"")
        .extra("[rate_limit]\nper_ip = \"600/min\"\n")
        .build();
    expect_warning(&config, "server.listen", "plain HTTP on a non-loopback address");
    // Plain HTTP on loopback (behind a local TLS proxy) is fine.
    let local = config.replace("0.0.0.0:8080", "127.0.0.1:8080");
    assert_eq!(check(&local, true).code(), Some(0), "{}", check(&local, true).stderr);
}

#[test]
fn warns_stale_if_error_below_cache_ttl() {
    let certs = Certs::generate();
    let config = clean(&certs).extra("[auth]\ncache_ttl = \"10m\"\nstale_if_error = \"2m\"\n").build();
    expect_warning(&config, "auth.stale_if_error", "2m is shorter than auth.cache_ttl 10m");
}

#[test]
fn warns_missing_sync_token_and_webhook_secret() {
    let certs = Certs::generate();
    let config = clean(&certs).build();
    let out = run(&["check", "--strict"], &config, &[]);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("warning: frappe.sync_token_env: GATEWAY_SYNC_TOKEN is not set"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("warning: frappe.webhook_secret_env: GATEWAY_WEBHOOK_SECRET is not set"),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout.contains("webhook_secret_env = \"GATEWAY_WEBHOOK_SECRET\"  # not set"),
        "{}",
        out.stdout
    );
    assert_eq!(run(&["check"], &config, &[]).code(), Some(0));
}

#[test]
fn warns_admin_listener_off_loopback() {
    let certs = Certs::generate();
    let config = clean(&certs).set("admin", "listen = \"0.0.0.0:9901\"").build();
    expect_warning(&config, "admin.listen", "is not a loopback address");
}

fn with_tls_files(certs: &Certs, cert: &Path, key: &Path) -> String {
    clean(certs)
        .set("server", &format!("tls_cert = {:?}", cert.display().to_string()))
        .set("server", &format!("tls_key = {:?}", key.display().to_string()))
        .build()
}

#[test]
fn missing_certificate_is_an_error() {
    let certs = Certs::generate();
    let config = with_tls_files(&certs, &certs.dir().join("none.crt"), &certs.key_path);
    expect_error(&config, "server.tls_cert", "none.crt does not exist");
    // With self_signed_if_missing the start would write a pair: a warning, not an error.
    let dev = config.replace("[admin]", "self_signed_if_missing = true\n[admin]");
    expect_warning(&dev, "server.tls_cert", "writes a self-signed pair");
}

#[test]
fn unreadable_certificate_and_key_are_errors() {
    let certs = Certs::generate();
    // A directory exists but cannot be read as a file (permissions do not stop root).
    let dir = certs.dir().join("a-directory.crt");
    std::fs::create_dir(&dir).unwrap();
    let config = with_tls_files(&certs, &dir, &certs.key_path);
    expect_error(&config, "server.tls_cert", "cannot read certificate");
    let config = with_tls_files(&certs, &certs.cert_path, &dir);
    expect_error(&config, "server.tls_key", "cannot read private key");
}

#[test]
fn certificate_that_does_not_parse_is_an_error() {
    let certs = Certs::generate();
    let junk = certs.dir().join("junk.crt");
    std::fs::write(&junk, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
    expect_error(&with_tls_files(&certs, &junk, &certs.key_path), "server.tls_cert", "junk.crt");
    let empty = certs.dir().join("empty.crt");
    std::fs::write(&empty, "not pem at all\n").unwrap();
    expect_error(&with_tls_files(&certs, &empty, &certs.key_path), "server.tls_cert", "no PEM certificate");
    let nokey = certs.dir().join("nokey.key");
    std::fs::write(&nokey, certs.server_chain_pem()).unwrap();
    expect_error(&with_tls_files(&certs, &certs.cert_path, &nokey), "server.tls_key", "no PEM private key");
}

#[test]
fn key_of_another_certificate_is_an_error() {
    let certs = Certs::generate();
    let (_, other_key) = certs.issue_for("other", &["localhost"]);
    let line = expect_error(
        &with_tls_files(&certs, &certs.cert_path, &other_key),
        "server.tls_key",
        "does not match",
    );
    assert!(line.contains("other.key") && line.contains("server.crt"), "{line}");
}

#[test]
fn expired_and_not_yet_valid_certificates_are_errors() {
    let certs = Certs::generate();
    let (cert, key) = certs.issue_dated("expired", (2001, 1, 1), (2002, 1, 1));
    expect_error(&with_tls_files(&certs, &cert, &key), "server.tls_cert", "expired on 2002-01-01");
    let (cert, key) = certs.issue_dated("future", (2090, 1, 1), (2091, 1, 1));
    expect_error(&with_tls_files(&certs, &cert, &key), "server.tls_cert", "not valid before 2090-01-01");
}

#[test]
fn self_signed_certificate_warns_and_its_names_are_listed() {
    let certs = Certs::generate();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("gateway.crt"), dir.path().join("gateway.key"));
    let gen =
        Command::new(BIN).args(["gen-cert", "--host", "erp.example.com", "--out"]).arg(dir.path()).output();
    assert!(gen.unwrap().status.success());
    let line = expect_warning(&with_tls_files(&certs, &cert, &key), "server.tls_cert", "self-signed");
    assert!(line.contains("gateway.crt"), "{line}");
    let out = check(&with_tls_files(&certs, &cert, &key), false);
    assert!(out.stderr.contains("SANs erp.example.com, localhost, 127.0.0.1, ::1"), "{}", out.stderr);
}

/// Type errors name the key with its index, the file read (absolute) and the line, at
/// `check` and at start alike.
#[test]
fn type_errors_name_key_index_file_and_line() {
    let config = "[upstream]\nurl = \"http://127.0.0.1:8000\"\n[server]\nmax_connections = \"4096\"\n";
    for args in [&["check"][..], &[][..]] {
        let out = run(args, config, &[]);
        assert_eq!(out.code(), Some(2), "{args:?}: {}", out.stderr);
        let file = out._dir.path().canonicalize().unwrap().join("gateway.toml");
        let wanted = format!(
            "{}:line 4: server.max_connections: expected an integer, found the string \"4096\"",
            file.display()
        );
        assert!(out.stderr.contains(&wanted), "{args:?}: expected {wanted:?} in:\n{}", out.stderr);
    }
    let config =
        "[upstream]\nurl = \"http://127.0.0.1:8000\"\n[[route]]\npath = \"/a/\"\nauth = \"public\"\n\
                  [[route]]\npath = \"/b/\"\nauth = \"token\"\nallow = [\"10.0.0.0/8\", 10]\n";
    let out = run(&["check"], config, &[]);
    assert_eq!(out.code(), Some(2));
    assert!(
        out.stderr.contains("line 9: route[1].allow[1]: expected a string, found the integer 10"),
        "{}",
        out.stderr
    );
    let config =
        "[upstream]\nurl = \"http://127.0.0.1:8000\"\n[[route]]\npath = \"/a/\"\nauth = \"public\"\n\
                  [[route]]\npth = \"/b/\"\n";
    let out = run(&["check"], config, &[]);
    assert!(out.stderr.contains("line 7: route[1].pth: unknown field `pth`"), "{}", out.stderr);
    let config = "[upstream]\nurl = \"http://127.0.0.1:8000\"\n[auth]\nforward_authorization = \"yes\"\n";
    let out = run(&["check"], config, &[]);
    assert!(
        out.stderr
            .contains("line 4: auth.forward_authorization: expected a boolean, found the string \"yes\""),
        "{}",
        out.stderr
    );
}

#[test]
fn unreadable_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let out = command(&["check"], &missing, &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&missing.display().to_string()) && stderr.contains("cannot read file"),
        "{stderr}"
    );
}

#[test]
fn bad_redis_url_is_a_config_error_at_check_and_at_start() {
    let config = "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
                  [upstream]\nurl = \"http://127.0.0.1:9\"\n[rate_limit]\nbackend = \"redis\"\n";
    for bad in [
        "http://:hunter2@127.0.0.1:6379",
        "redis//:hunter2@localhost",
        "redis://:hunter2@127.0.0.1:6379/notadb",
    ] {
        for args in [&["check"][..], &[][..]] {
            let out = run(args, config, &[("GATEWAY_REDIS_URL", bad)]);
            assert_eq!(out.code(), Some(2), "{bad} {args:?}: {}", out.stderr);
            assert!(
                out.stderr.contains("line 8: rate_limit.backend")
                    || out.stderr.contains("rate_limit.redis_url_env"),
                "{}",
                out.stderr
            );
            assert!(out.stderr.contains("is not a Redis URL"), "{bad}: {}", out.stderr);
            assert!(!out.stderr.contains("hunter2"), "the URL's password leaked: {}", out.stderr);
        }
    }
    let good = run(&["check"], config, &[("GATEWAY_REDIS_URL", "redis://:hunter2@127.0.0.1:6379/0")]);
    assert_eq!(good.code(), Some(0), "{}", good.stderr);
    assert!(good.stdout.contains("redis_url_env = \"GATEWAY_REDIS_URL\"  # set: <redacted>"));
    assert!(!good.stdout.contains("hunter2"));
}

/// Runs the binary with stdout (and optionally stderr) on a pipe whose reader is already
/// closed: every write fails with EPIPE, deterministically.
fn run_into_closed_pipe(args: &[&str], config: &Path, close_stderr: bool) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut cmd = command(args, config, &[SYNC]);
    cmd.stdout(writer.try_clone().unwrap());
    if close_stderr {
        cmd.stderr(writer);
        let status = cmd.status().unwrap();
        return Output { status, stdout: Vec::new(), stderr: Vec::new() };
    }
    drop(writer);
    cmd.stderr(Stdio::piped()).output().unwrap()
}

fn assert_no_panic(what: &str, out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(101), "{what} panicked: {stderr}");
    assert!(out.status.code().is_some(), "{what} died of a signal: {:?}", out.status);
    assert!(!stderr.contains("panicked") && !stderr.contains("failed printing"), "{what}: {stderr}");
}

#[test]
fn no_command_panics_on_a_closed_pipe() {
    let certs = Certs::generate();
    let (_dir, path) = common::write_temp_config(&clean(&certs).build());
    let out = run_into_closed_pipe(&["check"], &path, false);
    assert_no_panic("check", &out);
    assert_eq!(out.status.code(), Some(0));
    let (_bad_dir, bad) = common::write_temp_config("[server]\nlisten = 1\n");
    for (what, args, config) in [
        ("check --strict", &["check", "--strict"][..], &path),
        ("--help", &["--help"][..], &path),
        ("--version", &["--version"][..], &path),
        ("check with errors", &["check"][..], &bad),
        ("start with errors", &[][..], &bad),
        ("health", &["health", "--url", "http://127.0.0.1:9/healthz", "--timeout", "1s"][..], &path),
    ] {
        assert_no_panic(what, &run_into_closed_pipe(args, config, false));
        assert_no_panic(what, &run_into_closed_pipe(args, config, true));
    }
    let gen_dir = tempfile::tempdir().unwrap();
    let out = run_into_closed_pipe(&["gen-cert", "--out", gen_dir.path().to_str().unwrap()], &path, true);
    assert_no_panic("gen-cert", &out);
    assert_eq!(out.status.code(), Some(0));
}

/// The shell pipeline operators type, with an effective config far larger than a pipe's
/// buffer so `head` has gone before the gateway has written it all.
#[test]
fn check_piped_into_head_exits_cleanly() {
    let certs = Certs::generate();
    let mut builder = clean(&certs);
    let routes: String =
        (0..3000).map(|i| format!("[[route]]\npath = \"/r{i}/\"\nauth = \"public\"\n")).collect();
    builder = builder.extra(&routes);
    let (_dir, path) = common::write_temp_config(&builder.build());
    let script = "\"$0\" check --config \"$1\" | head -1; echo \"status=${PIPESTATUS[0]}\" >&2";
    let out = Command::new("bash")
        .args(["-c", script, BIN])
        .arg(&path)
        .env("GATEWAY_SYNC_TOKEN", SYNC.1)
        .env("GATEWAY_WEBHOOK_SECRET", WEBHOOK.1)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.starts_with("# Effective configuration of "), "{stdout}");
    assert_eq!(stdout.lines().count(), 1);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("status=0"), "check's own exit status: {stderr}");
}

#[tokio::test]
async fn health_asks_the_running_gateway() {
    let frappe = FakeFrappe::start().await;
    let config = ConfigBuilder::new(&frappe.url()).build();
    let gateway = Gateway::start(&config, &[]).await;
    let url = format!("{}/healthz", gateway.admin_url());
    let ok = tokio::task::spawn_blocking(move || Command::new(BIN).args(["health", "--url", &url]).output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("200"));
    // The default URL comes from admin.listen in the config.
    let file = gateway.config_path().to_path_buf();
    let port = gateway.admin_addr().port();
    let text = std::fs::read_to_string(&file).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pinned: PathBuf = dir.path().join("gateway.toml");
    std::fs::write(
        &pinned,
        text.replacen(
            "listen = \"127.0.0.1:0\"\n\n[upstream]",
            &format!("listen = \"0.0.0.0:{port}\"\n\n[upstream]"),
            1,
        ),
    )
    .unwrap();
    assert!(std::fs::read_to_string(&pinned).unwrap().contains(&format!("0.0.0.0:{port}")));
    let by_config = tokio::task::spawn_blocking(move || {
        Command::new(BIN).arg("health").arg("--config").arg(&pinned).output()
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(by_config.status.code(), Some(0), "{}", String::from_utf8_lossy(&by_config.stderr));
    drop(gateway);
    let refused = format!("http://127.0.0.1:{port}/healthz");
    let down = tokio::task::spawn_blocking(move || {
        Command::new(BIN).args(["health", "--timeout", "2s", "--url", &refused]).output()
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(down.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("unhealthy"),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
}

/// The shipped Docker config passes `check` (with test certificates at its paths' place):
/// only the admin-listener warning it accepts on purpose; and docker-compose.yml gives the
/// gateways more time to stop than `server.shutdown_grace`.
#[test]
fn docker_deployment_config_passes_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let certs = Certs::generate();
    let toml = std::fs::read_to_string(root.join("deploy/gateway.docker.toml")).unwrap();
    let toml = toml
        .replace("/etc/frappe-gateway/certs/gateway.crt", &certs.cert_path.display().to_string())
        .replace("/etc/frappe-gateway/certs/gateway.key", &certs.key_path.display().to_string());
    let out =
        run(&["check", "--quiet"], &toml, &[SYNC, WEBHOOK, ("GATEWAY_REDIS_URL", "redis://redis:6379/0")]);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "--quiet prints no config: {}", out.stdout);
    let warnings: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{}", out.stderr);
    assert!(warnings[0].starts_with("warning: admin.listen:"), "{}", out.stderr);

    let table: toml::Table = toml::from_str(&toml).unwrap();
    let grace = humantime::parse_duration(table["server"]["shutdown_grace"].as_str().unwrap()).unwrap();
    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    let stop = compose
        .lines()
        .find_map(|l| l.trim().strip_prefix("stop_grace_period:"))
        .map(|v| humantime::parse_duration(v.trim()).unwrap())
        .expect("stop_grace_period in docker-compose.yml");
    assert!(stop > grace, "stop_grace_period {stop:?} must exceed server.shutdown_grace {grace:?}");
    assert!(compose.contains("./deploy/gateway.docker.toml:/etc/frappe-gateway/gateway.toml:ro"));
}
