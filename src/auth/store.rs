//! The credential store: verified credentials cached per api_key (moka), refused ones cached
//! per digest, one Frappe call per concurrent miss, stale-if-error, and revocation by sync and
//! webhooks (DESIGN.md "The credential store").
//!
//! A verification that would call Frappe first takes a permit from the verification budget
//! ([`VerifyBudget`], `frappe.max_verify_concurrency` / `max_verify_rate`); without one it is
//! refused (503, nothing cached, stale entries still served). Hits never touch the budget.
//!
//! Users sync cannot see ([`HIDDEN_FROM_SYNC`]: Frappe hides Administrator from every other
//! user) are refused when `auth.allow_administrator` is false, cached as refused like any
//! verified credential; when true, their record is read with their own credentials at each
//! verification and the entry carries its `enabled` and `restrict_ip`.
//!
//! Only keyed digests are kept, never a secret. The hit path is one moka lookup, one HMAC, one
//! constant-time compare and one short read lock; nothing is held across an await.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::HeaderValue;
use moka::future::Cache;

use super::budget::{OverBudget, VerifyBudget};
use super::digest::{Digest, Digester};
use super::directory::{lowercase_key, Changes, Directory, SyncedUser, View};
use super::frappe::UserSource;
use super::header::Credential;
pub use super::outcome::{Admitted, Outcome, Rejection, Verify, VerifyError};
use crate::config::{AuthConfig, Secret};

/// A verified credential: 64 bytes, 100,000 of them cached at most by default.
#[derive(Debug, Clone)]
struct Entry {
    /// Lowercased api_key, or the bearer label.
    key: Arc<str>,
    user: Arc<str>,
    digest: Digest,
    /// When its verification *started*, so a revocation that raced the call still kills it.
    verified: Stamp,
    standing: Standing,
}

/// An `Instant` in 8 bytes instead of 16: nanoseconds since the first one taken (584 years).
#[derive(Debug, Clone, Copy)]
struct Stamp(u64);

impl Stamp {
    fn epoch() -> Instant {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        *EPOCH.get_or_init(Instant::now)
    }

    fn of(at: Instant) -> Self {
        let nanos = at.saturating_duration_since(Self::epoch()).as_nanos();
        Stamp(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    fn instant(self) -> Instant {
        Self::epoch() + Duration::from_nanos(self.0)
    }
}

/// Where a verified credential's user policy (enabled, restrict_ip) comes from. One word:
/// the rare users sync cannot see are behind a pointer rather than widen every cached entry.
#[derive(Debug, Clone)]
enum Standing {
    /// An ordinary user: sync (the directory) reports its state.
    Synced,
    /// A user sync cannot see ([`HIDDEN_FROM_SYNC`]).
    Hidden(Arc<Hidden>),
}

#[derive(Debug)]
enum Hidden {
    /// Read with its own credentials when the credential was verified.
    SelfRead { enabled: bool, restrict_ip: Option<Arc<str>> },
    /// Administrator while `auth.allow_administrator` is false: refused on every use, but
    /// cached like a valid credential so it costs Frappe no further call until it expires.
    Barred,
}

/// Users Frappe hides from the sync user's list and documents (a System Manager gets 403 on
/// `User/Administrator`): their state is read by themselves at verification instead. Guest
/// needs no entry: whoami answering Guest is a refusal.
pub const HIDDEN_FROM_SYNC: &[&str] = &["Administrator"];

/// True for a user sync cannot see (see [`HIDDEN_FROM_SYNC`]).
pub fn hidden_from_sync(user: &str) -> bool {
    HIDDEN_FROM_SYNC.contains(&user)
}

impl Entry {
    /// A bearer token's entry: its key is the token's label. An api_key never has a `:` (the
    /// header parser refuses one), so it can never pass for a label; no flag is stored.
    fn bearer(&self) -> bool {
        self.key.starts_with(BEARER_LABEL_PREFIX)
    }

    fn api_key(&self) -> Option<&str> {
        (!self.bearer()).then_some(&*self.key)
    }

    fn verified_at(&self) -> Instant {
        self.verified.instant()
    }
}

/// A credential Frappe refused, by digest.
#[derive(Debug, Clone)]
struct Refused {
    key: Arc<str>,
    at: Instant,
}

/// Flight outcomes shared by every request waiting on the same verification.
#[derive(Debug, Clone)]
enum FlightError {
    Rejected,
    Negative,
    Unavailable(String),
    /// The verification budget had no room; Frappe was not asked.
    OverBudget(OverBudget),
}

enum Judgement {
    Fresh(View),
    /// Older than `cache_ttl`: verify again; may serve stale if Frappe is down.
    Expired(View),
    Disabled,
    /// Revoked, changed, or past every window: verify again, never serve stale.
    Dead,
}

/// The lookup form of one credential.
struct Probe<'a> {
    key: Cow<'a, str>,
    digest: Digest,
    bearer: bool,
}

/// `Instant::now()`, which tests can move forward (moka's own expiry only frees memory;
/// every window is enforced against this clock).
#[derive(Clone, Default)]
struct Clock {
    skew_nanos: Arc<AtomicU64>,
}

impl Clock {
    fn now(&self) -> Instant {
        Instant::now() + Duration::from_nanos(self.skew_nanos.load(Ordering::Relaxed))
    }

