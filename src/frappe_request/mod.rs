//! The Frappe request model: what Frappe will run for a request, read the way Frappe reads it
//! (`../shared/FRAPPE.md` §11), so that routing, `deny` routes, `[[user]]` rules, the access
//! log and metrics all judge the request Frappe executes — and the gateway forwards exactly
//! what it judged.
//!
//! From the head: the checked path ([`path`]), the query's `cmd` / `sid`. From the body, when
//! Frappe would parse it ([`form`]): `cmd`, `sid`, `run_method`, by Frappe's precedence. Then
//! Frappe's dispatch: `OPTIONS` runs nothing; a `cmd` runs that method whatever the path; else
//! the REST routes ([`rest`]).

pub mod form;
mod multipart;
mod options_header;
pub mod path;
mod rest;
pub mod scan;

use std::borrow::Cow;

use http::{Method, Uri};

pub use form::{body_kind, BodyKind, FormError, FormFields};
pub use path::PathError;
pub use scan::MultipartScan;

/// What Frappe runs for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `OPTIONS`: Frappe answers an empty response and runs nothing.
    Options,
    /// A whitelisted dotted method: `form_dict.cmd`, `/api/method/<m>`, `/api/v2/method/<m>`.
    Method(String),
    /// `/api/v2/method/<DocType>/<method>`: `<the DocType's controller module>.<method>`.
    DocTypeMethod { doctype: String, method: String },
    /// The document API: `/api/resource/<DocType>[/<name>]`, `/api/v2/document/…`,
    /// `/api/v2/doctype/<DocType>/meta|count`.
    Resource { doctype: String, name: Option<String> },
    /// A document's own method: `POST /api/resource/<dt>/<name>` with `run_method`, or
    /// `/api/v2/document/<dt>/<name>/method/<method>`.
    DocumentMethod { doctype: String, name: String, method: String },
    /// Not an API call (desk, website, files, assets).
    Page,
    /// An `/api/` path no REST rule matches (Frappe answers 404).
    UnknownApi,
}

impl Call {
    /// The DocType the call reads or writes, when the request names one.
    pub fn doctype(&self) -> Option<&str> {
        match self {
            Call::DocTypeMethod { doctype, .. }
            | Call::Resource { doctype, .. }
            | Call::DocumentMethod { doctype, .. } => Some(doctype),
            _ => None,
        }
    }

