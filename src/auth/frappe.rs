//! The only code that talks to Frappe for authentication: whoami on a cache miss, the paged
//! User list for sync, and one User's record for a webhook refresh.
//!
//! One pooled reqwest client (rustls, no proxies from the environment, no redirects), the
//! configured Host and `X-Frappe-Site-Name` on every call, credentials marked sensitive, and
//! error reasons that never contain a secret.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::future::BoxFuture;
use http::header::{ACCEPT, AUTHORIZATION, HOST};
use http::{HeaderValue, StatusCode, Uri};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;

use super::directory::SyncedUser;
use super::store::{Verify, VerifyError};
use crate::config::Secret;

/// Users asked for per page of the User list.
const PAGE_SIZE: usize = 500;
/// A guard against a server that ignores `limit_start` (500 × 2,000 = a million users).
const MAX_PAGES: usize = 2_000;
const WHOAMI_PATH: &str = "/api/method/frappe.auth.get_logged_user";
const USER_FIELDS: &str = r#"["name","enabled","api_key","modified","restrict_ip"]"#;
const USER_FILTERS: &str = r#"[["api_key","is","set"]]"#;
/// Users asked for by name per list call (keeps the URL short: names are e-mail addresses).
const NAMES_PER_CALL: usize = 50;
/// Query values: everything but letters and digits is escaped.
const QUERY: &AsciiSet = NON_ALPHANUMERIC;
/// A user name as one path segment (`@`, `-`, `_` kept readable; `.` escaped).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'@').remove(b'-').remove(b'_');
static SITE_NAME: http::HeaderName = http::HeaderName::from_static("x-frappe-site-name");

/// Why a sync or a user refresh failed. Messages name the cause and never hold a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    #[error("the sync token is not usable in a header (expected api_key:api_secret)")]
    BadToken,
    #[error(
        "Frappe answered 401 to the sync token: check that it is the api_key:api_secret of an enabled user"
    )]
    Unauthorized,
    #[error("Frappe answered 403: the sync user may not read Users (give it the System Manager role)")]
    Forbidden,
    #[error("the User list has no api_key field: the sync user needs the System Manager role")]
    ApiKeyHidden,
    #[error(
        "the User list has no restrict_ip field: the sync user may not read it (give it the System Manager role)"
    )]
    RestrictIpHidden,
    #[error("Frappe answered HTTP {0}")]
    Status(u16),
    #[error("{0}")]
    Transport(String),
    #[error("unexpected answer from Frappe: {0}")]
    BadResponse(String),
    #[error("{0:?} is not a user name that can be looked up")]
    BadName(String),
}

/// Where sync and webhook refreshes read Users (the `FrappeClient`, or a fake in tests).
pub trait UserSource: Send + Sync {
    /// Every User that has an api_key.
    fn list_users<'a>(&'a self, sync_token: &'a Secret) -> BoxFuture<'a, Result<Vec<SyncedUser>, SyncError>>;
    /// One User; `Ok(None)` when Frappe says it does not exist.
    fn get_user<'a>(
        &'a self,
        sync_token: &'a Secret,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<SyncedUser>, SyncError>>;

    /// The Users among `names` that exist (users without an api_key, which the list above
    /// leaves out). One read per name unless the source can do better.
    fn list_named_users<'a>(
        &'a self,
        sync_token: &'a Secret,
        names: &'a [Arc<str>],
    ) -> BoxFuture<'a, Result<Vec<SyncedUser>, SyncError>> {
        Box::pin(async move {
            let mut users = Vec::with_capacity(names.len());
            for name in names {
                users.extend(self.get_user(sync_token, name).await?);
            }
            Ok(users)
        })
    }
}

/// A pooled HTTP client for one Frappe site.
pub struct FrappeClient {
    http: reqwest::Client,
    /// `scheme://host[:port][/prefix]`, without a trailing slash or userinfo.
    base: String,
    host: HeaderValue,
    site_name: Option<HeaderValue>,
    timeout: Duration,
}

