//! One JSON line per request, written by a background thread so the request path never
//! blocks on stdout or disk.

mod line;

use std::borrow::Cow;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, SystemTime};

use crate::config::AccessLogTarget;
use crate::outcome::{AuthOutcome, Decision};
use crate::shard::{self, Padded, SHARDS};

/// Bytes a shard holds for the writer before further lines are dropped (and counted) rather
/// than stalling requests: about 3,000 lines each, 0.3 s of a worker at 10,000 requests/s;
/// the writer takes them every 20 ms. Nothing is allocated up front: a shard grows to what
/// one interval's lines need and keeps that buffer.
const SHARD_BYTES: usize = 2 * 1024 * 1024;
/// How often the writer wakes to write what queued up. Waking per line would cost a thread
/// wake-up (futex + context switch) per request; this bounds how stale the file can be.
const WRITE_INTERVAL: Duration = Duration::from_millis(20);
/// How often lost lines are reported in the application log.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Everything one access-log line says about a request ([`line::write`] writes it, in this
/// order; absent fields are left out). Never holds a secret.
#[derive(Debug)]
pub(crate) struct AccessRecord<'a> {
    pub time: SystemTime,
    pub request_id: &'a str,
    /// The client as resolved through trusted proxies (`X-Forwarded-For`).
    pub client_ip: IpAddr,
    /// The address the connection came from (a trusted proxy, or the client itself).
    pub peer: IpAddr,
    pub method: &'a str,
    /// The `Host` (HTTP/1.1) or `:authority` (HTTP/2) the client asked for, as sent.
    pub host: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
    /// Path plus query *keys* only: query values can hold secrets (`sid`, `api_secret`).
    pub path: LoggablePath<'a>,
    pub protocol: &'static str,
    pub tls: Option<&'static str>,
    pub status: u16,
    pub upstream_status: Option<u16>,
    /// The backend the request went to (`host:port` of its route's upstream).
    pub upstream: Option<Arc<str>>,
    /// Time from sending upstream to the upstream's response head (`upstream_ms`).
    pub upstream_time: Option<Duration>,
    /// `latency_ms`.
    pub latency: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub route: Option<Arc<str>>,
    pub user: Option<Arc<str>>,
    pub api_key: Option<KeyLabel<'a>>,
    pub auth: Option<AuthOutcome>,
    pub doctype: Option<String>,
    pub rpc: Option<String>,
    pub decision: Decision,
    pub reason: Option<Cow<'static, str>>,
}

/// Handle to the access-log writer; cheap to clone.
#[derive(Clone)]
pub(crate) struct AccessLog {
    pending: Option<Arc<Pending>>,
    dropped: Arc<Drops>,
    writer: Option<Arc<Writer>>,
}

/// Lines serialized by the request path, waiting for the writer: appended to a shard's buffer
/// in place (no allocation, no hand-off per line); the writer swaps every buffer for an empty
/// one each interval, all at once, so a line is never written before one that was complete
/// when it was appended.
struct Pending {
    shards: [Padded<Mutex<Vec<u8>>>; SHARDS],
    /// Set once the writer has stopped: later lines are dropped.
    stopped: AtomicBool,
}

impl Pending {
    fn new() -> Self {
        Pending { shards: Default::default(), stopped: AtomicBool::new(false) }
    }

