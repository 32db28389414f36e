//! The `[[route]]` table: longest prefix wins, matched on every spelling of the call the
//! Frappe request model says Frappe will run, so no spelling of a path escapes its route.
//!
//! A request has up to four spellings — the decoded path as sent, the v1 path of the call
//! Frappe runs (a `cmd`, a v2 alias), the other name of a `frappe.handler` function
//! (`upload_file` is `frappe.handler.upload_file`), and for a DocType controller function the
//! part of its dotted path the DocType decides (`doctype.user.user.generate_keys`). A route is spelled the
//! same ways from its configured path. The route of the path as sent picks the backend; the
//! stricter of it and the most specific route over all spellings is the one judged.

use std::sync::Arc;

use anyhow::{Context, Result};
use http::header::HeaderValue;
use http::Uri;
use percent_encoding::percent_decode_str;

use crate::config::{AuthMode, Config, Rate, Route};
use crate::frappe_request::{scrub, Call, FrappeRequest};
use crate::policy::IpPolicy;

/// Where a matched route sends its requests.
pub(crate) struct Target {
    pub base: Uri,
    /// The Host header sent upstream.
    pub host: HeaderValue,
    pub site_name: Option<HeaderValue>,
    /// The Frappe site itself (not a `[[route]] upstream` backend): Frappe's dispatch applies.
    pub frappe: bool,
    /// `host:port` of `base`, for the access log.
    pub address: Arc<str>,
}

/// `host:port` of an upstream URL (the port the scheme implies when none is given).
pub(crate) fn address_of(base: &Uri) -> Arc<str> {
    let host = base.host().unwrap_or("-");
    let port = base.port_u16().unwrap_or(if base.scheme_str() == Some("https") { 443 } else { 80 });
    Arc::from(format!("{host}:{port}"))
}

/// A configured route with its precomputed target and spellings.
pub(crate) struct RouteEntry {
    pub path: Arc<str>,
    pub auth: AuthMode,
    pub per_ip: Option<Rate>,
    pub per_key: Option<Rate>,
    pub target: Arc<Target>,
    /// `[[route]] allow` (open when empty).
    pub ip_policy: IpPolicy,
    /// Rate-limit scopes of this route's own `per_ip` / `per_key` buckets.
    pub ip_scope: Arc<str>,
    pub key_scope: Arc<str>,
    /// Whether the client's Authorization goes upstream.
    pub forward_authorization: bool,
    spelling: Spelling,
}

/// A route's path in the forms a request is compared with.
#[derive(Debug, Default, PartialEq, Eq)]
struct Spelling {
    /// Decoded configured path.
    path: String,
    /// Its v1 form when it is a v1/v2 alias (`/api/v2/method/x` → `/api/method/x`).
    canonical: Option<String>,
    /// The controller-function prefix it names (`doctype.user.user.`…).
    tail: Option<String>,
    /// A method prefix that may cover a DocType's controller functions whose app and module
    /// only Frappe knows (`/api/method/frappe.core.`): a `deny` route then covers them too.
    maybe_controller: bool,
    /// A method route that admits (`public` / `token`) covers whole dotted names only:
    /// `/api/method/ping` covers `ping` and `ping.x`, never `pingX`.
    whole_names: bool,
}

impl Spelling {
    fn new(configured: &str, auth: AuthMode) -> Self {
        let path = percent_decode_str(configured).decode_utf8_lossy().into_owned();
        let rest = path.strip_prefix("/api/").unwrap_or_default();
        let mut spelling = Spelling::default();
        if let Some(t) = rest.strip_prefix("v1/") {
            spelling.canonical = Some(format!("/api/{t}"));
        } else if let Some(t) = rest.strip_prefix("v2/document/") {
            spelling.canonical = Some(format!("/api/resource/{t}"));
        } else if let Some((doctype, method)) =
            rest.strip_prefix("v2/method/").and_then(|t| t.split_once('/'))
        {
            let s = scrub(doctype);
            spelling.tail = Some(format!("doctype.{s}.{s}.{method}"));
        } else if let Some(t) = rest.strip_prefix("v2/method/") {
            spelling.canonical = Some(format!("/api/method/{t}"));
        }
        let method = spelling.canonical.as_deref().unwrap_or(&path).strip_prefix("/api/method/");
        if let Some(method) = method {
            spelling.whole_names =
                auth != AuthMode::Deny && !method.is_empty() && !method.ends_with(['.', '/']);
            match method.find(".doctype.") {
                Some(i) => spelling.tail = Some(method[i + 1..].to_string()),
                None => spelling.maybe_controller = may_prefix_a_controller(method),
            }
        }
        spelling.path = path;
        spelling
    }

