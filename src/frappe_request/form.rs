//! The few `form_dict` entries that change what Frappe runs or as whom: `cmd`, `sid` and
//! `run_method`, read the way `frappe.app.make_form_dict` builds `form_dict`.
//!
//! A non-empty body whose mimetype werkzeug calls JSON (`application/json`,
//! `application/*+json`) is `form_dict` **alone**; otherwise the query arguments, then the form
//! fields (urlencoded or multipart) over them. For repeated names the first value wins
//! (`dict.update(MultiDict)`); in JSON the last one does (Python's `json`) — serde refuses
//! duplicates instead, which fails closed.
//!
//! Parameters of `Content-Type` and of each part's `Content-Disposition` are read by a port of
//! werkzeug's own parser (`options_header`). A form werkzeug would silently parse as empty —
//! an urlencoded body or a part header that is not UTF-8 — is refused: Frappe would run the
//! query's `cmd` (or the path) while the body's was judged.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::{multipart, options_header};

/// How Frappe will parse a request body, from its `Content-Type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    UrlEncoded,
    Multipart {
        boundary: String,
    },
    /// Not parsed into `form_dict` (octet-stream, text, none).
    Opaque,
}

/// Why a body that claims a parsed form cannot be judged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("the request body is not valid JSON")]
    BadJson,
    #[error("`{0}` must be a string")]
    NotString(&'static str),
    #[error("the multipart body is malformed")]
    BadMultipart,
    #[error("Content-Type must be ASCII")]
    ContentTypeNotAscii,
    #[error("a form body must be UTF-8")]
    FormNotUtf8,
    #[error("multipart part headers must be UTF-8")]
    PartHeaderNotUtf8,
    #[error("a multipart body may have at most 1000 parts")]
    TooManyParts,
    #[error("a multipart body needs a boundary parameter in Content-Type")]
    NoBoundary,
    #[error("a multipart part named {0:?} must be a plain field, not a file")]
    FileNamed(&'static str),
    #[error("a multipart field {0:?} must come in a body small enough to be judged whole (server.inspect_body_bytes)")]
    StreamedField(&'static str),
}

/// The entries of `form_dict` the gateway judges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormFields {
    /// `form_dict.cmd` when truthy: the method Frappe runs instead of routing the path.
    pub cmd: Option<String>,
    /// A `sid` entry is present (Frappe would act as that session's user).
    pub sid: bool,
    /// `form_dict.run_method`, the document method of `POST /api/resource/<dt>/<name>`.
    pub run_method: Option<String>,
}

/// Field names whose presence or value changes what Frappe runs.
pub(crate) const JUDGED_FIELDS: [&str; 3] = ["cmd", "sid", "run_method"];

impl FormFields {
    /// Sets a field unless an earlier value of the same name is already set (first wins).
    pub(super) fn offer(&mut self, seen: &mut [bool; 3], name: &str, value: &str) {
        let Some(i) = JUDGED_FIELDS.iter().position(|f| *f == name) else { return };
        if std::mem::replace(&mut seen[i], true) {
            return;
        }
        match i {
            0 => self.cmd = Some(value.to_string()).filter(|v| !v.is_empty()),
            1 => self.sid = true,
            _ => self.run_method = Some(value.to_string()).filter(|v| !v.is_empty()),
        }
    }

    /// Form fields override query arguments of the same name.
    fn overlay(mut self, form: FormFields, form_seen: [bool; 3]) -> FormFields {
        if form_seen[0] {
            self.cmd = form.cmd;
        }
        if form_seen[1] {
            self.sid = form.sid;
        }
        if form_seen[2] {
            self.run_method = form.run_method;
        }
        self
    }
}

/// Werkzeug's `mimetype` (before `;`, trimmed, lower-cased) mapped to how it parses the body,
/// with its `boundary` (the last one, unquoted). A `Content-Type` that is not ASCII is refused:
/// werkzeug would read it as Latin-1, and a non-ASCII boundary makes it drop the form.
pub fn body_kind(content_type: Option<&[u8]>) -> Result<BodyKind, FormError> {
    let Some(ct) = content_type else { return Ok(BodyKind::Opaque) };
    let ct = std::str::from_utf8(ct).ok().filter(|ct| ct.is_ascii()).ok_or(FormError::ContentTypeNotAscii)?;
    let header = options_header::parse(ct);
    let mimetype = header.value.to_ascii_lowercase();
    Ok(match mimetype.as_str() {
        "application/json" => BodyKind::Json,
        m if m.starts_with("application/") && m.ends_with("+json") => BodyKind::Json,
        "application/x-www-form-urlencoded" => BodyKind::UrlEncoded,
        "multipart/form-data" => match header.get("boundary") {
            Some(boundary) if !boundary.is_empty() => BodyKind::Multipart { boundary: boundary.to_string() },
            _ => return Err(FormError::NoBoundary),
        },
        _ => BodyKind::Opaque,
    })
}

/// The judged fields of a request whose whole body is known (`body` empty for none).
pub fn fields(query: Option<&str>, kind: &BodyKind, body: &[u8]) -> Result<FormFields, FormError> {
    if !body.is_empty() && *kind == BodyKind::Json {
        return json_fields(body);
    }
    let mut seen = [false; 3];
    let mut fields = FormFields::default();
    for (name, value) in parse_qsl(query.unwrap_or_default().as_bytes()) {
        fields.offer(&mut seen, &name, &value);
    }
    let (form, form_seen) = match kind {
        BodyKind::UrlEncoded => urlencoded_fields(body)?,
        BodyKind::Multipart { boundary } => multipart_fields(body, boundary)?,
        BodyKind::Json | BodyKind::Opaque => return Ok(fields),
    };
    Ok(fields.overlay(form, form_seen))
}

/// The query's fields alone: what Frappe reads when the body is empty or not a form.
pub fn query_fields(query: Option<&str>) -> FormFields {
    fields(query, &BodyKind::Opaque, b"").unwrap_or_default()
}

/// Werkzeug decodes the body as UTF-8 first, and parses a body that is not as an empty form.
fn urlencoded_fields(body: &[u8]) -> Result<(FormFields, [bool; 3]), FormError> {
    std::str::from_utf8(body).map_err(|_| FormError::FormNotUtf8)?;
    let mut seen = [false; 3];
    let mut fields = FormFields::default();
    for (name, value) in parse_qsl(body) {
        fields.offer(&mut seen, &name, &value);
    }
    Ok((fields, seen))
}

/// werkzeug's `parse_qsl(s, keep_blank_values=True, errors="werkzeug.url_quote")`: pairs
/// split at `&` (empty ones skipped), name and value at the first `=`, `+` as a space, then
/// percent-decoded as UTF-8 — bytes that do not decode are quoted again (`%FF` stays `%FF`).
fn parse_qsl(input: &[u8]) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> + '_ {
    input.split(|&b| b == b'&').filter(|pair| !pair.is_empty()).map(|pair| {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        (unquote_plus(name), unquote_plus(value))
    })
}

