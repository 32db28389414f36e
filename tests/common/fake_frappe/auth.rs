//! Who a request runs as, decided the way Frappe 15.44 does it: the session from the `sid`
//! parameter or cookie first, then `validate_auth()` on the Authorization header; plus
//! password login and logout.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use http::header::{AUTHORIZATION, COOKIE};
use http::HeaderMap;

use super::params::Params;
use super::reply::{json_str, obj, CookieIdentity, FrappeError};
use super::state::State;

/// The user a request runs as, and the session it resumed, if any.
#[derive(Clone, Debug)]
pub(super) struct Identity {
    pub user: String,
    pub sid: Option<String>,
}

impl Identity {
    pub fn guest() -> Identity {
        Identity { user: "Guest".into(), sid: None }
    }

    pub fn is_guest(&self) -> bool {
        self.user == "Guest" || self.user.is_empty()
    }

    /// What the five session cookies say: token requests keep the Guest cookies, because
    /// token auth creates no session.
    pub fn cookie_identity(&self, state: &State) -> CookieIdentity {
        let Some(sid) = &self.sid else {
            return CookieIdentity::guest();
        };
        let full_name = match state.user(&self.user) {
            Some(u) if u.name != "Administrator" => u.full_name(),
            _ => self.user.clone(),
        };
        CookieIdentity { sid: sid.clone(), user: self.user.clone(), full_name, system_user: true }
    }
}

/// Resume the session named by the `sid` parameter, else the `sid` cookie; Guest otherwise.
pub(super) fn session_from_request(state: &State, headers: &HeaderMap, params: &Params) -> Identity {
    let sid = params.get_str("sid").or_else(|| cookie_value(headers, "sid"));
    match sid.and_then(|sid| state.sessions.get(&sid).map(|user| (sid, user))) {
        Some((sid, user)) if state.user(user).is_some() => Identity { user: user.clone(), sid: Some(sid) },
        _ => Identity::guest(),
    }
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| super::params::decode_path_segment(v))
}

/// `frappe.auth.validate_auth`: the header is split on single spaces and used only when that
/// gives exactly two parts; then, if the request is still Guest, it fails with 401.
/// Like 15.44, nothing here looks at `enabled` or `restrict_ip`.
pub(super) fn validate_auth(
    state: &State,
    headers: &HeaderMap,
    identity: &mut Identity,
) -> Result<(), FrappeError> {
    let value = headers
        .get(AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let parts: Vec<&str> = value.split(' ').collect();
    let [scheme, credential] = parts[..] else {
        return Ok(()); // absent, one word, or extra spaces: silently Guest
    };
    let source = headers
        .get("frappe-authorization-source")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" => {
            if let Some(user) = state.bearers.get(credential) {
                if identity.is_guest() {
                    identity.user = user.clone();
                }
            }
        }
        "basic" => {
            let decoded =
                python_b64decode(credential).ok_or_else(FrappeError::invalid_authorization_token)?;
            // Non-UTF-8 credentials end in a swallowed TypeError: still Guest, hence 401.
            if let Ok(text) = String::from_utf8(decoded) {
                check_key_secret(state, &text, source.as_deref(), identity)?;
            }
        }
        "token" => check_key_secret(state, credential, source.as_deref(), identity)?,
        _ => {}
    }
    if identity.is_guest() {
        return Err(FrappeError::authentication());
    }
    Ok(())
}

/// `validate_api_key_secret`: `key:secret` must split into exactly two parts (else the
/// ValueError is swallowed); an unknown key or a wrong secret raises at once. A valid token
/// does not replace a logged-in cookie session's user.
fn check_key_secret(
    state: &State,
    credential: &str,
    source: Option<&str>,
    identity: &mut Identity,
) -> Result<(), FrappeError> {
    let parts: Vec<&str> = credential.split(':').collect();
    let [api_key, api_secret] = parts[..] else {
        return Ok(());
    };
    // Another DocType in Frappe-Authorization-Source: the fake holds keys only on User.
    if source.is_some_and(|s| s != "User") {
        return Err(FrappeError::authentication());
    }
    let user = state.user_by_api_key(api_key).ok_or_else(FrappeError::authentication)?;
    if user.api_secret.as_deref() != Some(api_secret) {
        return Err(FrappeError::authentication());
    }
    if identity.is_guest() {
        identity.user = user.name.clone();
    }
    Ok(())
}

/// Python's non-validating `base64.b64decode`: characters outside the alphabet are dropped,
/// padding is required, stray trailing bits are allowed.
fn python_b64decode(input: &str) -> Option<Vec<u8>> {
    let cleaned: String =
        input.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=')).collect();
    let engine = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
            .with_decode_allow_trailing_bits(true),
    );
    engine.decode(cleaned).ok()
}

/// The client IP Frappe believes: the first `X-Forwarded-For` entry, else a client-sent
/// `Remote-Addr` header, else 127.0.0.1 — no trusted-proxy check at all.
pub(super) fn request_ip(headers: &HeaderMap) -> String {
    let header = |name: &str| {
        headers.get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()).map(str::to_string)
    };
    let raw =
        header("x-forwarded-for").or_else(|| header("remote-addr")).unwrap_or_else(|| "127.0.0.1".into());
    raw.split(',').next().unwrap_or("").trim().to_string()
}

/// `LoginManager.authenticate` + `validate_ip_address`: a new session on success.
pub(super) fn login(state: &mut State, params: &Params, ip: &str) -> Result<Identity, FrappeError> {
    let (Some(usr), Some(pwd)) = (params.get_str("usr"), params.get_str("pwd")) else {
        return Err(FrappeError::login_failed("Incomplete login details"));
    };
    let user = state
        .user(&usr)
        .filter(|u| u.password.as_deref() == Some(pwd.as_str()))
        .ok_or_else(|| FrappeError::login_failed("Invalid login credentials"))?;
    if !(user.enabled || user.name == "Administrator") {
        return Err(FrappeError::login_failed("User disabled or missing"));
    }
    if !ip_allowed(user.restrict_ip.as_deref(), ip) {
        return Err(FrappeError::login_refused("Access not allowed from this IP Address"));
    }
    let name = user.name.clone();
    let sid = state.create_session(&name);
    Ok(Identity { user: name, sid: Some(sid) })
}

/// Frappe's restrict_ip rule: comma-separated entries, trimmed, each a plain string prefix
/// of the IP (an empty entry therefore allows everything).
fn ip_allowed(restrict_ip: Option<&str>, ip: &str) -> bool {
    match restrict_ip.filter(|r| !r.is_empty()) {
        None => true,
        Some(list) => list.split(',').any(|entry| ip.starts_with(entry.trim())),
    }
}

/// The body Frappe answers a successful login with.
pub(super) fn login_body(state: &State, identity: &Identity) -> String {
    let full_name = json_str(&identity.cookie_identity(state).full_name);
    let (message, home_page) = (json_str("Logged In"), json_str("/app"));
    let body = obj([
        ("message", message.as_str()),
        ("home_page", home_page.as_str()),
        ("full_name", full_name.as_str()),
    ]);
    body
}
