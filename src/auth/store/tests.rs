//! Store behaviour against a fake Frappe that counts whoami calls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use http::header::HeaderName;
use tokio::sync::Semaphore;

use super::*;
use crate::auth::budget::{OverBudget, VerifyBudget};
use crate::auth::header::parse;
use crate::error::ErrorKind;

const KEY: &str = "0a1b2c3d4e5f607";
const SECRET: &str = "s3cr3tvalue0001";
const USER: &str = "api.user@example.com";

/// A whoami endpoint: keys (lowercase) → (secret, user), bearer tokens → user.
struct FakeFrappe {
    calls: AtomicUsize,
    keys: Mutex<HashMap<String, (String, String)>>,
    bearers: Mutex<HashMap<String, String>>,
    down: AtomicBool,
    gate: Semaphore,
    /// User records a user may read about itself (Administrator), and how often they were.
    own: Mutex<HashMap<String, SyncedUser>>,
    own_reads: AtomicUsize,
}

impl FakeFrappe {
    fn new() -> Arc<Self> {
        Self::gated(Semaphore::MAX_PERMITS)
    }

    /// Each call takes a permit first: `gated(0)` holds every call until the test adds some.
    fn gated(permits: usize) -> Arc<Self> {
        let fake = FakeFrappe {
            calls: AtomicUsize::new(0),
            keys: Mutex::default(),
            bearers: Mutex::default(),
            down: AtomicBool::new(false),
            gate: Semaphore::new(permits),
            own: Mutex::default(),
            own_reads: AtomicUsize::new(0),
        };
        fake.set_key(KEY, SECRET, USER);
        Arc::new(fake)
    }

    fn set_key(&self, key: &str, secret: &str, user: &str) {
        self.keys.lock().unwrap().insert(key.to_ascii_lowercase(), (secret.into(), user.into()));
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn answer(&self, authorization: &HeaderValue) -> Result<String, VerifyError> {
        match parse(Some(authorization)) {
            Ok(Credential::ApiKey { key, secret }) => {
                let keys = self.keys.lock().unwrap();
                match keys.get(&key.to_ascii_lowercase()) {
                    Some((s, user)) if *s == secret => Ok(user.clone()),
                    _ => Err(VerifyError::Rejected),
                }
            }
            Ok(Credential::Bearer(token)) => {
                self.bearers.lock().unwrap().get(token.as_ref()).cloned().ok_or(VerifyError::Rejected)
            }
            Err(_) => Err(VerifyError::Rejected),
        }
    }
}

impl Verify for FakeFrappe {
    fn verify<'a>(&'a self, authorization: &'a HeaderValue) -> BoxFuture<'a, Result<String, VerifyError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let _permit = self.gate.acquire().await.expect("gate open");
            if self.down.load(Ordering::SeqCst) {
                return Err(VerifyError::Unavailable("connection refused".into()));
            }
            self.answer(authorization)
        })
    }

    fn read_own_user<'a>(
        &'a self,
        _: &'a HeaderValue,
        name: &'a str,
    ) -> BoxFuture<'a, Result<SyncedUser, VerifyError>> {
        Box::pin(async move {
            self.own_reads.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(VerifyError::Unavailable("connection refused".into()));
            }
            let record = self.own.lock().unwrap().get(name).cloned();
            record.ok_or_else(|| VerifyError::Unavailable("Frappe answered HTTP 403".into()))
        })
    }
}

fn config(ttl: u64, negative: u64, stale: u64) -> AuthConfig {
    AuthConfig {
        user_header: HeaderName::from_static("x-frappe-user"),
        forward_authorization: true,
        cache_capacity: 10_000,
        cache_ttl: Duration::from_secs(ttl),
        negative_ttl: Duration::from_secs(negative),
        stale_if_error: Duration::from_secs(stale),
        allow_administrator: false,
    }
}

fn store_with(fake: &Arc<FakeFrappe>, cfg: AuthConfig) -> Arc<CredentialStore> {
    Arc::new(CredentialStore::new(&cfg, fake.clone()))
}

fn store(fake: &Arc<FakeFrappe>) -> Arc<CredentialStore> {
    store_with(fake, config(600, 30, 600))
}

fn header(key: &str, secret: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("token {key}:{secret}")).unwrap()
}

async fn auth(store: &CredentialStore, value: &HeaderValue) -> Result<Admitted, Rejection> {
    let credential = parse(Some(value)).expect("well-formed header");
    store.authenticate(&credential, value).await
}

fn synced(name: &str, key: &str, modified: &str, enabled: bool) -> SyncedUser {
    SyncedUser {
        name: name.into(),
        enabled,
        api_key: Some(key.into()),
        modified: modified.into(),
        restrict_ip: Some("10.1.2.3".into()),
    }
}

