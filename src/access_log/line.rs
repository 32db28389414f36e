//! One access-log line, written straight into the writer's buffer. By hand rather than through
//! serde: the keys are constants, so only values are escaped, numbers are written digit by
//! digit and the second of the timestamp is formatted once per second per thread
//! (benches/RESULTS.md: serde's per-field work was most of the line's cost).

use std::cell::Cell;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{AccessRecord, KeyLabel, LoggablePath};

/// Appends `record` as one JSON object, without the newline.
pub(super) fn write(out: &mut Vec<u8>, r: &AccessRecord<'_>) {
    let mut line = Line { out, first: true };
    line.key("time");
    write_time(line.out, r.time);
    line.string("request_id", r.request_id);
    line.ip("client_ip", r.client_ip);
    line.ip("peer", r.peer);
    line.string("method", r.method);
    if let Some(host) = r.host {
        line.key("host");
        header_text(line.out, host);
    }
    if let Some(agent) = r.user_agent {
        line.key("user_agent");
        header_text(line.out, agent);
    }
    line.key("path");
    loggable_path(line.out, r.path);
    line.string("protocol", r.protocol);
    if let Some(tls) = r.tls {
        line.string("tls", tls);
    }
    line.number("status", r.status.into());
    if let Some(status) = r.upstream_status {
        line.number("upstream_status", status.into());
    }
    if let Some(upstream) = &r.upstream {
        line.string("upstream", upstream);
    }
    if let Some(took) = r.upstream_time {
        line.millis("upstream_ms", took);
    }
    line.millis("latency_ms", r.latency);
    line.number("bytes_in", r.bytes_in);
    line.number("bytes_out", r.bytes_out);
    if let Some(route) = &r.route {
        line.string("route", route);
    }
    if let Some(user) = &r.user {
        line.string("user", user);
    }
    if let Some(key) = r.api_key {
        line.key("api_key");
        key_label(line.out, key);
    }
    if let Some(auth) = r.auth {
        line.string("auth", auth.as_str());
    }
    if let Some(doctype) = &r.doctype {
        line.string("doctype", doctype);
    }
    if let Some(rpc) = &r.rpc {
        line.string("rpc", rpc);
    }
    line.string("decision", r.decision.as_str());
    if let Some(reason) = &r.reason {
        line.string("reason", reason);
    }
    line.out.push(b'}');
}

/// The object being written: keys are trusted constants, values are escaped.
struct Line<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Line<'_> {
    /// Inlined so that each call site copies its constant key with plain stores instead of
    /// calling `memcpy` three times for a few bytes (about 20 keys a line).
    #[inline(always)]
    fn key(&mut self, key: &'static str) {
        self.out.extend_from_slice(if self.first { b"{\"" } else { b",\"" });
        self.first = false;
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn string(&mut self, key: &'static str, value: &str) {
        self.key(key);
        quoted(self.out, |out| escape(out, value));
    }

    fn number(&mut self, key: &'static str, value: u64) {
        self.key(key);
        self.out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    fn ip(&mut self, key: &'static str, ip: IpAddr) {
        self.key(key);
        // An address's text needs no escaping.
        quoted(self.out, |out| crate::policy::push_ip_text(out, ip));
    }

    /// Milliseconds with up to three decimals, as the shortest JSON number (`12.0`, `0.05`).
    fn millis(&mut self, key: &'static str, took: Duration) {
        self.key(key);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.out.extend_from_slice(itoa::Buffer::new().format(micros / 1000).as_bytes());
        let fraction = micros % 1000;
        let digits =
            [b'0' + (fraction / 100) as u8, b'0' + (fraction / 10 % 10) as u8, b'0' + (fraction % 10) as u8];
        let kept = 3 - digits.iter().rev().take_while(|d| **d == b'0').count().min(2);
        self.out.push(b'.');
        self.out.extend_from_slice(&digits[..kept]);
    }
}

fn quoted(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    out.push(b'"');
    body(out);
    out.push(b'"');
}

/// JSON string escaping (RFC 8259 §7): quote, backslash and control characters; everything
/// else, UTF-8 included, is copied as it is.
fn escape(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    // Almost every value needs nothing escaped: one branch-free scan, then one copy.
    let special = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
    if !bytes.iter().fold(false, |found, &b| found | special(b)) {
        return out.extend_from_slice(bytes);
    }
    let mut copied = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[copied..i]);
        if escaped.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        } else {
            out.extend_from_slice(escaped);
        }
        copied = i + 1;
    }
    out.extend_from_slice(&bytes[copied..]);
}

/// A header value as text, in one pass: bytes that are not visible ASCII or a space become
/// `?` (never a raw byte, never a control character).
fn header_text(out: &mut Vec<u8>, value: &[u8]) {
    quoted(out, |out| {
        for &b in value {
            match b {
                b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
                b' '..=b'~' => out.push(b),
                _ => out.push(b'?'),
            }
        }
    });
}