    #[cfg(test)]
    fn advance(&self, by: Duration) {
        self.skew_nanos.fetch_add(by.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Verified and refused credentials, bounded by `auth.cache_capacity` each.
pub struct CredentialStore {
    /// A sync cache without expiry or invalidation closures: each of those keeps a queue node
    /// per entry (~33 B of RSS per credential); expiry is enforced by `judge` and memory freed
    /// by [`Self::sweep_if_due`], revocations by marks then [`Self::drop_entries`].
    positive: moka::sync::Cache<Arc<str>, Entry>,
    negative: Cache<Digest, Refused>,
    /// `max(cache_ttl, stale_if_error)`: an entry older than this serves no window.
    keep: Duration,
    /// When entries older than `keep` were last swept out (a [`Stamp`]).
    swept: AtomicU64,
    /// Verifications in progress only: a flight leaves as soon as it lands.
    flights: flight::Flights,
    directory: Arc<Directory>,
    digester: Digester,
    verifier: Arc<dyn Verify>,
    cache_ttl: Duration,
    negative_ttl: Duration,
    stale_if_error: Duration,
    allow_administrator: bool,
    /// `None`: unbounded (tests and benches; production always sets one).
    budget: Option<VerifyBudget>,
    clock: Clock,
    /// Calls made to the verifier (Frappe's whoami), for metrics and the status page.
    verify_calls: AtomicU64,
    /// Reads a user sync does not know yet (with the sync token); `None` without sync.
    user_reader: Option<UserReader>,
}

/// Sync's source and token, for reading one user outside the periodic sync.
struct UserReader {
    source: Arc<dyn UserSource>,
    token: Secret,
}

impl fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialStore").field("entries", &self.len()).finish_non_exhaustive()
    }
}

/// Label length of a bearer token's digest (8 bytes, 16 hex digits).
const BEARER_LABEL_BYTES: usize = 8;
/// How a bearer token's label begins (an api_key cannot contain the `:`).
const BEARER_LABEL_PREFIX: &str = "bearer:";

impl CredentialStore {
    /// An empty store: `cache_capacity` entries, fresh for `cache_ttl`, kept for
    /// `max(cache_ttl, stale_if_error)`; refusals kept for `negative_ttl`. A random HMAC key is
    /// drawn here. `verifier` is asked on every miss.
    pub fn new(cfg: &AuthConfig, verifier: Arc<dyn Verify>) -> Self {
        let keep = cfg.cache_ttl.max(cfg.stale_if_error).max(Duration::from_secs(1));
        // Fixed before any verification starts, so every start is stamped exactly.
        Stamp::epoch();
        CredentialStore {
            positive: moka::sync::Cache::builder()
                .name("credentials")
                .max_capacity(cfg.cache_capacity)
                .build(),
            negative: Cache::builder()
                .name("refused-credentials")
                .max_capacity(cfg.cache_capacity)
                .time_to_live(cfg.negative_ttl.max(Duration::from_millis(1)))
                .support_invalidation_closures()
                .build(),
            keep,
            swept: AtomicU64::new(0),
            flights: flight::Flights::default(),
            directory: Arc::new(Directory::new(keep)),
            digester: Digester::random(),
            verifier,
            cache_ttl: cfg.cache_ttl,
            negative_ttl: cfg.negative_ttl,
            stale_if_error: cfg.stale_if_error,
            allow_administrator: cfg.allow_administrator,
            budget: None,
            clock: Clock::default(),
            verify_calls: AtomicU64::new(0),
            user_reader: None,
        }
    }

