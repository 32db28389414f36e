//! The Redis backend: a connection per proxy worker (and one shared by everything else) with
//! one degraded switch, and GCRA in a Lua script.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisResult, Script};
use arc_swap::ArcSwapOption;

use super::batch::{BatchOutcome, LimitCheck};
use super::gcra::Gcra;
use super::group::{self, Batch, GROUP_LUA};
use super::{nanos, Clock, Decision, LocalLimiter, Subject};
use crate::config::Rate;

/// How often a degraded link lets one request try Redis again.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The GCRA of `gcra.rs` on the Redis server's clock (µs), so all instances share one time
/// line. Reply: `{allowed 0|1, remaining, retry_after_us, reset_after_us}`. The key expires
/// when its bucket would be full again, so idle subjects cost nothing.
/// `replicate_commands` lets Redis < 5 write after `TIME` (a no-op on newer servers).
const GCRA_LUA: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tau = t * (burst - 1)
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local allow_at = tat - tau
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
local new_tat = tat + t
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((now + tau + t - new_tat) / t), 0, new_tat - now}
"#;

/// What Redis answered to a batch.
#[derive(Debug)]
pub(crate) enum SharedBatch {
    /// The lock key is live: milliseconds left, or `None` for a key without expiry.
    Locked(Option<u64>),
    /// Not locked (or not asked): the buckets' decisions.
    Decided(BatchOutcome),
}

/// The Redis connections of the limiter, the lockout tracker and the revocation bus, with the
/// "degraded" switch they all honour.
///
/// A proxy worker (a single-threaded runtime) uses a connection of its own, made on its own
/// runtime, so a request's Redis call is written and answered on the request's thread: the
/// shared connection's task lives on the main runtime, and reaching it costs two cross-thread
/// wake-ups per call. Until a worker's connection is up the worker uses the shared one.
///
/// Every operation runs under `timeout`. The first failure (error or timeout) flips the link to
/// degraded and logs one warning; while degraded, callers get `None` at once (they fall back
/// to local state) except for one probe per [`PROBE_INTERVAL`]. The first success logs one
/// info line and flips it back.
pub(crate) struct RedisLink {
    /// Tells this link's per-thread connections from other links' (tests run several gateways
    /// in one process).
    id: u64,
    client: Client,
    conn: ArcSwapOption<ConnectionManager>,
    connecting: AtomicBool,
    timeout: Duration,
    degraded: AtomicBool,
    /// Clock nanoseconds before which no probe is made while degraded.
    next_probe: AtomicU64,
    clock: Arc<dyn Clock>,
}

impl RedisLink {
    /// Parses `url` (the only error) and tries one connection; if Redis is down the link
    /// starts degraded and connects later in the background.
    pub(crate) async fn connect(
        url: &str,
        timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> RedisResult<Arc<Self>> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let link = Arc::new(RedisLink {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            client: Client::open(url)?,
            conn: ArcSwapOption::empty(),
            connecting: AtomicBool::new(false),
            timeout,
            degraded: AtomicBool::new(false),
            next_probe: AtomicU64::new(0),
            clock,
        });
        match tokio::time::timeout(link.connect_budget(), link.new_manager()).await {
            Ok(Ok(manager)) => link.conn.store(Some(Arc::new(manager))),
            Ok(Err(e)) => link.failed(&e),
            Err(_) => link.failed(&"connection timed out"),
        }
        Ok(link)
    }

