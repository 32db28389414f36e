//! Failed-auth lockout: too many bad credentials from one IP lock that IP out for a while.

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::notification::RemovalCause;
use moka::ops::compute::{CompResult, Op};

use super::batch::{BatchOutcome, LimitCheck};
use super::redis::{RedisLink, SharedBatch};
use super::{nanos, Clock, RateLimiter, Subject};
use crate::config::{Rate, RateLimitConfig};

/// The limiter scope failures are counted in.
const SCOPE: &str = "authfail";
/// Bound on locked IPs remembered locally.
const MAX_LOCKS: u64 = 100_000;

#[derive(Debug, Clone, Copy)]
struct Lock {
    /// Clock nanoseconds when the lockout ends.
    until: u64,
    /// Started by this instance (so this instance logs its end); false for a lock learnt from
    /// Redis, whose owner logs it.
    ours: bool,
}

/// Counts wrong or malformed credentials per client IP against `failed_auth_per_ip`; the
/// failure that exceeds it locks the IP out for `lockout`.
///
/// Failures are counted by the shared [`RateLimiter`] (so in Redis when the backend is
/// Redis). Locks are kept locally and, on the Redis backend, also as `fgw:lock:{ip}` keys with
/// a `PX` expiry so every instance honours them; when Redis is down, local state decides. A
/// lockout start is logged once (warn) by the instance that set it, and its end once (info),
/// lazily on the first check after expiry or when the entry is evicted.
pub struct FailedAuthTracker {
    limiter: Arc<RateLimiter>,
    rate: Option<Rate>,
    lockout: Duration,
    locks: moka::sync::Cache<IpAddr, Lock>,
    /// The latest `until` of any lock this instance has held: from then on no IP is locked
    /// locally, so the common check (no lockout anywhere) skips the cache lookup.
    latest_until: AtomicU64,
    /// A lock of ours may have ended without its end being logged yet.
    ends_pending: AtomicBool,
    clock: Arc<dyn Clock>,
}

impl FailedAuthTracker {
    /// `rate: None` disables lockouts (every call is a no-op).
    pub fn new(limiter: Arc<RateLimiter>, rate: Option<Rate>, lockout: Duration) -> Self {
        let clock = limiter.clock().clone();
        let locks = moka::sync::Cache::builder()
            .max_capacity(MAX_LOCKS)
            // Slightly longer than the lockout: `locked` decides by `until`, moka only tidies.
            .time_to_live(lockout + Duration::from_secs(1))
            .eviction_listener(|ip: Arc<IpAddr>, lock: Lock, cause| {
                if cause == RemovalCause::Expired && lock.ours {
                    log_end(*ip);
                }
            })
            .build();
        FailedAuthTracker {
            limiter,
            rate,
            lockout,
            locks,
            latest_until: AtomicU64::new(0),
            ends_pending: AtomicBool::new(false),
            clock,
        }
    }

    /// From `rate_limit.failed_auth_per_ip` and `rate_limit.lockout`.
    pub fn from_config(limiter: Arc<RateLimiter>, cfg: &RateLimitConfig) -> Self {
        Self::new(limiter, cfg.failed_auth_per_ip, cfg.lockout)
    }

    /// Records one failed authentication from `ip`. Returns the lockout now in force when this
    /// failure exceeded the limit (or the IP was already locked), `None` otherwise.
    pub async fn record_failure(&self, ip: IpAddr) -> Option<Duration> {
        let rate = self.rate?;
        let ip = super::limited_address(ip);
        // Already locked: nothing to count (the pipeline normally refuses before auth anyway).
        if let Some(left) = self.local_lock(ip, self.now()) {
            return Some(left);
        }
        if self.limiter.check(SCOPE, Subject::Ip(ip), &rate).await.allowed {
            return None;
        }
        Some(self.start(ip).await)
    }

    /// How long `ip` stays locked out, `None` when it is not. On the Redis backend an IP not
    /// locked locally costs one round trip (skipped while Redis is degraded).
    pub async fn locked(&self, ip: IpAddr) -> Option<Duration> {
        self.rate?;
        let ip = super::limited_address(ip);
        let now = self.now();
        if let Some(left) = self.local_lock(ip, now) {
            return Some(left);
        }
        let ms = self.shared_ttl(ip).await?;
        let until = now + nanos(Duration::from_millis(ms));
        self.remember(ip, Lock { until, ours: false });
        Some(Duration::from_millis(ms))
    }