impl std::fmt::Debug for FrappeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrappeClient")
            .field("base", &self.base)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl FrappeClient {
    /// A client for `frappe_url` (`[frappe] url`) sending `Host: host` (`upstream.host`) and,
    /// when set, `X-Frappe-Site-Name`. `timeout` (`frappe.verify_timeout`) bounds each call,
    /// connecting included. Fails when the URL has no host or a header value is invalid.
    pub fn new(
        frappe_url: &Uri,
        host: &str,
        site_name: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let base = base_url(frappe_url)?;
        let host =
            HeaderValue::from_str(host).with_context(|| format!("{host:?} is not a valid Host header"))?;
        let site_name = site_name
            .map(|s| {
                HeaderValue::from_str(s).with_context(|| format!("{s:?} is not a valid site name header"))
            })
            .transpose()?;
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("frappe-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client for Frappe")?;
        Ok(FrappeClient { http, base, host, site_name, timeout })
    }

    /// `GET /api/method/frappe.auth.get_logged_user` with the client's own Authorization
    /// header: 200 → the user in `message`; 401 / 403 → `Rejected`; anything else, a timeout
    /// or a connection error → `Unavailable` with a reason (no secret in it).
    pub async fn whoami(&self, authorization: &HeaderValue) -> Result<String, VerifyError> {
        let url = format!("{}{WHOAMI_PATH}", self.base);
        let response = self
            .get(&url, sensitive(authorization.clone()))
            .send()
            .await
            .map_err(|e| VerifyError::Unavailable(self.transport(&e)))?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => return Err(VerifyError::Rejected),
            status => {
                return Err(VerifyError::Unavailable(format!("whoami answered HTTP {}", status.as_u16())))
            }
        }
        let body = response.bytes().await.map_err(|e| VerifyError::Unavailable(self.transport(&e)))?;
        match serde_json::from_slice::<Message>(&body) {
            Ok(Message { message: serde_json::Value::String(user) }) if user == "Guest" => {
                Err(VerifyError::Rejected)
            }
            Ok(Message { message: serde_json::Value::String(user) }) if !user.is_empty() => Ok(user),
            _ => Err(VerifyError::Unavailable("whoami answered 200 without a user in `message`".into())),
        }
    }

    /// Every User with an api_key, `PAGE_SIZE` a page ordered by name, with the sync user's
    /// `api_key:api_secret`. Fails on the first bad page (nothing partial is returned).
    pub async fn list_users(&self, sync_token: &Secret) -> Result<Vec<SyncedUser>, SyncError> {
        let authorization = token_header(sync_token)?;
        let mut users = Vec::new();
        for page in 0..MAX_PAGES {
            let url = self.list_url(USER_FILTERS, page * PAGE_SIZE);
            // A short page is the last; a long one means the server ignored the page size.
            if self.list_page(&url, &authorization, &mut users).await? != PAGE_SIZE {
                return Ok(users);
            }
        }
        Err(SyncError::BadResponse(format!("more than {MAX_PAGES} pages of users")))
    }

    /// The Users among `names` that exist, `NAMES_PER_CALL` names a list call.
    pub async fn list_named_users(
        &self,
        sync_token: &Secret,
        names: &[Arc<str>],
    ) -> Result<Vec<SyncedUser>, SyncError> {
        let authorization = token_header(sync_token)?;
        let mut users = Vec::with_capacity(names.len());
        for chunk in names.chunks(NAMES_PER_CALL) {
            let filters = serde_json::json!([["name", "in", chunk]]).to_string();
            self.list_page(&self.list_url(&filters, 0), &authorization, &mut users).await?;
        }
        Ok(users)
    }

    /// One page of a User list into `users`; returns its number of rows.
    async fn list_page(
        &self,
        url: &str,
        authorization: &HeaderValue,
        users: &mut Vec<SyncedUser>,
    ) -> Result<usize, SyncError> {
        let body = self.fetch(url, authorization).await?.ok_or(SyncError::Status(404))?;
        let rows = serde_json::from_slice::<ListAnswer>(&body).map_err(bad_json)?.data;
        let count = rows.len();
        for row in rows {
            users.push(row.into_synced(true)?);
        }
        Ok(count)
    }

    /// `GET /api/resource/User/NAME` with the sync token: `Ok(None)` on 404.
    pub async fn get_user(&self, sync_token: &Secret, name: &str) -> Result<Option<SyncedUser>, SyncError> {
        if name.is_empty() || name.bytes().all(|b| b == b'.') {
            return Err(SyncError::BadName(name.to_owned()));
        }
        let authorization = token_header(sync_token)?;
        let url = format!("{}/api/resource/User/{}", self.base, utf8_percent_encode(name, SEGMENT));
        let Some(body) = self.fetch(&url, &authorization).await? else {
            return Ok(None);
        };
        let doc = serde_json::from_slice::<DocAnswer>(&body).map_err(bad_json)?.data;
        doc.into_synced(false).map(Some)
    }

    /// `GET /api/resource/User/NAME` with the client's own Authorization header, for a user
    /// the sync user cannot see (Administrator may read itself). 200 → the record; 401 →
    /// `Rejected` (the credentials stopped working since whoami); anything else, a timeout or
    /// an unreadable body → `Unavailable` with a reason (no secret in it).
    pub async fn read_own_user(
        &self,
        authorization: &HeaderValue,
        name: &str,
    ) -> Result<SyncedUser, VerifyError> {
        let unavailable =
            |why: String| VerifyError::Unavailable(format!("reading User {name} as itself: {why}"));
        let url = format!("{}/api/resource/User/{}", self.base, utf8_percent_encode(name, SEGMENT));
        let response = self
            .get(&url, sensitive(authorization.clone()))
            .send()
            .await
            .map_err(|e| unavailable(self.transport(&e)))?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED => return Err(VerifyError::Rejected),
            status => return Err(unavailable(format!("Frappe answered HTTP {}", status.as_u16()))),
        }
        let body = response.bytes().await.map_err(|e| unavailable(self.transport(&e)))?;
        let doc =
            serde_json::from_slice::<DocAnswer>(&body).map_err(|e| unavailable(bad_json(e).to_string()))?;
        let user = doc.data.into_synced(false).map_err(|e| unavailable(e.to_string()))?;
        if &*user.name != name {
            return Err(unavailable(format!("Frappe answered the record of {:?}", user.name)));
        }
        Ok(user)
    }

    fn list_url(&self, filters: &str, start: usize) -> String {
        format!(
            "{}/api/resource/User?fields={}&filters={}&order_by={}&limit_start={start}&limit_page_length={PAGE_SIZE}",
            self.base,
            utf8_percent_encode(USER_FIELDS, QUERY),
            utf8_percent_encode(filters, QUERY),
            utf8_percent_encode("name asc", QUERY),
        )
    }

    /// A GET with the sync token: the body on 200, `None` on 404, an error otherwise.
    async fn fetch(&self, url: &str, authorization: &HeaderValue) -> Result<Option<bytes::Bytes>, SyncError> {
        let response = self
            .get(url, authorization.clone())
            .send()
            .await
            .map_err(|e| SyncError::Transport(self.transport(&e)))?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            StatusCode::UNAUTHORIZED => return Err(SyncError::Unauthorized),
            StatusCode::FORBIDDEN => return Err(SyncError::Forbidden),
            status => return Err(SyncError::Status(status.as_u16())),
        }
        let body = response.bytes().await.map_err(|e| SyncError::Transport(self.transport(&e)))?;
        Ok(Some(body))
    }

    fn get(&self, url: &str, authorization: HeaderValue) -> reqwest::RequestBuilder {
        let request = self
            .http
            .get(url)
            .header(HOST, self.host.clone())
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .header(AUTHORIZATION, authorization);
        match &self.site_name {
            Some(site) => request.header(SITE_NAME.clone(), site.clone()),
            None => request,
        }
    }

    /// A transport failure in words: a timeout, a refused connection... Headers never appear
    /// in reqwest's or hyper's errors, and the URL holds no secret.
    fn transport(&self, e: &reqwest::Error) -> String {
        if e.is_timeout() {
            return format!("Frappe did not answer within {}", humantime::format_duration(self.timeout));
        }
        let mut cause: &dyn std::error::Error = e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        if e.is_connect() {
            format!("cannot connect to Frappe at {}: {cause}", self.base)
        } else {
            format!("request to Frappe failed: {cause}")
        }
    }
}

