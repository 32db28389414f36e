//! Child-process plumbing: stdout/stderr captured line by line by background threads (also
//! appended to a log file), waits that wake on each new line instead of sleeping, and
//! `rss_kib` for memory checks.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Which output stream of the child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Default)]
pub struct Lines {
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    /// Streams not yet at EOF; 0 once the child has closed both (normally: it exited).
    pub open_streams: usize,
}

impl Lines {
    pub fn of(&self, stream: Stream) -> &[String] {
        match stream {
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        }
    }
}

/// Captured output, shared with the reader threads.
pub struct Output {
    lines: Mutex<Lines>,
    /// Wakes blocking waiters.
    changed: Condvar,
    /// Wakes async waiters (tokio tests must not block the runtime the fake Frappe runs on).
    notify: Notify,
}

impl Output {
    /// Start one reader thread per stream. Each line is stored, appended to `log` (when
    /// given) and announced to waiters.
    pub fn capture(
        stdout: impl Read + Send + 'static,
        stderr: impl Read + Send + 'static,
        log: Option<File>,
    ) -> Arc<Output> {
        let output = Arc::new(Output {
            lines: Mutex::new(Lines { open_streams: 2, ..Lines::default() }),
            changed: Condvar::new(),
            notify: Notify::new(),
        });
        let log = log.map(|f| Arc::new(Mutex::new(f)));
        for (stream, reader) in
            [(Stream::Stdout, Box::new(stdout) as Box<dyn Read + Send>), (Stream::Stderr, Box::new(stderr))]
        {
            let (output, log) = (output.clone(), log.clone());
            std::thread::spawn(move || output.read_lines(stream, reader, log));
        }
        output
    }

    fn read_lines(&self, stream: Stream, reader: Box<dyn Read + Send>, log: Option<Arc<Mutex<File>>>) {
        for line in BufReader::new(reader).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line).into_owned();
            if let Some(log) = &log {
                let mut file = log.lock().unwrap_or_else(|e| e.into_inner());
                let _ = writeln!(file, "{line}");
            }
            let mut lines = self.lock();
            match stream {
                Stream::Stdout => lines.stdout.push(line),
                Stream::Stderr => lines.stderr.push(line),
            }
            drop(lines);
            self.wake();
        }
        self.lock().open_streams -= 1;
        self.wake();
    }

    fn wake(&self) {
        self.changed.notify_all();
        self.notify.notify_waiters();
    }

    pub fn lock(&self) -> MutexGuard<'_, Lines> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn text(&self, stream: Stream) -> String {
        let lines = self.lock();
        let mut text = lines.of(stream).join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        text
    }

    /// Wait (async) until `check` returns `Some`, re-checking on every new line. Returns
    /// `None` on timeout, or once both streams are closed and `check` still fails.
    pub async fn wait_until<T>(
        &self,
        mut check: impl FnMut(&Lines) -> Option<T>,
        timeout: Duration,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register interest before checking, so a line arriving in between is not missed.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let lines = self.lock();
                if let Some(found) = check(&lines) {
                    return Some(found);
                }
                if lines.open_streams == 0 {
                    return None;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return check(&self.lock());
            }
        }
    }

    /// The stream's lines as JSON (a non-JSON line becomes a JSON string; blank lines skipped).
    pub fn json_lines(&self, stream: Stream) -> Vec<serde_json::Value> {
        self.lock().of(stream).iter().filter(|l| !l.trim().is_empty()).map(|l| parse_line(l)).collect()
    }

    /// Waits for a JSON line of `stream` matching `predicate` (already-captured lines count).
    pub async fn wait_for_json(
        &self,
        stream: Stream,
        predicate: impl Fn(&serde_json::Value) -> bool,
        timeout: Duration,
    ) -> Option<serde_json::Value> {
        let check = |lines: &Lines| lines.of(stream).iter().map(|l| parse_line(l)).find(|v| predicate(v));
        self.wait_until(check, timeout).await
    }

    /// Panics naming what looks like a secret in either stream (see `secrets`); skipped while
    /// the test is already panicking.
    pub fn assert_no_secrets(&self) {
        if std::thread::panicking() {
            return;
        }
        let text = format!("{}{}", self.text(Stream::Stdout), self.text(Stream::Stderr));
        let leaks = super::secrets::leaks(&text);
        assert!(leaks.is_empty(), "secrets in the gateway's logs: {leaks:?}\n{text}");
    }

    /// Blocking twin of [`Output::wait_until`], for sync tests.
    pub fn wait_until_blocking<T>(
        &self,
        mut check: impl FnMut(&Lines) -> Option<T>,
        timeout: Duration,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.lock();
        loop {
            if let Some(found) = check(&lines) {
                return Some(found);
            }
            let now = Instant::now();
            if lines.open_streams == 0 || now >= deadline {
                return None;
            }
            lines = self.changed.wait_timeout(lines, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

pub(crate) fn parse_line(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|_| serde_json::Value::String(line.to_string()))
}

/// Resident set size of a process in KiB (`VmRSS` in /proc/PID/status); `None` if gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// Samples a process's RSS every 20 ms until dropped; `peak()` is the highest seen.
pub struct RssSampler {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(rss_kib(pid).unwrap_or(0)));
        let seen = peak.clone();
        let task = tokio::spawn(async move {
            while let Some(kib) = rss_kib(pid) {
                seen.fetch_max(kib, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        RssSampler { peak, task }
    }

    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}