    /// Whether `path` (a request path in decoded v1 or as-sent form) is under this route.
    fn covers_path(&self, path: &str) -> bool {
        self.prefixes(path, &self.path) || self.canonical.as_deref().is_some_and(|c| self.prefixes(path, c))
    }

    fn prefixes(&self, path: &str, prefix: &str) -> bool {
        match path.strip_prefix(prefix) {
            Some(rest) => !self.whole_names || rest.is_empty() || rest.starts_with(['.', '/']),
            None => false,
        }
    }
}

/// `"frappe.core"` may begin `frappe.core.doctype.<dt>.<dt>.<m>`; `"frappe.client.get_list"`
/// cannot (its third part is not the start of `doctype`).
fn may_prefix_a_controller(method: &str) -> bool {
    let parts: Vec<&str> = method.split('.').collect();
    match parts.len() {
        0..=2 => true,
        3 => "doctype".starts_with(parts[2]),
        _ => false,
    }
}

/// The request's spellings, computed once per request.
struct RequestSpelling<'a> {
    /// The path as sent, unless a `cmd` makes Frappe ignore it.
    path: Option<&'a str>,
    canonical: Option<String>,
    /// The `frappe.handler` function's other name.
    handler_alias: Option<String>,
    tail: Option<String>,
    doctype_method: bool,
}

impl RequestSpelling<'_> {
    fn matches(&self, route: &RouteEntry) -> bool {
        let s = &route.spelling;
        self.path.is_some_and(|p| s.covers_path(p))
            || self.canonical.as_deref().is_some_and(|c| s.covers_path(c))
            || self.handler_alias.as_deref().is_some_and(|a| s.covers_path(a))
            || matches!((&self.tail, &s.tail), (Some(t), Some(prefix)) if t.starts_with(prefix.as_str()))
            || (self.doctype_method && s.maybe_controller && route.auth == AuthMode::Deny)
    }
}

/// The routes a request is judged by.
pub(crate) struct RouteMatch<'a> {
    /// The route of the path as sent: picks the backend.
    pub sent: &'a RouteEntry,
    /// The most specific route over every spelling of the call Frappe runs (the path as sent
    /// is one, unless a `cmd` replaces it): the call's own route. Its allowlist, `deny` and
    /// `per_ip` apply as well as `sent`'s, so no spelling of a call escapes them.
    pub widest: &'a RouteEntry,
    /// The stricter of `sent` and `widest`: decides the auth mode and the per-key limit.
    pub judged: &'a RouteEntry,
}

/// Longest-prefix route table. Paths no route matches need a token (the implicit catch-all).
pub(crate) struct RouteTable {
    routes: Vec<RouteEntry>,
    fallback: RouteEntry,
}

impl RouteTable {
    pub(crate) fn build(config: &Config, default_target: &Arc<Target>) -> Result<Self> {
        let routes = config
            .routes
            .iter()
            .map(|r| route_entry(r, default_target, config.auth.forward_authorization))
            .collect::<Result<Vec<_>>>()?;
        let fallback = RouteEntry {
            path: Arc::from("/"),
            auth: AuthMode::Token,
            per_ip: None,
            per_key: None,
            target: default_target.clone(),
            ip_policy: IpPolicy::new("route", &[], &[]),
            ip_scope: Arc::from("route-ip:/"),
            key_scope: Arc::from("route-key:/"),
            forward_authorization: config.auth.forward_authorization,
            spelling: Spelling::new("/", AuthMode::Token),
        };
        Ok(RouteTable { routes, fallback })
    }

    /// Every route's configured path, the implicit catch-all `/` last (the metrics' route labels).
    pub(crate) fn paths(&self) -> impl Iterator<Item = &Arc<str>> {
        self.routes.iter().chain(std::iter::once(&self.fallback)).map(|r| &r.path)
    }

