//! werkzeug 3.0's multipart decoder (`sansio/multipart.py` `MultipartDecoder`, driven as
//! `formparser.MultiPartParser.parse` drives it), step for step: the fields Frappe's
//! `form_dict` gets from a `multipart/form-data` body are the ones this finds.
//!
//! A general-purpose parser reads some bodies differently, and each difference is a way to
//! hide a `cmd` or `sid` from the gateway: werkzeug accepts a lone CR or LF before a boundary,
//! ends a part's headers at `\r\r` or `\n\n` too, lets the blank line after the headers also
//! serve as the line break before the next boundary, keeps the *first* `Content-Disposition`
//! of a part, and decodes a field in its part's charset only if that is ASCII, UTF-8 or
//! ISO-8859-1. werkzeug reads the body in 64 KiB chunks, and so is it fed here.
//!
//! Where werkzeug raises `ValueError` it parses the whole form as empty (Frappe then runs the
//! query's `cmd`): [`Malformed`] here, and the gateway refuses the request.

use super::form::{FormFields, JUDGED_FIELDS};
use super::options_header::{self, py_strip};

/// How much of the body werkzeug's parser reads at a time (`MultiPartParser.buffer_size`).
pub(crate) const CHUNK: usize = 64 * 1024;
/// Bytes kept back from a search so that a marker cut in two is found next time.
const SEARCH_EXTRA_LENGTH: usize = 8;
/// werkzeug's `Request.max_form_parts`: beyond it, 413.
const MAX_PARTS: usize = 1000;

/// Why werkzeug would not parse the body as a form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Malformed {
    /// A `ValueError`: the form would silently be empty.
    Invalid,
    /// A part header line that is not UTF-8 (also a `ValueError`).
    HeaderNotUtf8,
    /// More than `max_form_parts` parts.
    TooManyParts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Preamble,
    Part,
    DataStart,
    Data,
    Epilogue,
    Complete,
}

/// A part's headers, as far as the form is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PartHead {
    name: Option<String>,
    /// `filename` is present: a file, which never enters `form_dict`.
    file: bool,
    charset: Charset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charset {
    Ascii,
    Latin1,
    Utf8,
}

#[derive(Debug, PartialEq, Eq)]
enum Event {
    Preamble,
    Part(PartHead),
    /// Part data; the bytes only when asked for.
    Data(Vec<u8>, bool),
    Epilogue,
    NeedData,
}

/// `MultipartDecoder`.
struct Decoder {
    buffer: Vec<u8>,
    complete: bool,
    state: State,
    /// `--` and the boundary.
    marker: Vec<u8>,
    search_position: usize,
    parts: usize,
}

impl Decoder {
    fn new(boundary: &[u8]) -> Self {
        let marker = [b"--", boundary].concat();
        Decoder {
            buffer: Vec::new(),
            complete: false,
            state: State::Preamble,
            marker,
            search_position: 0,
            parts: 0,
        }
    }

    fn receive(&mut self, data: Option<&[u8]>) {
        match data {
            Some(data) => self.buffer.extend_from_slice(data),
            None => self.complete = true,
        }
    }

    /// `next_event`; `keep` asks for the bytes of a data event.
    fn next_event(&mut self, keep: bool) -> Result<Event, Malformed> {
        let mut event = Event::NeedData;
        match self.state {
            State::Preamble => match self.search_boundary(self.search_position, true) {
                Some((_, end, epilogue)) => {
                    self.state = if epilogue { State::Epilogue } else { State::Part };
                    self.buffer.drain(..end);
                    event = Event::Preamble;
                    self.search_position = 0;
                }
                None => {
                    let boundary_len = self.marker.len() - 2;
                    self.search_position =
                        self.buffer.len().saturating_sub(boundary_len + SEARCH_EXTRA_LENGTH);
                }
            },
            State::Part => match blank_line(&self.buffer, self.search_position) {
                Some((start, end)) => {
                    let head = part_head(&self.buffer[..start])?;
                    self.buffer.drain(..(start + end) / 2);
                    event = Event::Part(head);
                    self.state = State::DataStart;
                    self.search_position = 0;
                    self.parts += 1;
                    if self.parts > MAX_PARTS {
                        return Err(Malformed::TooManyParts);
                    }
                }
                None => self.search_position = self.buffer.len().saturating_sub(SEARCH_EXTRA_LENGTH),
            },
            State::DataStart => {
                let (data, more) = self.parse_data(true, keep);
                event = Event::Data(data, more);
                if more {
                    self.state = State::Data;
                }
            }
            State::Data => {
                let (data, more) = self.parse_data(false, keep);
                if !data.is_empty() || !more {
                    event = Event::Data(data, more);
                }
            }
            State::Epilogue if self.complete => {
                event = Event::Epilogue;
                self.buffer.clear();
                self.state = State::Complete;
            }
            State::Epilogue | State::Complete => {}
        }
        if self.complete && event == Event::NeedData {
            return Err(Malformed::Invalid);
        }
        Ok(event)
    }

