//! GCRA rate limits — local, or shared through Redis — plus failed-auth lockouts and the
//! revocation bus that ride on the same Redis connection.
//!
//! # Burst semantics
//! A [`Rate`] of `count` per `per` with `burst` B (default B = count) admits B requests at once
//! from a fresh (or long idle) subject, then one more every `per / count`. So `60/min` lets a
//! client send 60 requests in one burst — the 61st in the same second is refused — and then
//! one per second; after a minute of silence the full 60 are available again. `"100/min burst
//! 20"` smooths the same average into at most 20 at once.
//!
//! The algorithm is GCRA (the generic cell rate algorithm, as in `governor` and `redis-cell`):
//! each subject keeps only a "theoretical arrival time" (TAT). The local backend and the Redis
//! Lua script run the same arithmetic, so falling back from one to the other changes only
//! which instance remembers, not what the limit means.

pub mod batch;
mod buckets;
mod gcra;
mod group;
mod local;
mod lockout;
mod redis;
mod revocation;

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use crate::config::{Rate, RateLimitBackend, RateLimitConfig};
use crate::error::ceil_secs;

pub use self::batch::{BatchOutcome, LimitCheck};
pub use self::local::LocalLimiter;
pub use self::lockout::FailedAuthTracker;
pub use self::redis::RedisLimiter;
pub use self::revocation::RevocationBus;

/// Who a limit counts: a client address (see [`limited_address`]) or a credential's owner.
///
/// The gateway counts a per-key limit by the Frappe user the key belongs to (a user has one
/// API key): Frappe finds a key under MariaDB's collation, so `"key "` or `"kéy"` authenticate as
/// `"key"` and must not open buckets of their own. Scopes should come from a bounded
/// set (`"ip"`, `"key"`, `"route:/api/method/login"`…): each distinct scope and [`Rate`] keeps
/// its own table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    Ip(IpAddr),
    Key(&'a str),
}

impl Subject<'_> {
    fn canonical(self) -> Self {
        match self {
            Subject::Ip(ip) => Subject::Ip(limited_address(ip)),
            key => key,
        }
    }
}

/// The address a per-IP limit or the failed-auth lockout counts: an IPv4 address (IPv4-mapped
/// IPv6 ones as the IPv4 they carry), or the /64 network of an IPv6 address — the smallest
/// network an IPv6 host gets, whose 2^64 addresses it could otherwise rotate through.
pub(crate) fn limited_address(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

impl fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Ip(ip) => ip.fmt(f),
            Subject::Key(k) => f.write_str(k),
        }
    }
}

/// The outcome of one check: everything the `RateLimit-*` and `Retry-After` headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The bucket size (the rate's burst): `remaining` never exceeds it.
    pub limit: u32,
    /// Requests that could still be sent right now after this one (0 when refused).
    pub remaining: u32,
    /// Time until the bucket is full again (`RateLimit-Reset`).
    pub reset_after: Duration,
    /// When refused: time until the next request would be admitted (`Retry-After`).
    pub retry_after: Option<Duration>,
}

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
/// The rate-limit headers whose values change with every response (sent never-indexed).
pub(crate) const VARYING_HEADERS: [HeaderName; 2] = [RATELIMIT_REMAINING, RATELIMIT_RESET];

impl Decision {
    /// `RateLimit-Reset`: whole seconds, rounded up.
    pub fn reset_secs(&self) -> u64 {
        ceil_secs(self.reset_after)
    }

    /// `Retry-After`: whole seconds, rounded up (so never 0 when refused).
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(ceil_secs)
    }

    /// The decision that should be reported when a request passed several limits: a refusal
    /// over an admission, then the fewer remaining, then the longer wait.
    pub fn tighter(self, other: Decision) -> Decision {
        let key = |d: &Decision| {
            (d.allowed, std::cmp::Reverse(d.retry_after), d.remaining, std::cmp::Reverse(d.reset_after))
        };
        if key(&other) < key(&self) {
            other
        } else {
            self
        }
    }

    /// Sets `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (IETF httpapi draft)
    /// and, when refused, `Retry-After`; replaces any existing values.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_LIMIT, number(self.limit.into()));
        headers.insert(RATELIMIT_REMAINING, unindexed(number(self.remaining.into())));
        headers.insert(RATELIMIT_RESET, unindexed(number(self.reset_secs())));
        if let Some(secs) = self.retry_after_secs() {
            headers.insert(RETRY_AFTER, number(secs));
        }
    }
}

/// `n` as a header value. Values below 1024 (most limits, counts and waits) are made once,
/// from static strings (leaked once, a few KiB), so a response's rate-limit headers cost no
/// allocation and cloning them touches no reference count: a shared count is a cache line
/// both proxy workers would write on every response.
fn number(n: u64) -> HeaderValue {
    static SMALL: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    let small = SMALL.get_or_init(|| {
        (0..1024u64).map(|n| HeaderValue::from_static(Box::leak(n.to_string().into_boxed_str()))).collect()
    });
    usize::try_from(n).ok().and_then(|i| small.get(i)).cloned().unwrap_or_else(|| HeaderValue::from(n))
}