    /// The calling thread's shard.
    fn shard(&self) -> MutexGuard<'_, Vec<u8>> {
        lock(&self.shards[shard::this_thread()].0)
    }

    /// Swaps every shard's lines for the (empty) buffers in `spares`, under all the locks at once.
    fn take_all(&self, spares: &mut [Vec<u8>; SHARDS]) {
        let mut guards = self.shards.each_ref().map(|s| lock(&s.0));
        for (guard, spare) in guards.iter_mut().zip(spares.iter_mut()) {
            std::mem::swap(&mut **guard, spare);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Lines lost — the queue was full, or the disk refused the write (full, read-only) — counted
/// for the metrics and reported in the application log at most once a minute.
#[derive(Default)]
struct Drops {
    count: AtomicU64,
    /// Seconds since `since` of the last report (0: never).
    reported_at: AtomicU64,
    since: OnceLock<std::time::Instant>,
}

impl Drops {
    fn add(&self, n: u64, why: &dyn std::fmt::Display) {
        let total = self.count.fetch_add(n, Ordering::Relaxed) + n;
        let since = *self.since.get_or_init(std::time::Instant::now);
        let now = since.elapsed().as_secs() + 1;
        let last = self.reported_at.load(Ordering::Relaxed);
        let due = last == 0 || now >= last + REPORT_EVERY.as_secs();
        if due && self.reported_at.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            tracing::warn!(dropped_total = total, reason = %why, "access-log lines dropped; requests go on unlogged");
        }
    }
}

/// The writer thread and the handshake that lets shutdown wait for the last lines.
struct Writer {
    thread: thread::Thread,
    closing: AtomicBool,
    /// Set by SIGUSR1: reopen the file by its path before the next write.
    reopen: AtomicBool,
    drained: (Mutex<bool>, Condvar),
}

impl AccessLog {
    /// Starts the writer thread. Fails only when a log file cannot be opened.
    pub(crate) fn start(target: &AccessLogTarget) -> io::Result<Self> {
        let dropped = Arc::new(Drops::default());
        let (out, path): (Box<dyn Write + Send>, _) = match target {
            AccessLogTarget::Off => return Ok(AccessLog { pending: None, dropped, writer: None }),
            AccessLogTarget::Stdout => (Box::new(io::stdout()), None),
            AccessLogTarget::File(path) => (Box::new(open_append(path)?), Some(path.clone())),
        };
        let pending = Arc::new(Pending::new());
        let lines = pending.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let drops = dropped.clone();
        // The writer reports to whatever logs the gateway (its own subscriber in tests).
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        thread::Builder::new().name("access-log".into()).spawn(move || {
            let _logging = tracing::dispatcher::set_default(&dispatch);
            let writer = Arc::new(Writer {
                thread: thread::current(),
                closing: AtomicBool::new(false),
                reopen: AtomicBool::new(false),
                drained: (Mutex::new(false), Condvar::new()),
            });
            let _ = ready_tx.send(writer.clone());
            write_lines(&lines, out, path.as_deref(), &writer, &drops);
        })?;
        let writer = ready_rx.recv().map_err(|_| io::Error::other("access-log writer did not start"))?;
        Ok(AccessLog { pending: Some(pending), dropped, writer: Some(writer) })
    }

    /// Writes everything queued so far and stops the writer; waits at most `timeout`.
    /// Lines logged afterwards are dropped. Called once, at shutdown.
    pub(crate) fn close(&self, timeout: Duration) {
        let Some(writer) = &self.writer else { return };
        writer.closing.store(true, Ordering::Release);
        writer.thread.unpark();
        let (done, signal) = &writer.drained;
        let guard = done.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = signal.wait_timeout_while(guard, timeout, |drained| !*drained);
    }

    /// Reopens a file access log by its path (after logrotate moved it): lines queued so far
    /// go to the old file, later ones to the new. Stdout and `off` ignore it.
    pub(crate) fn reopen(&self) {
        let Some(writer) = &self.writer else { return };
        writer.reopen.store(true, Ordering::Release);
        writer.thread.unpark();
    }

    /// Queues one line; never blocks on I/O. A full shard drops the line and counts it.
    pub(crate) fn log(&self, record: &AccessRecord<'_>) {
        let Some(pending) = &self.pending else { return };
        if pending.stopped.load(Ordering::Relaxed) {
            return;
        }
        let mut lines = pending.shard();
        if lines.len() >= SHARD_BYTES {
            drop(lines);
            self.dropped.add(1, &"the writer fell behind (queue full)");
            return;
        }
        line::write(&mut lines, record);
        lines.push(b'\n');
    }

    /// Lines dropped because the writer fell behind.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.count.load(Ordering::Relaxed)
    }
}

/// Every `WRITE_INTERVAL` (or when shutdown asks), takes every shard's lines, writes them in
/// large writes and flushes.
fn write_lines(
    pending: &Arc<Pending>,
    out: Box<dyn Write + Send>,
    path: Option<&Path>,
    writer: &Writer,
    drops: &Drops,
) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut taken: [Vec<u8>; SHARDS] = Default::default();
    loop {
        let closing = writer.closing.load(Ordering::Acquire);
        // Every handle gone (a gateway dropped without shutdown): nothing more can be
        // appended, so this pass writes the last lines.
        let orphaned = Arc::strong_count(pending) == 1;
        if writer.reopen.swap(false, Ordering::AcqRel) {
            reopen(&mut out, path);
        }
        pending.take_all(&mut taken);
        for lines in taken.iter_mut().filter(|l| !l.is_empty()) {
            if let Err(e) = out.write_all(lines) {
                drops.add(line_count(lines), &e);
            }
            lines.clear();
        }
        if let Err(e) = out.flush() {
            // What the buffer held is lost; start clean so later lines can still be written.
            drops.add(line_count(out.buffer()).max(1), &e);
            let inner = std::mem::replace(out.get_mut(), Box::new(io::sink()));
            out = BufWriter::with_capacity(64 * 1024, inner);
        }
        if closing || orphaned {
            break;
        }
        thread::park_timeout(WRITE_INTERVAL);
    }
    pending.stopped.store(true, Ordering::Relaxed);
    let (done, signal) = &writer.drained;
    *done.lock().unwrap_or_else(PoisonError::into_inner) = true;
    signal.notify_all();
}

