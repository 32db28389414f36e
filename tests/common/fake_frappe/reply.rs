//! Frappe-shaped responses: compact JSON in Frappe's field order, error bodies (`exc_type`,
//! `exception`, `exc`, `_server_messages`; v2's `errors` list) and the `Set-Cookie` lines
//! Frappe sends with them.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, SET_COOKIE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use super::clock::http_date_from_now;
use super::state::{random_hex, Doc};

pub(super) type Body = BoxBody<Bytes, std::io::Error>;

pub(super) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// `/api/...` and `/api/v1/...` answer `message`/v1 errors; `/api/v2/...` answers `data`/`errors`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ApiVersion {
    V1,
    V2,
}

/// Which `Set-Cookie` lines a response carries (see the transcripts README).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cookies {
    /// None at all: failed password logins, the unknown-site 404.
    None,
    /// The five lines describing the current session (Guest for token requests).
    Session,
    /// The five, then five more expiring them: token-path 401s and logout.
    SessionThenExpire,
}

/// Who the five session cookies describe.
pub(super) struct CookieIdentity {
    pub sid: String,
    pub user: String,
    pub full_name: String,
    pub system_user: bool,
}

impl CookieIdentity {
    pub fn guest() -> CookieIdentity {
        CookieIdentity {
            sid: "Guest".into(),
            user: "Guest".into(),
            full_name: "Guest".into(),
            system_user: false,
        }
    }
}

/// A successful answer before cookies are attached.
pub(super) struct Outcome {
    pub status: u16,
    pub body: String,
    pub cookies: Cookies,
    /// `None` for JSON API answers; website pages and preflights say what they are.
    pub content_type: Option<&'static str>,
}

impl Outcome {
    pub fn ok(body: String) -> Outcome {
        Outcome { status: 200, body, cookies: Cookies::Session, content_type: None }
    }

    pub fn html(status: u16, body: String) -> Outcome {
        Outcome { status, body, cookies: Cookies::None, content_type: Some("text/html; charset=utf-8") }
    }

    /// What `frappe.app` answers an `OPTIONS` request with (after `validate_auth`): an empty
    /// werkzeug `Response()`.
    pub fn preflight() -> Outcome {
        Outcome {
            status: 200,
            body: String::new(),
            cookies: Cookies::Session,
            content_type: Some("text/plain; charset=utf-8"),
        }
    }

    /// An RPC result: `{"message": X}` in v1, `{"data": X}` in v2.
    pub fn rpc(version: ApiVersion, value_json: String) -> Outcome {
        let key = match version {
            ApiVersion::V1 => "message",
            ApiVersion::V2 => "data",
        };
        Outcome::ok(format!("{{{}:{value_json}}}", json_str(key)))
    }

    /// A document API result: `{"data": X}` in both versions.
    pub fn data(value_json: String) -> Outcome {
        Outcome::ok(format!("{{\"data\":{value_json}}}"))
    }
}

/// A Frappe exception as it reaches `handle_exception`.
#[derive(Debug)]
pub(super) struct FrappeError {
    pub status: u16,
    pub exc_type: &'static str,
    /// Text passed to `frappe.throw`: appended to `exception`, shown in `_server_messages`.
    pub message: Option<String>,
    pub title: &'static str,
    /// A top-level `message` key (failed password logins put theirs there).
    pub plain_message: Option<String>,
    /// `_error_message` (document permission failures).
    pub error_message: Option<String>,
    /// The raised exception carried no text although a message was shown (transcript 08f).
    pub bare_exception: bool,
    pub cookies: Cookies,
}

impl FrappeError {
    fn new(status: u16, exc_type: &'static str, message: Option<String>) -> FrappeError {
        FrappeError {
            status,
            exc_type,
            message,
            title: "Message",
            plain_message: None,
            error_message: None,
            bare_exception: false,
            cookies: Cookies::Session,
        }
    }

    /// The bare `raise frappe.AuthenticationError` of the token path: 401, ten cookies.
    pub fn authentication() -> FrappeError {
        FrappeError {
            cookies: Cookies::SessionThenExpire,
            ..FrappeError::new(401, "AuthenticationError", None)
        }
    }