/// Marks a value that changes with every response as not worth HTTP/2's header table (HPACK
/// "never indexed"): indexing it would only evict the entries that do repeat, and the encoder
/// would compare each new value with every one it had kept under that name.
fn unindexed(mut value: HeaderValue) -> HeaderValue {
    value.set_sensitive(true);
    value
}

/// A monotonic time source for the local limiter and lockouts; swap in a [`ManualClock`] in tests.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Time since an arbitrary, fixed origin; never goes backwards.
    fn now(&self) -> Duration;
}

/// The real clock (`std::time::Instant`), measured from when it was created.
#[derive(Debug)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    pub fn new() -> Self {
        MonotonicClock { origin: Instant::now() }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    /// Starts at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn advance(&self, by: Duration) {
        self.nanos.fetch_add(nanos(by), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

/// Saturating conversion: u64 nanoseconds cover 584 years.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Why the configured limiter cannot be built (a config problem, not Redis being down).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("rate_limit.backend = \"redis\" needs a Redis URL (rate_limit.redis_url_env)")]
    MissingRedisUrl,
    #[error("rate_limit.redis_url_env: not a usable Redis URL: {0}")]
    BadRedisUrl(::redis::RedisError),
}

/// The configured limiter: [`LocalLimiter`] or [`RedisLimiter`] (which falls back to its own
/// local limiter whenever Redis does not answer). Share it in an `Arc`.
#[derive(Debug)]
pub enum RateLimiter {
    Local(LocalLimiter),
    Redis(RedisLimiter),
}

impl RateLimiter {
    /// Builds the limiter `rate_limit` asks for. With `backend = "redis"` it tries to connect
    /// once (bounded by a few seconds); if Redis is down it starts degraded — local limits,
    /// one warning — and keeps probing. Fails only on a missing or malformed URL.
    pub async fn from_config(cfg: &RateLimitConfig) -> Result<Self, SetupError> {
        match cfg.backend {
            RateLimitBackend::Local => Ok(RateLimiter::Local(LocalLimiter::new())),
            RateLimitBackend::Redis => {
                let url = cfg.redis_url.as_ref().ok_or(SetupError::MissingRedisUrl)?;
                let limiter =
                    RedisLimiter::connect(url.expose(), cfg.redis_timeout, Arc::new(MonotonicClock::new()))
                        .await
                        .map_err(SetupError::BadRedisUrl)?;
                Ok(RateLimiter::Redis(limiter))
            }
        }
    }

    /// A local limiter with default capacity (handy in tests and for `backend = "local"`).
    pub fn local() -> Self {
        RateLimiter::Local(LocalLimiter::new())
    }

    /// Counts one request of `subject` in `scope` against `rate` and says whether to admit it.
    /// Never fails: Redis trouble means a local decision (see [`RedisLimiter::check`]).
    pub async fn check(&self, scope: &str, subject: Subject<'_>, rate: &Rate) -> Decision {
        match self {
            RateLimiter::Local(l) => l.check(scope, subject, rate),
            RateLimiter::Redis(r) => r.check(scope, subject, rate).await,
        }
    }

    /// Counts one request against every check, in order, stopping at the first refusal — what
    /// calling [`check`](Self::check) for each would decide (see [`batch`](self::batch) for the
    /// exact semantics), in at most one Redis round trip. For the failed-auth lockout in the
    /// same round trip use [`FailedAuthTracker::check_batch`]. Never fails.
    pub async fn check_batch(&self, checks: &[LimitCheck<'_>]) -> BatchOutcome {
        match self {
            RateLimiter::Local(l) => l.check_batch(checks),
            RateLimiter::Redis(r) => r.check_batch(checks).await,
        }
    }

    /// True while the Redis backend is unreachable and local limits apply (for `/readyz` and
    /// metrics). Always false for the local backend.
    pub fn is_degraded(&self) -> bool {
        match self {
            RateLimiter::Local(_) => false,
            RateLimiter::Redis(r) => r.is_degraded(),
        }
    }

    /// `"local"`, `"redis"` or `"redis-degraded"`, for status output.
    pub fn backend_name(&self) -> &'static str {
        match self {
            RateLimiter::Local(_) => "local",
            RateLimiter::Redis(r) if r.is_degraded() => "redis-degraded",
            RateLimiter::Redis(_) => "redis",
        }
    }

    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        match self {
            RateLimiter::Local(l) => l.clock(),
            RateLimiter::Redis(r) => r.local().clock(),
        }
    }

    pub(crate) fn redis_link(&self) -> Option<&Arc<redis::RedisLink>> {
        match self {
            RateLimiter::Local(_) => None,
            RateLimiter::Redis(r) => Some(r.link()),
        }
    }
}

