//! One JSON line per request, written by a background thread so the request path never
//! blocks on stdout or disk.

use std::borrow::Cow;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::AccessLogTarget;
use crate::outcome::{AuthOutcome, Decision};

/// Lines queued beyond this are dropped (and counted) rather than stalling requests.
const QUEUE_LINES: usize = 64 * 1024;
/// How often the writer wakes to write what queued up. Waking per line would cost a thread
/// wake-up (futex + context switch) per request; this bounds how stale the file can be.
const WRITE_INTERVAL: Duration = Duration::from_millis(20);

/// Everything one access-log line says about a request. Never holds a secret.
#[derive(Debug, Serialize)]
pub struct AccessRecord {
    pub time: String,
    pub request_id: Arc<str>,
    pub client_ip: IpAddr,
    pub method: String,
    /// Path plus query *keys* only: query values can hold secrets (`sid`, `api_secret`).
    pub path: String,
    pub protocol: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<&'static str>,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    pub latency_ms: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthOutcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doctype: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc: Option<String>,
    pub decision: Decision,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Cow<'static, str>>,
}

/// Handle to the access-log writer; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<Vec<u8>>>,
    dropped: Arc<AtomicU64>,
    writer: Option<Arc<Writer>>,
}

/// The writer thread and the handshake that lets shutdown wait for the last lines.
struct Writer {
    thread: thread::Thread,
    closing: AtomicBool,
    drained: (Mutex<bool>, Condvar),
}

impl AccessLog {
    /// Starts the writer thread. Fails only when a log file cannot be opened.
    pub fn start(target: &AccessLogTarget) -> io::Result<Self> {
        let dropped = Arc::new(AtomicU64::new(0));
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => return Ok(AccessLog { tx: None, dropped, writer: None }),
            AccessLogTarget::Stdout => Box::new(io::stdout()),
            AccessLogTarget::File(path) => Box::new(OpenOptions::new().create(true).append(true).open(path)?),
        };
        let (tx, rx) = sync_channel(QUEUE_LINES);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        thread::Builder::new().name("access-log".into()).spawn(move || {
            let writer = Arc::new(Writer {
                thread: thread::current(),
                closing: AtomicBool::new(false),
                drained: (Mutex::new(false), Condvar::new()),
            });
            let _ = ready_tx.send(writer.clone());
            write_lines(&rx, out, &writer);
        })?;
        let writer = ready_rx.recv().map_err(|_| io::Error::other("access-log writer did not start"))?;
        Ok(AccessLog { tx: Some(tx), dropped, writer: Some(writer) })
    }

    /// Writes everything queued so far and stops the writer; waits at most `timeout`.
    /// Lines logged afterwards are dropped. Called once, at shutdown.
    pub fn close(&self, timeout: Duration) {
        let Some(writer) = &self.writer else { return };
        writer.closing.store(true, Ordering::Release);
        writer.thread.unpark();
        let (done, signal) = &writer.drained;
        let guard = done.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = signal.wait_timeout_while(guard, timeout, |drained| !*drained);
    }

    /// Queues one line; never blocks. A full queue drops the line and counts it.
    pub fn log(&self, record: &AccessRecord) {
        let Some(tx) = &self.tx else { return };
        let mut line = Vec::with_capacity(512);
        if serde_json::to_writer(&mut line, record).is_err() {
            return;
        }
        line.push(b'\n');
        if let Err(TrySendError::Full(_)) = tx.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Every `WRITE_INTERVAL` (or when shutdown asks), writes all queued lines in large writes
/// and flushes.
fn write_lines(rx: &Receiver<Vec<u8>>, out: Box<dyn Write + Send>, writer: &Writer) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    loop {
        let closing = writer.closing.load(Ordering::Acquire);
        let open = loop {
            match rx.try_recv() {
                Ok(line) => {
                    let _ = out.write_all(&line);
                }
                Err(TryRecvError::Empty) => break true,
                Err(TryRecvError::Disconnected) => break false,
            }
        };
        let _ = out.flush();
        if closing || !open {
            break;
        }
        thread::park_timeout(WRITE_INTERVAL);
    }
    let (done, signal) = &writer.drained;
    *done.lock().unwrap_or_else(PoisonError::into_inner) = true;
    signal.notify_all();
}

/// RFC 3339 UTC time with milliseconds.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `path?key1&key2`: the query's keys survive for debugging, its values never reach the log.
pub fn loggable_path(uri: &http::Uri) -> String {
    let mut out = String::with_capacity(uri.path().len() + 16);
    out.push_str(uri.path());
    if let Some(query) = uri.query() {
        for (i, pair) in query.split('&').filter(|p| !p.is_empty()).enumerate() {
            out.push(if i == 0 { '?' } else { '&' });
            out.push_str(pair.split('=').next().unwrap_or_default());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_dropped() {
        let uri: http::Uri = "/api/method/x?sid=abc123&fields=%5B%5D".parse().unwrap();
        assert_eq!(loggable_path(&uri), "/api/method/x?sid&fields");
        let plain: http::Uri = "/api/resource/ToDo".parse().unwrap();
        assert_eq!(loggable_path(&plain), "/api/resource/ToDo");
    }
}