    /// A failed password login: 401, top-level `message`, no cookies.
    pub fn login_failed(message: &str) -> FrappeError {
        FrappeError {
            plain_message: Some(message.into()),
            cookies: Cookies::None,
            ..FrappeError::new(401, "AuthenticationError", None)
        }
    }

    /// `frappe.throw(msg, AuthenticationError)` during login (restrict_ip): no cookies.
    pub fn login_refused(message: &str) -> FrappeError {
        FrappeError {
            cookies: Cookies::None,
            ..FrappeError::new(401, "AuthenticationError", Some(message.into()))
        }
    }

    pub fn invalid_authorization_token() -> FrappeError {
        let msg = "Failed to decode token, please provide a valid base64-encoded token.";
        FrappeError::new(400, "InvalidAuthorizationToken", Some(msg.into()))
    }

    /// What a Guest gets from a method that does not allow guests.
    pub fn not_whitelisted(method: &str) -> FrappeError {
        let msg = format!(
            "<details><summary>You are not permitted to access this resource.</summary>\
             Function <strong>{method}</strong> is not whitelisted.</details>"
        );
        FrappeError { title: "Method Not Allowed", ..FrappeError::new(403, "PermissionError", Some(msg)) }
    }

    pub fn permission(message: Option<String>, error_message: Option<String>) -> FrappeError {
        FrappeError { error_message, ..FrappeError::new(403, "PermissionError", message) }
    }

    pub fn not_found(message: String) -> FrappeError {
        FrappeError::new(404, "DoesNotExistError", Some(message))
    }

    pub fn validation(message: String) -> FrappeError {
        FrappeError::new(417, "ValidationError", Some(message))
    }

    /// A crash, e.g. MariaDB gone: 500 with the Python exception's class name.
    pub fn internal() -> FrappeError {
        let msg = "(2006, 'MySQL server has gone away')";
        FrappeError::new(500, "OperationalError", Some(msg.into()))
    }

    /// The body Frappe's `report_error` builds. With tracebacks allowed v1 bodies carry
    /// `exception` and `exc`, except for 404s (transcript 08b); without, only `exc_type`,
    /// `_server_messages` (11*).
    pub fn render(&self, version: ApiVersion, allow_traceback: bool) -> String {
        let traceback = allow_traceback && self.status != 404;
        match version {
            ApiVersion::V1 => self.render_v1(traceback),
            ApiVersion::V2 => self.render_v2(traceback),
        }
    }

    fn exception_line(&self) -> String {
        match self.message.as_ref().filter(|_| !self.bare_exception) {
            Some(msg) => format!("frappe.exceptions.{}: {msg}", self.exc_type),
            None => format!("frappe.exceptions.{}", self.exc_type),
        }
    }

    /// A short stand-in traceback, JSON-encoded as Frappe does (a list of one string).
    fn exc(&self) -> String {
        let tb = format!(
            "Traceback (most recent call last):\n  File \"fake_frappe.py\", line 1, in application\n{}\n",
            self.exception_line()
        );
        serde_json::to_string(&vec![tb]).expect("encode traceback")
    }

    fn render_v1(&self, traceback: bool) -> String {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if let Some(msg) = &self.plain_message {
            pairs.push(("message", json_str(msg)));
        }
        if traceback {
            pairs.push(("exception", json_str(&self.exception_line())));
        }
        pairs.push(("exc_type", json_str(self.exc_type)));
        if traceback {
            pairs.push(("exc", json_str(&self.exc())));
        }
        if let Some(msg) = &self.message {
            let list = vec![server_message(msg, self.title)];
            let list = serde_json::to_string(&list).expect("encode server messages");
            pairs.push(("_server_messages", json_str(&list)));
        }
        if let Some(msg) = &self.error_message {
            pairs.push(("_error_message", json_str(msg)));
        }
        obj(pairs.iter().map(|(k, v)| (*k, v.as_str())))
    }

