//! The Frappe side of the fake, in Frappe's order: fault injection, site check, session,
//! `validate_auth` (before any routing: 04o, 12d), then `/api/method/...`, `/api/resource/...`
//! (v1, also under `/api/v1/`) and `/api/v2/{method,document}/...`.

use std::sync::atomic::Ordering;

use http::{HeaderMap, Method, Response};

use super::auth::{self, Identity};
use super::documents;
use super::params::{decode_path_segment, Params};
use super::reply::{
    cookie_lines, json_response, json_str, not_found_html, typed_response, ApiVersion, Body, Cookies,
    FrappeError, Outcome,
};
use super::state::State;
use super::{Counters, Shared, UsersMode, WhoamiMode};

const WHOAMI: &str = "frappe.auth.get_logged_user";

/// A request with its body already read into `form_dict`.
pub(super) struct ApiRequest {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub params: Params,
    pub body: bytes::Bytes,
}

enum Route {
    Method(ApiVersion, String),
    List(ApiVersion, String),
    Doc(ApiVersion, String, String),
    /// Not under /api/ (website pages) or an unknown /api/ path.
    Page,
}

impl Route {
    fn parse(path: &str) -> Route {
        let (version, rest) = if let Some(rest) = path.strip_prefix("/api/v2/") {
            (ApiVersion::V2, rest)
        } else if let Some(rest) = path.strip_prefix("/api/v1/") {
            (ApiVersion::V1, rest)
        } else if let Some(rest) = path.strip_prefix("/api/") {
            (ApiVersion::V1, rest)
        } else {
            return Route::Page;
        };
        let (kind, rest) = rest.split_once('/').unwrap_or((rest, ""));
        let documents = match version {
            ApiVersion::V1 => "resource",
            ApiVersion::V2 => "document",
        };
        if kind == "method" && !rest.is_empty() {
            // v1 keeps only the first segment "for backward compatibility"
            let name = match version {
                ApiVersion::V1 => rest.split('/').next().unwrap_or(rest),
                ApiVersion::V2 => rest,
            };
            return Route::Method(version, decode_path_segment(name));
        }
        if kind == documents && !rest.is_empty() {
            let (doctype, name) = rest.split_once('/').unwrap_or((rest, ""));
            let (doctype, name) = (decode_path_segment(doctype), name.trim_end_matches('/'));
            return match name {
                "" => Route::List(version, doctype),
                name => Route::Doc(version, doctype, decode_path_segment(name)),
            };
        }
        Route::Page
    }

    fn version(&self) -> ApiVersion {
        match self {
            Route::Method(v, _) | Route::List(v, _) | Route::Doc(v, _, _) => *v,
            Route::Page => ApiVersion::V1,
        }
    }

    fn is_whoami(&self) -> bool {
        matches!(self, Route::Method(_, m) if m == WHOAMI)
    }

    fn is_user_list(&self, params: &Params) -> bool {
        match self {
            Route::List(_, doctype) => doctype == "User",
            Route::Method(_, m) => {
                m == "frappe.client.get_list" && params.get_str("doctype").as_deref() == Some("User")
            }
            _ => false,
        }
    }

    fn is_user_get(&self) -> bool {
        matches!(self, Route::Doc(_, doctype, _) if doctype == "User")
    }
}

/// Answer one Frappe request.
pub(super) async fn respond(shared: &Shared, req: ApiRequest) -> Response<Body> {
    let route = Route::parse(&req.path);
    count(shared, &route, &req.params);
    let _in_flight = route.is_whoami().then(|| InFlight::enter(&shared.counters));
    let injected = inject_faults(shared, &route, &req.params).await;
    let mut state = shared.state();
    if let Some(page) = wrong_site(&state, &req.headers) {
        return page;
    }
    let mut identity = auth::session_from_request(&state, &req.headers, &req.params);
    let result = match injected {
        Some(error) => Err(error),
        None => handle(&mut state, &req, &route, &mut identity),
    };
    finish(&state, route.version(), &identity, result)
}

