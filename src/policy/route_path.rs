//! The paths a request is matched against `[[route]]` prefixes by: what Frappe will actually
//! serve, not the bytes the client chose. Without this a `deny` route for
//! `/api/method/frappe.client.get_password` would miss `/api/v1/method/…`, `/api/v2/method/…`,
//! `…get%5Fpassword`, `//api/method/…` and `/?cmd=frappe.client.get_password` (Frappe v15
//! runs a `cmd` form parameter on any path, before its `/api/` routing).

use std::borrow::Cow;

use http::Uri;
use percent_encoding::percent_decode_str;

/// The normalized path, plus Frappe's canonical alias of it when that differs (a `v1`/`v2`
/// prefix, or a `cmd` parameter). The pipeline applies the stricter of the two routes.
#[derive(Debug, PartialEq, Eq)]
pub struct RoutePaths<'a> {
    pub path: Cow<'a, str>,
    pub alias: Option<String>,
}

/// Builds the paths to match. Borrowed, with no alias, for an ordinary path (the common case
/// costs no allocation).
pub fn route_paths(uri: &Uri) -> RoutePaths<'_> {
    let path = normalize(uri.path());
    let alias = match cmd_parameter(uri.query()) {
        Some(cmd) => Some(format!("/api/method/{cmd}")),
        None => frappe_alias(&path),
    };
    RoutePaths { path, alias }
}

/// Percent-decodes (as the WSGI server does before Werkzeug routes), collapses repeated
/// slashes and resolves `.` / `..` segments.
fn normalize(raw: &str) -> Cow<'_, str> {
    let needs_work = raw.contains('%') || raw.contains("//") || raw.contains("/.");
    if !needs_work {
        return Cow::Borrowed(raw);
    }
    let decoded = percent_decode_str(raw).decode_utf8_lossy();
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || decoded.ends_with('/') {
        out.push('/');
    }
    Cow::Owned(out)
}

/// Frappe v15 serves `/api/v1/x` as `/api/x`, `/api/v2/method/x` as `/api/method/x` and
/// `/api/v2/document/x` as the resource API on `x`.
fn frappe_alias(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/api/")?;
    if let Some(tail) = rest.strip_prefix("v1/") {
        return Some(format!("/api/{tail}"));
    }
    let tail = rest.strip_prefix("v2/")?;
    if let Some(method) = tail.strip_prefix("method/") {
        return Some(format!("/api/method/{method}"));
    }
    tail.strip_prefix("document/").map(|doc| format!("/api/resource/{doc}"))
}

/// The value of a `cmd` query parameter, decoded (form encoding: `+` is a space).
fn cmd_parameter(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode_str(key).decode_utf8_lossy();
        (key == "cmd" && !value.is_empty())
            .then(|| percent_decode_str(&value.replace('+', " ")).decode_utf8_lossy().trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(uri: &str) -> (String, Option<String>) {
        let uri: Uri = uri.parse().unwrap();
        let p = route_paths(&uri);
        (p.path.into_owned(), p.alias)
    }

    #[test]
    fn ordinary_paths_are_borrowed_and_unaliased() {
        let uri: Uri = "/api/resource/ToDo?limit=1".parse().unwrap();
        let p = route_paths(&uri);
        assert!(matches!(p.path, Cow::Borrowed("/api/resource/ToDo")));
        assert_eq!(p.alias, None);
    }

    #[test]
    fn every_spelling_of_get_password_reaches_the_same_path() {
        let target = Some("/api/method/frappe.client.get_password".to_string());
        assert_eq!(paths("/api/v1/method/frappe.client.get_password").1, target);
        assert_eq!(paths("/api/v2/method/frappe.client.get_password").1, target);
        assert_eq!(
            paths("/api/method/frappe.client.get%5Fpassword").0,
            "/api/method/frappe.client.get_password"
        );
        assert_eq!(
            paths("/%61pi//method/./frappe.client.get_password").0,
            "/api/method/frappe.client.get_password"
        );
        assert_eq!(paths("/?cmd=frappe.client.get_password&name=x").1, target);
        assert_eq!(paths("/api/resource/ToDo?c%6Dd=frappe.client.get_password").1, target);
    }

    #[test]
    fn dot_segments_cannot_climb_out() {
        assert_eq!(paths("/public/../api/method/x").0, "/api/method/x");
        assert_eq!(paths("/../../api/").0, "/api/");
        assert_eq!(paths("/%2e%2e/").0, "/");
    }

    #[test]
    fn v2_documents_alias_the_resource_api() {
        assert_eq!(paths("/api/v2/document/ToDo/x").1.as_deref(), Some("/api/resource/ToDo/x"));
        assert_eq!(paths("/api/v1/resource/ToDo").1.as_deref(), Some("/api/resource/ToDo"));
        assert_eq!(paths("/app/todo").1, None);
    }
}