impl Verify for FrappeClient {
    fn verify<'a>(&'a self, authorization: &'a HeaderValue) -> BoxFuture<'a, Result<String, VerifyError>> {
        Box::pin(self.whoami(authorization))
    }

    fn read_own_user<'a>(
        &'a self,
        authorization: &'a HeaderValue,
        name: &'a str,
    ) -> BoxFuture<'a, Result<SyncedUser, VerifyError>> {
        Box::pin(FrappeClient::read_own_user(self, authorization, name))
    }
}

impl UserSource for FrappeClient {
    fn list_users<'a>(&'a self, sync_token: &'a Secret) -> BoxFuture<'a, Result<Vec<SyncedUser>, SyncError>> {
        Box::pin(FrappeClient::list_users(self, sync_token))
    }

    fn get_user<'a>(
        &'a self,
        sync_token: &'a Secret,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<SyncedUser>, SyncError>> {
        Box::pin(FrappeClient::get_user(self, sync_token, name))
    }

    fn list_named_users<'a>(
        &'a self,
        sync_token: &'a Secret,
        names: &'a [Arc<str>],
    ) -> BoxFuture<'a, Result<Vec<SyncedUser>, SyncError>> {
        Box::pin(FrappeClient::list_named_users(self, sync_token, names))
    }
}

