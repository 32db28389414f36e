//! Frappe's API URL space: which DocType or whitelisted method a request path calls.

use std::borrow::Cow;
use std::fmt;

use percent_encoding::percent_decode_str;

/// What a request path asks Frappe to do, as far as the path alone tells.
///
/// Parsed the way Frappe routes it (`frappe/api/__init__.py`, `v1.py`, `v2.py`): the whole path
/// is percent-decoded first, as the WSGI server does before Werkzeug routes (so `%2F` is a
/// segment separator there too), then matched under `/api/`, `/api/v1/` and `/api/v2/`.
/// Undecodable UTF-8 becomes U+FFFD, as Werkzeug's does.
///
/// Calls whose DocType travels in the arguments cannot be seen here:
/// `/api/method/run_doc_method` (`dt`/`docs`), `/api/method/frappe.client.*` (`doctype`),
/// `POST /api/resource/<dt>/<name>` with `run_method`, and `/api/method/upload_file`
/// (`doctype`). Gate those by `rpc` (they are methods) — we deliberately do not parse bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrappeCall<'a> {
    /// `/api/resource/<DocType>[/<name>…]`, `/api/v1/resource/…`, `/api/v2/document/<DocType>…`
    /// (including `…/<name>/method/<m>`, which needs the document's permissions) and
    /// `/api/v2/doctype/<DocType>/meta|count`.
    Resource { doctype: Cow<'a, str> },
    /// `/api/method/<dotted.path>`, `/api/v1/method/…`, `/api/v2/method/<name>`.
    Method { method: Cow<'a, str> },
    /// `/api/v2/method/<DocType>/<method>`: a function of that DocType's controller module.
    DocMethod { doctype: Cow<'a, str>, method: Cow<'a, str> },
    /// Anything else (desk, website, assets, an `/api` path Frappe does not route).
    Other,
}

impl<'a> FrappeCall<'a> {
    /// Classifies `path` (the URI path, without the query string).
    pub fn parse(path: &'a str) -> FrappeCall<'a> {
        // Decode before matching: Werkzeug routes the decoded path, so "/%61pi/…" is an API
        // call there. Borrowed (no allocation) when the path has no escapes.
        match percent_decode_str(path).decode_utf8_lossy() {
            Cow::Borrowed(p) => classify(p),
            Cow::Owned(p) => classify(&p).into_owned(),
        }
    }

    /// Copies borrowed names so the call can outlive the path.
    pub fn into_owned(self) -> FrappeCall<'static> {
        let own = |c: Cow<'_, str>| Cow::Owned(c.into_owned());
        match self {
            FrappeCall::Resource { doctype } => FrappeCall::Resource { doctype: own(doctype) },
            FrappeCall::Method { method } => FrappeCall::Method { method: own(method) },
            FrappeCall::DocMethod { doctype, method } => {
                FrappeCall::DocMethod { doctype: own(doctype), method: own(method) }
            }
            FrappeCall::Other => FrappeCall::Other,
        }
    }

    /// The DocType, when the path names one (for the access log).
    pub fn doctype(&self) -> Option<&str> {
        match self {
            FrappeCall::Resource { doctype } | FrappeCall::DocMethod { doctype, .. } => Some(doctype),
            _ => None,
        }
    }

    /// The method, when the path names one (for the access log).
    pub fn method(&self) -> Option<&str> {
        match self {
            FrappeCall::Method { method } | FrappeCall::DocMethod { method, .. } => Some(method),
            _ => None,
        }
    }
}

impl fmt::Display for FrappeCall<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrappeCall::Resource { doctype } => write!(f, "DocType {doctype:?}"),
            FrappeCall::Method { method } => write!(f, "method {method:?}"),
            FrappeCall::DocMethod { doctype, method } => write!(f, "method {doctype:?}/{method:?}"),
            FrappeCall::Other => f.write_str("other"),
        }
    }
}

/// Matches an already decoded path.
fn classify(path: &str) -> FrappeCall<'_> {
    let Some(rest) = path.strip_prefix("/api/") else { return FrappeCall::Other };
    if let Some(rest) = rest.strip_prefix("v2/") {
        return classify_v2(rest);
    }
    classify_v1(rest.strip_prefix("v1/").unwrap_or(rest))
}

/// v1 rules: `/method/<path:method>` (Frappe keeps the part before the first `/`) and
/// `/resource/<doctype>[/<path:name>]`.
fn classify_v1(rest: &str) -> FrappeCall<'_> {
    let (head, tail) = split_segment(rest);
    match (head, segment(tail)) {
        ("method", Some(method)) => FrappeCall::Method { method: Cow::Borrowed(method) },
        ("resource", Some(doctype)) => FrappeCall::Resource { doctype: Cow::Borrowed(doctype) },
        _ => FrappeCall::Other,
    }
}