    /// The method, as the access log and `[[user]] rpc` name it: a dotted method as sent; a
    /// DocType controller function as `<DocType>.<method>`; a document method by its name.
    pub fn rpc(&self) -> Option<Cow<'_, str>> {
        match self {
            Call::Method(m) => Some(Cow::Borrowed(m)),
            Call::DocTypeMethod { doctype, method } => Some(Cow::Owned(format!("{doctype}.{method}"))),
            Call::DocumentMethod { method, .. } => Some(Cow::Borrowed(method)),
            _ => None,
        }
    }

    /// The v1 path Frappe serves this call under, for route matching; `None` when the call has
    /// no other spelling than the path it came with.
    pub fn canonical_path(&self) -> Option<String> {
        match self {
            Call::Method(m) => Some(format!("/api/method/{m}")),
            Call::Resource { doctype, name: None } => Some(format!("/api/resource/{doctype}")),
            Call::Resource { doctype, name: Some(name) } | Call::DocumentMethod { doctype, name, .. } => {
                Some(format!("/api/resource/{doctype}/{name}"))
            }
            _ => None,
        }
    }

    /// The other name of a `frappe.handler` function: Frappe runs a method name without a
    /// dot as `frappe.handler.<name>` (`handler.get_attr`: `globals()[cmd]`, after any Server
    /// Script API of that name), so `upload_file` and `frappe.handler.upload_file` are one
    /// function. The path of the other spelling, for route matching.
    pub fn handler_alias_path(&self) -> Option<String> {
        let Call::Method(m) = self else { return None };
        if !m.is_empty() && !m.contains('.') {
            return Some(format!("/api/method/frappe.handler.{m}"));
        }
        let short = m.strip_prefix("frappe.handler.")?;
        (!short.is_empty() && !short.contains('.')).then(|| format!("/api/method/{short}"))
    }

    /// True when `path` already is [`Self::canonical_path`] (checked without building it).
    pub fn spelled_canonically(&self, path: &str) -> bool {
        let (prefix, first, second) = match self {
            Call::Method(m) => ("/api/method/", m, None),
            Call::Resource { doctype, name: None } => ("/api/resource/", doctype, None),
            Call::Resource { doctype, name: Some(name) } | Call::DocumentMethod { doctype, name, .. } => {
                ("/api/resource/", doctype, Some(name))
            }
            _ => return false,
        };
        let Some(rest) = path.strip_prefix(prefix).and_then(|rest| rest.strip_prefix(first.as_str())) else {
            return false;
        };
        match second {
            None => rest.is_empty(),
            Some(name) => rest.strip_prefix('/') == Some(name.as_str()),
        }
    }

    /// The part of the dotted path of a DocType controller function that the DocType alone
    /// decides, `doctype.<scrub(dt)>.<scrub(dt)>.<method>` (the app and module before it are
    /// known only to Frappe). Both spellings of such a call share it.
    pub fn controller_tail(&self) -> Option<String> {
        match self {
            Call::DocTypeMethod { doctype, method } => Some(doctype_tail(doctype, method)),
            Call::Method(m) => dotted_tail(m).map(str::to_string),
            _ => None,
        }
    }
}

/// `"User"`, `"generate_keys"` → `"doctype.user.user.generate_keys"`.
fn doctype_tail(doctype: &str, method: &str) -> String {
    let s = scrub(doctype);
    format!("doctype.{s}.{s}.{method}")
}

/// `"frappe.core.doctype.user.user.generate_keys"` → `"doctype.user.user.generate_keys"`.
fn dotted_tail(method: &str) -> Option<&str> {
    method.find(".doctype.").map(|i| &method[i + 1..])
}

/// Frappe's `scrub`: the module and file name of a DocType.
pub fn scrub(name: &str) -> String {
    name.replace([' ', '-'], "_").to_lowercase()
}

/// Whether a `[[user]] rpc` entry names `call`'s method: the same dotted name, or, for a
/// DocType's controller function, the same function in either spelling
/// (`"User.generate_keys"` or `"frappe.core.doctype.user.user.generate_keys"`).
pub fn rpc_entry_matches(entry: &str, call: &Call) -> bool {
    if call.rpc().is_some_and(|m| m == entry) {
        return true;
    }
    let Some(tail) = call.controller_tail() else { return false };
    entry_tail(entry).is_some_and(|t| t == tail)
}

/// The controller tail an rpc entry names, in either spelling.
fn entry_tail(entry: &str) -> Option<Cow<'_, str>> {
    if let Some(t) = dotted_tail(entry) {
        return Some(Cow::Borrowed(t));
    }
    let (doctype, method) = entry.split_once('.')?;
    (!method.contains('.')).then(|| Cow::Owned(doctype_tail(doctype, method)))
}

/// The request as Frappe will run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrappeRequest {
    /// The decoded, slash-merged path Frappe routes.
    pub path: String,
    /// The path and query to forward when they differ from the client's.
    pub forward: Option<String>,
    pub call: Call,
    /// `form_dict` has a `sid`: Frappe would act as that session's user.
    pub sid: bool,
    /// The call comes from `form_dict.cmd`, not from the path.
    pub by_cmd: bool,
}