fn base_url(uri: &Uri) -> anyhow::Result<String> {
    let host = uri.host().with_context(|| format!("{uri} has no host"))?;
    let scheme = uri.scheme_str().unwrap_or("http");
    let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
    Ok(format!("{scheme}://{host}{port}{}", uri.path().trim_end_matches('/')))
}

fn sensitive(mut value: HeaderValue) -> HeaderValue {
    value.set_sensitive(true);
    value
}

fn token_header(sync_token: &Secret) -> Result<HeaderValue, SyncError> {
    HeaderValue::from_str(&format!("token {}", sync_token.expose()))
        .map(sensitive)
        .map_err(|_| SyncError::BadToken)
}

/// serde_json's message names the field and position, never a value.
fn bad_json(e: serde_json::Error) -> SyncError {
    SyncError::BadResponse(format!("invalid User JSON: {e}"))
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    message: serde_json::Value,
}

#[derive(Deserialize)]
struct ListAnswer {
    data: Vec<RawUser>,
}

#[derive(Deserialize)]
struct DocAnswer {
    data: RawUser,
}

/// A User row as Frappe sends it: checks are 0/1, `api_key` is absent (not null) when the
/// caller may not see it, and the document API leaves null fields out.
#[derive(Deserialize)]
struct RawUser {
    name: String,
    #[serde(deserialize_with = "check")]
    enabled: bool,
    #[serde(default, deserialize_with = "present")]
    api_key: Option<Option<String>>,
    modified: String,
    #[serde(default, deserialize_with = "present")]
    restrict_ip: Option<Option<String>>,
}

impl RawUser {
    /// `from_list`: a list row carries every field asked for (null when empty), so an absent
    /// one is a field the sync user may not read — keys would look vanished, IP restrictions
    /// lifted. (The document API leaves null fields out: there absent means empty.)
    fn into_synced(self, from_list: bool) -> Result<SyncedUser, SyncError> {
        if from_list && self.api_key.is_none() {
            return Err(SyncError::ApiKeyHidden);
        }
        if from_list && self.restrict_ip.is_none() {
            return Err(SyncError::RestrictIpHidden);
        }
        Ok(SyncedUser {
            name: self.name.into(),
            enabled: self.enabled,
            api_key: non_empty(self.api_key.flatten()),
            modified: self.modified.into(),
            restrict_ip: non_empty(self.restrict_ip.flatten()),
        })
    }
}

fn non_empty(value: Option<String>) -> Option<Arc<str>> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).map(Into::into)
}

/// A Frappe check: 0 / 1 (or a JSON boolean).
fn check<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Bool(b) => Ok(b),
        serde_json::Value::Number(n) => Ok(n.as_f64().is_some_and(|n| n != 0.0)),
        other => Err(serde::de::Error::custom(format!("a check must be 0 or 1, not {other}"))),
    }
}

/// Distinguishes a field that is present (maybe null) from an absent one.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests;