fn unquote_plus(raw: &[u8]) -> Cow<'_, str> {
    if !raw.iter().any(|&b| b == b'+' || b == b'%') {
        if let Ok(plain) = std::str::from_utf8(raw) {
            return Cow::Borrowed(plain);
        }
    }
    let spaced: Vec<u8> = raw.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect();
    let bytes: Vec<u8> = percent_encoding::percent_decode(&spaced).collect();
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for byte in chunk.invalid() {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    Cow::Owned(out)
}

/// Only the judged keys are read; every other value is skipped without being built.
#[derive(Deserialize)]
struct JsonTop {
    cmd: Option<serde_json::Value>,
    #[serde(default)]
    sid: Present,
    run_method: Option<serde_json::Value>,
}

/// Whether a key is there, whatever its value (`null` included: the key is in `form_dict`).
#[derive(Default)]
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(deserializer).map(|_| Present(true))
    }
}

fn json_fields(body: &[u8]) -> Result<FormFields, FormError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        // A list becomes `form_dict.data`; a scalar makes Frappe refuse the request. Neither
        // carries a cmd, but it must still be JSON.
        serde_json::from_slice::<IgnoredAny>(body).map_err(|_| FormError::BadJson)?;
        return Ok(FormFields::default());
    }
    let top: JsonTop = serde_json::from_slice(body).map_err(|_| FormError::BadJson)?;
    let cmd = string_field(top.cmd, "cmd")?;
    let run_method = string_field(top.run_method, "run_method")?;
    Ok(FormFields { cmd, sid: top.sid.0, run_method })
}

/// A judged JSON value: a non-empty string; anything else truthy is refused (Frappe would
/// try to run it all the same).
fn string_field(value: Option<serde_json::Value>, name: &'static str) -> Result<Option<String>, FormError> {
    match value {
        Some(serde_json::Value::String(s)) => Ok(Some(s).filter(|s| !s.is_empty())),
        Some(v) if truthy(&v) => Err(FormError::NotString(name)),
        _ => Ok(None),
    }
}

/// Python truthiness of a JSON value.
fn truthy(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => false,
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Number(n) => n.as_f64() != Some(0.0),
        serde_json::Value::String(s) => !s.is_empty(),
        serde_json::Value::Array(a) => !a.is_empty(),
        serde_json::Value::Object(o) => !o.is_empty(),
    }
}