#[tokio::test]
async fn miss_then_hit() {
    let fake = FakeFrappe::new();
    let store = store(&fake);
    let first = auth(&store, &header(KEY, SECRET)).await.unwrap();
    assert_eq!((first.outcome, &*first.user, &*first.api_key), (Outcome::MissVerified, USER, KEY));
    let second = auth(&store, &header(KEY, SECRET)).await.unwrap();
    assert_eq!(second.outcome, Outcome::Hit);
    assert_eq!(fake.calls(), 1);
    // The key is matched case-insensitively, like Frappe's database; the log key is lowercase.
    let upper = auth(&store, &header(&KEY.to_uppercase(), SECRET)).await.unwrap();
    assert_eq!((upper.outcome, &*upper.api_key), (Outcome::Hit, KEY));
    assert_eq!(fake.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_make_one_call() {
    let fake = FakeFrappe::gated(0);
    let store = store(&fake);
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { auth(&store, &header(KEY, SECRET)).await })
        })
        .collect();
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    fake.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    for task in tasks {
        assert_eq!(&*task.await.unwrap().unwrap().user, USER);
    }
    assert_eq!(fake.calls(), 1);
    assert_eq!(store.flights.in_air(), 0, "a landed flight leaves at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_request_flies_a_cancelled_flight_on() {
    let fake = FakeFrappe::gated(0);
    let store = store(&fake);
    let spawn = || {
        let store = store.clone();
        tokio::spawn(async move { auth(&store, &header(KEY, SECRET)).await })
    };
    let first = spawn();
    while fake.calls() == 0 {
        tokio::task::yield_now().await;
    }
    let joined = spawn();
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert_eq!(store.flights.in_air(), 1);
    // The request flying it goes away (its client hung up): the joined one asks Frappe itself.
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    fake.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    assert_eq!(joined.await.unwrap().unwrap().outcome, Outcome::MissVerified);
    assert_eq!(fake.calls(), 2);
    assert_eq!(store.flights.in_air(), 0);
    // A flight whose every passenger is cancelled leaves too.
    let fake = FakeFrappe::gated(0);
    let store = store_with(&fake, config(600, 30, 600));
    let alone = {
        let store = store.clone();
        tokio::spawn(async move { auth(&store, &header(KEY, SECRET)).await })
    };
    while fake.calls() == 0 {
        tokio::task::yield_now().await;
    }
    alone.abort();
    let _ = alone.await;
    assert_eq!(store.flights.in_air(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_wrong_secrets_make_one_call() {
    let fake = FakeFrappe::gated(0);
    let store = store(&fake);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { auth(&store, &header(KEY, "wrongsecret1234")).await })
        })
        .collect();
    fake.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    for task in tasks {
        let rejection = task.await.unwrap().unwrap_err();
        assert!(matches!(rejection, Rejection::WrongCredentials | Rejection::NegativeHit), "{rejection:?}");
    }
    assert_eq!(fake.calls(), 1);
}

#[tokio::test]
async fn wrong_secret_is_asked_once_per_negative_ttl() {
    let fake = FakeFrappe::new();
    let store = store(&fake);
    let wrong = header(KEY, "wrongsecret1234");
    assert_eq!(auth(&store, &wrong).await.unwrap_err(), Rejection::WrongCredentials);
    for _ in 0..99 {
        assert_eq!(auth(&store, &wrong).await.unwrap_err(), Rejection::NegativeHit);
    }
    assert_eq!(fake.calls(), 1);
    store.clock.advance(Duration::from_secs(31));
    assert_eq!(auth(&store, &wrong).await.unwrap_err(), Rejection::WrongCredentials);
    assert_eq!(fake.calls(), 2);
    // The right secret is unaffected by the refusals of a wrong one.
    assert!(auth(&store, &header(KEY, SECRET)).await.is_ok());
}

#[tokio::test]
async fn unavailable_is_not_cached() {
    let fake = FakeFrappe::new();
    let store = store(&fake);
    fake.down.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        let rejection = auth(&store, &header(KEY, SECRET)).await.unwrap_err();
        assert_eq!(rejection, Rejection::Unavailable("connection refused".into()));
        assert_eq!(rejection.error_kind(), ErrorKind::Unavailable);
    }
    assert_eq!(fake.calls(), 2);
    fake.down.store(false, Ordering::SeqCst);
    assert_eq!(auth(&store, &header(KEY, SECRET)).await.unwrap().outcome, Outcome::MissVerified);
}

#[tokio::test]
async fn expired_entries_are_verified_again() {
    let fake = FakeFrappe::new();
    let store = store_with(&fake, config(60, 30, 600));
    auth(&store, &header(KEY, SECRET)).await.unwrap();
    store.clock.advance(Duration::from_secs(61));
    assert_eq!(auth(&store, &header(KEY, SECRET)).await.unwrap().outcome, Outcome::MissVerified);
    assert_eq!(fake.calls(), 2);
}

#[tokio::test]
async fn stale_if_error_within_the_window_only() {
    let fake = FakeFrappe::new();
    let store = store_with(&fake, config(60, 30, 600));
    auth(&store, &header(KEY, SECRET)).await.unwrap();
    fake.down.store(true, Ordering::SeqCst);
    store.clock.advance(Duration::from_secs(120));
    assert_eq!(auth(&store, &header(KEY, SECRET)).await.unwrap().outcome, Outcome::Stale);
    // Another secret for the same key is never served stale.
    assert!(matches!(auth(&store, &header(KEY, "othersecret0000")).await, Err(Rejection::Unavailable(_))));
    store.clock.advance(Duration::from_secs(500));
    assert!(matches!(auth(&store, &header(KEY, SECRET)).await, Err(Rejection::Unavailable(_))));
}