    /// With sync on: a credential verified for a user sync does not know yet (an OAuth-only
    /// user, who has no api_key and so is not in sync's list; a key generated since the last
    /// sync) has its user read at once with the sync token, so its `enabled` and
    /// `restrict_ip` apply from the first request and sync follows it from then on.
    pub fn with_user_reader(mut self, source: Arc<dyn UserSource>, token: Secret) -> Self {
        self.user_reader = Some(UserReader { source, token });
        self
    }

    /// Bounds the calls to Frappe that cache misses may make (see [`VerifyBudget`]).
    pub fn with_budget(mut self, budget: VerifyBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// `auth.allow_administrator`: whether Administrator's credentials may be used at all.
    pub fn administrator_allowed(&self) -> bool {
        self.allow_administrator
    }

    /// Verifications the budget refused since start (0 without a budget).
    pub fn budget_refusals(&self) -> u64 {
        self.budget.as_ref().map_or(0, VerifyBudget::refused)
    }

    /// Checks parsed credentials; `authorization` is the raw header, sent to Frappe as is on a
    /// miss. A refusal is never cached except a Frappe 401/403 (for `negative_ttl`).
    pub async fn authenticate(
        &self,
        credential: &Credential<'_>,
        authorization: &HeaderValue,
    ) -> Result<Admitted, Rejection> {
        let probe = self.probe(credential);
        let now = self.clock.now();
        let mut stale = None;
        if let Some(entry) = self.cached(&probe).await {
            match self.judge(&entry, now) {
                Judgement::Fresh(view) => return admit(entry, Outcome::Hit, view),
                Judgement::Disabled => return Err(Rejection::Disabled),
                Judgement::Expired(_) => stale = Some(entry),
                Judgement::Dead => {}
            }
        }
        // Boxed: the Frappe call's future is large, and every request's future (hits too)
        // would otherwise carry its size.
        Box::pin(self.authenticate_miss(probe, authorization, stale, now)).await
    }

    /// A credential not (or no longer) fresh in the cache: the refusal cache, then Frappe.
    async fn authenticate_miss(
        &self,
        probe: Probe<'_>,
        authorization: &HeaderValue,
        stale: Option<Entry>,
        now: Instant,
    ) -> Result<Admitted, Rejection> {
        if self.refused(&probe.digest, now).await {
            return Err(Rejection::NegativeHit);
        }
        match self.verify_once(&probe, authorization).await {
            Ok(entry) => self.admit_verified(entry),
            Err(FlightError::Negative) => Err(Rejection::NegativeHit),
            Err(FlightError::Rejected) => Err(Rejection::WrongCredentials),
            Err(FlightError::Unavailable(why)) => self.serve_stale(stale, Rejection::Unavailable(why)),
            // Over budget is "cannot verify now" too: a credential verified recently keeps
            // working rather than suffer for someone else's flood of new keys.
            Err(FlightError::OverBudget(over)) => self.serve_stale(stale, Rejection::OverBudget(over)),
        }
    }

    /// The admission for a credential fresh in the cache, decided without any I/O — exactly
    /// what [`authenticate`](Self::authenticate) answers for it. `None` for every other case
    /// (a miss, expired, refused, disabled or revoked): `authenticate` decides those.
    pub async fn fresh_hit(&self, credential: &Credential<'_>) -> Option<Admitted> {
        let probe = self.probe(credential);
        let entry = self.cached(&probe).await?;
        match self.judge(&entry, self.clock.now()) {
            Judgement::Fresh(view) => admit(entry, Outcome::Hit, view).ok(),
            _ => None,
        }
    }

    /// The store's clock.
    pub(crate) fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Calls made to Frappe to verify a credential since start (joined requests share one).
    pub fn verify_calls(&self) -> u64 {
        self.verify_calls.load(Ordering::Relaxed)
    }

    /// The number of cached valid credentials, exact as of now: moka applies inserts and
    /// removals lazily, so its count is brought up to date first (for metrics and status).
    pub async fn entries(&self) -> u64 {
        self.positive.run_pending_tasks();
        self.positive.entry_count()
    }

    /// Approximate number of cached valid credentials (may lag behind; see [`Self::entries`]).
    pub fn len(&self) -> u64 {
        self.positive.entry_count()
    }

    /// True when no valid credential is cached (approximate, like `len`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of users the last sync or refresh reported.
    pub fn synced_users(&self) -> usize {
        self.directory.synced_users()
    }

    fn probe<'a>(&self, credential: &'a Credential<'_>) -> Probe<'a> {
        match credential {
            Credential::ApiKey { key, secret } => {
                let key = lowercase_key(key);
                let digest = self.digester.api_key(&key, secret);
                Probe { key, digest, bearer: false }
            }
            Credential::Bearer(token) => {
                let digest = self.digester.bearer(token);
                let key = format!("{BEARER_LABEL_PREFIX}{}", digest.short_hex(BEARER_LABEL_BYTES));
                Probe { key: Cow::Owned(key), digest, bearer: true }
            }
        }
    }

    /// The cached entry for the probe's key when its digest is equal (constant time).
    async fn cached(&self, probe: &Probe<'_>) -> Option<Entry> {
        self.positive.get(probe.key.as_ref()).filter(|e| e.digest.ct_eq(&probe.digest))
    }

    fn judge(&self, entry: &Entry, now: Instant) -> Judgement {
        let view = self.directory.view(&entry.user, entry.api_key(), entry.verified_at());
        if view.disabled {
            return Judgement::Disabled;
        }
        if view.revoked {
            return Judgement::Dead;
        }
        let age = now.saturating_duration_since(entry.verified_at());
        if age < self.cache_ttl {
            Judgement::Fresh(view)
        } else if age < self.stale_if_error {
            Judgement::Expired(view)
        } else {
            Judgement::Dead
        }
    }

    async fn refused(&self, digest: &Digest, now: Instant) -> bool {
        self.negative
            .get(digest)
            .await
            .is_some_and(|r| now.saturating_duration_since(r.at) < self.negative_ttl)
    }

    fn admit_verified(&self, entry: Entry) -> Result<Admitted, Rejection> {
        let view = self.directory.view(&entry.user, entry.api_key(), entry.verified_at());
        if view.disabled {
            return Err(Rejection::Disabled);
        }
        admit(entry, Outcome::MissVerified, view)
    }

    /// Frappe cannot be asked now (unreachable, or the budget is spent): an entry verified
    /// within `stale_if_error`, never revoked since, still admits; otherwise `refusal`.
    fn serve_stale(&self, stale: Option<Entry>, refusal: Rejection) -> Result<Admitted, Rejection> {
        let Some(entry) = stale else {
            return Err(refusal);
        };
        // A bearer token's revocation or expiry touches no User record: no sync or webhook
        // would tell, so a token is never served past `cache_ttl` unverified.
        if entry.bearer() {
            return Err(refusal);
        }
        match self.judge(&entry, self.clock.now()) {
            Judgement::Fresh(view) | Judgement::Expired(view) => {
                tracing::debug!(api_key = %entry.key, reason = %refusal.reason(), "cannot verify now: admitting a stale credential");
                admit(entry, Outcome::Stale, view)
            }
            Judgement::Disabled => Err(Rejection::Disabled),
            Judgement::Dead => Err(refusal),
        }
    }
}

/// The verdict on a live entry: admitted with the restrict_ip that applies, or refused for
/// what it was cached as (barred Administrator, disabled per its own record).
fn admit(entry: Entry, outcome: Outcome, view: View) -> Result<Admitted, Rejection> {
    let restrict_ip = match entry.standing {
        Standing::Synced => view.restrict_ip,
        Standing::Hidden(hidden) => match &*hidden {
            Hidden::Barred => return Err(Rejection::Administrator),
            Hidden::SelfRead { enabled: false, .. } => return Err(Rejection::Disabled),
            // Sync's record wins if it has one (the sync user is Administrator itself); a
            // change there bumps `modified`, which kills this entry anyway.
            Hidden::SelfRead { restrict_ip, .. } => view.restrict_ip.or_else(|| restrict_ip.clone()),
        },
    };
    Ok(Admitted { user: entry.user, api_key: entry.key, outcome, restrict_ip })
}

mod changes;
mod flight;
#[cfg(test)]
mod tests;
