//! One JSON line per request, written by a background thread so the request path never
//! blocks on stdout or disk.

use std::borrow::Cow;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread;
use std::time::SystemTime;

use serde::Serialize;

use crate::config::AccessLogTarget;

/// Lines queued beyond this are dropped (and counted) rather than stalling requests.
const QUEUE_LINES: usize = 64 * 1024;

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
    pub auth: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doctype: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc: Option<String>,
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Cow<'static, str>>,
}

/// Handle to the access-log writer; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<Vec<u8>>>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Starts the writer thread. Fails only when a log file cannot be opened.
    pub fn start(target: &AccessLogTarget) -> io::Result<Self> {
        let dropped = Arc::new(AtomicU64::new(0));
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => return Ok(AccessLog { tx: None, dropped }),
            AccessLogTarget::Stdout => Box::new(io::stdout()),
            AccessLogTarget::File(path) => Box::new(OpenOptions::new().create(true).append(true).open(path)?),
        };
        let (tx, rx) = sync_channel(QUEUE_LINES);
        thread::Builder::new().name("access-log".into()).spawn(move || write_lines(rx, out))?;
        Ok(AccessLog { tx: Some(tx), dropped })
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

/// Writes queued lines, flushing whenever the queue runs dry, so lines appear promptly
/// under light load and in large writes under heavy load.
fn write_lines(rx: Receiver<Vec<u8>>, out: Box<dyn Write + Send>) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(&line);
        while let Ok(more) = rx.try_recv() {
            let _ = out.write_all(&more);
        }
        let _ = out.flush();
    }
    let _ = out.flush();
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