#[tokio::test]
async fn stale_never_outlives_a_revocation() {
    let fake = FakeFrappe::new();
    let store = store_with(&fake, config(60, 30, 600));
    auth(&store, &header(KEY, SECRET)).await.unwrap();
    fake.down.store(true, Ordering::SeqCst);
    store.clock.advance(Duration::from_secs(120));
    store.revoke_user(USER);
    assert!(matches!(auth(&store, &header(KEY, SECRET)).await, Err(Rejection::Unavailable(_))));
    // Even while still fresh: a revoked credential is verified again, and Frappe is down.
    fake.down.store(false, Ordering::SeqCst);
    auth(&store, &header(KEY, SECRET)).await.unwrap();
    store.revoke_key(&KEY.to_uppercase());
    fake.down.store(true, Ordering::SeqCst);
    assert!(matches!(auth(&store, &header(KEY, SECRET)).await, Err(Rejection::Unavailable(_))));
}

#[tokio::test]
async fn revocation_forces_a_new_verification() {
    let fake = FakeFrappe::new();
    let store = store(&fake);
    auth(&store, &header(KEY, SECRET)).await.unwrap();
    store.revoke_user(USER);
    store.clock.advance(Duration::from_millis(1));
    assert_eq!(auth(&store, &header(KEY, SECRET)).await.unwrap().outcome, Outcome::MissVerified);
    assert_eq!(auth(&store, &header(KEY, SECRET)).await.unwrap().outcome, Outcome::Hit);
    assert_eq!(fake.calls(), 2);
}

#[tokio::test]
async fn sync_disabled_user_is_refused_though_frappe_accepts() {
    let fake = FakeFrappe::new();
    let store = store(&fake);
    store.apply_sync(&[synced(USER, KEY, "m1", true)]);
    store.clock.advance(Duration::from_millis(1));
    let admitted = auth(&store, &header(KEY, SECRET)).await.unwrap();
    assert_eq!(admitted.restrict_ip.as_deref(), Some("10.1.2.3"));
    store.apply_sync(&[synced(USER, KEY, "m2", false)]);
    // Cached: refused without a call. Frappe 15.44 would still say 200 (transcript 05a).
    assert_eq!(auth(&store, &header(KEY, SECRET)).await.unwrap_err(), Rejection::Disabled);
    store.clock.advance(Duration::from_millis(1));
    assert_eq!(auth(&store, &header(KEY, SECRET)).await.unwrap_err(), Rejection::Disabled);
    assert_eq!(auth(&store, &header(KEY, SECRET)).await.unwrap_err(), Rejection::Disabled);
    assert!(fake.calls() <= 2, "{} calls", fake.calls());
    // A wrong secret for a disabled user's key says nothing about the user.
    assert_eq!(auth(&store, &header(KEY, "wrongsecret1234")).await.unwrap_err(), Rejection::WrongCredentials);
    // Enabled again.
    store.apply_sync(&[synced(USER, KEY, "m3", true)]);
    store.clock.advance(Duration::from_millis(1));
    assert!(auth(&store, &header(KEY, SECRET)).await.is_ok());
}

#[tokio::test]
async fn modified_change_means_verify_again() {
    let fake = FakeFrappe::new();
    let store = store(&fake);
    store.apply_sync(&[synced(USER, KEY, "m1", true)]);
    store.clock.advance(Duration::from_millis(1));
    auth(&store, &header(KEY, SECRET)).await.unwrap();
    store.apply_sync(&[synced(USER, KEY, "m1", true)]);
    assert_eq!(auth(&store, &header(KEY, SECRET)).await.unwrap().outcome, Outcome::Hit);
    store.apply_sync(&[synced(USER, KEY, "m2", true)]);
    store.clock.advance(Duration::from_millis(1));
    assert_eq!(auth(&store, &header(KEY, SECRET)).await.unwrap().outcome, Outcome::MissVerified);
    assert_eq!(fake.calls(), 2);
}

#[tokio::test]
async fn vanished_key_means_verify_again() {
    let fake = FakeFrappe::new();
    let store = store(&fake);
    store.apply_sync(&[synced(USER, KEY, "m1", true)]);
    store.clock.advance(Duration::from_millis(1));
    auth(&store, &header(KEY, SECRET)).await.unwrap();
    fake.keys.lock().unwrap().clear();
    store.apply_sync(&[]);
    assert_eq!(auth(&store, &header(KEY, SECRET)).await.unwrap_err(), Rejection::WrongCredentials);
}

#[tokio::test]
async fn regenerated_secret_old_refused_new_admitted() {
    let fake = FakeFrappe::new();
    let store = store(&fake);
    store.apply_sync(&[synced(USER, KEY, "m1", true)]);
    store.clock.advance(Duration::from_millis(1));
    auth(&store, &header(KEY, SECRET)).await.unwrap();
    // Generate Keys: same api_key, new secret, new `modified` (transcripts 05d / 05e).
    fake.set_key(KEY, "newsecret000001", USER);
    store.apply_sync(&[synced(USER, KEY, "m2", true)]);
    store.clock.advance(Duration::from_millis(1));
    assert_eq!(auth(&store, &header(KEY, SECRET)).await.unwrap_err(), Rejection::WrongCredentials);
    assert_eq!(auth(&store, &header(KEY, "newsecret000001")).await.unwrap().outcome, Outcome::MissVerified);
    assert_eq!(auth(&store, &header(KEY, "newsecret000001")).await.unwrap().outcome, Outcome::Hit);
    assert_eq!(auth(&store, &header(KEY, SECRET)).await.unwrap_err(), Rejection::NegativeHit);
}