    pub(crate) fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }

    /// Tells this link from the others of the process (per-thread state is kept by it).
    pub(super) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `op` on the shared connection under the timeout. `None` means "Redis did not
    /// answer, use local state": degraded (and not this request's turn to probe), not
    /// connected, an error, or a timeout. `always` skips the probe throttle (rare calls such
    /// as a revocation publish).
    pub(crate) async fn run<T, F, Fut>(self: &Arc<Self>, always: bool, op: F) -> Option<T>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if !always && !self.may_try() {
            return None;
        }
        let conn = match self.worker_connection() {
            Some(conn) => conn,
            None => match self.conn.load_full() {
                Some(conn) => (*conn).clone(),
                None => {
                    self.spawn_connect();
                    self.failed(&"not connected");
                    return None;
                }
            },
        };
        let started = tokio::time::Instant::now();
        let outcome = match tokio::time::timeout(self.timeout, op(conn.clone())).await {
            // A connection that died while Redis was away (a worker's own is not used again
            // until a request on that worker comes): the manager reconnects on this error,
            // so one more try, within what is left of the timeout, tells an outage from a
            // stale connection.
            Ok(Err(e)) if e.is_connection_dropped() || e.is_io_error() => {
                let left = self.timeout.saturating_sub(started.elapsed());
                tokio::time::timeout(left, op(conn)).await
            }
            first => first,
        };
        match outcome {
            Ok(Ok(value)) => {
                self.succeeded();
                Some(value)
            }
            Ok(Err(e)) => {
                self.failed(&e);
                None
            }
            Err(_) => {
                self.failed(&format_args!("no answer within {:?}", self.timeout));
                None
            }
        }
    }

    /// Healthy: always. Degraded: only the one caller that claims the next probe slot.
    fn may_try(&self) -> bool {
        if !self.is_degraded() {
            return true;
        }
        let now = nanos(self.clock.now());
        let due = self.next_probe.load(Ordering::Acquire);
        now >= due
            && self
                .next_probe
                .compare_exchange(due, now + nanos(PROBE_INTERVAL), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    fn failed(&self, error: &dyn fmt::Display) {
        self.next_probe.store(nanos(self.clock.now()) + nanos(PROBE_INTERVAL), Ordering::Release);
        if !self.degraded.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                error = %error,
                "Redis unreachable: rate limits and lockouts fall back to this instance's local state \
                 until it answers again"
            );
        }
    }

    fn succeeded(&self) {
        if self.degraded.swap(false, Ordering::AcqRel) {
            tracing::info!("Redis answers again: shared rate limits and lockouts resumed");
        }
    }

    /// Connects in the background (at most one attempt at a time); requests never wait on it.
    fn spawn_connect(self: &Arc<Self>) {
        if self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let link = self.clone();
        crate::spawn(async move {
            if let Ok(Ok(manager)) = tokio::time::timeout(link.connect_budget(), link.new_manager()).await {
                link.conn.store(Some(Arc::new(manager)));
            }
            link.connecting.store(false, Ordering::Release);
        });
    }

    /// This proxy worker's own connection, once it is up. `None` off the proxy workers (the
    /// main runtime uses the shared connection) and while it connects: the first call on a
    /// worker starts connecting in the background (again at most every [`PROBE_INTERVAL`]
    /// after a failure), so no request waits for it.
    fn worker_connection(self: &Arc<Self>) -> Option<ConnectionManager> {
        if !on_proxy_worker() {
            return None;
        }
        WORKER_CONNECTIONS.with_borrow_mut(|slots| {
            let slot = match slots.iter_mut().find(|(id, _)| *id == self.id) {
                Some((_, slot)) => slot,
                None => {
                    slots.push((self.id, WorkerConnection::Idle { retry_at: Instant::now() }));
                    &mut slots.last_mut().expect("just pushed").1
                }
            };
            match slot {
                WorkerConnection::Up(conn) => Some(conn.clone()),
                WorkerConnection::Connecting => None,
                WorkerConnection::Idle { retry_at } if Instant::now() < *retry_at => None,
                WorkerConnection::Idle { .. } => {
                    *slot = WorkerConnection::Connecting;
                    // A current-thread runtime polls its tasks on this thread only: the task
                    // fills in this thread's slot.
                    let link = self.clone();
                    tokio::spawn(async move {
                        let made = tokio::time::timeout(link.connect_budget(), link.new_manager()).await;
                        let next = match made {
                            Ok(Ok(manager)) => WorkerConnection::Up(manager),
                            _ => WorkerConnection::Idle { retry_at: Instant::now() + PROBE_INTERVAL },
                        };
                        WORKER_CONNECTIONS.with_borrow_mut(|slots| {
                            if let Some((_, slot)) = slots.iter_mut().find(|(id, _)| *id == link.id) {
                                *slot = next;
                            }
                        });
                    });
                    None
                }
            }
        })
    }

    /// A connection manager that reconnects by itself after errors, with short retries: our
    /// own probe, not its backoff, decides when Redis counts as back.
    async fn new_manager(&self) -> RedisResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.connect_budget() / 2)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1)
            .set_max_delay(500);
        ConnectionManager::new_with_config(self.client.clone(), config).await
    }

    /// Connecting takes a few round trips more than a command; a generous bound is fine
    /// because it never delays a request.
    fn connect_budget(&self) -> Duration {
        (self.timeout * 20).clamp(Duration::from_millis(500), Duration::from_secs(3))
    }
}

