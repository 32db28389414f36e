//! werkzeug 3.0's `parse_options_header`, step for step: how Frappe reads a `Content-Type`
//! (the mimetype and the multipart boundary) and each multipart part's `Content-Disposition`
//! (the field's name, and whether it is a file). A parser of our own that read these
//! parameters differently — a continuation `name*0=c; name*1=md`, a repeated `name`, a
//! valueless parameter, a backslash in a quoted string — would let a `cmd` or `sid` field
//! reach Frappe unseen, or make the gateway judge one that Frappe never reads.
//!
//! Parameters are `key=value` parts after the first `;`; a part that is not one is skipped
//! up to the next `;`. Keys are lower-cased; a later key replaces an earlier one;
//! `key*=charset'lang'%xx` is percent-decoded (ASCII, UTF-8 or ISO-8859-1 only);
//! `key*0=a; key*1=b` is `key=ab`; quoted values lose their quotes, `\\`, `\"` and `%22`.

/// The value before the first `;` (trimmed, case kept) and the parameters, last value per key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct OptionsHeader<'a> {
    pub(crate) value: &'a str,
    params: Vec<(String, String)>,
}

impl OptionsHeader<'_> {
    /// The parameter `key` (lower case), as werkzeug's `options.get(key)`.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// `[\w!#$%&'*+\-.^`|~]` with ASCII `\w`: the characters of keys and token values.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_!#$%&'*+-.^`|~".contains(&b)
}

/// Python's `str.isspace`, which `strip` uses: Unicode whitespace and `\x1c`–`\x1f`.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

pub(super) fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

pub(crate) fn parse(header: &str) -> OptionsHeader<'_> {
    let (value, rest) = header.split_once(';').unwrap_or((header, ""));
    let (value, rest) = (py_strip(value), py_strip(rest));
    if value.is_empty() || rest.is_empty() {
        return OptionsHeader { value, params: Vec::new() };
    }
    let mut params: Vec<(String, String)> = Vec::new();
    let mut encoding: Option<String> = None;
    let mut continued_encoding: Option<String> = None;
    for (key, raw) in raw_parts(rest) {
        let (mut key, mut value) = (key, raw.to_string());
        if let Some(stripped) = key.strip_suffix('*') {
            key = stripped.to_string();
            if let Some((charset, encoded)) = charset_value(&value) {
                encoding = Some(charset.to_ascii_lowercase());
                value = encoded.to_string();
            }
            if encoding.as_deref().is_none_or(str::is_empty) {
                encoding.clone_from(&continued_encoding);
            }
            if let Some(charset) = encoding.as_deref().filter(|e| KNOWN_CHARSETS.contains(e)) {
                continued_encoding = Some(charset.to_string());
                value = percent_unquote(&value, charset);
            }
        }
        if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
            value =
                value[1..value.len() - 1].replace("\\\\", "\\").replace("\\\"", "\"").replace("%22", "\"");
        } else if value == "\"" {
            value.clear();
        }
        match continuation(&key) {
            Some(base) => match params.iter_mut().find(|(k, _)| k == base) {
                Some((_, existing)) => existing.push_str(&value),
                None => params.push((base.to_string(), value)),
            },
            None => match params.iter_mut().find(|(k, _)| *k == key) {
                Some((_, existing)) => *existing = value,
                None => params.push((key, value)),
            },
        }
    }
    OptionsHeader { value, params }
}

const KNOWN_CHARSETS: [&str; 4] = ["ascii", "us-ascii", "utf-8", "iso-8859-1"];

/// The `key=value` parts, keys lower-cased, values raw (quotes kept).
fn raw_parts(mut rest: &str) -> Vec<(String, &str)> {
    let mut parts = Vec::new();
    loop {
        let key_len = rest.bytes().take_while(|&b| is_token_char(b)).count();
        if key_len > 0 && rest.as_bytes().get(key_len) == Some(&b'=') {
            let key = rest[..key_len].to_ascii_lowercase();
            rest = &rest[key_len + 1..];
            let token_len = rest.bytes().take_while(|&b| is_token_char(b)).count();
            if token_len > 0 {
                parts.push((key, &rest[..token_len]));
            } else if rest.starts_with('"') {
                if let Some(end) = closing_quote(rest) {
                    parts.push((key, &rest[..=end]));
                    rest = &rest[end + 1..];
                }
            }
        }
        let Some(end) = rest.find(';') else { break };
        rest = rest[end + 1..].trim_start_matches(is_py_space);
    }
    parts
}

/// The index of the quote closing the quoted string that `s` starts with; `\\` and `\"`
/// are skipped as pairs.
fn closing_quote(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut pos = 1;
    while pos < bytes.len() {
        match &bytes[pos..] {
            [b'\\', b'\\' | b'"', ..] => pos += 2,
            [b'"', ..] => return Some(pos),
            _ => pos += 1,
        }
    }
    None
}

