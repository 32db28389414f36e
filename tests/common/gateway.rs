//! The real `frappe-gateway` binary as a child process, for the tests of the binary itself
//! (quick start, exit codes, signals, config errors): config written to a temp file,
//! stdout/stderr captured, readiness read from the log, signals, exit. Dropping a
//! [`GatewayProcess`] kills the process and checks its output for secrets. Everything else
//! runs the gateway in-process ([`super::in_process::Gateway`]).
//!
//! Contract with the binary: it logs JSON lines to stderr and, once bound, emits one whose
//! `message` is `"listening"` with string fields `proxy_addr` and `admin_addr` (and a boolean
//! `tls`). Fields are looked up at the top level first, then under `fields` (tracing's JSON
//! layout without `flatten_event`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use super::process::{parse_line, Lines, Output, Stream};

/// How long `start` waits for the "listening" line.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `run_to_exit` lets a one-shot command (`check`, bad config) run.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

pub const GATEWAY_BIN: &str = env!("CARGO_BIN_EXE_frappe-gateway");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Term,
    Int,
    Hup,
    Usr1,
    Usr2,
    Kill,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Int => "INT",
            Signal::Hup => "HUP",
            Signal::Usr1 => "USR1",
            Signal::Usr2 => "USR2",
            Signal::Kill => "KILL",
        }
    }
}

/// Why [`GatewayProcess::try_start`] gave up; `Display` shows the captured output.
#[derive(Debug)]
pub struct StartFailure {
    pub reason: String,
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (exit: {:?})\n--- stderr ---\n{}--- stdout ---\n{}",
            self.reason, self.status, self.stderr, self.stdout
        )
    }
}

pub struct GatewayProcess {
    child: Child,
    exit: Option<ExitStatus>,
    output: Arc<Output>,
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    tls: bool,
    config_path: PathBuf,
    _config_dir: TempDir,
}

impl GatewayProcess {
    /// Write `config_toml` to a temp file, run `frappe-gateway --config <file>` from that temp
    /// dir with `envs` added to the environment (see [`spawn`] for what is removed), and wait (async, up to 15 s) for the "listening" line.
    /// Async because the fake Frappe usually runs on the same tokio runtime and must keep
    /// serving while the gateway starts. Panics with the captured output on failure.
    pub async fn start(config_toml: &str, envs: &[(&str, &str)]) -> GatewayProcess {
        match GatewayProcess::try_start(config_toml, envs).await {
            Ok(gateway) => gateway,
            Err(failure) => panic!("gateway did not start: {failure}"),
        }
    }

    pub async fn try_start(config_toml: &str, envs: &[(&str, &str)]) -> Result<GatewayProcess, StartFailure> {
        GatewayProcess::try_start_program(GATEWAY_BIN, &[], config_toml, envs).await
    }

    /// Like [`GatewayProcess::try_start`] with another program (a stand-in in harness tests):
    /// runs `program pre_args... --config <file>`.
    pub async fn try_start_program(
        program: &str,
        pre_args: &[&str],
        config_toml: &str,
        envs: &[(&str, &str)],
    ) -> Result<GatewayProcess, StartFailure> {
        let config_dir =
            tempfile::Builder::new().prefix("frappe-gateway-config-").tempdir().expect("config temp dir");
        let config_path = config_dir.path().join("gateway.toml");
        std::fs::write(&config_path, config_toml).expect("write gateway.toml");
        let mut args: Vec<String> = pre_args.iter().map(|a| a.to_string()).collect();
        args.push("--config".into());
        args.push(config_path.to_string_lossy().into_owned());
        let (mut child, output) = spawn(program, &args, envs, config_dir.path());

        let ready = output.wait_until(find_listening, READY_TIMEOUT).await;
        let Some((proxy_addr, admin_addr, tls)) = ready else {
            let _ = child.kill();
            let status = child.wait().ok();
            return Err(StartFailure {
                reason: "no \"listening\" log line with proxy_addr and admin_addr".into(),
                status,
                stdout: output.text(Stream::Stdout),
                stderr: output.text(Stream::Stderr),
            });
        };
        Ok(GatewayProcess {
            child,
            exit: None,
            output,
            proxy_addr,
            admin_addr,
            tls: tls.unwrap_or_else(|| config_toml.contains("tls_cert")),
            config_path,
            _config_dir: config_dir,
        })
    }