    fn render_v2(&self, traceback: bool) -> String {
        let mut pairs: Vec<(&str, String)> = vec![("type", json_str(self.exc_type))];
        if traceback {
            pairs.push(("exception", json_str(&self.exc())));
        }
        if let Some(msg) = self.message.as_ref().or(self.plain_message.as_ref()) {
            pairs.push(("message", json_str(msg)));
            pairs.push(("title", json_str(self.title)));
            pairs.push(("indicator", json_str("red")));
        }
        let error = obj(pairs.iter().map(|(k, v)| (*k, v.as_str())));
        format!("{{\"errors\":[{error}]}}")
    }
}

/// One `_server_messages` entry, serialised like Python's `json.dumps` (", " and ": ").
fn server_message(message: &str, title: &str) -> String {
    format!(
        "{{\"message\": {}, \"title\": {}, \"indicator\": \"red\", \"raise_exception\": 1, \
         \"__frappe_exc_id\": \"{}\"}}",
        json_str(message),
        json_str(title),
        random_hex(56)
    )
}

/// A JSON string literal.
pub(super) fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("encode string")
}

/// A compact JSON object from already-encoded values, in the given order.
pub(super) fn obj<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let fields: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{}:{v}", json_str(k))).collect();
    format!("{{{}}}", fields.join(","))
}

pub(super) fn doc_to_json(doc: &Doc) -> String {
    let encoded: Vec<(&str, String)> = doc.iter().map(|(k, v)| (k.as_str(), v.to_string())).collect();
    obj(encoded.iter().map(|(k, v)| (*k, v.as_str())))
}

pub(super) fn doc_to_value(doc: &Doc) -> Value {
    Value::Object(doc.iter().cloned().collect())
}

/// What Python's `urllib.parse.quote` leaves alone (Frappe quotes `user_id` with it).
const PY_QUOTE_SAFE: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'.').remove(b'-').remove(b'_').remove(b'~').remove(b'/');

/// The five session cookies, optionally followed by the five that expire them.
pub(super) fn cookie_lines(mode: Cookies, who: &CookieIdentity) -> Vec<String> {
    if mode == Cookies::None {
        return Vec::new();
    }
    let expires = http_date_from_now(612_000);
    let user_id = percent_encoding::utf8_percent_encode(&who.user, PY_QUOTE_SAFE).to_string();
    let mut lines = vec![
        format!("sid={}; Expires={expires}; Max-Age=612000; HttpOnly; Path=/; SameSite=Lax", who.sid),
        format!("system_user={}; Path=/; SameSite=Lax", if who.system_user { "yes" } else { "no" }),
        format!("full_name={}; Path=/; SameSite=Lax", who.full_name),
        format!("user_id={user_id}; Path=/; SameSite=Lax"),
        "user_image=; Path=/; SameSite=Lax".to_string(),
    ];
    if mode == Cookies::SessionThenExpire {
        let yesterday = http_date_from_now(-86_400);
        for name in ["user_id", "sid", "system_user", "user_image", "full_name"] {
            lines.push(format!("{name}=; Expires={yesterday}; Path=/"));
        }
    }
    lines
}

pub(super) fn json_response(status: u16, body: String, cookies: &[String]) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = StatusCode::from_u16(status).expect("valid status");
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for line in cookies {
        headers.append(SET_COOKIE, HeaderValue::from_str(line).expect("cookie value"));
    }
    response
}

pub(super) fn html_response(status: u16, html: String) -> Response<Body> {
    typed_response(status, html, "text/html; charset=utf-8", &[])
}

pub(super) fn typed_response(
    status: u16,
    body: String,
    content_type: &'static str,
    cookies: &[String],
) -> Response<Body> {
    let mut response = json_response(status, body, cookies);
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Werkzeug's 404 page, as Frappe sends it for an unknown site or an unknown path.
pub(super) fn not_found_html(detail: &str) -> Response<Body> {
    html_response(
        404,
        format!(
            "<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n<p>{detail}</p>\n"
        ),
    )
}
