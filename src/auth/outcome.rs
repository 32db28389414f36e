//! What authentication answers: the `Verify` seam to Frappe and its errors, and the store's
//! verdicts (`Admitted` with its `Outcome`, or a `Rejection`) with their log names, statuses
//! and client messages.

use std::borrow::Cow;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::HeaderValue;

use super::budget::OverBudget;
use super::directory::SyncedUser;
use crate::error::{ErrorKind, GatewayError};
use crate::outcome::AuthOutcome;

/// Asks Frappe whose credentials an `Authorization` header carries (`FrappeClient` in
/// production, fakes in tests).
pub trait Verify: Send + Sync {
    /// `Ok(user)` when Frappe accepts the header; `Rejected` on 401 / 403; `Unavailable` on a
    /// timeout, a refused connection or any other answer.
    fn verify<'a>(&'a self, authorization: &'a HeaderValue) -> BoxFuture<'a, Result<String, VerifyError>>;

    /// The User record `name` read with the client's own `authorization` — for users sync
    /// cannot see (Frappe hides Administrator from everyone else; every user may read their
    /// own record). `Rejected` on 401; `Unavailable` on anything else that is not the record.
    /// The default fails closed: a verifier that cannot read it never admits such a user.
    fn read_own_user<'a>(
        &'a self,
        authorization: &'a HeaderValue,
        name: &'a str,
    ) -> BoxFuture<'a, Result<SyncedUser, VerifyError>> {
        let _ = authorization;
        Box::pin(async move { Err(VerifyError::Unavailable(format!("cannot read the User {name:?}"))) })
    }
}

/// Why a verification gave no user. The reason in `Unavailable` never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("Frappe refused the credentials")]
    Rejected,
    #[error("{0}")]
    Unavailable(String),
}

/// How an admitted request's credentials were checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Found in the cache, digest equal, fresh.
    Hit,
    /// Verified against Frappe just now (or by a concurrent request's call).
    MissVerified,
    /// Frappe is unreachable; the credential was verified within `stale_if_error`.
    Stale,
}

impl Outcome {
    /// For the access log and metrics.
    pub(crate) fn outcome(self) -> AuthOutcome {
        match self {
            Outcome::Hit => AuthOutcome::Hit,
            Outcome::MissVerified => AuthOutcome::MissVerified,
            Outcome::Stale => AuthOutcome::Stale,
        }
    }
}

/// A request whose credentials are valid: forward it as `user`.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub user: Arc<str>,
    /// Lowercased api_key, or `bearer:<digest prefix>` for a bearer token (never the token).
    pub api_key: Arc<str>,
    pub outcome: Outcome,
    /// The user's raw `restrict_ip` as sync last saw it; `None` when empty or not synced.
    pub restrict_ip: Option<Arc<str>>,
}

/// Why credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Frappe answered 401 / 403 to these credentials just now.
    WrongCredentials,
    /// Frappe refused the same credentials within `negative_ttl`; Frappe was not asked.
    NegativeHit,
    /// Valid credentials of a user sync reports as disabled (Frappe 15.0–15.53 would accept them).
    Disabled,
    /// Frappe could not be asked (timeout, refused, 5xx); nothing cached. The reason is for logs.
    Unavailable(String),
    /// An unknown credential while the verification budget is spent; Frappe was not asked,
    /// nothing cached, and it is not the client's failure (no lockout).
    OverBudget(OverBudget),
    /// Valid credentials of Administrator while `auth.allow_administrator` is false (403).
    Administrator,
}

impl Rejection {
    /// For the access log and metrics.
    pub(crate) fn outcome(&self) -> AuthOutcome {
        match self {
            Rejection::WrongCredentials => AuthOutcome::Rejected,
            Rejection::NegativeHit => AuthOutcome::NegativeHit,
            Rejection::Disabled => AuthOutcome::Disabled,
            Rejection::Unavailable(_) => AuthOutcome::Unavailable,
            Rejection::OverBudget(_) => AuthOutcome::OverBudget,
            Rejection::Administrator => AuthOutcome::Administrator,
        }
    }

    /// 401; 503 for `Unavailable` and `OverBudget`; 403 for `Administrator`.
    pub fn error_kind(&self) -> ErrorKind {
        match self {
            Rejection::Unavailable(_) | Rejection::OverBudget(_) => ErrorKind::Unavailable,
            Rejection::Administrator => ErrorKind::Forbidden,
            _ => ErrorKind::Unauthorized,
        }
    }

    /// False for refusals that say nothing bad about the client's credentials: Frappe could
    /// not be asked, or the credentials are valid but barred by policy (Administrator; its
    /// owner would only lock out their own address). Those never count towards the lockout.
    pub fn counts_as_failure(&self) -> bool {
        !matches!(self, Rejection::Unavailable(_) | Rejection::OverBudget(_) | Rejection::Administrator)
    }

    /// `Retry-After` for the client: set when over budget.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Rejection::OverBudget(over) => Some(over.retry_after()),
            _ => None,
        }
    }

    /// What the client is told. A negative hit reads like any refusal.
    pub fn message(&self) -> &'static str {
        match self {
            Rejection::WrongCredentials | Rejection::NegativeHit => {
                "invalid credentials: Frappe does not accept this api_key and api_secret (or bearer token)"
            }
            Rejection::Disabled => "this user is disabled in Frappe",
            Rejection::Unavailable(_) => "authentication backend unavailable; try again later",
            Rejection::OverBudget(_) => "too many new credentials to verify right now; retry shortly",
            Rejection::Administrator => "the Administrator account cannot be used through the API gateway",
        }
    }

    /// The operator-facing reason (includes why Frappe was unavailable).
    pub fn reason(&self) -> Cow<'static, str> {
        match self {
            Rejection::Unavailable(why) => format!("credential check unavailable: {why}").into(),
            Rejection::OverBudget(over) => format!("verification budget exhausted: {over}").into(),
            Rejection::Administrator => {
                "Administrator's credentials are refused (auth.allow_administrator = false)".into()
            }
            other => other.outcome().as_str().into(),
        }
    }
}

impl From<Rejection> for GatewayError {
    fn from(r: Rejection) -> Self {
        let err = GatewayError::new(r.error_kind(), r.message()).with_reason(r.reason());
        match r.retry_after() {
            Some(after) => err.with_retry_after(after),
            None => err,
        }
    }
}