    /// Run the binary with `args` to completion (for `check --config F`, config errors…);
    /// blocking, at most 60 s, from an empty temp dir (pass absolute paths, e.g. from
    /// [`write_temp_config`]). Returns (status, stdout, stderr).
    pub fn run_to_exit(args: &[&str], envs: &[(&str, &str)]) -> (ExitStatus, String, String) {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let cwd = tempfile::tempdir().expect("working dir");
        let (mut child, output) = spawn(GATEWAY_BIN, &args, envs, cwd.path());
        let closed = output.wait_until_blocking(|lines| (lines.open_streams == 0).then_some(()), RUN_TIMEOUT);
        if closed.is_none() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "frappe-gateway {args:?} still running after {RUN_TIMEOUT:?}\n{}",
                output.text(Stream::Stderr)
            );
        }
        let status = child.wait().expect("wait for frappe-gateway");
        (status, output.text(Stream::Stdout), output.text(Stream::Stderr))
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// `https://localhost:PORT` with TLS (use the test CA and a client pinning localhost),
    /// else `http://127.0.0.1:PORT`. No trailing slash.
    pub fn base_url(&self) -> String {
        match self.tls {
            true => format!("https://localhost:{}", self.proxy_addr.port()),
            false => format!("http://{}", self.proxy_addr),
        }
    }

    /// `http://127.0.0.1:PORT` of the admin listener.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Replace the config file (then `send_signal(Signal::Hup)` to reload).
    pub fn write_config(&self, config_toml: &str) {
        std::fs::write(&self.config_path, config_toml).expect("rewrite gateway.toml");
    }

    pub fn stdout_text(&self) -> String {
        self.output.text(Stream::Stdout)
    }

    pub fn stderr_text(&self) -> String {
        self.output.text(Stream::Stderr)
    }

    /// Application-log lines as JSON.
    pub fn log_lines(&self) -> Vec<Value> {
        self.output.json_lines(Stream::Stderr)
    }

    /// Access-log lines written to stdout (`[log] access = "stdout"`), as JSON. For a file
    /// access log use [`read_json_lines`].
    pub fn access_log_lines(&self) -> Vec<Value> {
        self.output.json_lines(Stream::Stdout)
    }

    /// Wait for a stderr log line matching `predicate` (already-captured lines count).
    pub async fn wait_for_log(&self, predicate: impl Fn(&Value) -> bool, timeout: Duration) -> Option<Value> {
        self.output.wait_for_json(Stream::Stderr, predicate, timeout).await
    }

    /// Wait for an access-log line on stdout: it is written after the response is sent, so
    /// a test must not read the log right after the response arrives.
    pub async fn wait_for_access_log(
        &self,
        predicate: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<Value> {
        self.output.wait_for_json(Stream::Stdout, predicate, timeout).await
    }

    /// Waits until `count` application-log lines match `predicate`; false after `timeout`.
    pub async fn output_lines_matching(
        &self,
        predicate: impl Fn(&Value) -> bool,
        count: usize,
        timeout: Duration,
    ) -> bool {
        let check = |lines: &Lines| {
            (lines.stderr.iter().map(|l| parse_line(l)).filter(|v| predicate(v)).count() >= count)
                .then_some(())
        };
        self.output.wait_until(check, timeout).await.is_some()
    }

    /// Send a signal with the `kill` command (no libc needed).
    pub fn send_signal(&self, signal: Signal) {
        let status = Command::new("kill")
            .args(["-s", signal.name(), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {} failed", signal.name());
    }

    /// Wait for the process to exit: both output pipes reach EOF when it does, which wakes
    /// this without polling. `None` if still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        let closed = self.output.wait_until(|lines| (lines.open_streams == 0).then_some(()), timeout).await;
        self.exit = match closed {
            Some(()) => self.child.wait().ok(),
            None => self.child.try_wait().ok().flatten(),
        };
        self.exit
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.output.assert_no_secrets();
    }
}

/// Start `program` in `cwd` (a temp dir, so relative paths such as a self-signed cert never
/// land in the repository) with a hermetic environment: the developer's `GATEWAY_*` and
/// `RUST_LOG` variables are removed, then `envs` added.
fn spawn(program: &str, args: &[String], envs: &[(&str, &str)], cwd: &Path) -> (Child, Arc<Output>) {
    for (_, value) in envs {
        super::secrets::remember(value);
    }
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        let name_str = name.to_string_lossy();
        if name_str.starts_with("GATEWAY_") || name_str == "RUST_LOG" {
            command.env_remove(&name);
        }
    }
    let mut child = command
        .args(args)
        .current_dir(cwd)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    (child, Output::capture(stdout, stderr, None))
}

/// A field of a JSON log line: top level first, then tracing's nested `fields` object.
pub fn log_field<'a>(line: &'a Value, key: &str) -> Option<&'a Value> {
    line.get(key).or_else(|| line.get("fields").and_then(|f| f.get(key)))
}

/// The `message` of a JSON log line, wherever the layout puts it.
pub fn log_message(line: &Value) -> Option<&str> {
    log_field(line, "message").and_then(Value::as_str)
}

/// (proxy_addr, admin_addr, tls) from the first "listening" line.
fn find_listening(lines: &Lines) -> Option<(SocketAddr, SocketAddr, Option<bool>)> {
    lines.stderr.iter().find_map(|line| {
        let value: Value = serde_json::from_str(line).ok()?;
        if log_message(&value)? != "listening" {
            return None;
        }
        let addr = |key: &str| log_field(&value, key)?.as_str()?.parse::<SocketAddr>().ok();
        let tls = log_field(&value, "tls").and_then(Value::as_bool);
        Some((addr("proxy_addr")?, addr("admin_addr")?, tls))
    })
}

/// Write `config_toml` to `gateway.toml` in a new temp dir (kept alive by the returned
/// guard), for `Gateway::run_to_exit(&["check", "--config", path])`.
pub fn write_temp_config(config_toml: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix("frappe-gateway-config-").tempdir().expect("temp dir");
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config_toml).expect("write gateway.toml");
    (dir, path)
}

/// JSON lines of a file (e.g. a file access log); missing file → empty.
pub fn read_json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(parse_line)
        .collect()
}