    /// The route of a decoded path alone (routes are sorted longest first).
    pub(crate) fn for_path(&self, path: &str) -> &RouteEntry {
        self.routes.iter().find(|r| r.spelling.covers_path(path)).unwrap_or(&self.fallback)
    }

    /// The routes for a request as the Frappe request model reads it.
    pub(crate) fn for_request(&self, request: &FrappeRequest) -> RouteMatch<'_> {
        let sent = self.for_path(&request.path);
        if !sent.target.frappe {
            // Another backend: Frappe's dispatch does not apply to what it runs.
            return RouteMatch { sent, widest: sent, judged: sent };
        }
        let path = (!request.by_cmd).then_some(request.path.as_str());
        let spelling = RequestSpelling {
            path,
            // A path already in its v1 spelling needs no second one.
            canonical: match path {
                Some(path) if request.call.spelled_canonically(path) => None,
                _ => request.call.canonical_path(),
            },
            handler_alias: request.call.handler_alias_path(),
            tail: request.call.controller_tail(),
            doctype_method: matches!(request.call, Call::DocTypeMethod { .. }),
        };
        let widest = self.routes.iter().find(|r| spelling.matches(r)).unwrap_or(&self.fallback);
        let judged = if strictness(sent.auth) > strictness(widest.auth) { sent } else { widest };
        RouteMatch { sent, widest, judged }
    }
}

fn strictness(auth: AuthMode) -> u8 {
    match auth {
        AuthMode::Public => 0,
        AuthMode::Token => 1,
        AuthMode::Deny => 2,
    }
}

fn route_entry(
    route: &Route,
    default_target: &Arc<Target>,
    forward_authorization: bool,
) -> Result<RouteEntry> {
    let target = match &route.upstream {
        Some(url) => Arc::new(Target {
            base: url.clone(),
            host: header_value(url.authority().map_or("", |a| a.as_str()))?,
            site_name: None,
            frappe: false,
            address: address_of(url),
        }),
        None => default_target.clone(),
    };
    // Another backend only ever sees the user header, unless the route opts in.
    let forward_authorization = route.forward_authorization.unwrap_or(target.frappe && forward_authorization);
    Ok(RouteEntry {
        path: Arc::from(route.path.as_str()),
        auth: route.auth,
        per_ip: route.per_ip,
        per_key: route.per_key,
        ip_policy: IpPolicy::new("route", &route.allow, &[]),
        ip_scope: Arc::from(format!("route-ip:{}", route.path)),
        key_scope: Arc::from(format!("route-key:{}", route.path)),
        forward_authorization,
        spelling: Spelling::new(&route.path, route.auth),
        target,
    })
}