    /// `_parse_data`: the part's data up to the next boundary (or as much as is surely not
    /// part of one), removed from the buffer, and whether more follows.
    fn parse_data(&mut self, start: bool, keep: bool) -> (Vec<u8>, bool) {
        // A part's data starts after the line break that ended its headers.
        let data_start = if start { line_break_at(&self.buffer, 0).unwrap_or(0) } else { 0 };
        let (data_end, delete, more) = if find(&self.buffer, &self.marker).is_none() {
            let mut end = last_newline(&self.buffer[data_start..]) + data_start;
            if self.buffer.len() - end > 1 + self.marker.len() {
                end = self.buffer.len();
            }
            (end, end, true)
        } else {
            match self.search_boundary(0, false) {
                Some((match_start, match_end, epilogue)) => {
                    self.state = if epilogue { State::Epilogue } else { State::Part };
                    (match_start, match_end, false)
                }
                None => {
                    let end = last_newline(&self.buffer[data_start..]) + data_start;
                    (end, end, true)
                }
            }
        };
        let data = match keep && data_end > data_start {
            true => self.buffer[data_start..data_end].to_vec(),
            false => Vec::new(),
        };
        self.buffer.drain(..delete);
        (data, more)
    }

    /// `preamble_re` (`line_break_optional`) or `boundary_re`, searched from `from`:
    /// `LB? --boundary (-- WS* LB? | WS* LB)`. Returns the match's start and end, and
    /// whether it is the closing boundary.
    fn search_boundary(&self, from: usize, line_break_optional: bool) -> Option<(usize, usize, bool)> {
        let buffer = &self.buffer;
        (from..buffer.len()).find_map(|p| {
            let marker_at = match line_break_at(buffer, p) {
                Some(len) => p + len,
                None if line_break_optional => p,
                None => return None,
            };
            if !buffer[marker_at..].starts_with(&self.marker) {
                return None;
            }
            boundary_tail(buffer, marker_at + self.marker.len()).map(|(end, closing)| (p, end, closing))
        })
    }
}

/// After `--boundary`: `-- WS* LB?` (the closing one) or `WS* LB`.
fn boundary_tail(buffer: &[u8], at: usize) -> Option<(usize, bool)> {
    let skip_spaces = |mut i: usize| {
        while buffer.get(i).is_some_and(|&b| matches!(b, b' ' | b'\t' | 0x0b | 0x0c)) {
            i += 1;
        }
        i
    };
    if buffer[at..].starts_with(b"--") {
        let i = skip_spaces(at + 2);
        return Some((i + line_break_at(buffer, i).unwrap_or(0), true));
    }
    let i = skip_spaces(at);
    line_break_at(buffer, i).map(|len| (i + len, false))
}

/// The length of the line break (`\r\n`, `\n` or `\r`) at `i`.
fn line_break_at(buffer: &[u8], i: usize) -> Option<usize> {
    match buffer.get(i..)? {
        [b'\r', b'\n', ..] => Some(2),
        [b'\n' | b'\r', ..] => Some(1),
        _ => None,
    }
}

/// `BLANK_LINE_RE` (`\r\n\r\n|\r\r|\n\n`) searched from `from`.
fn blank_line(buffer: &[u8], from: usize) -> Option<(usize, usize)> {
    (from..buffer.len()).find_map(|p| {
        let rest = &buffer[p..];
        if rest.starts_with(b"\r\n\r\n") {
            Some((p, p + 4))
        } else if rest.starts_with(b"\r\r") || rest.starts_with(b"\n\n") {
            Some((p, p + 2))
        } else {
            None
        }
    })
}

