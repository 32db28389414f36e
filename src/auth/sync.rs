//! The background credential sync: every `sync_interval` (first run at once) read Frappe's
//! Users and apply them to the store; on failure log the reason and retry with exponential
//! backoff capped at the interval. `SyncStatus` is what `/readyz` reads.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::frappe::{SyncError, UserSource};
use super::store::CredentialStore;
use crate::config::Secret;

/// First retry delay after a failed sync; doubles per failure up to the sync interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Shared state of the sync task, for readiness and the status page.
#[derive(Debug)]
pub struct SyncStatus {
    started: Instant,
    inner: Mutex<StatusInner>,
}

#[derive(Debug, Default)]
struct StatusInner {
    last_success: Option<Instant>,
    last_success_at: Option<SystemTime>,
    last_error: Option<String>,
    consecutive_failures: u32,
    users: usize,
    runs: u64,
    failures: u64,
}

/// A copy of the sync status at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// `None` until the first sync succeeds.
    pub last_success_age: Option<Duration>,
    /// The reason of the latest failure, kept after a later success (no secret in it).
    pub last_error: Option<String>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Users in the last good sync: those with an api_key, and those without one that the
    /// store follows (met through bearer tokens).
    pub users: usize,
    /// Wall-clock time of the last success (for metrics and the status page).
    pub last_success_at: Option<SystemTime>,
    /// Syncs attempted since start, and how many of them failed.
    pub runs: u64,
    pub failures: u64,
}

impl SyncStatus {
    /// A status that has seen no sync yet; its readiness grace starts now.
    pub fn new() -> Self {
        SyncStatus { started: Instant::now(), inner: Mutex::default() }
    }

    pub fn report(&self) -> SyncReport {
        let inner = self.lock();
        SyncReport {
            last_success_age: inner.last_success.map(|at| at.elapsed()),
            last_error: inner.last_error.clone(),
            consecutive_failures: inner.consecutive_failures,
            users: inner.users,
            last_success_at: inner.last_success_at,
            runs: inner.runs,
            failures: inner.failures,
        }
    }

    /// For `/readyz`: false once no sync has succeeded for `max_age` (e.g. three sync
    /// intervals), counting from start before the first success.
    pub fn is_fresh(&self, max_age: Duration) -> bool {
        let since = self.lock().last_success.unwrap_or(self.started);
        since.elapsed() <= max_age
    }

    /// Records a success; returns how many failures preceded it.
    fn succeeded(&self, users: usize) -> u32 {
        let mut inner = self.lock();
        inner.last_success = Some(Instant::now());
        inner.last_success_at = Some(SystemTime::now());
        inner.users = users;
        inner.runs += 1;
        std::mem::take(&mut inner.consecutive_failures)
    }