pub(crate) fn header_value(s: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(s).with_context(|| format!("{s:?} is not a valid header value"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn table(routes: &[(&str, AuthMode)]) -> RouteTable {
        let target = Arc::new(Target {
            base: "http://127.0.0.1:8000".parse().unwrap(),
            host: HeaderValue::from_static("erp"),
            site_name: None,
            frappe: true,
            address: Arc::from("127.0.0.1:8000"),
        });
        let mut entries: Vec<RouteEntry> = routes
            .iter()
            .map(|(path, auth)| {
                let route = Route {
                    path: path.to_string(),
                    auth: *auth,
                    allow: vec![],
                    per_ip: None,
                    per_key: None,
                    upstream: None,
                    forward_authorization: None,
                };
                route_entry(&route, &target, true).unwrap()
            })
            .collect();
        entries.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
        let fallback = route_entry(
            &Route {
                path: "/".into(),
                auth: AuthMode::Token,
                allow: vec![],
                per_ip: None,
                per_key: None,
                upstream: None,
                forward_authorization: None,
            },
            &target,
            true,
        )
        .unwrap();
        RouteTable { routes: entries, fallback }
    }

    fn judged<'a>(t: &'a RouteTable, method: Method, uri: &str) -> &'a str {
        let request = FrappeRequest::from_head(&method, &uri.parse().unwrap()).unwrap();
        &t.for_request(&request).judged.path
    }

    use AuthMode::{Deny, Public, Token};

    #[test]
    fn every_spelling_of_a_denied_method_is_denied() {
        let t = table(&[
            ("/api/", Token),
            ("/api/method/frappe.client.get_password", Deny),
            ("/api/method/ping", Public),
        ]);
        let deny = "/api/method/frappe.client.get_password";
        for uri in [
            "/api/method/frappe.client.get_password",
            "/api/v1/method/frappe.client.get_password",
            "/api/v2/method/frappe.client.get_password",
            "/api/method/frappe.client.get%5Fpassword/x",
            "//api//method/frappe.client.get_password",
            "/?cmd=frappe.client.get_password",
            "/api/resource/ToDo?c%6Dd=frappe.client.get_password",
            "/api/method/ping?cmd=frappe.client.get_password",
        ] {
            assert_eq!(judged(&t, Method::GET, uri), deny, "{uri}");
        }
        assert_eq!(judged(&t, Method::GET, "/api/method/ping"), "/api/method/ping");
        assert_eq!(judged(&t, Method::GET, "/api/method/ping/"), "/api/method/ping");
        assert_eq!(judged(&t, Method::GET, "/api/method/pingX"), "/api/");
        // A cmd for a token method on a public route needs a token.
        assert_eq!(judged(&t, Method::GET, "/api/method/ping?cmd=frappe.client.get_list"), "/api/");
    }

    /// `upload_file` runs `frappe.handler.upload_file`: a route on either name covers both.
    #[test]
    fn frappe_handler_functions_in_both_spellings() {
        let t = table(&[
            ("/api/", Token),
            ("/api/method/frappe.handler.upload_file", Deny),
            ("/api/method/download_file", Deny),
        ]);
        assert_eq!(
            judged(&t, Method::POST, "/api/method/upload_file"),
            "/api/method/frappe.handler.upload_file"
        );
        assert_eq!(
            judged(&t, Method::POST, "/api/resource/ToDo?cmd=upload_file"),
            "/api/method/frappe.handler.upload_file"
        );
        assert_eq!(
            judged(&t, Method::GET, "/api/method/frappe.handler.download_file"),
            "/api/method/download_file"
        );
        assert_eq!(judged(&t, Method::GET, "/api/method/frappe.handler.ping"), "/api/");
        assert_eq!(judged(&t, Method::GET, "/api/method/frappe.handlers.upload_file"), "/api/");
    }

    #[test]
    fn doctype_controller_functions_in_both_spellings() {
        let t = table(&[
            ("/api/", Token),
            ("/api/method/frappe.core.doctype.user.user.generate_keys", Deny),
            ("/api/v2/method/Note/", Deny),
        ]);
        assert_eq!(
            judged(&t, Method::GET, "/api/v2/method/User/generate_keys"),
            "/api/method/frappe.core.doctype.user.user.generate_keys"
        );
        assert_eq!(judged(&t, Method::GET, "/api/v2/method/User/other"), "/api/");
        assert_eq!(judged(&t, Method::GET, "/api/v2/method/Note/anything"), "/api/v2/method/Note/");
        assert_eq!(
            judged(&t, Method::GET, "/api/method/frappe.desk.doctype.note.note.anything"),
            "/api/v2/method/Note/"
        );
    }

    #[test]
    fn a_deny_on_a_module_prefix_covers_controller_functions_it_may_hold() {
        let t = table(&[
            ("/api/", Token),
            ("/api/method/frappe.core.", Deny),
            ("/api/method/frappe.client.get_list", Deny),
        ]);
        assert_eq!(judged(&t, Method::GET, "/api/v2/method/User/generate_keys"), "/api/method/frappe.core.");
        assert!(may_prefix_a_controller("frappe.core.doc"));
        assert!(!may_prefix_a_controller("frappe.client.get_list"));
        assert!(!may_prefix_a_controller("a.b.doctype.x"));
    }

    #[test]
    fn v2_and_v1_route_spellings_cover_the_v1_request() {
        let t = table(&[("/api/", Token), ("/api/v2/document/User", Deny), ("/api/v1/method/x.y", Public)]);
        assert_eq!(judged(&t, Method::GET, "/api/resource/User/Administrator"), "/api/v2/document/User");
        assert_eq!(judged(&t, Method::GET, "/api/method/x.y"), "/api/v1/method/x.y");
        // The public route of a method never covers another method that shares its prefix
        // only as text, when that method's path is denied or needs a token elsewhere.
        assert_eq!(judged(&t, Method::OPTIONS, "/api/resource/ToDo?cmd=x.y"), "/api/");
    }
}