/// An empty body is an empty form (werkzeug: no parts, nothing to drop).
fn multipart_fields(body: &[u8], boundary: &str) -> Result<(FormFields, [bool; 3]), FormError> {
    if body.is_empty() {
        return Ok((FormFields::default(), [false; 3]));
    }
    multipart::judge_body(body, boundary).map_err(FormError::from)
}

impl From<multipart::Verdict> for FormError {
    fn from(verdict: multipart::Verdict) -> Self {
        use multipart::{Malformed, Verdict};
        match verdict {
            Verdict::Malformed(Malformed::HeaderNotUtf8) => FormError::PartHeaderNotUtf8,
            Verdict::Malformed(Malformed::TooManyParts) => FormError::TooManyParts,
            Verdict::Malformed(Malformed::Invalid) => FormError::BadMultipart,
            Verdict::Judged { name, file: true } => FormError::FileNamed(name),
            Verdict::Judged { name, file: false } => FormError::StreamedField(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(query: Option<&str>, kind: &BodyKind, body: &str) -> Option<String> {
        fields(query, kind, body.as_bytes()).unwrap().cmd
    }

    fn multipart(parts: &[(&str, &str)]) -> (BodyKind, String) {
        let mut body = String::new();
        for (disposition, value) in parts {
            body.push_str(&format!("--XyZ\r\nContent-Disposition: {disposition}\r\n\r\n{value}\r\n"));
        }
        body.push_str("--XyZ--\r\n");
        (BodyKind::Multipart { boundary: "XyZ".into() }, body)
    }

    #[test]
    fn content_types_as_werkzeug_reads_them() {
        assert_eq!(body_kind(Some(b"application/json")), Ok(BodyKind::Json));
        assert_eq!(body_kind(Some(b"Application/JSON ; charset=utf-8")), Ok(BodyKind::Json));
        assert_eq!(body_kind(Some(b"application/vnd.api+json")), Ok(BodyKind::Json));
        assert_eq!(body_kind(Some(b"application/x-www-form-urlencoded")), Ok(BodyKind::UrlEncoded));
        assert_eq!(
            body_kind(Some(b"multipart/form-data; boundary=abc")),
            Ok(BodyKind::Multipart { boundary: "abc".into() })
        );
        assert_eq!(body_kind(Some(b"multipart/form-data")), Err(FormError::NoBoundary));
        assert_eq!(body_kind(Some(b"text/plain")), Ok(BodyKind::Opaque));
        assert_eq!(body_kind(Some(b"text/json")), Ok(BodyKind::Opaque));
        assert_eq!(body_kind(None), Ok(BodyKind::Opaque));
    }

    #[test]
    fn query_then_form_with_the_first_value_winning() {
        let form = BodyKind::UrlEncoded;
        assert_eq!(cmd(Some("cmd=a.b"), &BodyKind::Opaque, ""), Some("a.b".into()));
        assert_eq!(cmd(Some("c%6Dd=a.b"), &BodyKind::Opaque, ""), Some("a.b".into()));
        assert_eq!(cmd(Some("cmd=a.b&cmd=c.d"), &BodyKind::Opaque, ""), Some("a.b".into()));
        assert_eq!(cmd(Some("cmd=a%2Eb+c"), &BodyKind::Opaque, ""), Some("a.b c".into()));
        assert_eq!(cmd(Some("cmd="), &BodyKind::Opaque, ""), None);
        assert_eq!(cmd(Some("cmd=q"), &form, "cmd=f"), Some("f".into()));
        assert_eq!(cmd(Some("cmd=q"), &form, "x=1"), Some("q".into()));
        // An empty form value still overrides (Frappe then routes the path).
        assert_eq!(cmd(Some("cmd=q"), &form, "cmd="), None);
        // A body that is not a form leaves the query in charge.
        assert_eq!(cmd(Some("cmd=q"), &BodyKind::Opaque, "cmd=f"), Some("q".into()));
        assert!(fields(Some("s%69d=x"), &BodyKind::Opaque, b"").unwrap().sid);
        assert!(fields(None, &form, b"a=1&sid").unwrap().sid);
    }

    #[test]
    fn a_json_body_replaces_the_query() {
        let json = BodyKind::Json;
        assert_eq!(cmd(Some("cmd=q"), &json, r#"{"x":1}"#), None);
        assert_eq!(cmd(Some("cmd=q"), &json, r#"{"cmd":"j.k"}"#), Some("j.k".into()));
        assert_eq!(cmd(Some("cmd=q"), &json, ""), Some("q".into()), "an empty body is not JSON");
        assert_eq!(cmd(None, &json, r#"[{"cmd":"x"}]"#), None);
        assert_eq!(cmd(None, &json, r#"{"cmd":null,"cmd2":1}"#), None);
        assert_eq!(fields(None, &json, br#"{"cmd":{"a":1}}"#), Err(FormError::NotString("cmd")));
        assert_eq!(fields(None, &json, br#"{"cmd":"a","cmd":"b"}"#), Err(FormError::BadJson));
        assert_eq!(fields(None, &json, b"{"), Err(FormError::BadJson));
        assert_eq!(fields(None, &json, b"  "), Err(FormError::BadJson));
        assert!(fields(None, &json, br#"{"sid":"abc"}"#).unwrap().sid);
        let f = fields(None, &json, br#"{"run_method":"submit","data":{"cmd":"x"}}"#).unwrap();
        assert_eq!((f.cmd, f.run_method.as_deref()), (None, Some("submit")));
    }

    #[test]
    fn multipart_fields_in_every_spelling_werkzeug_reads() {
        let (kind, body) = multipart(&[("form-data; name=\"a\"", "1"), ("form-data; name=\"cmd\"", "m.n")]);
        assert_eq!(cmd(Some("cmd=q"), &kind, &body), Some("m.n".into()));
        let (kind, body) = multipart(&[("form-data; NAME=cmd", "m.n")]);
        assert_eq!(cmd(None, &kind, &body), Some("m.n".into()));
        // werkzeug unescapes only `\\` and `\"`: this field is `c\md`, not `cmd`.
        let (kind, body) = multipart(&[("form-data; name=\"c\\md\"", "m.n")]);
        assert_eq!(cmd(None, &kind, &body), None);
        let (kind, body) = multipart(&[("form-data; name*0=c; name*1=md", "m.n")]);
        assert_eq!(cmd(None, &kind, &body), Some("m.n".into()));
        let (kind, body) = multipart(&[("form-data; foo; name=cmd", "m.n")]);
        assert_eq!(cmd(None, &kind, &body), Some("m.n".into()));
        let (kind, body) = multipart(&[("form-data; name=cmd; name=x", "m.n")]);
        assert_eq!(cmd(None, &kind, &body), None);
        let (kind, body) = multipart(&[("form-data; name=cmd; filename*0=x", "m.n")]);
        assert_eq!(fields(None, &kind, body.as_bytes()), Err(FormError::FileNamed("cmd")));
        let (kind, body) = multipart(&[("form-data; name*=UTF-8''%63md", "m.n")]);
        assert_eq!(cmd(None, &kind, &body), Some("m.n".into()));
        let (kind, body) = multipart(&[("form-data; name=\"sid\"", "abc")]);
        assert!(fields(None, &kind, body.as_bytes()).unwrap().sid);
        let (kind, body) = multipart(&[("form-data; name=\"cmd\"; filename=\"x.txt\"", "m.n")]);
        assert_eq!(fields(None, &kind, body.as_bytes()), Err(FormError::FileNamed("cmd")));
        let (kind, body) = multipart(&[("form-data; name=\"file\"; filename=\"cmd\"", "data")]);
        assert_eq!(cmd(None, &kind, &body), None);
        let (kind, _) = multipart(&[]);
        assert_eq!(fields(None, &kind, b"--XyZ\r\nnot a part"), Err(FormError::BadMultipart));
    }

    /// Forms werkzeug would parse as empty (so the query's `cmd` would run) are refused.
    #[test]
    fn forms_werkzeug_would_drop_are_refused() {
        let form = BodyKind::UrlEncoded;
        assert_eq!(fields(Some("cmd=q"), &form, b"cmd=f&x=\xff"), Err(FormError::FormNotUtf8));
        assert_eq!(cmd(Some("cmd=q"), &form, "cmd=f&x=%FF"), Some("f".into()), "percent-encoded is fine");
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=cmd\r\nX-A: \xff\r\n\r\nf\r\n--XyZ--\r\n";
        let kind = BodyKind::Multipart { boundary: "XyZ".into() };
        assert_eq!(fields(Some("cmd=q"), &kind, body), Err(FormError::PartHeaderNotUtf8));
        let latin1 = b"application/x-www-form-urlencoded; x=\xe9";
        assert_eq!(body_kind(Some(latin1)), Err(FormError::ContentTypeNotAscii));
        // werkzeug keeps the last boundary.
        assert_eq!(
            body_kind(Some(b"multipart/form-data; boundary=AAA; boundary=BBB")),
            Ok(BodyKind::Multipart { boundary: "BBB".into() })
        );
        assert_eq!(body_kind(Some(b"multipart/form-data; boundary=")), Err(FormError::NoBoundary));
    }
}