impl FrappeRequest {
    /// Reads the head: the checked path and the query's fields (what Frappe runs when the
    /// body is empty or not a form).
    pub fn from_head(method: &Method, uri: &Uri) -> Result<Self, PathError> {
        let checked = path::check(uri.path())?;
        let forward = checked.forward.map(|p| match uri.query() {
            Some(q) => format!("{p}?{q}"),
            None => p,
        });
        let mut request = FrappeRequest {
            path: checked.decoded.into_owned(),
            forward,
            call: Call::Page,
            sid: false,
            by_cmd: false,
        };
        request.judge(method, form::query_fields(uri.query()));
        Ok(request)
    }

    /// Re-reads `form_dict` with the whole body (`kind` from its Content-Type).
    pub fn judge_body(
        &mut self,
        method: &Method,
        uri: &Uri,
        kind: &BodyKind,
        body: &[u8],
    ) -> Result<(), FormError> {
        let fields = form::fields(uri.query(), kind, body)?;
        self.judge(method, fields);
        Ok(())
    }

    fn judge(&mut self, method: &Method, fields: FormFields) {
        self.sid = fields.sid;
        self.by_cmd = false;
        self.call = if method == Method::OPTIONS {
            Call::Options
        } else if let Some(cmd) = fields.cmd {
            self.by_cmd = true;
            Call::Method(cmd)
        } else {
            rest::classify(&self.path, method, fields.run_method.as_deref())
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: Method, uri: &str) -> FrappeRequest {
        FrappeRequest::from_head(&method, &uri.parse().unwrap()).unwrap()
    }

    #[test]
    fn cmd_beats_the_path_and_options_beats_cmd() {
        let r = head(Method::GET, "/api/resource/ToDo?cmd=frappe.client.get_password");
        assert_eq!(r.call, Call::Method("frappe.client.get_password".into()));
        assert!(r.by_cmd);
        assert_eq!(head(Method::OPTIONS, "/api/resource/ToDo?cmd=x.y").call, Call::Options);
        assert_eq!(head(Method::GET, "/?cmd=x.y").call, Call::Method("x.y".into()));
        assert!(head(Method::GET, "/api/resource/ToDo?s%69d=abc").sid);
    }

    #[test]
    fn a_json_body_overrides_the_query_cmd() {
        let uri: Uri = "/api/resource/ToDo?cmd=frappe.client.get_password".parse().unwrap();
        let mut r = FrappeRequest::from_head(&Method::POST, &uri).unwrap();
        r.judge_body(&Method::POST, &uri, &BodyKind::Json, br#"{"x":1}"#).unwrap();
        assert_eq!(r.call, Call::Resource { doctype: "ToDo".into(), name: None });
        assert!(!r.by_cmd);
        r.judge_body(&Method::POST, &uri, &BodyKind::Json, br#"{"cmd":"frappe.client.get_list"}"#).unwrap();
        assert_eq!(r.call, Call::Method("frappe.client.get_list".into()));
    }

    #[test]
    fn merged_paths_are_forwarded_with_their_query() {
        let r = head(Method::GET, "//api//resource/ToDo?limit=1");
        assert_eq!(r.path, "/api/resource/ToDo");
        assert_eq!(r.forward.as_deref(), Some("/api/resource/ToDo?limit=1"));
        assert_eq!(head(Method::GET, "/api/resource/ToDo?limit=1").forward, None);
    }

    #[test]
    fn a_v1_path_is_its_own_canonical_spelling() {
        let calls = [
            (Call::Method("frappe.client.get_list".into()), "/api/method/frappe.client.get_list"),
            (Call::Resource { doctype: "ToDo".into(), name: None }, "/api/resource/ToDo"),
            (Call::Resource { doctype: "ToDo".into(), name: Some("a/b".into()) }, "/api/resource/ToDo/a/b"),
        ];
        for (call, v1) in calls {
            assert!(call.spelled_canonically(v1), "{v1}");
            assert_eq!(call.canonical_path().as_deref(), Some(v1));
            for other in ["/api/v2/document/ToDo", "/api/resource/ToD", "/api/resource/ToDo/", "/"] {
                assert!(!call.spelled_canonically(other), "{other} for {call:?}");
            }
        }
        assert!(!Call::Page.spelled_canonically("/"));
    }

    #[test]
    fn names_for_rules_and_the_log() {
        let call = Call::DocTypeMethod { doctype: "User".into(), method: "generate_keys".into() };
        assert_eq!(call.rpc().as_deref(), Some("User.generate_keys"));
        assert_eq!(call.controller_tail().as_deref(), Some("doctype.user.user.generate_keys"));
        assert!(rpc_entry_matches("User.generate_keys", &call));
        assert!(rpc_entry_matches("frappe.core.doctype.user.user.generate_keys", &call));
        assert!(!rpc_entry_matches("frappe.core.doctype.user.user.other", &call));
        assert!(!rpc_entry_matches("Note.generate_keys", &call));
        let dotted = Call::Method("frappe.core.doctype.user.user.generate_keys".into());
        assert!(rpc_entry_matches("User.generate_keys", &dotted));
        assert!(rpc_entry_matches("frappe.core.doctype.user.user.generate_keys", &dotted));
        let plain = Call::Method("frappe.client.get_list".into());
        assert!(rpc_entry_matches("frappe.client.get_list", &plain));
        assert!(!rpc_entry_matches("frappe.client.get", &plain));
        let sales = Call::DocTypeMethod { doctype: "Sales Invoice".into(), method: "make".into() };
        assert!(rpc_entry_matches("erpnext.accounts.doctype.sales_invoice.sales_invoice.make", &sales));
        assert_eq!(
            Call::Resource { doctype: "ToDo".into(), name: Some("a/b".into()) }.canonical_path().as_deref(),
            Some("/api/resource/ToDo/a/b")
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Path-ish strings: segments of letters, dots, escapes and slashes, the alphabet attacks use.
    fn path() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("/".to_string()),
                Just("//".to_string()),
                Just(".".to_string()),
                Just("..".to_string()),
                Just("%2e".to_string()),
                Just("%2F".to_string()),
                Just("%5c".to_string()),
                Just("%00".to_string()),
                Just("%FF".to_string()),
                Just("%20".to_string()),
                Just("api".to_string()),
                Just("v2".to_string()),
                Just("method".to_string()),
                Just("resource".to_string()),
                "[a-zA-Z_.]{1,8}",
            ],
            0..12,
        )
        .prop_map(|parts| format!("/{}", parts.concat()))
    }

    proptest! {
        /// Never panics; whatever is accepted is accepted again unchanged once forwarded, so
        /// the path Frappe gets is the path the gateway judged.
        #[test]
        fn normalisation_is_idempotent(raw in path(), query in "[a-z%=&+0-9]{0,16}") {
            let Ok(uri) = format!("{raw}?{query}").parse::<Uri>() else { return Ok(()) };
            let Ok(first) = FrappeRequest::from_head(&Method::GET, &uri) else { return Ok(()) };
            let forwarded: Uri = first.forward.clone().unwrap_or_else(|| uri.to_string()).parse().unwrap();
            let second = FrappeRequest::from_head(&Method::GET, &forwarded).unwrap();
            prop_assert_eq!(second.forward, None);
            prop_assert_eq!(&second.path, &first.path);
            prop_assert_eq!(second.call, first.call);
            prop_assert!(!first.path.split('/').any(|s| s == "." || s == ".."));
        }

        /// Any body under any content type is judged or refused, never a panic.
        #[test]
        fn bodies_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..256),
            ct in prop_oneof![
                Just("application/json"),
                Just("application/x-www-form-urlencoded"),
                Just("multipart/form-data; boundary=B"),
                Just("text/plain"),
            ],
        ) {
            let uri: Uri = "/api/resource/ToDo?cmd=x.y".parse().unwrap();
            let mut request = FrappeRequest::from_head(&Method::POST, &uri).unwrap();
            let kind = body_kind(Some(ct.as_bytes())).unwrap();
            let _ = request.judge_body(&Method::POST, &uri, &kind, &body);
        }
    }
}