    /// The lockout of `ip` and the limit `checks` in one go: what [`locked`](Self::locked)
    /// then [`RateLimiter::check`] for each check would decide (see
    /// [`batch`](super::batch): a locked-out IP charges nothing; checks run in order and
    /// stop at the first refusal), in at most one Redis round trip instead of one per call.
    ///
    /// `ip: None`, or lockouts disabled (`failed_auth_per_ip` unset), checks only the limits.
    /// A lock this instance knows of answers at once, without Redis; a lock found in Redis is
    /// remembered locally like one [`locked`](Self::locked) finds. When Redis does not
    /// answer, local state decides the whole batch. Never fails.
    pub async fn check_batch(&self, ip: Option<IpAddr>, checks: &[LimitCheck<'_>]) -> BatchOutcome {
        let Some(ip) = ip.filter(|_| self.rate.is_some()).map(super::limited_address) else {
            return self.limiter.check_batch(checks).await;
        };
        let now = self.now();
        if let Some(left) = self.local_lock(ip, now) {
            return BatchOutcome::locked(left);
        }
        let RateLimiter::Redis(redis) = &*self.limiter else {
            return self.limiter.check_batch(checks).await;
        };
        match redis.shared_batch(Some(&lock_key(ip)), checks).await {
            Some(SharedBatch::Decided(outcome)) => outcome,
            Some(SharedBatch::Locked(ms)) => {
                let left = ms.map_or(self.lockout, Duration::from_millis);
                self.remember(ip, Lock { until: now + nanos(left), ours: false });
                BatchOutcome::locked(left)
            }
            None => redis.local().check_batch(checks),
        }
    }

    /// The remaining local lock, dropping (and logging the end of) an expired one.
    fn local_lock(&self, ip: IpAddr, now: u64) -> Option<Duration> {
        if now >= self.latest_until.load(Ordering::Relaxed) {
            self.end_expired_locks(now);
            return None;
        }
        let lock = self.locks.get(&ip)?;
        if lock.until > now {
            return Some(Duration::from_nanos(lock.until - now));
        }
        self.drop_if_expired(ip, now);
        None
    }

    /// Once every lock has run out: drops them and logs the end of ours, if any is pending.
    fn end_expired_locks(&self, now: u64) {
        // Read before the swap: this runs on every check once no lock is in force, and a
        // read-modify-write per request would bounce the flag's cache line between workers.
        if !self.ends_pending.load(Ordering::Relaxed) || !self.ends_pending.swap(false, Ordering::Relaxed) {
            return;
        }
        for (ip, _) in self.locks.iter() {
            self.drop_if_expired(*ip, now);
        }
    }

    /// Removes `ip`'s lock if it is still expired (a lock set meanwhile must survive), logging
    /// its end when it was ours.
    fn drop_if_expired(&self, ip: IpAddr, now: u64) {
        let result = self.locks.entry(ip).and_compute_with(|entry| match entry {
            Some(e) if e.value().until <= now => Op::Remove,
            _ => Op::Nop,
        });
        if let CompResult::Removed(entry) = result {
            if entry.value().ours {
                log_end(ip);
            }
        }
    }

    /// Stores a lock learnt from Redis.
    fn remember(&self, ip: IpAddr, lock: Lock) {
        self.locks.insert(ip, lock);
        self.note_lock(lock);
    }

    /// Keeps the fast path of [`local_lock`](Self::local_lock) honest about a lock just stored.
    fn note_lock(&self, lock: Lock) {
        self.latest_until.fetch_max(lock.until, Ordering::Relaxed);
        if lock.ours {
            self.ends_pending.store(true, Ordering::Relaxed);
        }
    }

    async fn start(&self, ip: IpAddr) -> Duration {
        let now = self.now();
        if let Some(left) = self.local_lock(ip, now) {
            return left;
        }
        // A lock another instance already holds is theirs to log.
        let ours = self.set_shared(ip).await != Some(false);
        let lock = Lock { until: now + nanos(self.lockout), ours };
        let result = self.locks.entry(ip).and_compute_with(|entry| match entry {
            Some(e) if e.value().until > now => Op::Nop,
            _ => Op::Put(lock),
        });
        if matches!(result, CompResult::Inserted(_) | CompResult::ReplacedWith(_)) {
            self.note_lock(lock);
        }
        if ours && matches!(result, CompResult::Inserted(_) | CompResult::ReplacedWith(_)) {
            tracing::warn!(
                client_ip = %ip,
                lockout_secs = self.lockout.as_secs(),
                failed_auth_per_ip = %self.rate.map(|r| r.to_string()).unwrap_or_default(),
                "failed-auth lockout started"
            );
        }
        self.lockout
    }

    /// `SET fgw:lock:{ip} 1 NX PX lockout`: `Some(true)` when set here, `Some(false)` when
    /// another instance holds it, `None` without Redis.
    async fn set_shared(&self, ip: IpAddr) -> Option<bool> {
        let link = self.link()?;
        let ms = u64::try_from(self.lockout.as_millis()).unwrap_or(u64::MAX).max(1);
        let key = &lock_key(ip);
        link.run(false, |mut conn| async move {
            let reply: Option<String> = ::redis::cmd("SET")
                .arg(key)
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(ms)
                .query_async(&mut conn)
                .await?;
            Ok(reply.is_some())
        })
        .await
    }

    /// Milliseconds left on a lock in Redis, if any.
    async fn shared_ttl(&self, ip: IpAddr) -> Option<u64> {
        let link = self.link()?;
        let key = &lock_key(ip);
        let pttl: i64 = link
            .run(false, |mut conn| async move { ::redis::cmd("PTTL").arg(key).query_async(&mut conn).await })
            .await?;
        match pttl {
            // -2: no key. -1: a key without expiry (set by hand): honour it for one lockout.
            -1 => Some(u64::try_from(self.lockout.as_millis()).unwrap_or(u64::MAX)),
            ms => u64::try_from(ms).ok().filter(|&ms| ms > 0),
        }
    }

    fn link(&self) -> Option<&Arc<RedisLink>> {
        self.limiter.redis_link()
    }

    fn now(&self) -> u64 {
        nanos(self.clock.now())
    }
}

fn lock_key(ip: IpAddr) -> String {
    format!("fgw:lock:{ip}")
}

fn log_end(ip: IpAddr) {
    tracing::info!(client_ip = %ip, "failed-auth lockout ended");
}

impl fmt::Debug for FailedAuthTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailedAuthTracker").field("rate", &self.rate).field("lockout", &self.lockout).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rate_limit::redis::tests::Switch;
    use crate::policy::rate_limit::{test_redis, LocalLimiter, ManualClock, MonotonicClock, RedisLimiter};

