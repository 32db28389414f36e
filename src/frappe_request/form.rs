//! The few `form_dict` entries that change what Frappe runs or as whom: `cmd`, `sid` and
//! `run_method`, read the way `frappe.app.make_form_dict` builds `form_dict`.
//!
//! A non-empty body whose mimetype werkzeug calls JSON (`application/json`,
//! `application/*+json`) is `form_dict` **alone**; otherwise the query arguments, then the form
//! fields (urlencoded or multipart) over them. For repeated names the first value wins
//! (`dict.update(MultiDict)`); in JSON the last one does (Python's `json`) — serde refuses
//! duplicates instead, which fails closed.

use std::borrow::Cow;

use bytes::Bytes;
use futures_util::FutureExt;
use serde::de::IgnoredAny;
use serde::Deserialize;

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
    #[error("`cmd` must be a string")]
    CmdNotString,
    #[error("the multipart body is malformed")]
    BadMultipart,
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
    fn offer(&mut self, seen: &mut [bool; 3], name: &str, value: &str) {
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

/// Werkzeug's `mimetype` (before `;`, trimmed, lower-cased) mapped to how it parses the body.
pub fn body_kind(content_type: Option<&str>) -> Result<BodyKind, FormError> {
    let Some(ct) = content_type else { return Ok(BodyKind::Opaque) };
    let mimetype = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    Ok(match mimetype.as_str() {
        "application/json" => BodyKind::Json,
        m if m.starts_with("application/") && m.ends_with("+json") => BodyKind::Json,
        "application/x-www-form-urlencoded" => BodyKind::UrlEncoded,
        "multipart/form-data" => {
            BodyKind::Multipart { boundary: multer::parse_boundary(ct).map_err(|_| FormError::NoBoundary)? }
        }
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
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        fields.offer(&mut seen, &name, &value);
    }
    let (form, form_seen) = match kind {
        BodyKind::UrlEncoded => urlencoded_fields(body),
        BodyKind::Multipart { boundary } => multipart_fields(body, boundary)?,
        BodyKind::Json | BodyKind::Opaque => return Ok(fields),
    };
    Ok(fields.overlay(form, form_seen))
}

/// The query's fields alone: what Frappe reads when the body is empty or not a form.
pub fn query_fields(query: Option<&str>) -> FormFields {
    fields(query, &BodyKind::Opaque, b"").unwrap_or_default()
}

fn urlencoded_fields(body: &[u8]) -> (FormFields, [bool; 3]) {
    let mut seen = [false; 3];
    let mut fields = FormFields::default();
    for (name, value) in form_urlencoded::parse(body) {
        fields.offer(&mut seen, &name, &value);
    }
    (fields, seen)
}

/// Only the judged keys are read; every other value is skipped without being built.
#[derive(Deserialize)]
struct JsonTop {
    cmd: Option<serde_json::Value>,
    sid: Option<IgnoredAny>,
    run_method: Option<serde_json::Value>,
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
    let cmd = match top.cmd {
        Some(serde_json::Value::String(s)) => Some(s).filter(|s| !s.is_empty()),
        Some(v) if truthy(&v) => return Err(FormError::CmdNotString),
        _ => None,
    };
    let run_method = match top.run_method {
        Some(serde_json::Value::String(s)) => Some(s).filter(|s| !s.is_empty()),
        _ => None,
    };
    Ok(FormFields { cmd, sid: top.sid.is_some(), run_method })
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

fn multipart_fields(body: &[u8], boundary: &str) -> Result<(FormFields, [bool; 3]), FormError> {
    let stream =
        futures_util::stream::once(std::future::ready(Ok::<_, std::io::Error>(Bytes::copy_from_slice(body))));
    let mut multipart = multer::Multipart::new(stream, boundary);
    let scan = async move {
        let mut seen = [false; 3];
        let mut fields = FormFields::default();
        while let Some(field) = multipart.next_field().await.map_err(|_| FormError::BadMultipart)? {
            let Some(name) = judged_part(field.headers())? else { continue };
            let value = field.text().await.map_err(|_| FormError::BadMultipart)?;
            fields.offer(&mut seen, name, &value);
        }
        Ok((fields, seen))
    };
    // The whole body is in memory: the parser never waits.
    scan.now_or_never().unwrap_or(Err(FormError::BadMultipart))
}

/// The judged field a multipart part carries, by werkzeug's reading of its
/// `Content-Disposition` (quoted strings with escapes, RFC 2231 `name*=`, keys in any case).
/// A judged name on a file part is refused: its value is not a field Frappe would see, but a
/// parser that disagreed about `filename` would make it one.
pub(crate) fn judged_part(headers: &http::HeaderMap) -> Result<Option<&'static str>, FormError> {
    let Some(disposition) = headers.get(http::header::CONTENT_DISPOSITION) else {
        return Err(FormError::BadMultipart);
    };
    let disposition = String::from_utf8_lossy(disposition.as_bytes());
    let params = disposition_params(&disposition);
    let is_file = params.iter().any(|(k, _)| k == "filename" || k == "filename*");
    let judged = params
        .iter()
        .filter(|(k, _)| k == "name" || k == "name*")
        .find_map(|(_, v)| JUDGED_FIELDS.iter().find(|f| **f == v.as_ref()).copied());
    match judged {
        Some(name) if is_file => Err(FormError::FileNamed(name)),
        other => Ok(other),
    }
}

/// `form-data; name="a\"b"; filename*=UTF-8''x%20y` → `[("name", "a\"b"), ("filename*", "x y")]`.
fn disposition_params(value: &str) -> Vec<(String, Cow<'_, str>)> {
    let mut params = Vec::new();
    let mut rest = value.split_once(';').map_or("", |(_, r)| r);
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=').unwrap_or((rest, ""));
        let key = key.trim().trim_start_matches(';').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (raw, tail) = if let Some(quoted) = after.strip_prefix('"') {
            unquote(quoted)
        } else {
            let (v, t) = after.split_once(';').unwrap_or((after, ""));
            (Cow::Borrowed(v.trim()), t)
        };
        let value = if key.ends_with('*') { decode_2231(&raw) } else { raw };
        params.push((key, value));
        rest = tail;
    }
    params
}

/// A quoted string's content (backslash escapes removed) and what follows its closing quote.
fn unquote(s: &str) -> (Cow<'_, str>, &str) {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                if let Some((_, next)) = chars.next() {
                    out.push(next);
                }
            }
            '"' => {
                let tail = &s[i + 1..];
                return (Cow::Owned(out), tail.split_once(';').map_or("", |(_, t)| t));
            }
            c => out.push(c),
        }
    }
    (Cow::Owned(out), "")
}