    /// Records a failure; returns the count of consecutive failures.
    fn failed(&self, error: &SyncError) -> u32 {
        let mut inner = self.lock();
        inner.last_error = Some(error.to_string());
        inner.consecutive_failures += 1;
        inner.runs += 1;
        inner.failures += 1;
        inner.consecutive_failures
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatusInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for SyncStatus {
    fn default() -> Self {
        Self::new()
    }
}

/// Starts the sync task. It stops when `shutdown` turns true or its sender is dropped, or
/// when the handle is aborted. Call it only when a sync token is configured.
pub fn spawn_sync(
    store: Arc<CredentialStore>,
    source: Arc<dyn UserSource>,
    sync_token: Secret,
    interval: Duration,
    status: Arc<SyncStatus>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    crate::spawn(async move {
        // Said once, so nobody mistakes the missing Administrator for a sync problem.
        tracing::info!(
            "credential sync: Frappe hides {} from the sync user's User list; {}",
            super::store::HIDDEN_FROM_SYNC.join(", "),
            super::webhook::self_read_note(&store)
        );
        tokio::select! {
            _ = run(&store, source.as_ref(), &sync_token, interval, &status) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
        tracing::debug!("credential sync stopped");
    })
}

async fn run(
    store: &CredentialStore,
    source: &dyn UserSource,
    token: &Secret,
    interval: Duration,
    status: &SyncStatus,
) {
    loop {
        let wait = match sync_once(store, source, token).await {
            Ok(users) => {
                log_success(users, status.succeeded(users));
                interval
            }
            Err(error) => {
                let failures = status.failed(&error);
                let wait = backoff(failures, interval);
                tracing::warn!(
                    error = %error,
                    consecutive_failures = failures,
                    retry_in = %humantime::format_duration(wait),
                    "credential sync failed"
                );
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// One full sync: every user with an api_key, then by name the users without one that the
/// store follows (met through bearer tokens). Returns the number of users applied.
async fn sync_once(
    store: &CredentialStore,
    source: &dyn UserSource,
    token: &Secret,
) -> Result<usize, SyncError> {
    let fetched_from = store.now();
    let mut users = source.list_users(token).await?;
    let listed: HashSet<Arc<str>> = users.iter().map(|u| u.name.clone()).collect();
    let keyless: Vec<Arc<str>> =
        store.keyless_users().into_iter().filter(|name| !listed.contains(name)).collect();
    if !keyless.is_empty() {
        let named = source.list_named_users(token, &keyless).await?;
        users.extend(named.into_iter().filter(|u| !listed.contains(&u.name)));
    }
    store.apply_sync_fetched(&users, &keyless.into_iter().collect(), fetched_from);
    Ok(users.len())
}

fn log_success(users: usize, failures_before: u32) {
    if failures_before > 0 {
        tracing::info!(users, failures_before, "credential sync recovered");
    } else {
        tracing::debug!(users, "credential sync done");
    }
}

/// 1 s, 2 s, 4 s… after consecutive failures, never longer than the interval.
fn backoff(failures: u32, interval: Duration) -> Duration {
    let doubled = FIRST_RETRY.saturating_mul(1 << failures.saturating_sub(1).min(20));
    doubled.min(interval)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::future::BoxFuture;
    use http::header::HeaderName;
    use http::HeaderValue;

    use super::*;
    use crate::auth::directory::SyncedUser;
    use crate::auth::store::{Verify, VerifyError};
    use crate::config::AuthConfig;

    /// Answers list calls from a script, then repeats the last answer; signals each call.
    struct Script {
        answers: Mutex<VecDeque<Result<Vec<SyncedUser>, SyncError>>>,
        calls: AtomicUsize,
        called: tokio::sync::Notify,
    }

    impl UserSource for Script {
        fn list_users<'a>(&'a self, _: &'a Secret) -> BoxFuture<'a, Result<Vec<SyncedUser>, SyncError>> {
            Box::pin(async move {
                let answer = {
                    let mut answers = self.answers.lock().unwrap();
                    if answers.len() > 1 {
                        answers.pop_front().unwrap()
                    } else {
                        answers[0].clone()
                    }
                };
                self.calls.fetch_add(1, Ordering::SeqCst);
                self.called.notify_one();
                answer
            })
        }

        fn get_user<'a>(
            &'a self,
            _: &'a Secret,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Option<SyncedUser>, SyncError>> {
            Box::pin(async { Ok(None) })
        }
    }

    struct NoVerify;

    impl Verify for NoVerify {
        fn verify<'a>(&'a self, _: &'a HeaderValue) -> BoxFuture<'a, Result<String, VerifyError>> {
            Box::pin(async { Err(VerifyError::Rejected) })
        }
    }

    fn store() -> Arc<CredentialStore> {
        let cfg = AuthConfig {
            user_header: HeaderName::from_static("x-frappe-user"),
            forward_authorization: true,
            cache_capacity: 100,
            cache_ttl: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(30),
            stale_if_error: Duration::from_secs(600),
            allow_administrator: false,
        };
        Arc::new(CredentialStore::new(&cfg, Arc::new(NoVerify)))
    }

    fn user(name: &str) -> SyncedUser {
        SyncedUser {
            name: name.into(),
            enabled: true,
            api_key: Some("k".into()),
            modified: "m".into(),
            restrict_ip: None,
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_interval() {
        let interval = Duration::from_secs(30);
        let waits: Vec<u64> = (1..=7).map(|n| backoff(n, interval).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(backoff(1, Duration::from_millis(20)), Duration::from_millis(20));
        assert_eq!(backoff(u32::MAX, interval), interval);
    }

    #[tokio::test]
    async fn failures_are_recorded_then_recovery() {
        let script = Arc::new(Script {
            answers: Mutex::new(VecDeque::from([
                Err(SyncError::Unauthorized),
                Err(SyncError::Transport("Frappe did not answer within 5s".into())),
                Ok(vec![user("a@x"), user("b@x")]),
            ])),
            calls: AtomicUsize::new(0),
            called: tokio::sync::Notify::new(),
        });
        let (store, status) = (store(), Arc::new(SyncStatus::new()));
        let (stop, stopped) = watch::channel(false);
        let interval = Duration::from_millis(10);
        let task = spawn_sync(
            store.clone(),
            script.clone(),
            Secret::new("k:s".into()),
            interval,
            status.clone(),
            stopped,
        );
        while script.calls.load(Ordering::SeqCst) < 4 {
            script.called.notified().await;
        }
        let report = status.report();
        assert_eq!(report.consecutive_failures, 0);
        assert_eq!(report.users, 2);
        assert!(report.runs >= 3 && report.failures == 2 && report.last_success_at.is_some(), "{report:?}");
        assert!(report.last_error.as_deref().unwrap().contains("did not answer"));
        assert!(report.last_success_age.is_some() && status.is_fresh(Duration::from_secs(60)));
        assert_eq!(store.synced_users(), 2);
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[test]
    fn readiness_grace_before_the_first_success() {
        let status = SyncStatus::new();
        assert!(status.is_fresh(Duration::from_secs(60)));
        status.failed(&SyncError::Forbidden);
        assert_eq!(status.report().consecutive_failures, 1);
        assert!(status.report().last_error.unwrap().contains("System Manager"));
    }
}