fn line_count(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|b| **b == b'\n').count() as u64
}

fn open_append(path: &Path) -> io::Result<std::fs::File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Writes what is buffered to the old file, then switches to a fresh open of `path`; on
/// failure the old file stays (no line is lost either way).
fn reopen(out: &mut BufWriter<Box<dyn Write + Send>>, path: Option<&Path>) {
    let Some(path) = path else { return };
    let _ = out.flush();
    match open_append(path) {
        Ok(file) => {
            *out.get_mut() = Box::new(file);
            tracing::info!(path = %path.display(), "access log reopened");
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot reopen the access log; still writing to the old file")
        }
    }
}

/// How an api_key is shown in the log and on the status page: whole (`log.full_api_key`), or
/// `0a1b2c…#5f3c9e21` — the first 6 characters and a SHA-256 fingerprint, enough to tell keys
/// apart, not enough to use one. Written straight into the line, computed only there.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyLabel<'a> {
    pub key: &'a str,
    pub full: bool,
}

impl<'a> KeyLabel<'a> {
    /// The short form's parts: the key's first six characters and its fingerprint in hex.
    pub(crate) fn short_parts(&self) -> (&'a str, [u8; 8]) {
        let prefix = self.key.char_indices().nth(6).map_or(self.key, |(i, _)| &self.key[..i]);
        (prefix, fingerprint(self.key))
    }
}

impl std::fmt::Display for KeyLabel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.full {
            return f.write_str(self.key);
        }
        let (prefix, hex) = self.short_parts();
        f.write_str(prefix)?;
        f.write_str("…#")?;
        f.write_str(std::str::from_utf8(&hex).expect("hex digits"))
    }
}

/// The first four bytes of the key's SHA-256, in hex. Each thread remembers the keys it
/// fingerprinted last (a slot per hash of the key, checked against the whole key): the same
/// keys come back request after request, and a SHA-256 per log line was a measurable part of
/// writing it (benches/RESULTS.md).
fn fingerprint(key: &str) -> [u8; 8] {
    const SLOTS: usize = 64;
    type Memo = [Option<(Box<str>, [u8; 8])>; SLOTS];
    thread_local! {
        static MEMO: std::cell::RefCell<Memo> = std::cell::RefCell::new(std::array::from_fn(|_| None));
    }
    let slot = key.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(usize::from(b))) % SLOTS;
    MEMO.with_borrow_mut(|memo| match &memo[slot] {
        Some((known, hex)) if **known == *key => *hex,
        _ => {
            use sha2::Digest;
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let digest = sha2::Sha256::digest(key.as_bytes());
            let hex = std::array::from_fn(|i| {
                let byte = digest[i / 2];
                HEX[usize::from(if i % 2 == 0 { byte >> 4 } else { byte & 15 })]
            });
            memo[slot] = Some((key.into(), hex));
            hex
        }
    })
}

/// `path?key1&key2`: the query's keys survive for debugging, its values never reach the log
/// (`-` for a request without a path).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoggablePath<'a>(pub Option<&'a http::Uri>);

impl LoggablePath<'_> {
    /// The keys of the query's `key=value` pairs, in order.
    fn query_keys(uri: &http::Uri) -> impl Iterator<Item = &str> {
        let pairs = uri.query().unwrap_or_default().split('&').filter(|p| !p.is_empty());
        pairs.map(|pair| pair.split('=').next().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_key_keeps_six_characters_and_a_fingerprint() {
        let short = |key| KeyLabel { key, full: false }.to_string();
        let label = short("0123456789abcdef");
        assert!(label.starts_with("012345…#"), "{label}");
        assert_eq!(label.chars().count(), "012345…#".chars().count() + 8);
        assert_ne!(short("0123456789abcdef"), short("0123456789abcdeX"));
        assert_eq!(KeyLabel { key: "0123456789abcdef", full: true }.to_string(), "0123456789abcdef");
    }

    #[test]
    fn fingerprints_are_sha256_prefixes_whatever_the_memo_holds() {
        use sha2::Digest;
        let expected = |key: &str| {
            let d = sha2::Sha256::digest(key.as_bytes());
            format!("{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
        };
        // More keys than slots, twice over: hits, misses and slots taken over by other keys.
        let keys: Vec<String> = (0..200).map(|i| format!("{i:015x}")).collect();
        for _ in 0..2 {
            for key in &keys {
                assert_eq!(std::str::from_utf8(&fingerprint(key)).unwrap(), expected(key), "{key}");
            }
        }
    }
}