/// RFC 2231 `charset'lang'percent-encoded` → text.
fn decode_2231(s: &str) -> Cow<'static, str> {
    let encoded = s.splitn(3, '\'').nth(2).unwrap_or(s);
    Cow::Owned(percent_encoding::percent_decode_str(encoded).decode_utf8_lossy().into_owned())
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
        assert_eq!(body_kind(Some("application/json")), Ok(BodyKind::Json));
        assert_eq!(body_kind(Some("Application/JSON ; charset=utf-8")), Ok(BodyKind::Json));
        assert_eq!(body_kind(Some("application/vnd.api+json")), Ok(BodyKind::Json));
        assert_eq!(body_kind(Some("application/x-www-form-urlencoded")), Ok(BodyKind::UrlEncoded));
        assert_eq!(
            body_kind(Some("multipart/form-data; boundary=abc")),
            Ok(BodyKind::Multipart { boundary: "abc".into() })
        );
        assert_eq!(body_kind(Some("multipart/form-data")), Err(FormError::NoBoundary));
        assert_eq!(body_kind(Some("text/plain")), Ok(BodyKind::Opaque));
        assert_eq!(body_kind(Some("text/json")), Ok(BodyKind::Opaque));
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
        assert_eq!(fields(None, &json, br#"{"cmd":{"a":1}}"#), Err(FormError::CmdNotString));
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
        let (kind, body) = multipart(&[("form-data; name=\"c\\md\"", "m.n")]);
        assert_eq!(cmd(None, &kind, &body), Some("m.n".into()));
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

    #[test]
    fn disposition_parameters() {
        let p = disposition_params("form-data; name=\"a;b\"; filename*=UTF-8''x%20y; x=1");
        assert_eq!(
            p,
            vec![("name".into(), "a;b".into()), ("filename*".into(), "x y".into()), ("x".into(), "1".into())]
        );
    }
}