/// `charset'lang'token` at the start of `value` (werkzeug's `_charset_value_re.match`):
/// the charset and the token (which ends at the first character outside the token set).
fn charset_value(value: &str) -> Option<(&str, &str)> {
    let charset_char = |b: u8| is_token_char(b) && b != b'\'';
    let bytes = value.as_bytes();
    let charset_len = bytes.iter().take_while(|&&b| charset_char(b)).count();
    if bytes.get(charset_len) != Some(&b'\'') {
        return None;
    }
    let lang_start = charset_len + 1;
    let lang_len = bytes[lang_start..].iter().take_while(|&&b| charset_char(b)).count();
    let token_start = lang_start + lang_len + 1;
    if bytes.get(lang_start + lang_len) != Some(&b'\'') {
        return None;
    }
    let token_len = bytes[token_start..].iter().take_while(|&&b| is_token_char(b)).count();
    (token_len > 0).then(|| (&value[..charset_len], &value[token_start..token_start + token_len]))
}

/// `key*0` → `key` (a trailing `*` and ASCII digits), as `_continuation_re.search`.
fn continuation(key: &str) -> Option<&str> {
    let star = key.rfind('*')?;
    let digits = &key[star + 1..];
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| &key[..star])
}

/// `urllib.parse.unquote(value, encoding, errors="replace")`: each run of ASCII characters
/// is percent-decoded and decoded in `charset`; other characters are kept as they are.
fn percent_unquote(value: &str, charset: &str) -> String {
    if !value.contains('%') {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while !rest.is_empty() {
        let ascii_len = rest.bytes().take_while(u8::is_ascii).count();
        let (ascii, tail) = rest.split_at(ascii_len);
        let bytes: Vec<u8> = percent_encoding::percent_decode_str(ascii).collect();
        match charset {
            "iso-8859-1" => out.extend(bytes.iter().map(|&b| char::from(b))),
            "ascii" | "us-ascii" => {
                out.extend(bytes.iter().map(|&b| if b.is_ascii() { char::from(b) } else { '\u{fffd}' }))
            }
            _ => out.push_str(&String::from_utf8_lossy(&bytes)),
        }
        let other_len = tail.chars().take_while(|c| !c.is_ascii()).map(char::len_utf8).sum();
        out.push_str(&tail[..other_len]);
        rest = &tail[other_len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(header: &str) -> Vec<(String, String)> {
        parse(header).params
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// A header, werkzeug's value and its parameters.
    type Expected = (&'static str, &'static str, &'static [(&'static str, &'static str)]);

    /// Each expectation is what werkzeug 3.0.6's `parse_options_header` returns.
    #[test]
    fn reads_parameters_as_werkzeug_does() {
        let cases: &[Expected] = &[
            ("text/html; charset=UTF-8", "text/html", &[("charset", "UTF-8")]),
            ("form-data; name=\"cmd\"", "form-data", &[("name", "cmd")]),
            ("form-data; NAME=cmd", "form-data", &[("name", "cmd")]),
            ("form-data; name=cmd x", "form-data", &[("name", "cmd")]),
            ("form-data; foo; name=cmd", "form-data", &[("name", "cmd")]),
            ("form-data; name*0=c; name*1=md", "form-data", &[("name", "cmd")]),
            ("form-data; name=cmd; name=x", "form-data", &[("name", "x")]),
            ("form-data; name=\"c\\md\"", "form-data", &[("name", "c\\md")]),
            ("form-data; name=\"a\\\"b\\\\c%22\"", "form-data", &[("name", "a\"b\\c\"")]),
            ("form-data; name=\"cmd", "form-data", &[]),
            ("form-data; name=\"a;b\"; x=1", "form-data", &[("name", "a;b"), ("x", "1")]),
            ("form-data; name*=UTF-8''%63md", "form-data", &[("name", "cmd")]),
            ("form-data; name*=utf-8''%E2%82%AC", "form-data", &[("name", "€")]),
            ("form-data; name*=iso-8859-1''%E9", "form-data", &[("name", "é")]),
            ("form-data; name*=koi8-r''%63md", "form-data", &[("name", "%63md")]),
            ("form-data; name*0*=utf-8''c; name*1=md", "form-data", &[("name", "cmd")]),
            ("form-data; name=cmd; filename*0=x", "form-data", &[("name", "cmd"), ("filename", "x")]),
            (
                "multipart/form-data; boundary=AAA; boundary=BBB",
                "multipart/form-data",
                &[("boundary", "BBB")],
            ),
            ("multipart/form-data; boundary=\"a b\"", "multipart/form-data", &[("boundary", "a b")]),
            ("form-data", "form-data", &[]),
            ("; name=cmd", "", &[]),
            ("form-data;  ", "form-data", &[]),
        ];
        for (header, value, expected) in cases {
            let parsed = parse(header);
            assert_eq!(parsed.value, *value, "{header}");
            assert_eq!(parsed.params, pairs(expected), "{header}");
        }
    }

    #[test]
    fn the_last_value_wins_and_continuations_append() {
        assert_eq!(parse("x; a=1; a=2").get("a"), Some("2"));
        assert_eq!(params("x; a*0=1; a*1=2; a*2=3"), pairs(&[("a", "123")]));
        assert_eq!(parse("x; a=1").get("b"), None);
    }

    /// Thousands of headers built from the pieces that matter (keys, `*`, digits, quotes,
    /// backslashes, `%22`, charsets, `;`, spaces, non-ASCII), parsed here and by the real
    /// werkzeug (`tests/differential/requirements.txt`, which CI installs): every result agrees.
    #[test]
    fn agrees_with_werkzeug_on_generated_headers() {
        const PIECES: &[&str] = &[
            "form-data",
            "multipart/form-data",
            ";",
            "; ",
            " ",
            "\t",
            "=",
            "\"",
            "\\",
            "\\\"",
            "%22",
            "%63",
            "%E9",
            "%FF",
            "*",
            "*0",
            "*1",
            "*0*",
            "'",
            "''",
            "utf-8''",
            "iso-8859-1''",
            "koi8-r''",
            "''",
            "name",
            "NAME",
            "filename",
            "boundary",
            "cmd",
            "c",
            "md",
            "x",
            "é",
            "€",
            ",",
            "\x1c",
        ];
        let rng = std::cell::Cell::new(0x9e37_79b9_7f4a_7c15_u64);
        let next = || {
            let mut x = rng.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            rng.set(x);
            x
        };
        let pick = |pieces: &[&str], most: u64| -> String {
            let len = 1 + next() % most;
            (0..len).map(|_| pieces[(next() % pieces.len() as u64) as usize]).collect()
        };
        // Half free-form, half shaped like real headers: `type; key=value; key="quoted"`.
        const KEYS: &[&str] =
            &["name", "name*", "name*0", "name*1", "name*0*", "filename", "filename*", "boundary", "x"];
        const QUOTED: &[&str] = &["\\", "\\\\", "\\\"", "\"", "%22", ";", " ", "c", "md", "é", "'"];
        let headers: Vec<String> = (0..10_000)
            .map(|i| {
                if i % 2 == 0 {
                    return pick(PIECES, 14);
                }
                let mut header = String::from("form-data");
                for _ in 0..1 + next() % 4 {
                    header.push_str(["; ", ";", " ; ", "; foo; "][(next() % 4) as usize]);
                    header.push_str(KEYS[(next() % KEYS.len() as u64) as usize]);
                    header.push('=');
                    match next() % 3 {
                        0 => header.push_str(&pick(&["utf-8''", "%63", "md", "c", "''"], 3)),
                        1 => header.push_str(&pick(&["c", "md", "x", " y"], 3)),
                        _ => header.push_str(&format!(
                            "\"{}{}",
                            pick(QUOTED, 5),
                            ["\"", ""][(next() % 2) as usize]
                        )),
                    }
                }
                header
            })
            .collect();
        let script = "import json, sys\nfrom werkzeug.http import parse_options_header as p\n\
                      print(json.dumps([[v, list(o.items())] for v, o in map(p, json.load(sys.stdin))]))";
        let mut python = std::process::Command::new("python3")
            .args(["-W", "ignore", "-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 with werkzeug (pip install -r tests/differential/requirements.txt)");
        let input = serde_json::to_vec(&headers).unwrap();
        std::io::Write::write_all(&mut python.stdin.take().unwrap(), &input).unwrap();
        let output = python.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "werkzeug is needed: pip install -r tests/differential/requirements.txt"
        );
        let expected: Vec<(String, Vec<(String, String)>)> = serde_json::from_slice(&output.stdout).unwrap();
        let mut differ = Vec::new();
        for (header, (value, params)) in headers.iter().zip(expected) {
            let ours = parse(header);
            if ours.value != value || ours.params != params {
                differ.push(format!(
                    "{header:?}: werkzeug {value:?} {params:?}, ours {:?} {:?}",
                    ours.value, ours.params
                ));
            }
        }
        assert!(
            differ.is_empty(),
            "{} of {} differ:\n{}",
            differ.len(),
            headers.len(),
            differ[..differ.len().min(20)].join("\n")
        );
    }
}