    fn per_min(count: u32) -> Rate {
        Rate { count, per: Duration::from_secs(60), burst: count }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn local_tracker(rate: Option<Rate>) -> (Arc<ManualClock>, FailedAuthTracker) {
        let clock = Arc::new(ManualClock::new());
        let limiter = Arc::new(RateLimiter::Local(LocalLimiter::with_clock(clock.clone(), 1000)));
        (clock, FailedAuthTracker::new(limiter, rate, Duration::from_secs(600)))
    }

    #[tokio::test]
    async fn exceeding_the_limit_locks_the_ip_out() {
        let (logs, _guard) = test_redis::Logs::capture();
        let (clock, tracker) = local_tracker(Some(per_min(20)));
        let attacker = ip("198.51.100.7");
        for _ in 0..20 {
            assert_eq!(tracker.record_failure(attacker).await, None);
        }
        assert_eq!(tracker.locked(attacker).await, None);
        assert_eq!(tracker.record_failure(attacker).await, Some(Duration::from_secs(600)));
        assert_eq!(tracker.locked(attacker).await, Some(Duration::from_secs(600)));
        // The mapped form is the same client; another client is unaffected.
        assert!(tracker.locked(ip("::ffff:198.51.100.7")).await.is_some());
        assert_eq!(tracker.locked(ip("198.51.100.8")).await, None);
        // Further failures while locked do not extend it.
        clock.advance(Duration::from_secs(300));
        assert_eq!(tracker.record_failure(attacker).await, Some(Duration::from_secs(300)));
        assert_eq!(tracker.locked(attacker).await, Some(Duration::from_secs(300)));
        clock.advance(Duration::from_secs(300));
        assert_eq!(tracker.locked(attacker).await, None);
        assert_eq!(tracker.locked(attacker).await, None);
        assert_eq!(tracker.locks.entry_count_after_sync(), 0);
        assert_eq!(logs.count("failed-auth lockout started"), 1);
        assert_eq!(logs.count("failed-auth lockout ended"), 1);
        // The failure bucket refilled meanwhile: a fresh allowance.
        assert_eq!(tracker.record_failure(attacker).await, None);
    }

    #[tokio::test]
    async fn overlapping_locks_are_each_honoured_and_each_end_is_logged_once() {
        let (logs, _guard) = test_redis::Logs::capture();
        let (clock, tracker) = local_tracker(Some(per_min(1)));
        let (first, second, bystander) = (ip("198.51.100.21"), ip("198.51.100.22"), ip("192.0.2.3"));
        tracker.record_failure(first).await;
        assert!(tracker.record_failure(first).await.is_some());
        clock.advance(Duration::from_secs(300));
        tracker.record_failure(second).await;
        assert!(tracker.record_failure(second).await.is_some());
        clock.advance(Duration::from_secs(350));
        // The first lock has run out, the second has 250 s left.
        assert_eq!(tracker.locked(first).await, None);
        assert_eq!(tracker.locked(second).await, Some(Duration::from_secs(250)));
        assert_eq!(logs.count("failed-auth lockout ended"), 1);
        clock.advance(Duration::from_secs(250));
        // Any check after the last lock ran out ends it, even another client's.
        assert_eq!(tracker.locked(bystander).await, None);
        assert_eq!(logs.count("failed-auth lockout ended"), 2);
        assert_eq!(tracker.locked(second).await, None);
        assert_eq!(logs.count("failed-auth lockout ended"), 2);
        // A new lock after all that is seen again.
        tracker.record_failure(bystander).await;
        assert!(tracker.record_failure(bystander).await.is_some());
        assert!(tracker.locked(bystander).await.is_some());
    }

    #[tokio::test]
    async fn batch_on_a_locked_ip_charges_nothing() {
        let (_clock, tracker) = local_tracker(Some(per_min(2)));
        let attacker = ip("198.51.100.9");
        let limit = per_min(5);
        let checks = [LimitCheck::new("ip", Subject::Ip(attacker), limit)];
        // Not locked: the batch charges the bucket.
        let outcome = tracker.check_batch(Some(attacker), &checks).await;
        assert!(outcome.admitted());
        assert_eq!(outcome.decisions()[0].remaining, 4);
        for _ in 0..3 {
            tracker.record_failure(attacker).await;
        }
        let outcome = tracker.check_batch(Some(attacker), &checks).await;
        assert_eq!(outcome.locked_out(), Some(Duration::from_secs(600)));
        assert!(outcome.decisions().is_empty());
        // The per-IP bucket was not charged by the refused batch: 3 of 5 still available.
        let d = tracker.limiter.check("ip", Subject::Ip(attacker), &limit).await;
        assert_eq!(d.remaining, 3);
        // Without an IP to probe (or with lockouts off), only the limits are checked.
        assert!(tracker.check_batch(None, &checks).await.admitted());
        let (_clock, off) = local_tracker(None);
        assert!(off.check_batch(Some(attacker), &checks).await.admitted());
    }

    #[tokio::test]
    async fn batch_equals_locked_then_sequential_checks() {
        let (clock_a, a) = local_tracker(Some(per_min(3)));
        let (clock_b, b) = local_tracker(Some(per_min(3)));
        let client = ip("192.0.2.44");
        let (ip_rate, key_rate) = (per_min(20), per_min(6));
        let checks = [
            LimitCheck::new("ip", Subject::Ip(client), ip_rate),
            LimitCheck::new("key", Subject::Key("k1"), key_rate),
        ];
        for round in 0..60 {
            if round == 30 {
                // Lock both out, then let the lock and the buckets run out.
                for _ in 0..4 {
                    a.record_failure(client).await;
                    b.record_failure(client).await;
                }
            }
            if round % 10 == 9 {
                clock_a.advance(Duration::from_secs(200));
                clock_b.advance(Duration::from_secs(200));
            }
            let batch = a.check_batch(Some(client), &checks).await;
            let sequential = match b.locked(client).await {
                Some(left) => BatchOutcome::locked(left),
                None => {
                    let mut out = BatchOutcome::for_checks(checks.len());
                    for c in &checks {
                        if !out.push(b.limiter.check(c.scope, c.subject, &c.rate).await) {
                            break;
                        }
                    }
                    out
                }
            };
            assert_eq!(batch, sequential, "round {round}");
        }
    }

    #[tokio::test]
    async fn batch_sees_a_lock_set_by_another_instance() {
        let Some(url) = test_redis::url("batch_sees_a_lock_set_by_another_instance") else { return };
        let new = || async {
            let limiter =
                RedisLimiter::connect(&url, Duration::from_millis(200), Arc::new(MonotonicClock::new()))
                    .await
                    .unwrap();
            FailedAuthTracker::new(
                Arc::new(RateLimiter::Redis(limiter)),
                Some(per_min(1)),
                Duration::from_secs(30),
            )
        };
        let (a, b) = (new().await, new().await);
        let ip = IpAddr::from([100, 64 + rand::random::<u8>() % 64, rand::random(), rand::random()]);
        let key = test_redis::unique("lockbatch");
        let checks = [LimitCheck::new("key", Subject::Key(&key), per_min(100))];
        assert!(b.check_batch(Some(ip), &checks).await.admitted());
        a.record_failure(ip).await;
        assert!(a.record_failure(ip).await.is_some());
        let outcome = b.check_batch(Some(ip), &checks).await;
        let left = outcome.locked_out().expect("b sees a's lock through Redis");
        assert!(left <= Duration::from_secs(30) && left > Duration::from_secs(25), "{left:?}");
        // Learnt locally: the next check needs no Redis at all.
        assert!(b.local_lock(crate::policy::rate_limit::limited_address(ip), b.now()).is_some());
    }

    #[tokio::test]
    async fn no_rate_means_no_lockouts() {
        let (_clock, tracker) = local_tracker(None);
        for _ in 0..100 {
            assert_eq!(tracker.record_failure(ip("192.0.2.1")).await, None);
        }
        assert_eq!(tracker.locked(ip("192.0.2.1")).await, None);
    }

    #[tokio::test]
    async fn lockouts_are_shared_through_redis() {
        let Some(url) = test_redis::url("lockouts_are_shared_through_redis") else { return };
        let new = || async {
            let limiter =
                RedisLimiter::connect(&url, Duration::from_millis(200), Arc::new(MonotonicClock::new()))
                    .await
                    .unwrap();
            FailedAuthTracker::new(
                Arc::new(RateLimiter::Redis(limiter)),
                Some(per_min(5)),
                Duration::from_secs(2),
            )
        };
        let (a, b) = (new().await, new().await);
        // A random address in 100.64.0.0/10 so parallel runs do not collide.
        let ip = IpAddr::from([100, 64 + rand::random::<u8>() % 64, rand::random(), rand::random()]);
        for _ in 0..2 {
            assert_eq!(a.record_failure(ip).await, None);
            assert_eq!(b.record_failure(ip).await, None);
        }
        assert_eq!(a.record_failure(ip).await, None);
        // The sixth failure across both instances exceeds five: the lock is visible on both.
        assert_eq!(b.record_failure(ip).await, Some(Duration::from_secs(2)));
        assert!(b.locked(ip).await.is_some());
        assert!(a.locked(ip).await.is_some());
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(a.locked(ip).await, None);
        assert_eq!(b.locked(ip).await, None);
    }

    #[tokio::test]
    async fn lockouts_fall_back_to_local_when_redis_is_down() {
        let Some(url) = test_redis::url("lockouts_fall_back_to_local_when_redis_is_down") else { return };
        let mut switch = Switch::new(&url).await;
        let limiter =
            RedisLimiter::connect(&switch.url, Duration::from_millis(100), Arc::new(MonotonicClock::new()))
                .await
                .unwrap();
        let tracker = FailedAuthTracker::new(
            Arc::new(RateLimiter::Redis(limiter)),
            Some(per_min(3)),
            Duration::from_secs(60),
        );
        switch.cut();
        let ip = ip("203.0.113.77");
        let mut locked_at = None;
        for i in 0..5 {
            if tracker.record_failure(ip).await.is_some() {
                locked_at.get_or_insert(i);
            }
        }
        assert_eq!(locked_at, Some(3));
        assert!(tracker.locked(ip).await.is_some());
    }

    impl<K, V> EntryCountAfterSync for moka::sync::Cache<K, V>
    where
        K: std::hash::Hash + Eq + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        fn entry_count_after_sync(&self) -> u64 {
            self.run_pending_tasks();
            self.entry_count()
        }
    }

    trait EntryCountAfterSync {
        fn entry_count_after_sync(&self) -> u64;
    }
}