fn count(shared: &Shared, route: &Route, params: &Params) {
    let counters = &shared.counters;
    if route.is_whoami() {
        counters.whoami.fetch_add(1, Ordering::SeqCst);
    }
    if route.is_user_list(params) {
        counters.user_list.fetch_add(1, Ordering::SeqCst);
    }
    if route.is_user_get() {
        counters.user_get.fetch_add(1, Ordering::SeqCst);
    }
}

/// A whoami request being answered; leaving (answered, or dropped with its connection)
/// decrements the gauge.
struct InFlight<'a>(&'a Counters);

impl<'a> InFlight<'a> {
    fn enter(counters: &'a Counters) -> InFlight<'a> {
        let now = counters.whoami_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        counters.whoami_max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(counters)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.whoami_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whoami delay / hang / 500 and User-endpoint failures, decided before authentication.
async fn inject_faults(shared: &Shared, route: &Route, params: &Params) -> Option<FrappeError> {
    if route.is_whoami() {
        let (delay, mode) = {
            let state = shared.state();
            (state.whoami_delay, state.whoami_mode)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match mode {
            WhoamiMode::Normal => {}
            WhoamiMode::Hang => std::future::pending::<()>().await,
            WhoamiMode::Status500 => return Some(FrappeError::internal()),
        }
    }
    if route.is_user_list(params) || route.is_user_get() {
        match shared.state().users_mode {
            UsersMode::Normal => {}
            UsersMode::Status401 => return Some(FrappeError::authentication()),
            UsersMode::Status500 => return Some(FrappeError::internal()),
        }
    }
    None
}

/// Frappe picks the site from `X-Frappe-Site-Name`, else `Host`; an unknown one is a 404 page.
fn wrong_site(state: &State, headers: &HeaderMap) -> Option<Response<Body>> {
    let site = state.site_name.as_deref()?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let requested = header("x-frappe-site-name")
        .or_else(|| header("host").map(|h| h.rsplit_once(':').map_or(h, |(host, _)| host)))
        .unwrap_or("");
    (requested != site).then(|| not_found_html(&format!("{requested} does not exist")))
}

fn handle(
    state: &mut State,
    req: &ApiRequest,
    route: &Route,
    identity: &mut Identity,
) -> Result<Outcome, FrappeError> {
    if req.path == "/api/method/login" {
        // Login runs while the request is set up, before validate_auth.
        let ip = auth::request_ip(&req.headers);
        *identity = auth::login(state, &req.params, &ip)?;
        auth::validate_auth(state, &req.headers, identity)?;
        return Ok(Outcome::ok(auth::login_body(state, identity)));
    }
    auth::validate_auth(state, &req.headers, identity)?;
    if req.method == Method::OPTIONS {
        return Ok(Outcome::preflight());
    }
    match route {
        Route::Method(version, name) => call_method(state, req, *version, name, identity),
        Route::List(version, doctype) => match req.method {
            Method::GET => documents::list(state, &req.params, *version, doctype, identity),
            Method::POST => documents::create(state, req, doctype, identity),
            _ => Err(method_not_allowed()),
        },
        Route::Doc(version, doctype, name) => {
            documents::single(state, req, *version, doctype, name, identity)
        }
        Route::Page => Ok(page(&req.path)),
    }
}

fn finish(
    state: &State,
    version: ApiVersion,
    identity: &Identity,
    result: Result<Outcome, FrappeError>,
) -> Response<Body> {
    let who = identity.cookie_identity(state);
    match result {
        Ok(outcome) => {
            let cookies = cookie_lines(outcome.cookies, &who);
            match outcome.content_type {
                Some(content_type) => typed_response(outcome.status, outcome.body, content_type, &cookies),
                None => json_response(outcome.status, outcome.body, &cookies),
            }
        }
        Err(error) => json_response(
            error.status,
            error.render(version, state.allow_error_traceback),
            &cookie_lines(error.cookies, &who),
        ),
    }
}

fn page(path: &str) -> Outcome {
    match path {
        "/" => Outcome::html(200, "<!doctype html>\n<title>Fake Frappe</title>\n".into()),
        _ => Outcome::html(404, "<!doctype html>\n<title>404 Not Found</title>\n".into()),
    }
}

pub(super) fn method_not_allowed() -> FrappeError {
    FrappeError { status: 405, ..FrappeError::validation("Method Not Allowed".into()) }
}

pub(super) fn is_system_manager(state: &State, identity: &Identity) -> bool {
    identity.user == "Administrator" || state.user(&identity.user).is_some_and(|u| u.system_manager)
}

// ----- /api/method/<name> ---------------------------------------------------------------

fn call_method(
    state: &mut State,
    req: &ApiRequest,
    version: ApiVersion,
    name: &str,
    identity: &mut Identity,
) -> Result<Outcome, FrappeError> {
    let guest_check = |identity: &Identity| match identity.is_guest() {
        true => Err(FrappeError::not_whitelisted(name)),
        false => Ok(()),
    };
    match name {
        "ping" => Ok(Outcome::rpc(version, json_str("pong"))),
        WHOAMI => {
            guest_check(identity)?;
            Ok(Outcome::rpc(version, json_str(&identity.user)))
        }
        "logout" => Ok(logout(state, identity)),
        "frappe.client.get_list" => {
            guest_check(identity)?;
            let doctype = req.params.get_str("doctype").unwrap_or_default();
            let rows = documents::list_rows(state, &req.params, version, &doctype, identity)?;
            Ok(Outcome::rpc(version, rows))
        }
        "frappe.client.get_password" => {
            guest_check(identity)?;
            get_password(state, &req.params, version, identity)
        }
        "frappe.core.doctype.user.user.generate_keys" => {
            guest_check(identity)?;
            generate_keys(state, &req.params, version, identity)
        }
        _ => Err(unknown_method(version, name)),
    }
}

fn logout(state: &mut State, identity: &mut Identity) -> Outcome {
    if let Some(sid) = &identity.sid {
        state.sessions.remove(sid);
    }
    *identity = Identity::guest();
    let body = r#"{"message":"No App","home_page":"/login","full_name":"Guest"}"#;
    Outcome { cookies: Cookies::SessionThenExpire, ..Outcome::ok(body.into()) }
}

/// `frappe.get_attr` failing, worded as Python would.
fn unknown_method(version: ApiVersion, name: &str) -> FrappeError {
    let python_error = match name.rsplit_once('.') {
        None => "Empty module name".to_string(),
        Some(("frappe", attr)) => format!("module 'frappe' has no attribute '{attr}'"),
        Some((module, _)) => {
            format!("No module named '{}'", module.split('.').next().unwrap_or(module))
        }
    };
    FrappeError::validation(match version {
        ApiVersion::V1 => format!("Failed to get method for command {name} with {python_error}"),
        ApiVersion::V2 => format!("Failed to get method {name} with {python_error}"),
    })
}

/// Transcript 06d: a System Manager reads any user's secret in clear.
fn get_password(
    state: &State,
    params: &Params,
    version: ApiVersion,
    identity: &Identity,
) -> Result<Outcome, FrappeError> {
    if !is_system_manager(state, identity) {
        return Err(FrappeError::permission(None, None));
    }
    let field = params.get_str("fieldname").unwrap_or_default();
    let user = params.get_str("name").unwrap_or_default();
    let secret = (params.get_str("doctype").as_deref() == Some("User") && field == "api_secret")
        .then(|| state.user(&user).and_then(|u| u.api_secret.clone()))
        .flatten()
        .ok_or_else(|| FrappeError::not_found(format!("Password not found for User {user} {field}")))?;
    Ok(Outcome::rpc(version, json_str(&secret)))
}

/// "Generate Keys": keeps the api_key, replaces the secret, answers it once.
fn generate_keys(
    state: &mut State,
    params: &Params,
    version: ApiVersion,
    identity: &Identity,
) -> Result<Outcome, FrappeError> {
    let user = params.get_str("user").unwrap_or_default();
    if !is_system_manager(state, identity) {
        return Err(FrappeError::permission(None, None));
    }
    if state.user(&user).is_none() {
        return Err(FrappeError::not_found(format!("User {user} not found")));
    }
    let secret = state.regenerate_secret(&user);
    Ok(Outcome::rpc(version, format!("{{\"api_secret\":{}}}", json_str(&secret))))
}
