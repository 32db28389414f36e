//! The request path as Frappe's WSGI server will see it, and the one the gateway forwards.
//!
//! gunicorn percent-decodes the path before werkzeug routes it, and werkzeug never resolves
//! dot segments. So a path the gateway resolved differently from Frappe would let it judge one
//! request and forward another. The gateway therefore **refuses** (400) every path whose
//! meaning depends on who decodes it — dot segments in any spelling, an encoded `/` or `\`, a
//! backslash, NUL, bytes that are not UTF-8 — as Envoy and nginx do by default, and **merges**
//! repeated slashes, forwarding the merged path (what it judged).

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

/// Why a path is refused. `Display` is the client-facing explanation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request target must be a path starting with '/'")]
    NotOriginForm,
    #[error("the path contains a '.' or '..' segment")]
    DotSegment,
    #[error("the path contains an encoded '/' or '\\'")]
    EncodedSeparator,
    #[error("the path contains a backslash")]
    Backslash,
    #[error("the path contains a NUL byte")]
    Nul,
    #[error("the path is not valid UTF-8 once percent-decoded")]
    NotUtf8,
}

/// A checked path: `decoded` is what werkzeug routes; `forward` is the raw path to send
/// upstream when it differs from the client's (repeated slashes merged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedPath<'a> {
    pub decoded: Cow<'a, str>,
    pub forward: Option<String>,
}

/// Checks and decodes `raw` (the URI path, without the query). Allocation-free for a plain
/// path with no escapes and no repeated slashes.
pub fn check(raw: &str) -> Result<CheckedPath<'_>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    if raw.contains('\\') {
        return Err(PathError::Backslash);
    }
    let merged = merge_slashes(raw);
    let decoded = decode(&merged)?;
    if decoded.split('/').any(|segment| segment == "." || segment == "..") {
        return Err(PathError::DotSegment);
    }
    let decoded = match (&decoded, &merged) {
        (Cow::Borrowed(_), Cow::Borrowed(raw)) => Cow::Borrowed(*raw),
        _ => Cow::Owned(decoded.into_owned()),
    };
    let forward = match merged {
        Cow::Owned(path) => Some(path),
        Cow::Borrowed(_) => None,
    };
    Ok(CheckedPath { decoded, forward })
}

fn merge_slashes(raw: &str) -> Cow<'_, str> {
    if !raw.contains("//") {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn decode(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.contains('%') {
        return Ok(Cow::Borrowed(path));
    }
    let bytes: Cow<'_, [u8]> = percent_decode_str(path).into();
    if bytes.contains(&0) {
        return Err(PathError::Nul);
    }
    // An encoded separator would split segments for Frappe but not in the raw path.
    let escapes = path.as_bytes().windows(3).filter(|w| w[0] == b'%');
    if escapes
        .clone()
        .any(|w| matches!(&[w[1].to_ascii_lowercase(), w[2].to_ascii_lowercase()], b"2f" | b"5c"))
    {
        return Err(PathError::EncodedSeparator);
    }
    match bytes {
        Cow::Borrowed(b) => std::str::from_utf8(b).map(Cow::Borrowed).map_err(|_| PathError::NotUtf8),
        Cow::Owned(b) => String::from_utf8(b).map(Cow::Owned).map_err(|_| PathError::NotUtf8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(raw: &str) -> Result<String, PathError> {
        check(raw).map(|p| p.decoded.into_owned())
    }

    #[test]
    fn plain_paths_are_borrowed_and_forwarded_as_sent() {
        let p = check("/api/resource/ToDo").unwrap();
        assert!(matches!(p.decoded, Cow::Borrowed("/api/resource/ToDo")));
        assert_eq!(p.forward, None);
        assert_eq!(decoded("/api/resource/Sales%20Invoice").unwrap(), "/api/resource/Sales Invoice");
        assert_eq!(check("/api/resource/Sales%20Invoice").unwrap().forward, None);
        assert_eq!(decoded("/%61pi/method/x").unwrap(), "/api/method/x");
        assert_eq!(decoded("/api/method/x.y/").unwrap(), "/api/method/x.y/");
        // Dots inside a segment are names, not dot segments.
        assert_eq!(
            decoded("/api/method/frappe.client.get_list").unwrap(),
            "/api/method/frappe.client.get_list"
        );
        assert_eq!(decoded("/files/a..b/.hidden/...").unwrap(), "/files/a..b/.hidden/...");
        // A double-encoded dot is a literal "%2e" for Frappe: not a dot segment.
        assert_eq!(decoded("/api/%252e%252e/x").unwrap(), "/api/%2e%2e/x");
    }

    #[test]
    fn repeated_slashes_are_merged_and_the_merged_path_forwarded() {
        let p = check("//api//resource///ToDo").unwrap();
        assert_eq!(p.decoded, "/api/resource/ToDo");
        assert_eq!(p.forward.as_deref(), Some("/api/resource/ToDo"));
        let p = check("/api//resource/Sales%20Invoice").unwrap();
        assert_eq!(p.decoded, "/api/resource/Sales Invoice");
        assert_eq!(p.forward.as_deref(), Some("/api/resource/Sales%20Invoice"));
    }

    #[test]
    fn every_spelling_of_a_dot_segment_is_refused() {
        for raw in [
            "/api/method/frappe.client.get_password/..",
            "/api/method/ping/../../../api/method/x",
            "/api/method/x/../",
            "/./api/method/x",
            "/api/.",
            "/api/%2e%2e/x",
            "/api/%2E%2e/x",
            "/api/.%2e/x",
            "/api/%2e./x",
            "/api/%2e/x",
            "/api//../x",
        ] {
            assert_eq!(check(raw), Err(PathError::DotSegment), "{raw}");
        }
    }

    #[test]
    fn encoded_separators_backslashes_and_nul_are_refused() {
        assert_eq!(check("/api/method/x%2F..%2Fy"), Err(PathError::EncodedSeparator));
        assert_eq!(check("/api%2fresource/ToDo"), Err(PathError::EncodedSeparator));
        assert_eq!(check("/api/resource/ToDo%5Cx"), Err(PathError::EncodedSeparator));
        assert_eq!(check("/api/resource/ToDo%5cx"), Err(PathError::EncodedSeparator));
        assert_eq!(check("/api\\resource"), Err(PathError::Backslash));
        assert_eq!(check("/api/resource/ToDo%00"), Err(PathError::Nul));
        assert_eq!(check("/api/resource/A%FF"), Err(PathError::NotUtf8));
        assert_eq!(check("*"), Err(PathError::NotOriginForm));
        assert_eq!(check(""), Err(PathError::NotOriginForm));
    }
}