fn loggable_path(out: &mut Vec<u8>, path: LoggablePath<'_>) {
    quoted(out, |out| {
        let Some(uri) = path.0 else { return out.push(b'-') };
        escape(out, uri.path());
        for (i, key) in LoggablePath::query_keys(uri).enumerate() {
            out.push(if i == 0 { b'?' } else { b'&' });
            escape(out, key);
        }
    });
}

fn key_label(out: &mut Vec<u8>, key: KeyLabel<'_>) {
    quoted(out, |out| {
        if key.full {
            return escape(out, key.key);
        }
        let (prefix, hex) = key.short_parts();
        escape(out, prefix);
        out.extend_from_slice("…#".as_bytes());
        out.extend_from_slice(&hex);
    });
}

thread_local! {
    /// `"YYYY-MM-DDTHH:MM:SS.` of the last second this thread wrote, and that second.
    static SECOND: Cell<(u64, [u8; 21])> = const { Cell::new((u64::MAX, [0; 21])) };
}

/// `"2026-12-02T10:00:00.123Z"`: RFC 3339, UTC, milliseconds. The date and time of day are
/// formatted (humantime) once per second per thread; each line adds its milliseconds.
fn write_time(out: &mut Vec<u8>, at: SystemTime) {
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let second = since_epoch.as_secs();
    let (cached, mut prefix) = SECOND.get();
    if cached != second {
        let text = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(second)).to_string();
        // `YYYY-MM-DDTHH:MM:SSZ`: keep all but the `Z`, then the decimal point.
        prefix[0] = b'"';
        prefix[1..20].copy_from_slice(&text.as_bytes()[..19]);
        prefix[20] = b'.';
        SECOND.set((second, prefix));
    }
    out.extend_from_slice(&prefix);
    let millis = since_epoch.subsec_millis();
    out.extend_from_slice(&[
        b'0' + (millis / 100) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
        b'Z',
        b'"',
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn escaped(text: &str) -> String {
        let mut out = Vec::new();
        quoted(&mut out, |out| escape(out, text));
        String::from_utf8(out).unwrap()
    }

    proptest! {
        #[test]
        fn any_text_round_trips_through_a_json_parser(text in any::<String>()) {
            let parsed: String = serde_json::from_str(&escaped(&text)).unwrap();
            prop_assert_eq!(parsed, text);
        }

        #[test]
        fn millis_are_the_shortest_number_for_the_micros(micros in 0u64..10_000_000_000) {
            let mut out = Vec::new();
            Line { out: &mut out, first: true }.millis("m", Duration::from_micros(micros));
            let text = String::from_utf8(out).unwrap();
            let expected = serde_json::to_string(&(micros as f64 / 1000.0)).unwrap();
            prop_assert_eq!(text, format!("{{\"m\":{expected}"));
        }

        #[test]
        fn times_match_humantime(millis in 0u64..4_000_000_000_000) {
            let at = UNIX_EPOCH + Duration::from_millis(millis);
            let mut out = Vec::new();
            write_time(&mut out, at);
            prop_assert_eq!(String::from_utf8(out).unwrap(), format!("\"{}\"", humantime::format_rfc3339_millis(at)));
        }
    }

    proptest! {
        #[test]
        fn addresses_are_written_as_displayed(ip in any::<IpAddr>()) {
            let mut out = Vec::new();
            Line { out: &mut out, first: true }.ip("ip", ip);
            prop_assert_eq!(String::from_utf8(out).unwrap(), format!("{{\"ip\":\"{ip}\""));
        }
    }

    #[test]
    fn query_values_are_dropped() {
        let logged = |uri: Option<&http::Uri>| {
            let mut out = Vec::new();
            loggable_path(&mut out, LoggablePath(uri));
            serde_json::from_slice::<String>(&out).unwrap()
        };
        let uri: http::Uri = "/api/method/x?sid=abc123&fields=%5B%5D".parse().unwrap();
        assert_eq!(logged(Some(&uri)), "/api/method/x?sid&fields");
        let plain: http::Uri = "/api/resource/ToDo".parse().unwrap();
        assert_eq!(logged(Some(&plain)), "/api/resource/ToDo");
        assert_eq!(logged(None), "-");
    }

    #[test]
    fn control_characters_and_quotes_are_escaped() {
        assert_eq!(escaped("a\"b\\c\nd\u{1}é"), r#""a\"b\\c\nd\u0001é""#);
    }

    #[test]
    fn header_bytes_that_are_not_text_become_question_marks() {
        let mut out = Vec::new();
        header_text(&mut out, http::HeaderValue::from_bytes(b"curl \"x\"\t\xff\xfe").unwrap().as_bytes());
        assert_eq!(String::from_utf8(out).unwrap(), r#""curl \"x\"???""#);
    }
}