/// v2 rules: `/method/<method>`, `/method/<doctype>/<method>`, `/document/<doctype>[/…]`,
/// `/doctype/<doctype>/meta|count`.
fn classify_v2(rest: &str) -> FrappeCall<'_> {
    let (head, tail) = split_segment(rest);
    let Some(first) = segment(tail) else { return FrappeCall::Other };
    match head {
        "method" => {
            let (_, after) = split_segment(tail);
            match segment(after) {
                // `/method/<doctype>/<method>`; a third segment matches no v2 rule.
                Some(method) if segment(split_segment(after).1).is_none() => {
                    FrappeCall::DocMethod { doctype: Cow::Borrowed(first), method: Cow::Borrowed(method) }
                }
                Some(_) => FrappeCall::Other,
                None => FrappeCall::Method { method: Cow::Borrowed(first) },
            }
        }
        "document" | "doctype" => FrappeCall::Resource { doctype: Cow::Borrowed(first) },
        _ => FrappeCall::Other,
    }
}

/// `"a/b/c"` → `("a", "b/c")`; `"a"` → `("a", "")`.
fn split_segment(s: &str) -> (&str, &str) {
    s.split_once('/').unwrap_or((s, ""))
}

/// The first segment of `s`, `None` when empty (Werkzeug's converters need one character).
fn segment(s: &str) -> Option<&str> {
    Some(split_segment(s).0).filter(|seg| !seg.is_empty())
}

/// Why a key's `[[user]] doctypes` / `rpc` rules refused a call. `Display` names the DocType or
/// method, which is fine to tell the client: it is their own request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallDenied {
    #[error("DocType {0:?} is not allowed for this API key")]
    DocType(String),
    #[error("method {0:?} is not allowed for this API key")]
    Method(String),
}

/// Exact match of a decoded DocType against `[[user]] doctypes`.
pub fn doctype_allowed(allowed: &[String], doctype: &str) -> bool {
    allowed.iter().any(|d| d == doctype)
}

/// Exact match of a method against `[[user]] rpc`.
pub fn rpc_allowed(allowed: &[String], method: &str) -> bool {
    allowed.iter().any(|m| m == method)
}