#[tokio::test]
async fn regenerated_secret_without_sync() {
    let fake = FakeFrappe::new();
    let store = store(&fake);
    auth(&store, &header(KEY, SECRET)).await.unwrap();
    fake.set_key(KEY, "newsecret000001", USER);
    // A known key with another secret is verified, and replaces the entry.
    assert_eq!(auth(&store, &header(KEY, "newsecret000001")).await.unwrap().outcome, Outcome::MissVerified);
    assert_eq!(auth(&store, &header(KEY, SECRET)).await.unwrap_err(), Rejection::WrongCredentials);
    assert_eq!(auth(&store, &header(KEY, "newsecret000001")).await.unwrap().outcome, Outcome::Hit);
}

#[tokio::test]
async fn refusal_of_a_new_secret_is_forgotten_when_the_user_changes() {
    let fake = FakeFrappe::new();
    let store = store(&fake);
    store.apply_sync(&[synced(USER, KEY, "m1", true)]);
    let early = header(KEY, "newsecret000001");
    assert_eq!(auth(&store, &early).await.unwrap_err(), Rejection::WrongCredentials);
    fake.set_key(KEY, "newsecret000001", USER);
    store.apply_sync(&[synced(USER, KEY, "m2", true)]);
    store.positive.run_pending_tasks();
    store.negative.run_pending_tasks().await;
    assert!(auth(&store, &early).await.is_ok());
}

#[tokio::test]
async fn webhook_refresh_with_user_gone() {
    let fake = FakeFrappe::new();
    let store = store(&fake);
    store.apply_sync(&[synced(USER, KEY, "m1", true)]);
    store.clock.advance(Duration::from_millis(1));
    auth(&store, &header(KEY, SECRET)).await.unwrap();
    store.revoke_user(USER);
    store.apply_user(None, USER, store.now());
    store.clock.advance(Duration::from_millis(1));
    fake.keys.lock().unwrap().clear();
    assert_eq!(auth(&store, &header(KEY, SECRET)).await.unwrap_err(), Rejection::WrongCredentials);
    assert_eq!(store.synced_users(), 0);
}