/// True on a proxy worker's thread: a current-thread runtime, one per thread, whose tasks all
/// run here (so per-thread state such as its Redis connection serves them all).
pub(super) fn on_proxy_worker() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|runtime| runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
}

/// A proxy worker's own connection to one link's Redis (see [`RedisLink::worker_connection`]).
enum WorkerConnection {
    Idle { retry_at: Instant },
    Connecting,
    Up(ConnectionManager),
}

thread_local! {
    /// Per link id: this thread's connection. Only proxy workers' threads fill it.
    static WORKER_CONNECTIONS: RefCell<Vec<(u64, WorkerConnection)>> = const { RefCell::new(Vec::new()) };
}

impl fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: never print it.
        f.debug_struct("RedisLink")
            .field("timeout", &self.timeout)
            .field("degraded", &self.is_degraded())
            .finish_non_exhaustive()
    }
}

/// Limits shared by every instance through Redis (`rate_limit.backend = "redis"`).
///
/// One round trip per check: `EVALSHA` of a GCRA script (loaded on first use and reloaded
/// automatically after a Redis restart), keys `fgw:rl:{scope}:{subject}` expiring when the
/// bucket would be full. When Redis does not answer within `redis_timeout`, or the link is
/// degraded, the check is decided by this instance's own [`LocalLimiter`] — same algorithm,
/// state not shared, so during an outage each instance admits up to the full limit.
#[derive(Debug)]
pub struct RedisLimiter {
    link: Arc<RedisLink>,
    local: LocalLimiter,
    script: Script,
    /// Batches, one request's or a worker's group of them (`group.rs`).
    group_script: Script,
}

impl RedisLimiter {
    /// Fails only when `url` is not a Redis URL; an unreachable server means starting degraded.
    pub async fn connect(url: &str, timeout: Duration, clock: Arc<dyn Clock>) -> RedisResult<Self> {
        let link = RedisLink::connect(url, timeout, clock.clone()).await?;
        let local = LocalLimiter::with_clock(clock, super::local::DEFAULT_MAX_SUBJECTS);
        Ok(RedisLimiter { link, local, script: Script::new(GCRA_LUA), group_script: Script::new(GROUP_LUA) })
    }

    /// Counts one request in Redis, or locally when Redis does not answer. Never fails.
    pub async fn check(&self, scope: &str, subject: Subject<'_>, rate: &Rate) -> Decision {
        let subject = subject.canonical();
        let gcra = Gcra::new(rate, Duration::from_micros(1));
        let key = &bucket_key(scope, subject);
        let script = &self.script;
        let reply = self
            .link
            .run(false, |mut conn| async move {
                script
                    .key(key)
                    .arg(gcra.interval())
                    .arg(gcra.burst())
                    .invoke_async::<(i64, i64, i64, i64)>(&mut conn)
                    .await
            })
            .await;
        match reply {
            Some((allowed, remaining, retry_after, reset_after)) => {
                let non_neg = |v: i64| u64::try_from(v).unwrap_or(0);
                gcra.decision(allowed == 1, non_neg(remaining), non_neg(retry_after), non_neg(reset_after))
            }
            None => self.local.check(scope, subject, rate),
        }
    }