/// `last_newline`: the smaller of the last `\n`'s and the last `\r`'s position (the length
/// for one that is absent).
fn last_newline(data: &[u8]) -> usize {
    let last = |b: u8| data.iter().rposition(|&c| c == b).unwrap_or(data.len());
    last(b'\n').min(last(b'\r'))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `_parse_headers`, then the part's `Content-Disposition` (the first) and charset.
fn part_head(block: &[u8]) -> Result<PartHead, Malformed> {
    let headers = parse_headers(block)?;
    let first = |name: &str| headers.iter().find(|(n, _)| n.to_lowercase() == name).map(|(_, v)| v.as_str());
    let disposition = options_header::parse(first("content-disposition").ok_or(Malformed::Invalid)?);
    let charset = first("content-type")
        .and_then(|ct| options_header::parse(ct).get("charset").map(str::to_lowercase))
        .and_then(|charset| match charset.as_str() {
            "ascii" | "us-ascii" => Some(Charset::Ascii),
            "iso-8859-1" => Some(Charset::Latin1),
            _ => None,
        })
        .unwrap_or(Charset::Utf8);
    Ok(PartHead {
        name: disposition.get("name").map(str::to_string),
        file: disposition.get("filename").is_some(),
        charset,
    })
}

/// Folded lines joined (a line break before a space or tab becomes one space), split at
/// `\r\n`, `\r` or `\n`; each non-blank line decoded as UTF-8 and split at its first `:`.
fn parse_headers(block: &[u8]) -> Result<Vec<(String, String)>, Malformed> {
    let mut headers = Vec::new();
    for line in split_lines(&unfold(block)) {
        let line = bytes_strip(line);
        if line.is_empty() {
            continue;
        }
        let line = std::str::from_utf8(line).map_err(|_| Malformed::HeaderNotUtf8)?;
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        headers.push((py_strip(name).to_string(), py_strip(value).to_string()));
    }
    Ok(headers)
}

/// `HEADER_CONTINUATION_RE.sub(b" ", block)`: `(\r\n|\n|\r)[ \t]` → one space.
fn unfold(block: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(block.len());
    let mut i = 0;
    while i < block.len() {
        let fold = match &block[i..] {
            [b'\r', b'\n', b' ' | b'\t', ..] => 3,
            [b'\n' | b'\r', b' ' | b'\t', ..] => 2,
            _ => 0,
        };
        if fold > 0 {
            out.push(b' ');
            i += fold;
        } else {
            out.push(block[i]);
            i += 1;
        }
    }
    out
}

/// `bytes.strip()`: ASCII whitespace, vertical tab included.
fn bytes_strip(line: &[u8]) -> &[u8] {
    let space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let start = line.iter().position(|b| !space(b)).unwrap_or(line.len());
    let end = line.iter().rposition(|b| !space(b)).map_or(start, |i| i + 1);
    &line[start..end]
}

/// `bytes.splitlines()`.
fn split_lines(data: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < data.len() {
        if let Some(len) = line_break_at(data, i) {
            lines.push(&data[start..i]);
            i += len;
            start = i;
        } else {
            i += 1;
        }
    }
    if start < data.len() {
        lines.push(&data[start..]);
    }
    lines
}

fn decode(bytes: &[u8], charset: Charset) -> String {
    match charset {
        Charset::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
        Charset::Latin1 => bytes.iter().map(|&b| char::from(b)).collect(),
        Charset::Ascii => {
            bytes.iter().map(|&b| if b.is_ascii() { char::from(b) } else { '\u{fffd}' }).collect()
        }
    }
}

/// The judged fields of a multipart body, found as werkzeug finds its fields. Fed in chunks;
/// [`Judge::finish`] after the last.
pub(crate) struct Judge {
    decoder: Decoder,
    /// The part being read: its judged name, charset and bytes so far.
    current: Option<(&'static str, Charset, Vec<u8>)>,
    fields: FormFields,
    seen: [bool; 3],
    /// A judged field, refused as soon as its headers are read (streamed bodies).
    refuse_judged: bool,
}

/// What a judge found that ends the judging early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Malformed(Malformed),
    /// A part named `cmd`, `sid` or `run_method` (`file`: with a `filename`).
    Judged {
        name: &'static str,
        file: bool,
    },
}

impl Judge {
    /// `refuse_judged`: stop at the first part with a judged name (file or field) instead of
    /// reading its value.
    pub(crate) fn new(boundary: &str, refuse_judged: bool) -> Self {
        Judge {
            decoder: Decoder::new(boundary.as_bytes()),
            current: None,
            fields: FormFields::default(),
            seen: [false; 3],
            refuse_judged,
        }
    }

    /// One of werkzeug's reads: a chunk, or `None` at the end of the body.
    pub(crate) fn feed(&mut self, chunk: Option<&[u8]>) -> Result<(), Verdict> {
        self.decoder.receive(chunk);
        loop {
            match self.decoder.next_event(self.current.is_some()).map_err(Verdict::Malformed)? {
                Event::Epilogue | Event::NeedData => return Ok(()),
                Event::Preamble => {}
                Event::Part(head) => self.start_part(head)?,
                Event::Data(data, more) => {
                    if let Some((_, _, value)) = self.current.as_mut() {
                        value.extend_from_slice(&data);
                    }
                    if !more {
                        if let Some((name, charset, value)) = self.current.take() {
                            self.fields.offer(&mut self.seen, name, &decode(&value, charset));
                        }
                    }
                }
            }
        }
    }

    fn start_part(&mut self, head: PartHead) -> Result<(), Verdict> {
        self.current = None;
        let Some(name) = head.name.and_then(|n| JUDGED_FIELDS.iter().copied().find(|f| *f == n)) else {
            return Ok(());
        };
        if head.file || self.refuse_judged {
            return Err(Verdict::Judged { name, file: head.file });
        }
        self.current = Some((name, head.charset, Vec::new()));
        Ok(())
    }

    /// The judged fields and which of them the form set (after `feed(None)`).
    pub(crate) fn finish(self) -> (FormFields, [bool; 3]) {
        (self.fields, self.seen)
    }
}

/// A whole body, read as werkzeug reads it.
pub(crate) fn judge_body(body: &[u8], boundary: &str) -> Result<(FormFields, [bool; 3]), Verdict> {
    let mut judge = Judge::new(boundary, false);
    for chunk in body.chunks(CHUNK) {
        judge.feed(Some(chunk))?;
    }
    judge.feed(None)?;
    Ok(judge.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(body: &[u8]) -> Result<Option<String>, Verdict> {
        judge_body(body, "XyZ").map(|(fields, _)| fields.cmd)
    }

    #[test]
    fn a_plain_form() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--XyZ\r\nContent-Disposition: form-data; name=\"cmd\"\r\n\r\nm.n\r\n--XyZ--\r\n";
        assert_eq!(cmd(body), Ok(Some("m.n".into())));
    }

    /// The forms a general-purpose parser reads differently (each found by the differential
    /// test against werkzeug).
    #[test]
    fn werkzeugs_own_readings() {
        let lone_lf = b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\n--XyZ\r\nContent-Disposition: form-data; name=\"cmd\"\r\n\r\ns.m\r\n--XyZ--\r\n";
        assert_eq!(cmd(lone_lf), Ok(Some("s.m".into())));
        let shared_blank_line = b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n--XyZ\r\nContent-Disposition: form-data; name=\"cmd\"\r\n\r\ns.m\r\n--XyZ--\r\n";
        assert_eq!(cmd(shared_blank_line), Ok(Some("s.m".into())));
        let lf_blank_line = b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\n\nx\r\n--XyZ\r\nContent-Disposition: form-data; name=\"cmd\"\r\n\r\ns.m\r\n--XyZ--\r\n";
        assert_eq!(cmd(lf_blank_line), Ok(Some("s.m".into())));
        let two_dispositions = b"--XyZ\r\nContent-Disposition: form-data; name=\"cmd\"\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\ns.m\r\n--XyZ--\r\n";
        assert_eq!(cmd(two_dispositions), Ok(Some("s.m".into())));
        let utf16 = b"--XyZ\r\nContent-Disposition: form-data; name=\"cmd\"\r\nContent-Type: text/plain; charset=utf-16le\r\n\r\ns.m\r\n--XyZ--\r\n";
        assert_eq!(cmd(utf16), Ok(Some("s.m".into())));
        let first_wins = b"--XyZ\r\nContent-Disposition: form-data; name=cmd\r\n\r\na.b\r\n--XyZ\r\nContent-Disposition: form-data; name=cmd\r\n\r\nc.d\r\n--XyZ--";
        assert_eq!(cmd(first_wins), Ok(Some("a.b".into())));
    }

    #[test]
    fn what_werkzeug_would_parse_as_an_empty_form() {
        assert_eq!(cmd(b"no boundary at all"), Err(Verdict::Malformed(Malformed::Invalid)));
        let truncated = b"--XyZ\r\nContent-Disposition: form-data; name=\"cmd\"\r\n\r\ns.m";
        assert_eq!(cmd(truncated), Err(Verdict::Malformed(Malformed::Invalid)));
        let no_disposition = b"--XyZ\r\nX-A: b\r\n\r\nz\r\n--XyZ--\r\n";
        assert_eq!(cmd(no_disposition), Err(Verdict::Malformed(Malformed::Invalid)));
        let latin1_header =
            b"--XyZ\r\nContent-Disposition: form-data; name=\"cmd\"\r\nX-A: \xff\r\n\r\ns.m\r\n--XyZ--\r\n";
        assert_eq!(cmd(latin1_header), Err(Verdict::Malformed(Malformed::HeaderNotUtf8)));
    }

    #[test]
    fn a_judged_file_part_is_a_verdict() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"cmd\"; filename=\"a\"\r\n\r\ns.m\r\n--XyZ--\r\n";
        assert_eq!(cmd(body), Err(Verdict::Judged { name: "cmd", file: true }));
    }
}