/// Helpers for the Redis-backed tests: a server URL from `FGW_TEST_REDIS_URL`, or a skip note.
#[cfg(test)]
pub(crate) mod test_redis {
    pub fn url(test: &str) -> Option<String> {
        match std::env::var("FGW_TEST_REDIS_URL") {
            Ok(url) if !url.is_empty() => Some(url),
            _ => {
                println!("skipping {test}: set FGW_TEST_REDIS_URL=redis://127.0.0.1:PORT to run it");
                None
            }
        }
    }

    /// A key prefix no other test run shares, so tests can run against one server at once.
    pub fn unique(tag: &str) -> String {
        format!("{tag}-{:016x}", rand::random::<u64>())
    }

    /// Application-log lines written on this thread while the guard lives (a `#[tokio::test]`
    /// runtime runs its tasks on the test's thread).
    #[derive(Clone, Default)]
    pub struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Logs {
        pub fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
            let logs = Logs::default();
            let sink = logs.clone();
            let subscriber =
                tracing_subscriber::fmt().with_writer(move || sink.clone()).with_ansi(false).finish();
            (logs, tracing::subscriber::set_default(subscriber))
        }

        pub fn count(&self, needle: &str) -> usize {
            String::from_utf8_lossy(&self.0.lock().unwrap()).matches(needle).count()
        }
    }

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(allowed: bool, remaining: u32, reset: u64, retry: Option<u64>) -> Decision {
        Decision {
            allowed,
            limit: 60,
            remaining,
            reset_after: Duration::from_millis(reset),
            retry_after: retry.map(Duration::from_millis),
        }
    }

    /// HTTP/2 keeps the limit (it repeats) in its header table, not the values that change.
    #[test]
    fn values_that_change_per_response_are_not_indexed() {
        let mut headers = HeaderMap::new();
        decision(true, 59, 1000, None).write_headers(&mut headers);
        assert!(!headers[RATELIMIT_LIMIT].is_sensitive());
        assert!(headers[RATELIMIT_REMAINING].is_sensitive());
        assert!(headers[RATELIMIT_RESET].is_sensitive());
        assert_eq!(headers[RATELIMIT_REMAINING], "59");
    }

    #[test]
    fn headers_round_up_to_whole_seconds() {
        let mut headers = HeaderMap::new();
        decision(false, 0, 59_001, Some(1)).write_headers(&mut headers);
        assert_eq!(headers["ratelimit-limit"], "60");
        assert_eq!(headers["ratelimit-remaining"], "0");
        assert_eq!(headers["ratelimit-reset"], "60");
        assert_eq!(headers["retry-after"], "1");
        let mut headers = HeaderMap::new();
        decision(true, 59, 1000, None).write_headers(&mut headers);
        assert_eq!(headers["ratelimit-reset"], "1");
        assert!(!headers.contains_key("retry-after"));
    }

    /// The shared small values and the ones made per response read the same.
    #[test]
    fn numbers_on_both_sides_of_the_shared_table() {
        for n in [0u64, 7, 10, 99, 100, 1023, 1024, 86_400, u64::MAX] {
            assert_eq!(number(n), n.to_string().as_str(), "{n}");
        }
    }

    #[test]
    fn tighter_prefers_refusal_then_fewer_remaining() {
        let ok_many = decision(true, 50, 1000, None);
        let ok_few = decision(true, 3, 500, None);
        let refused_short = decision(false, 0, 60_000, Some(100));
        let refused_long = decision(false, 0, 60_000, Some(9000));
        assert_eq!(ok_many.tighter(ok_few), ok_few);
        assert_eq!(ok_few.tighter(ok_many), ok_few);
        assert_eq!(ok_few.tighter(refused_short), refused_short);
        assert_eq!(refused_short.tighter(refused_long), refused_long);
        assert_eq!(refused_long.tighter(ok_many), refused_long);
    }

    #[test]
    fn a_mapped_address_is_its_ipv4() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(Subject::Ip(mapped).canonical(), Subject::Ip(ip));
    }

    /// An IPv6 host's /64 is one subject; IPv4 addresses stay apart.
    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(limited_address(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_eq!(limited_address(a), limited_address(b));
        assert_ne!(limited_address(a), limited_address(other));
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v4_next: IpAddr = "192.0.2.2".parse().unwrap();
        assert_ne!(limited_address(v4), limited_address(v4_next));
        assert_eq!(limited_address("::ffff:192.0.2.1".parse().unwrap()), v4);
        let local = LocalLimiter::new();
        let rate = Rate { count: 2, per: Duration::from_secs(60), burst: 2 };
        let admitted = |ip| local.check("ip", Subject::Ip(ip), &rate).allowed;
        assert!(admitted(a) && admitted(b), "two addresses of one /64 share the bucket");
        assert!(!admitted("2001:db8:1:2::99".parse().unwrap()), "a third address of it is refused");
        assert!(admitted(other), "another /64 has its own");
    }
}