    /// Decides `checks` (see [`batch`](super::batch)) in one `EVALSHA` round trip, or
    /// locally — the whole batch — when Redis does not answer. Never fails.
    pub async fn check_batch(&self, checks: &[LimitCheck<'_>]) -> BatchOutcome {
        match self.shared_batch(None, checks).await {
            Some(SharedBatch::Decided(outcome)) => outcome,
            // Not asked for a lock: cannot be locked.
            Some(SharedBatch::Locked(_)) | None => self.local.check_batch(checks),
        }
    }

    /// The batch in Redis, with the lockout probe of `lock_key` first when given; `None` when
    /// Redis did not answer (the caller decides locally). No round trip when there is nothing
    /// to ask; on a proxy worker the batch shares its script call with the batches of the
    /// worker's other requests queued behind the call in flight (`group.rs`).
    pub(crate) async fn shared_batch(
        &self,
        lock_key: Option<&str>,
        checks: &[LimitCheck<'_>],
    ) -> Option<SharedBatch> {
        if lock_key.is_none() && checks.is_empty() {
            return Some(SharedBatch::Decided(BatchOutcome::for_checks(0)));
        }
        let gcras: Vec<Gcra> = checks.iter().map(|c| Gcra::new(&c.rate, Duration::from_micros(1))).collect();
        let buckets = checks
            .iter()
            .zip(&gcras)
            .map(|(c, gcra)| (bucket_key(c.scope, c.subject.canonical()), gcra.interval(), gcra.burst()))
            .collect();
        let batch = Batch { lock_key: lock_key.map(str::to_owned), buckets };
        let reply = group::decide(&self.link, &self.group_script, batch).await?;
        parse_batch(&reply, &gcras)
    }

    /// True while Redis is unreachable and local limits apply.
    pub fn is_degraded(&self) -> bool {
        self.link.is_degraded()
    }

    pub(crate) fn link(&self) -> &Arc<RedisLink> {
        &self.link
    }

    pub(crate) fn local(&self) -> &LocalLimiter {
        &self.local
    }
}

/// The key a bucket lives under, shared by `check` and the batch.
fn bucket_key(scope: &str, subject: Subject<'_>) -> String {
    format!("fgw:rl:{scope}:{subject}")
}

/// Reads one batch's answer (`group::GROUP_LUA`); `None` (decide locally) when it is not one.
fn parse_batch(reply: &[i64], gcras: &[Gcra]) -> Option<SharedBatch> {
    let (&head, fields) = reply.split_first()?;
    if head != -2 {
        return Some(SharedBatch::Locked(u64::try_from(head).ok()));
    }
    if fields.len() % 4 != 0 || fields.len() / 4 > gcras.len() {
        tracing::warn!(len = reply.len(), "unexpected reply from the Redis batch script");
        return None;
    }
    let non_neg = |v: i64| u64::try_from(v).unwrap_or(0);
    let mut outcome = BatchOutcome::for_checks(gcras.len());
    for (f, gcra) in fields.chunks_exact(4).zip(gcras) {
        let decision = gcra.decision(f[0] == 1, non_neg(f[1]), non_neg(f[2]), non_neg(f[3]));
        if !outcome.push(decision) {
            break;
        }
    }
    Some(SharedBatch::Decided(outcome))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::policy::rate_limit::test_redis;
    use crate::policy::rate_limit::{ManualClock, MonotonicClock};
    use tokio::net::{TcpListener, TcpStream};

    fn per_min(count: u32) -> Rate {
        Rate { count, per: Duration::from_secs(60), burst: count }
    }

    async fn limiter(url: &str) -> RedisLimiter {
        RedisLimiter::connect(url, Duration::from_millis(200), Arc::new(MonotonicClock::new())).await.unwrap()
    }

    #[tokio::test]
    async fn unreachable_redis_falls_back_to_local_limits() {
        // Nothing listens on a port we just bound and dropped.
        let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        let clock = Arc::new(ManualClock::new());
        let url = format!("redis://127.0.0.1:{port}");
        let limiter = RedisLimiter::connect(&url, Duration::from_millis(50), clock.clone()).await.unwrap();
        assert!(limiter.is_degraded());
        let rate = per_min(60);
        let admitted =
            futures_util::future::join_all((0..200).map(|_| limiter.check("key", Subject::Key("k"), &rate)))
                .await
                .into_iter()
                .filter(|d| d.allowed)
                .count();
        assert_eq!(admitted, 60);
        assert!(limiter.is_degraded());
    }

    #[tokio::test]
    async fn unreachable_redis_decides_batches_locally() {
        let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        let clock = Arc::new(ManualClock::new());
        let url = format!("redis://127.0.0.1:{port}");
        let limiter = RedisLimiter::connect(&url, Duration::from_millis(50), clock.clone()).await.unwrap();
        let checks = [
            LimitCheck::new("ip", Subject::Ip("192.0.2.3".parse().unwrap()), per_min(100)),
            LimitCheck::new("key", Subject::Key("k"), per_min(10)),
        ];
        let mut admitted = 0;
        for _ in 0..30 {
            let outcome = limiter.check_batch(&checks).await;
            admitted += usize::from(outcome.admitted());
            assert_eq!(outcome.decisions().len(), 2);
        }
        assert_eq!(admitted, 10);
        assert!(limiter.is_degraded());
    }

    #[test]
    fn batch_replies_are_read_or_rejected() {
        let gcras = [Gcra::new(&per_min(60), Duration::from_micros(1)); 2];
        match parse_batch(&[1500], &gcras) {
            Some(SharedBatch::Locked(Some(1500))) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_batch(&[-1], &gcras), Some(SharedBatch::Locked(None))));
        let Some(SharedBatch::Decided(outcome)) =
            parse_batch(&[-2, 1, 59, 0, 1_000_000, 0, 0, 1_000_000, 60_000_000], &gcras)
        else {
            panic!("not decided")
        };
        assert_eq!(outcome.decisions().len(), 2);
        assert_eq!(outcome.refused().map(|(i, d)| (i, d.retry_after_secs())), Some((1, Some(1))));
        assert_eq!(outcome.decisions()[0].remaining, 59);
        // Malformed: the caller falls back to local limits.
        assert!(parse_batch(&[], &gcras).is_none());
        assert!(parse_batch(&[-2, 1, 2], &gcras).is_none());
        assert!(parse_batch(&[-2, 1, 2, 0, 5, 1, 2, 0, 5, 1, 2, 0, 5], &gcras).is_none());
    }

    #[tokio::test]
    async fn redis_batch_equals_sequential_checks() {
        let Some(url) = test_redis::url("redis_batch_equals_sequential_checks") else { return };
        let limiter = limiter(&url).await;
        let (a, b) = (test_redis::unique("batch-a"), test_redis::unique("batch-b"));
        let (ip_rate, key_rate) = (per_min(8), per_min(5));
        for round in 0..12 {
            let batch = limiter
                .check_batch(&[
                    LimitCheck::new("ip", Subject::Key(&a), ip_rate),
                    LimitCheck::new("key", Subject::Key(&a), key_rate),
                ])
                .await;
            let mut sequential = BatchOutcome::for_checks(2);
            if sequential.push(limiter.check("ip", Subject::Key(&b), &ip_rate).await) {
                sequential.push(limiter.check("key", Subject::Key(&b), &key_rate).await);
            }
            let summary = |o: &BatchOutcome| {
                o.decisions()
                    .iter()
                    .map(|d| (d.allowed, d.limit, d.remaining, d.retry_after_secs()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(summary(&batch), summary(&sequential), "round {round}");
        }
    }

    #[tokio::test]
    async fn bad_url_is_a_setup_error() {
        assert!(RedisLimiter::connect(
            "not a url",
            Duration::from_millis(50),
            Arc::new(MonotonicClock::new())
        )
        .await
        .is_err());
    }

    #[tokio::test]
    async fn redis_gcra_admits_exactly_the_burst() {
        let Some(url) = test_redis::url("redis_gcra_admits_exactly_the_burst") else { return };
        let limiter = limiter(&url).await;
        assert!(!limiter.is_degraded());
        let key = test_redis::unique("burst");
        let rate = per_min(60);
        let mut decisions = Vec::new();
        for _ in 0..200 {
            decisions.push(limiter.check("key", Subject::Key(&key), &rate).await);
        }
        assert_eq!(decisions.iter().filter(|d| d.allowed).count(), 60);
        assert!(decisions[..60].iter().all(|d| d.allowed));
        assert_eq!((decisions[0].limit, decisions[0].remaining, decisions[0].reset_secs()), (60, 59, 1));
        assert_eq!(decisions[59].remaining, 0);
        let refused = decisions[199];
        assert_eq!(refused.retry_after_secs(), Some(1));
        assert_eq!(refused.reset_secs(), 60);
    }

    #[tokio::test]
    async fn two_instances_share_one_limit() {
        let Some(url) = test_redis::url("two_instances_share_one_limit") else { return };
        let (a, b) = (limiter(&url).await, limiter(&url).await);
        let key = test_redis::unique("shared");
        let rate = per_min(100);
        let mut admitted = 0;
        for i in 0..200 {
            let which = if i % 2 == 0 { &a } else { &b };
            admitted += usize::from(which.check("key", Subject::Key(&key), &rate).await.allowed);
        }
        assert_eq!(admitted, 100);
    }

    #[tokio::test]
    async fn keys_expire_once_the_bucket_is_full() {
        let Some(url) = test_redis::url("keys_expire_once_the_bucket_is_full") else { return };
        let limiter = limiter(&url).await;
        let key = test_redis::unique("ttl");
        limiter
            .check("key", Subject::Key(&key), &Rate { count: 10, per: Duration::from_secs(1), burst: 10 })
            .await;
        let mut conn = limiter.link.conn.load_full().unwrap().as_ref().clone();
        let pttl: i64 =
            ::redis::cmd("PTTL").arg(format!("fgw:rl:key:{key}")).query_async(&mut conn).await.unwrap();
        assert!((1..=100).contains(&pttl), "{pttl}");
    }

    /// A TCP forwarder to a real Redis that the test can cut and restore: an outage without
    /// touching the shared server.
    pub(crate) struct Switch {
        pub url: String,
        addr: std::net::SocketAddr,
        target: String,
        task: Option<tokio::task::JoinHandle<()>>,
    }

    impl Switch {
        pub async fn new(redis_url: &str) -> Switch {
            let target = redis_url.trim_start_matches("redis://").trim_end_matches('/').to_string();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let mut switch = Switch { url: format!("redis://{addr}"), addr, target, task: None };
            switch.serve(listener);
            switch
        }

        fn serve(&mut self, listener: TcpListener) {
            let target = self.target.clone();
            self.task = Some(crate::spawn(async move {
                let mut pipes = tokio::task::JoinSet::new();
                while let Ok((mut client, _)) = listener.accept().await {
                    let target = target.clone();
                    pipes.spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(&target).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                }
            }));
        }

        /// Drops the listener and every open connection (the JoinSet aborts its pipes).
        pub fn cut(&mut self) {
            if let Some(task) = self.task.take() {
                task.abort();
            }
        }

        pub async fn restore(&mut self) {
            let listener = TcpListener::bind(self.addr).await.unwrap();
            self.serve(listener);
        }
    }

    impl Drop for Switch {
        fn drop(&mut self) {
            self.cut();
        }
    }

    #[tokio::test]
    async fn outage_degrades_then_recovers() {
        let Some(url) = test_redis::url("outage_degrades_then_recovers") else { return };
        let (logs, _guard) = test_redis::Logs::capture();
        let mut switch = Switch::new(&url).await;
        let limiter = limiter(&switch.url).await;
        let key = test_redis::unique("outage");
        let rate = per_min(1000);
        assert!(limiter.check("key", Subject::Key(&key), &rate).await.allowed);
        assert!(!limiter.is_degraded());

        switch.cut();
        // Requests keep being decided (locally) while Redis is away.
        let mut answered = 0;
        for _ in 0..20 {
            answered += usize::from(limiter.check("key", Subject::Key(&key), &rate).await.allowed);
        }
        assert_eq!(answered, 20);
        assert!(limiter.is_degraded());

        switch.restore().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while limiter.is_degraded() {
            assert!(tokio::time::Instant::now() < deadline, "did not recover");
            limiter.check("key", Subject::Key(&key), &rate).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(limiter.check("key", Subject::Key(&key), &rate).await.allowed);
        // One line for the switch, one for the recovery, however many requests saw the outage.
        assert_eq!(logs.count("Redis unreachable"), 1);
        assert_eq!(logs.count("Redis answers again"), 1);
    }
}
