//! Frappe v15's REST routes (`frappe/api/__init__.py`, `v1.py`, `v2.py`): which call a decoded,
//! slash-merged path makes when no `cmd` overrides it.
//!
//! werkzeug matches `Submount("/api", v1)`, `Submount("/api/v1", v1)` and
//! `Submount("/api/v2", v2)` with `strict_slashes=False`, so one trailing slash is ignored.

use http::Method;

use super::Call;

/// Classifies `path` (decoded, slashes merged). `run_method` is the form field Frappe reads
/// for `POST /api/resource/<DocType>/<name>`.
pub(super) fn classify(path: &str, method: &Method, run_method: Option<&str>) -> Call {
    if !path.starts_with("/api/") {
        return Call::Page;
    }
    let rest = &path["/api/".len()..];
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if let Some(v2) = rest.strip_prefix("v2/") {
        return classify_v2(v2);
    }
    classify_v1(rest.strip_prefix("v1/").unwrap_or(rest), method, run_method)
}

/// v1: `/method/<path:method>` runs `method.split("/")[0]`; `/resource/<doctype>` and
/// `/resource/<doctype>/<path:name>` (POST runs the document method `run_method`).
fn classify_v1(rest: &str, method: &Method, run_method: Option<&str>) -> Call {
    if let Some(target) = rest.strip_prefix("method/") {
        let name = target.split('/').next().unwrap_or_default();
        return if name.is_empty() { Call::UnknownApi } else { Call::Method(name.to_string()) };
    }
    let Some(target) = rest.strip_prefix("resource/") else { return Call::UnknownApi };
    match split_first(target) {
        Some((doctype, None)) => resource(doctype, None),
        Some((doctype, Some(name))) => match run_method {
            Some(m) if method == Method::POST => Call::DocumentMethod {
                doctype: doctype.to_string(),
                name: name.to_string(),
                method: m.to_string(),
            },
            _ => resource(doctype, Some(name)),
        },
        None => Call::UnknownApi,
    }
}

/// v2: `/method/<method>`, `/method/<doctype>/<method>` (a function of the DocType's controller
/// module), `/document/<doctype>[/<path:name>[/method/<method>]]`, `/doctype/<doctype>/meta|count`.
fn classify_v2(rest: &str) -> Call {
    if let Some(target) = rest.strip_prefix("method/") {
        let mut parts = target.split('/');
        return match (parts.next(), parts.next(), parts.next()) {
            (Some(m), None, None) if !m.is_empty() => Call::Method(m.to_string()),
            (Some(dt), Some(m), None) if !dt.is_empty() && !m.is_empty() => {
                Call::DocTypeMethod { doctype: dt.to_string(), method: m.to_string() }
            }
            _ => Call::UnknownApi,
        };
    }
    if let Some(target) = rest.strip_prefix("document/") {
        return match split_first(target) {
            Some((doctype, None)) => resource(doctype, None),
            Some((doctype, Some(name))) => match name.rsplit_once("/method/") {
                Some((doc, m)) if !doc.is_empty() && !m.is_empty() && !m.contains('/') => {
                    Call::DocumentMethod {
                        doctype: doctype.to_string(),
                        name: doc.to_string(),
                        method: m.to_string(),
                    }
                }
                _ => resource(doctype, Some(name)),
            },
            None => Call::UnknownApi,
        };
    }
    if let Some(target) = rest.strip_prefix("doctype/") {
        if let Some((doctype, Some("meta" | "count"))) = split_first(target) {
            return resource(doctype, None);
        }
    }
    Call::UnknownApi
}

fn resource(doctype: &str, name: Option<&str>) -> Call {
    Call::Resource { doctype: doctype.to_string(), name: name.map(str::to_string) }
}

/// `"ToDo/abc/def"` → `("ToDo", Some("abc/def"))`; an empty first segment matches no rule.
fn split_first(s: &str) -> Option<(&str, Option<&str>)> {
    let (head, tail) = match s.split_once('/') {
        Some((head, tail)) => (head, Some(tail).filter(|t| !t.is_empty())),
        None => (s, None),
    };
    (!head.is_empty()).then_some((head, tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Call {
        classify(path, &Method::GET, None)
    }

    fn method(m: &str) -> Call {
        Call::Method(m.to_string())
    }

    fn res(dt: &str, name: Option<&str>) -> Call {
        resource(dt, name)
    }

    #[test]
    fn v1_methods_keep_the_part_before_the_first_slash() {
        assert_eq!(get("/api/method/frappe.client.get_list"), method("frappe.client.get_list"));
        assert_eq!(get("/api/method/frappe.client.get_list/anything/else"), method("frappe.client.get_list"));
        assert_eq!(get("/api/v1/method/ping/"), method("ping"));
        assert_eq!(get("/api/method/"), Call::UnknownApi);
        assert_eq!(get("/api/method"), Call::UnknownApi);
    }

    #[test]
    fn resources_and_document_methods() {
        assert_eq!(get("/api/resource/ToDo"), res("ToDo", None));
        assert_eq!(get("/api/resource/ToDo/"), res("ToDo", None));
        assert_eq!(get("/api/resource/Sales Invoice/SINV-1/x"), res("Sales Invoice", Some("SINV-1/x")));
        assert_eq!(get("/api/v1/resource/ToDo/abc"), res("ToDo", Some("abc")));
        let post = classify("/api/resource/ToDo/abc", &Method::POST, Some("submit"));
        assert_eq!(
            post,
            Call::DocumentMethod { doctype: "ToDo".into(), name: "abc".into(), method: "submit".into() }
        );
        // run_method is read only by the POST rule.
        assert_eq!(
            classify("/api/resource/ToDo/abc", &Method::GET, Some("submit")),
            res("ToDo", Some("abc"))
        );
        assert_eq!(classify("/api/resource/ToDo", &Method::POST, Some("submit")), res("ToDo", None));
    }

    #[test]
    fn v2_routes() {
        assert_eq!(get("/api/v2/method/frappe.client.get_list"), method("frappe.client.get_list"));
        assert_eq!(get("/api/v2/method/login/"), method("login"));
        assert_eq!(
            get("/api/v2/method/User/generate_keys"),
            Call::DocTypeMethod { doctype: "User".into(), method: "generate_keys".into() }
        );
        assert_eq!(get("/api/v2/method/a/b/c"), Call::UnknownApi);
        assert_eq!(get("/api/v2/document/ToDo"), res("ToDo", None));
        assert_eq!(get("/api/v2/document/ToDo/x/y"), res("ToDo", Some("x/y")));
        assert_eq!(
            get("/api/v2/document/ToDo/x/method/submit/"),
            Call::DocumentMethod { doctype: "ToDo".into(), name: "x".into(), method: "submit".into() }
        );
        assert_eq!(get("/api/v2/doctype/Item/meta"), res("Item", None));
        assert_eq!(get("/api/v2/doctype/Item/count"), res("Item", None));
        assert_eq!(get("/api/v2/doctype/Item/other"), Call::UnknownApi);
    }

    #[test]
    fn pages_and_unrouted_api_paths() {
        assert_eq!(get("/"), Call::Page);
        assert_eq!(get("/app/todo"), Call::Page);
        assert_eq!(get("/api"), Call::Page);
        assert_eq!(get("/apix/resource/ToDo"), Call::Page);
        assert_eq!(get("/api/"), Call::UnknownApi);
        assert_eq!(get("/api/v3/resource/ToDo"), Call::UnknownApi);
        assert_eq!(get("/api/resource/"), Call::UnknownApi);
    }
}