#[tokio::test]
async fn webhook_refresh_disabling_a_user() {
    let fake = FakeFrappe::new();
    let store = store(&fake);
    auth(&store, &header(KEY, SECRET)).await.unwrap();
    store.revoke_user(USER);
    store.apply_user(Some(synced(USER, KEY, "m2", false)), USER, store.now());
    assert_eq!(auth(&store, &header(KEY, SECRET)).await.unwrap_err(), Rejection::Disabled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verification_racing_a_revocation_does_not_resurrect_it() {
    let fake = FakeFrappe::gated(0);
    let store = store(&fake);
    let racing = {
        let store = store.clone();
        tokio::spawn(async move { auth(&store, &header(KEY, SECRET)).await })
    };
    while fake.calls() == 0 {
        tokio::task::yield_now().await;
    }
    store.revoke_user(USER);
    fake.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    // The request that raced the revocation is answered; its entry is dead at once.
    assert!(racing.await.unwrap().is_ok());
    store.clock.advance(Duration::from_millis(1));
    assert_eq!(auth(&store, &header(KEY, SECRET)).await.unwrap().outcome, Outcome::MissVerified);
    assert_eq!(fake.calls(), 2);
}

#[tokio::test]
async fn bearer_tokens_are_cached_by_digest() {
    let fake = FakeFrappe::new();
    fake.bearers.lock().unwrap().insert("oauthtoken123".into(), "oauth@example.com".into());
    let store = store(&fake);
    let value = HeaderValue::from_static("Bearer oauthtoken123");
    let first = auth(&store, &value).await.unwrap();
    assert!(first.api_key.starts_with("bearer:") && !first.api_key.contains("oauthtoken123"));
    assert_eq!(&*first.user, "oauth@example.com");
    assert_eq!(auth(&store, &value).await.unwrap().outcome, Outcome::Hit);
    let wrong = HeaderValue::from_static("Bearer xyz");
    assert_eq!(auth(&store, &wrong).await.unwrap_err(), Rejection::WrongCredentials);
    assert_eq!(auth(&store, &wrong).await.unwrap_err(), Rejection::NegativeHit);
    assert_eq!(fake.calls(), 2);
}

/// A bearer token's revocation or expiry touches no User: it is never served stale.
#[tokio::test]
async fn bearer_tokens_are_never_served_stale() {
    let fake = FakeFrappe::new();
    fake.bearers.lock().unwrap().insert("oauthtoken123".into(), "oauth@example.com".into());
    let store = store_with(&fake, config(60, 30, 600));
    let value = HeaderValue::from_static("Bearer oauthtoken123");
    auth(&store, &value).await.unwrap();
    auth(&store, &header(KEY, SECRET)).await.unwrap();
    fake.down.store(true, Ordering::SeqCst);
    store.clock.advance(Duration::from_secs(120));
    assert!(matches!(auth(&store, &value).await, Err(Rejection::Unavailable(_))));
    assert_eq!(
        auth(&store, &header(KEY, SECRET)).await.unwrap().outcome,
        Outcome::Stale,
        "api keys still are"
    );
}

#[tokio::test]
async fn basic_and_token_share_an_entry() {
    use base64::Engine;
    let fake = FakeFrappe::new();
    let store = store(&fake);
    auth(&store, &header(KEY, SECRET)).await.unwrap();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{KEY}:{SECRET}"));
    let value = HeaderValue::from_str(&format!("Basic {basic}")).unwrap();
    assert_eq!(auth(&store, &value).await.unwrap().outcome, Outcome::Hit);
}

#[tokio::test]
async fn nothing_secret_in_debug_or_messages() {
    let fake = FakeFrappe::new();
    let store = store(&fake);
    let admitted = auth(&store, &header(KEY, SECRET)).await.unwrap();
    let entry = store.positive.get(KEY).unwrap();
    for text in [format!("{admitted:?}"), format!("{entry:?}"), format!("{store:?}")] {
        assert!(!text.contains(SECRET), "{text}");
    }
    for r in [Rejection::WrongCredentials, Rejection::NegativeHit, Rejection::Disabled] {
        assert_eq!(r.error_kind(), ErrorKind::Unauthorized);
        assert!(!r.message().contains(SECRET));
    }
    assert_eq!(Rejection::Unavailable("x".into()).outcome().as_str(), "unavailable");
    assert_eq!(Outcome::MissVerified.outcome().as_str(), "miss-verified");
}

#[tokio::test]
async fn len_counts_cached_credentials() {
    let fake = FakeFrappe::new();
    let store = store(&fake);
    auth(&store, &header(KEY, SECRET)).await.unwrap();
    auth(&store, &header(KEY, SECRET)).await.unwrap();
    // Exact at once, without waiting for moka's housekeeping.
    assert_eq!(store.entries().await, 1);
    assert_eq!(store.verify_calls(), 1);
    store.revoke_user(USER);
    assert_eq!(store.entries().await, 0);
}

// ----- the verification budget -------------------------------------------------------------

const OTHER_KEY: &str = "1b2c3d4e5f60718";
const THIRD_KEY: &str = "2c3d4e5f6071829";

fn budgeted(fake: &Arc<FakeFrappe>, cfg: AuthConfig, concurrency: usize, rate: &str) -> Arc<CredentialStore> {
    let rate = crate::config::parse_rate(rate).unwrap();
    let budget = VerifyBudget::with_clock(concurrency, rate, Arc::new(crate::policy::ManualClock::new()));
    Arc::new(CredentialStore::new(&cfg, fake.clone()).with_budget(budget))
}

/// Waits (bounded) until the fake has seen `n` whoami calls.
async fn until_calls(fake: &FakeFrappe, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if fake.calls() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("the fake saw {} calls, not {n}", fake.calls());
}

/// Takes the fake's only gate permit away: every later whoami call hangs until permits are added.
async fn close_gate(fake: &FakeFrappe) {
    fake.gate.acquire().await.unwrap().forget();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_budget_refuses_unknown_keys_only_and_caches_nothing() {
    let fake = FakeFrappe::gated(1);
    fake.set_key(OTHER_KEY, SECRET, "other@example.com");
    let store = budgeted(&fake, config(600, 30, 600), 1, "1000/sec");
    auth(&store, &header(KEY, SECRET)).await.unwrap();
    close_gate(&fake).await;
    let holder = {
        let store = store.clone();
        tokio::spawn(async move { auth(&store, &header(OTHER_KEY, SECRET)).await })
    };
    until_calls(&fake, 2).await;
    let refused = auth(&store, &header(THIRD_KEY, SECRET)).await.unwrap_err();
    assert_eq!(refused, Rejection::OverBudget(OverBudget::Concurrency { limit: 1 }));
    assert_eq!((refused.error_kind(), refused.outcome().as_str()), (ErrorKind::Unavailable, "over-budget"));
    assert_eq!(refused.retry_after(), Some(Duration::from_secs(1)));
    assert!(!refused.counts_as_failure(), "never a failed authentication");
    assert!(refused.reason().contains("frappe.max_verify_concurrency"), "{}", refused.reason());
    assert_eq!(fake.calls(), 2, "Frappe was not asked");
    assert_eq!(auth(&store, &header(KEY, SECRET)).await.unwrap().outcome, Outcome::Hit, "hits pass");
    fake.gate.add_permits(1);
    assert_eq!(holder.await.unwrap().unwrap().outcome, Outcome::MissVerified);
    // Not cached as a refusal: the same credential is verified once there is room.
    assert_eq!(auth(&store, &header(THIRD_KEY, SECRET)).await.unwrap_err(), Rejection::WrongCredentials);
    assert_eq!(fake.calls(), 3);
    assert_eq!(store.budget_refusals(), 1);
}

#[tokio::test]
async fn the_rate_counts_calls_to_frappe_not_requests() {
    let fake = FakeFrappe::new();
    let store = budgeted(&fake, config(600, 30, 600), 16, "2/sec");
    assert_eq!(auth(&store, &header(OTHER_KEY, SECRET)).await.unwrap_err(), Rejection::WrongCredentials);
    auth(&store, &header(KEY, SECRET)).await.unwrap();
    // Negative and positive hits cost no token.
    for _ in 0..10 {
        assert_eq!(auth(&store, &header(OTHER_KEY, SECRET)).await.unwrap_err(), Rejection::NegativeHit);
        assert_eq!(auth(&store, &header(KEY, SECRET)).await.unwrap().outcome, Outcome::Hit);
    }
    let refused = auth(&store, &header(THIRD_KEY, SECRET)).await.unwrap_err();
    assert!(matches!(refused, Rejection::OverBudget(OverBudget::Rate { .. })), "{refused:?}");
    assert!(refused.reason().contains("frappe.max_verify_rate"), "{}", refused.reason());
    assert_eq!(fake.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_joining_a_verification_need_no_permit() {
    let fake = FakeFrappe::gated(0);
    let store = budgeted(&fake, config(600, 30, 600), 1, "1/sec");
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { auth(&store, &header(KEY, SECRET)).await })
        })
        .collect();
    until_calls(&fake, 1).await;
    fake.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    for task in tasks {
        assert_eq!(&*task.await.unwrap().unwrap().user, USER);
    }
    assert_eq!((fake.calls(), store.budget_refusals()), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_budget_serves_a_recently_verified_credential_stale() {
    let fake = FakeFrappe::gated(1);
    let store = budgeted(&fake, config(60, 30, 600), 1, "1000/sec");
    auth(&store, &header(KEY, SECRET)).await.unwrap();
    store.clock.advance(Duration::from_secs(120));
    close_gate(&fake).await;
    let holder = {
        let store = store.clone();
        tokio::spawn(async move { auth(&store, &header(OTHER_KEY, SECRET)).await })
    };
    until_calls(&fake, 2).await;
    assert_eq!(auth(&store, &header(KEY, SECRET)).await.unwrap().outcome, Outcome::Stale);
    fake.gate.add_permits(1);
    holder.await.unwrap().unwrap_err();
}

// ----- Administrator: the user sync cannot see ------------------------------------------------

const ADMIN_KEY: &str = "adadadadadadada";
const ADMIN: &str = "Administrator";

fn with_admin(fake: &FakeFrappe, enabled: bool, restrict_ip: Option<&str>) {
    fake.set_key(ADMIN_KEY, SECRET, ADMIN);
    let record = SyncedUser {
        name: ADMIN.into(),
        enabled,
        api_key: Some(ADMIN_KEY.into()),
        modified: "m1".into(),
        restrict_ip: restrict_ip.map(Into::into),
    };
    fake.own.lock().unwrap().insert(ADMIN.into(), record);
}

fn allowing_administrator() -> AuthConfig {
    AuthConfig { allow_administrator: true, ..config(600, 30, 600) }
}

#[tokio::test]
async fn administrator_is_refused_by_default_and_cached_as_refused() {
    let fake = FakeFrappe::new();
    with_admin(&fake, true, None);
    let store = store_with(&fake, config(60, 30, 600));
    for _ in 0..5 {
        let refused = auth(&store, &header(ADMIN_KEY, SECRET)).await.unwrap_err();
        assert_eq!(refused, Rejection::Administrator);
        assert_eq!(
            (refused.error_kind(), refused.outcome().as_str()),
            (ErrorKind::Forbidden, "administrator")
        );
        assert!(!refused.counts_as_failure(), "valid credentials barred by policy are no failed login");
        assert!(refused.reason().contains("auth.allow_administrator"), "{}", refused.reason());
    }
    assert_eq!(fake.calls(), 1, "one whoami, then refused from the cache");
    assert_eq!(fake.own_reads.load(Ordering::SeqCst), 0, "its record is never read when barred");
    // A wrong secret for Administrator's key is an ordinary wrong secret.
    assert_eq!(
        auth(&store, &header(ADMIN_KEY, "wrongsecret1234")).await.unwrap_err(),
        Rejection::WrongCredentials
    );
    // Frappe down and the entry expired: still refused, never admitted stale.
    store.clock.advance(Duration::from_secs(120));
    fake.down.store(true, Ordering::SeqCst);
    assert_eq!(auth(&store, &header(ADMIN_KEY, SECRET)).await.unwrap_err(), Rejection::Administrator);
}

#[tokio::test]
async fn an_allowed_administrator_carries_its_own_restrict_ip() {
    let fake = FakeFrappe::new();
    with_admin(&fake, true, Some("10.1.2.3"));
    let store = store_with(&fake, allowing_administrator());
    let first = auth(&store, &header(ADMIN_KEY, SECRET)).await.unwrap();
    assert_eq!(
        (first.outcome, &*first.user, first.restrict_ip.as_deref()),
        (Outcome::MissVerified, ADMIN, Some("10.1.2.3"))
    );
    let hit = auth(&store, &header(ADMIN_KEY, SECRET)).await.unwrap();
    assert_eq!((hit.outcome, hit.restrict_ip.as_deref()), (Outcome::Hit, Some("10.1.2.3")));
    assert_eq!((fake.calls(), fake.own_reads.load(Ordering::SeqCst)), (1, 1));
    // Sync never lists Administrator: a sync without it changes nothing.
    store.apply_sync(&[synced(USER, KEY, "m1", true)]);
    assert_eq!(auth(&store, &header(ADMIN_KEY, SECRET)).await.unwrap().outcome, Outcome::Hit);
    // A webhook for Administrator drops it; the next request reads the record again.
    with_admin(&fake, true, Some("10.9.9.9"));
    store.revoke_user(ADMIN);
    store.clock.advance(Duration::from_millis(1));
    let again = auth(&store, &header(ADMIN_KEY, SECRET)).await.unwrap();
    assert_eq!((again.outcome, again.restrict_ip.as_deref()), (Outcome::MissVerified, Some("10.9.9.9")));
    assert_eq!(fake.own_reads.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_disabled_administrator_is_refused_from_the_cache() {
    let fake = FakeFrappe::new();
    with_admin(&fake, false, None);
    let store = store_with(&fake, allowing_administrator());
    for _ in 0..3 {
        assert_eq!(auth(&store, &header(ADMIN_KEY, SECRET)).await.unwrap_err(), Rejection::Disabled);
    }
    assert_eq!((fake.calls(), fake.own_reads.load(Ordering::SeqCst)), (1, 1));
}

#[tokio::test]
async fn a_failed_self_read_fails_closed_and_caches_nothing() {
    let fake = FakeFrappe::new();
    fake.set_key(ADMIN_KEY, SECRET, ADMIN);
    let store = store_with(&fake, allowing_administrator());
    let refused = auth(&store, &header(ADMIN_KEY, SECRET)).await.unwrap_err();
    assert_eq!(refused, Rejection::Unavailable("Frappe answered HTTP 403".into()));
    assert_eq!(refused.error_kind(), ErrorKind::Unavailable);
    with_admin(&fake, true, None);
    assert_eq!(auth(&store, &header(ADMIN_KEY, SECRET)).await.unwrap().outcome, Outcome::MissVerified);
    assert_eq!(fake.calls(), 2, "the failure was not cached");
}

#[test]
fn a_cached_entry_stays_small() {
    // Stored inline in moka's entry, 100,000 times over (tests/memory.rs): 96 bytes, the
    // rare standings of users sync cannot see behind a pointer.
    assert!(std::mem::size_of::<Entry>() <= 96, "{}", std::mem::size_of::<Entry>());
    assert_eq!(std::mem::size_of::<Standing>(), std::mem::size_of::<usize>());
}

#[test]
fn an_entry_is_64_bytes_and_its_stamp_keeps_the_instant() {
    assert_eq!(std::mem::size_of::<Entry>(), 64);
    let later = Stamp::epoch() + Duration::from_nanos(1_234_567_891);
    assert_eq!(Stamp::of(later).instant(), later);
    // Before the epoch (never for a verification: the store fixes it first) saturates.
    assert_eq!(Stamp::of(Stamp::epoch() - Duration::from_nanos(1)).instant(), Stamp::epoch());
}

#[tokio::test]
async fn a_bearer_label_is_never_an_api_key() {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    let fake = FakeFrappe::new();
    fake.bearers.lock().unwrap().insert("oauthtoken123".into(), "oauth@example.com".into());
    let store = store(&fake);
    let bearer = auth(&store, &HeaderValue::from_static("Bearer oauthtoken123")).await.unwrap();
    assert!(store.positive.get(&*bearer.api_key).is_some_and(|e| e.bearer() && e.api_key().is_none()));
    // A client cannot send the label as its api_key (token or Basic): the `:` is refused, so
    // an entry whose key starts with the label's prefix is always a bearer token's.
    let spelled = [
        format!("token {}:x", bearer.api_key),
        format!("Basic {}", STANDARD.encode(format!("{}:x", bearer.api_key))),
    ];
    for value in spelled {
        assert!(parse(Some(&HeaderValue::from_str(&value).unwrap())).is_err(), "{value}");
    }
}

#[tokio::test]
async fn entries_no_window_serves_are_freed_by_a_later_miss() {
    let fake = FakeFrappe::new();
    fake.set_key(OTHER_KEY, SECRET, "other@example.com");
    fake.set_key(THIRD_KEY, SECRET, "third@example.com");
    let store = store(&fake);
    auth(&store, &header(KEY, SECRET)).await.unwrap();
    assert_eq!(store.entries().await, 1);
    // Past max(cache_ttl, stale_if_error) = 600 s: dead to `judge`, and swept by the next miss.
    store.clock.advance(Duration::from_secs(601));
    auth(&store, &header(OTHER_KEY, SECRET)).await.unwrap();
    assert_eq!(store.entries().await, 1);
    assert!(store.positive.get(KEY).is_none() && store.positive.get(OTHER_KEY).is_some());
    // A sweep runs at most once per 600 s: the next miss soon after leaves the rest alone.
    store.clock.advance(Duration::from_secs(10));
    auth(&store, &header(THIRD_KEY, SECRET)).await.unwrap();
    assert_eq!(store.entries().await, 2);
}

/// Sync's source for [`CredentialStore::with_user_reader`]: the fake's `own` records, read
/// with the sync token (counted in `own_reads` too).
impl crate::auth::frappe::UserSource for FakeFrappe {
    fn list_users<'a>(
        &'a self,
        _: &'a Secret,
    ) -> BoxFuture<'a, Result<Vec<SyncedUser>, crate::auth::frappe::SyncError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn get_user<'a>(
        &'a self,
        _: &'a Secret,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<SyncedUser>, crate::auth::frappe::SyncError>> {
        Box::pin(async move {
            self.own_reads.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(crate::auth::frappe::SyncError::Transport("connection refused".into()));
            }
            Ok(self.own.lock().unwrap().get(name).cloned())
        })
    }
}

fn reading_store(fake: &Arc<FakeFrappe>) -> Arc<CredentialStore> {
    let store = CredentialStore::new(&config(600, 30, 600), fake.clone())
        .with_user_reader(fake.clone(), Secret::new("sync:token".into()));
    Arc::new(store)
}

const OAUTH_USER: &str = "oauth@example.com";

fn keyless(name: &str, modified: &str, enabled: bool, restrict_ip: Option<&str>) -> SyncedUser {
    SyncedUser {
        name: name.into(),
        enabled,
        api_key: None,
        modified: modified.into(),
        restrict_ip: restrict_ip.map(Into::into),
    }
}

#[tokio::test]
async fn an_oauth_only_user_is_read_once_and_judged_by_its_record() {
    let fake = FakeFrappe::new();
    let store = reading_store(&fake);
    store.apply_sync(&[synced(USER, KEY, "m1", true)]);
    fake.bearers.lock().unwrap().insert("oauthtoken123".into(), OAUTH_USER.into());
    let record = keyless(OAUTH_USER, "m1", true, Some("10.9.0.0/16"));
    fake.own.lock().unwrap().insert(OAUTH_USER.into(), record);
    let bearer = HeaderValue::from_static("Bearer oauthtoken123");
    // Its restrict_ip comes with the first admission; the hit needs neither call again.
    for _ in 0..3 {
        let admitted = auth(&store, &bearer).await.unwrap();
        assert_eq!(admitted.restrict_ip.as_deref(), Some("10.9.0.0/16"));
    }
    assert_eq!((fake.calls(), fake.own_reads.load(Ordering::SeqCst)), (1, 1));
    assert_eq!(store.keyless_users(), vec![Arc::<str>::from(OAUTH_USER)]);
    // Disabled by a webhook refresh: refused, and a sync that did not ask for the user (it
    // has no key) does not bring it back.
    store.clock.advance(Duration::from_millis(1));
    store.revoke_user(OAUTH_USER);
    store.apply_user(Some(keyless(OAUTH_USER, "m2", false, None)), OAUTH_USER, store.now());
    assert_eq!(auth(&store, &bearer).await.unwrap_err(), Rejection::Disabled);
    store.apply_sync(&[synced(USER, KEY, "m1", true)]);
    assert_eq!(auth(&store, &bearer).await.unwrap_err(), Rejection::Disabled);
}

#[tokio::test]
async fn a_user_that_cannot_be_read_is_not_admitted() {
    let fake = FakeFrappe::new();
    let store = reading_store(&fake);
    store.apply_sync(&[synced(USER, KEY, "m1", true)]);
    fake.bearers.lock().unwrap().insert("oauthtoken123".into(), OAUTH_USER.into());
    let bearer = HeaderValue::from_static("Bearer oauthtoken123");
    // The sync user cannot see it: 503, nothing cached.
    let refused = auth(&store, &bearer).await.unwrap_err();
    assert!(matches!(&refused, Rejection::Unavailable(why) if why.contains("cannot see")), "{refused:?}");
    // Disabled in its record: refused as disabled.
    fake.own.lock().unwrap().insert(OAUTH_USER.into(), keyless(OAUTH_USER, "m1", false, None));
    assert_eq!(auth(&store, &bearer).await.unwrap_err(), Rejection::Disabled);
    assert_eq!(fake.calls(), 2);
}

#[tokio::test]
async fn a_key_generated_since_the_last_sync_is_read_not_verified_on_every_request() {
    let fake = FakeFrappe::new();
    let reading = reading_store(&fake);
    reading.apply_sync(&[synced(USER, "oldkey000000000", "m1", true)]);
    reading.clock.advance(Duration::from_millis(1));
    // Frappe now has a new key for the user, with a restrict_ip sync has not seen yet.
    let mut record = synced(USER, KEY, "m2", true);
    record.restrict_ip = Some("10.7.7.7".into());
    fake.own.lock().unwrap().insert(USER.into(), record);
    for _ in 0..3 {
        let admitted = auth(&reading, &header(KEY, SECRET)).await.unwrap();
        assert_eq!(admitted.restrict_ip.as_deref(), Some("10.7.7.7"));
    }
    assert_eq!((fake.calls(), fake.own_reads.load(Ordering::SeqCst)), (1, 1));
    // Without a reader (no sync), the same credential is verified on every request: sync's
    // record names another key.
    let plain = store(&fake);
    plain.apply_sync(&[synced(USER, "oldkey000000000", "m1", true)]);
    plain.clock.advance(Duration::from_millis(1));
    for _ in 0..2 {
        auth(&plain, &header(KEY, SECRET)).await.unwrap();
    }
    assert_eq!(fake.calls(), 3);
}

#[tokio::test]
async fn a_webhook_for_a_user_without_a_key_does_not_make_it_followed() {
    let fake = FakeFrappe::new();
    let store = reading_store(&fake);
    store.apply_user(
        Some(keyless("website.user@example.com", "m1", true, None)),
        "website.user@example.com",
        store.now(),
    );
    assert!(store.keyless_users().is_empty());
    // One that a bearer token brought is followed, and its refresh applies.
    fake.bearers.lock().unwrap().insert("oauthtoken123".into(), OAUTH_USER.into());
    fake.own.lock().unwrap().insert(OAUTH_USER.into(), keyless(OAUTH_USER, "m1", true, None));
    let bearer = HeaderValue::from_static("Bearer oauthtoken123");
    auth(&store, &bearer).await.unwrap();
    store.clock.advance(Duration::from_millis(1));
    store.apply_user(Some(keyless(OAUTH_USER, "m2", false, None)), OAUTH_USER, store.now());
    assert_eq!(auth(&store, &bearer).await.unwrap_err(), Rejection::Disabled);
}