/// Applies a user's rules to a call; `None` lists mean "any" (the config's default).
///
/// `Resource` needs its DocType in `doctypes`; `Method` needs its method in `rpc`;
/// `DocMethod` needs both — the DocType in `doctypes` and `"<DocType>/<method>"` (the URL form)
/// in `rpc`. `Other` passes: it names neither.
pub fn check_call(
    call: &FrappeCall<'_>,
    doctypes: Option<&[String]>,
    rpc: Option<&[String]>,
) -> Result<(), CallDenied> {
    let doctype_ok = |dt: &str| doctypes.is_none_or(|list| doctype_allowed(list, dt));
    let rpc_ok = |m: &str| rpc.is_none_or(|list| rpc_allowed(list, m));
    match call {
        FrappeCall::Resource { doctype } if !doctype_ok(doctype) => {
            Err(CallDenied::DocType(doctype.to_string()))
        }
        FrappeCall::Method { method } if !rpc_ok(method) => Err(CallDenied::Method(method.to_string())),
        FrappeCall::DocMethod { doctype, .. } if !doctype_ok(doctype) => {
            Err(CallDenied::DocType(doctype.to_string()))
        }
        FrappeCall::DocMethod { doctype, method } => {
            let full = format!("{doctype}/{method}");
            if rpc_ok(&full) {
                Ok(())
            } else {
                Err(CallDenied::Method(full))
            }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(dt: &str) -> FrappeCall<'_> {
        FrappeCall::Resource { doctype: Cow::Borrowed(dt) }
    }

    fn method(m: &str) -> FrappeCall<'_> {
        FrappeCall::Method { method: Cow::Borrowed(m) }
    }

    #[test]
    fn resources_in_every_version() {
        assert_eq!(FrappeCall::parse("/api/resource/ToDo"), resource("ToDo"));
        assert_eq!(FrappeCall::parse("/api/resource/ToDo/"), resource("ToDo"));
        assert_eq!(FrappeCall::parse("/api/resource/ToDo/abc123"), resource("ToDo"));
        assert_eq!(FrappeCall::parse("/api/v1/resource/Customer/C-1/x"), resource("Customer"));
        assert_eq!(FrappeCall::parse("/api/v2/document/ToDo/xyz"), resource("ToDo"));
        assert_eq!(FrappeCall::parse("/api/v2/document/ToDo/xyz/method/submit"), resource("ToDo"));
        assert_eq!(FrappeCall::parse("/api/v2/doctype/Item/meta"), resource("Item"));
        assert_eq!(FrappeCall::parse("/api/v2/doctype/Item/count"), resource("Item"));
    }

    #[test]
    fn doctypes_are_percent_decoded() {
        let call = FrappeCall::parse("/api/resource/Sales%20Invoice/INV-0001");
        assert_eq!(call, resource("Sales Invoice"));
        assert!(matches!(call, FrappeCall::Resource { doctype: Cow::Owned(_) }));
        assert_eq!(FrappeCall::parse("/api/v2/document/Sales%20Invoice"), resource("Sales Invoice"));
        // The WSGI server decodes %2F before routing, so it separates segments there too.
        assert_eq!(FrappeCall::parse("/api/resource/ToDo%2Fname"), resource("ToDo"));
        // An encoded "/api/" prefix is still an API path after decoding.
        assert_eq!(FrappeCall::parse("/%61pi/resource/ToDo"), resource("ToDo"));
        assert_eq!(FrappeCall::parse("/api%2Fresource%2FNote"), resource("Note"));
        assert_eq!(FrappeCall::parse("/a%70i/method/x.y"), method("x.y"));
        // '+' is not a space in a path.
        assert_eq!(FrappeCall::parse("/api/resource/A+B"), resource("A+B"));
        // Undecodable bytes become U+FFFD rather than failing.
        assert_eq!(FrappeCall::parse("/api/resource/A%FF"), resource("A\u{fffd}"));
    }

    #[test]
    fn methods_in_every_version() {
        assert_eq!(FrappeCall::parse("/api/method/frappe.client.get_list"), method("frappe.client.get_list"));
        // v1 keeps the part before the first '/'.
        assert_eq!(
            FrappeCall::parse("/api/method/frappe.client.get_list/extra"),
            method("frappe.client.get_list")
        );
        assert_eq!(FrappeCall::parse("/api/v1/method/ping"), method("ping"));
        assert_eq!(
            FrappeCall::parse("/api/v2/method/frappe.client.get_list"),
            method("frappe.client.get_list")
        );
        assert_eq!(FrappeCall::parse("/api/v2/method/login/"), method("login"));
        assert_eq!(
            FrappeCall::parse("/api/method/frappe.client.get%5Fpassword"),
            method("frappe.client.get_password")
        );
        assert_eq!(
            FrappeCall::parse("/api/v2/method/ToDo/get_stats"),
            FrappeCall::DocMethod { doctype: "ToDo".into(), method: "get_stats".into() }
        );
        assert_eq!(FrappeCall::parse("/api/v2/method/a/b/c"), FrappeCall::Other);
    }

    #[test]
    fn other_paths() {
        for path in [
            "/",
            "/app/todo",
            "/api",
            "/api/",
            "/api/resource",
            "/api/resource/",
            "/api//resource/ToDo",
            "/api/method/",
            "/api/v3/resource/ToDo",
            "/apix/resource/ToDo",
            "/assets/frappe/x.js",
        ] {
            assert_eq!(FrappeCall::parse(path), FrappeCall::Other, "{path}");
        }
    }

    #[test]
    fn user_rules() {
        let doctypes = vec!["ToDo".to_string(), "Sales Invoice".to_string()];
        let rpc = vec!["frappe.client.get_list".to_string(), "ToDo/get_stats".to_string()];
        let check = |p: &str| check_call(&FrappeCall::parse(p), Some(&doctypes), Some(&rpc));
        assert_eq!(check("/api/resource/ToDo"), Ok(()));
        assert_eq!(check("/api/resource/ToDo/NAME"), Ok(()));
        assert_eq!(check("/api/resource/Sales%20Invoice"), Ok(()));
        assert_eq!(check("/api/resource/Customer"), Err(CallDenied::DocType("Customer".into())));
        assert_eq!(check("/api/resource/todo"), Err(CallDenied::DocType("todo".into())));
        assert_eq!(check("/api/method/frappe.client.get_list"), Ok(()));
        assert_eq!(
            check("/api/v2/method/frappe.client.get_password"),
            Err(CallDenied::Method("frappe.client.get_password".into()))
        );
        assert_eq!(check("/api/v2/method/ToDo/get_stats"), Ok(()));
        assert_eq!(check("/api/v2/method/ToDo/other"), Err(CallDenied::Method("ToDo/other".into())));
        assert_eq!(check("/api/v2/method/Note/get_stats"), Err(CallDenied::DocType("Note".into())));
        assert_eq!(check("/app/todo"), Ok(()));
        assert_eq!(
            CallDenied::DocType("Sales Invoice".into()).to_string(),
            "DocType \"Sales Invoice\" is not allowed for this API key"
        );
        // No lists: anything goes.
        assert_eq!(check_call(&FrappeCall::parse("/api/resource/Customer"), None, None), Ok(()));
        assert!(doctype_allowed(&doctypes, "ToDo"));
        assert!(!rpc_allowed(&rpc, "frappe.client.get"));
    }

    #[test]
    fn accessors_and_display() {
        let call = FrappeCall::parse("/api/v2/method/ToDo/get_stats").into_owned();
        assert_eq!(call.doctype(), Some("ToDo"));
        assert_eq!(call.method(), Some("get_stats"));
        assert_eq!(
            FrappeCall::parse("/api/resource/Sales%20Invoice").to_string(),
            "DocType \"Sales Invoice\""
        );
        assert_eq!(FrappeCall::Other.method(), None);
    }
}
