//! The differential upstream: `tests/differential/serve.py` runs `frappe_dispatch.py` (Frappe
//! v15's `make_form_dict` and dispatch rebuilt with werkzeug) under gunicorn sync workers, as
//! bench runs Frappe. Each request is answered with what Frappe would have run (`runs`) and as
//! whom (`acts_as`), and recorded in a JSONL file (`DIFF_LOG`) — complete or not.
//!
//! ```ignore
//! let upstream = DifferentialUpstream::start(4);
//! // [upstream] url = upstream.url()
//! let records = upstream.records();
//! ```
//!
//! The python dependencies are not optional: a missing one panics with the install command.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

const START_TIMEOUT: Duration = Duration::from_secs(20);
const INSTALL_HINT: &str = "python3 -m pip install -r tests/differential/requirements.txt";

pub struct DifferentialUpstream {
    child: Child,
    /// Held open: serve.py stops its server when this pipe reaches EOF.
    _stdin: Option<ChildStdin>,
    port: u16,
    log_path: PathBuf,
    _dir: TempDir,
}

/// `tests/differential/` in the source tree.
pub fn differential_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("differential")
}

/// Panics (never skips) when werkzeug or gunicorn cannot be imported.
fn check_python_deps() {
    let out = Command::new("python3")
        .args(["-c", "import werkzeug, gunicorn"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); install Python 3, then: {INSTALL_HINT}"));
    if !out.status.success() {
        panic!(
            "the differential upstream needs werkzeug and gunicorn: run `{INSTALL_HINT}`\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl DifferentialUpstream {
    /// Start gunicorn with `workers` sync workers on 127.0.0.1 (an ephemeral port chosen by
    /// serve.py), with a fresh, empty `DIFF_LOG`. Blocking; returns once the port is known
    /// and gunicorn accepts connections.
    pub fn start(workers: usize) -> DifferentialUpstream {
        check_python_deps();
        let dir = tempfile::Builder::new().prefix("frappe-gateway-diff-").tempdir().expect("temp dir");
        let log_path = dir.path().join("diff_log.jsonl");
        std::fs::write(&log_path, b"").expect("create DIFF_LOG");
        let stderr_path = dir.path().join("gunicorn.stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("gunicorn stderr file");
        let mut child = Command::new("python3")
            .arg(differential_dir().join("serve.py"))
            .args(["--workers", &workers.to_string()])
            .env("DIFF_LOG", &log_path)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .current_dir(dir.path())
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn python3 serve.py: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_default();
        let Ok(port) = line.trim().parse::<u16>() else {
            kill_group(&mut child);
            let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            panic!("serve.py printed no port ({line:?}); if a module is missing run `{INSTALL_HINT}`\n{err}");
        };
        let mut upstream = DifferentialUpstream { child, _stdin: stdin, port, log_path, _dir: dir };
        upstream.wait_ready(&stderr_path);
        upstream
    }

    /// The socket listens before gunicorn boots; wait until a worker answers.
    fn wait_ready(&mut self, stderr_path: &Path) {
        use std::io::{Read, Write};
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        loop {
            let answered = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok().and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                s.write_all(b"GET /__diff/ready HTTP/1.1\r\nHost: ready\r\nConnection: close\r\n\r\n")
                    .ok()?;
                let mut buf = [0u8; 12];
                s.read_exact(&mut buf).ok()?;
                buf.starts_with(b"HTTP/1.").then_some(())
            });
            if answered.is_some() {
                // The readiness probe is not a test request.
                std::fs::write(&self.log_path, b"").expect("truncate DIFF_LOG");
                return;
            }
            if std::time::Instant::now() > deadline || self.child.try_wait().ok().flatten().is_some() {
                let err = std::fs::read_to_string(stderr_path).unwrap_or_default();
                kill_group(&mut self.child);
                panic!("the differential gunicorn did not start\n{err}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Every DIFF_LOG record so far (one per request whose body the app read, completely
    /// or not: `complete`, `runs`, `body_len`, `content_length`, `path`, `query`,
    /// `request_id`, `acts_as`).
    pub fn records(&self) -> Vec<Value> {
        read_diff_log(&self.log_path)
    }

    /// Records carrying the gateway's `X-Request-Id`.
    pub fn records_for(&self, request_id: &str) -> Vec<Value> {
        self.records().into_iter().filter(|r| r["request_id"] == request_id).collect()
    }

    /// Wait (blocking, polling the file) until `predicate` matches a record.
    pub fn wait_for_record(&self, predicate: impl Fn(&Value) -> bool, timeout: Duration) -> Option<Value> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(found) = self.records().into_iter().find(|r| predicate(r)) {
                return Some(found);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// Parse a DIFF_LOG file: one JSON object a line; a torn last line is ignored.
pub fn read_diff_log(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// SIGKILL the whole process group (gunicorn's master and its workers).
fn kill_group(child: &mut Child) {
    let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{}", child.id())]).status();
    let _ = child.wait();
}

impl Drop for DifferentialUpstream {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}
