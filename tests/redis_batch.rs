//! The batched limit check (`FailedAuthTracker::check_batch`, `RateLimiter::check_batch`)
//! against a real `redis-server` on a free loopback port: one round trip per batch, the same
//! decisions as the sequential calls, the script reloaded after `SCRIPT FLUSH` or a restart,
//! and local decisions while Redis is down. Needs `redis-server` on PATH (`.ci/run`
//! installs it).

mod common;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis::Redis;
use frappe_gateway::config::Rate;
use frappe_gateway::policy::rate_limit::{BatchOutcome, LimitCheck};
use frappe_gateway::policy::{FailedAuthTracker, MonotonicClock, RateLimiter, RedisLimiter, Subject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP forwarder in front of Redis that counts round trips: a client write that follows a
/// server reply (or opens the conversation) starts a new one. Requests here are awaited one
/// at a time, so this is exactly the number of request/response exchanges.
struct CountingProxy {
    url: String,
    round_trips: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

const NONE: u8 = 0;
const TO_SERVER: u8 = 1;
const TO_CLIENT: u8 = 2;

impl CountingProxy {
    async fn new(target_port: u16) -> CountingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}/0", listener.local_addr().unwrap());
        let round_trips = Arc::new(AtomicU64::new(0));
        let counter = round_trips.clone();
        let task = tokio::spawn(async move {
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let counter = counter.clone();
                pipes.spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await else {
                        return;
                    };
                    let last = Arc::new(AtomicU8::new(NONE));
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = {
                        let last = last.clone();
                        async move {
                            let mut buf = vec![0u8; 16 * 1024];
                            while let Ok(n @ 1..) = cr.read(&mut buf).await {
                                if last.swap(TO_SERVER, Ordering::SeqCst) != TO_SERVER {
                                    counter.fetch_add(1, Ordering::SeqCst);
                                }
                                if sw.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    };
                    let down = async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n @ 1..) = sr.read(&mut buf).await {
                            last.store(TO_CLIENT, Ordering::SeqCst);
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    tokio::select! { _ = up => {}, _ = down => {} }
                });
            }
        });
        CountingProxy { url, round_trips, task }
    }

    fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn per_min(count: u32) -> Rate {
    Rate { count, per: Duration::from_secs(60), burst: count }
}

/// A random client address in 100.64.0.0/10 and a random key, so runs never share state.
fn fresh_subjects() -> (IpAddr, String) {
    let ip = IpAddr::from([100, 64 + rand::random::<u8>() % 64, rand::random(), rand::random()]);
    (ip, format!("batch-{:016x}", rand::random::<u64>()))
}

async fn tracker(url: &str, timeout: Duration) -> FailedAuthTracker {
    let limiter = RedisLimiter::connect(url, timeout, Arc::new(MonotonicClock::new())).await.unwrap();
    assert!(!limiter.is_degraded(), "Redis at {url} answers");
    FailedAuthTracker::new(Arc::new(RateLimiter::Redis(limiter)), Some(per_min(3)), Duration::from_secs(60))
}

/// `calls` of one command in `INFO commandstats` (0 when never called).
async fn calls(conn: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await.unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// The sequential calls a batch replaces: lockout probe, then each check until a refusal.
async fn sequential(
    tracker: &FailedAuthTracker,
    limiter: &RateLimiter,
    ip: IpAddr,
    checks: &[LimitCheck<'_>],
) -> Vec<(bool, u32, u32, Option<u64>)> {
    let mut out = Vec::new();
    if tracker.locked(ip).await.is_some() {
        return out;
    }
    for c in checks {
        let d = limiter.check(c.scope, c.subject, &c.rate).await;
        out.push((d.allowed, d.limit, d.remaining, d.retry_after_secs()));
        if !d.allowed {
            break;
        }
    }
    out
}

fn summary(outcome: &BatchOutcome) -> Vec<(bool, u32, u32, Option<u64>)> {
    outcome.decisions().iter().map(|d| (d.allowed, d.limit, d.remaining, d.retry_after_secs())).collect()
}

#[tokio::test]
async fn a_batch_is_one_round_trip_and_sequential_calls_are_three() {
    let redis = Redis::start();
    let proxy = CountingProxy::new(redis.port).await;
    let tracker = tracker(&proxy.url, Duration::from_millis(500)).await;
    let mut admin = redis.admin().await;
    let (ip, key) = fresh_subjects();
    let checks = [
        LimitCheck::new("ip", Subject::Ip(ip), per_min(1000)),
        LimitCheck::new("key", Subject::Key(&key), per_min(1000)),
    ];
    // The first batch loads the script (EVALSHA → NOSCRIPT → SCRIPT LOAD → EVALSHA).
    assert!(tracker.check_batch(Some(ip), &checks).await.admitted());

    let (trips, evalsha) = (proxy.round_trips(), calls(&mut admin, "evalsha").await);
    const BATCHES: u64 = 25;
    for _ in 0..BATCHES {
        let outcome = tracker.check_batch(Some(ip), &checks).await;
        assert!(outcome.admitted());
        assert_eq!(outcome.decisions().len(), 2);
    }
    assert_eq!(proxy.round_trips() - trips, BATCHES, "one round trip per batch");
    assert_eq!(calls(&mut admin, "evalsha").await - evalsha, BATCHES, "one EVALSHA per batch");

    // The sequential API for the same request: PTTL, then one EVALSHA per bucket.
    let limiter = RateLimiter::Redis(
        RedisLimiter::connect(&proxy.url, Duration::from_millis(500), Arc::new(MonotonicClock::new()))
            .await
            .unwrap(),
    );
    sequential(&tracker, &limiter, ip, &checks).await; // loads the single-check script
    let trips = proxy.round_trips();
    sequential(&tracker, &limiter, ip, &checks).await;
    assert_eq!(proxy.round_trips() - trips, 3);

    // Nothing to ask (no lockout probe, no checks): no round trip at all.
    let trips = proxy.round_trips();
    assert!(tracker.check_batch(None, &[]).await.admitted());
    assert_eq!(proxy.round_trips(), trips);
}

#[tokio::test]
async fn batches_decide_like_sequential_calls() {
    let redis = Redis::start();
    let url = redis.url();
    let batch_side = tracker(&url, Duration::from_millis(500)).await;
    let seq_side = tracker(&url, Duration::from_millis(500)).await;
    let seq_limiter = RateLimiter::Redis(
        RedisLimiter::connect(&url, Duration::from_millis(500), Arc::new(MonotonicClock::new()))
            .await
            .unwrap(),
    );
    let (ip_a, key_a) = fresh_subjects();
    let (ip_b, key_b) = fresh_subjects();
    // Per-IP looser than per-key, then per-key refuses, then the per-IP bucket runs dry too:
    // every branch of the script (admit, refuse, stop early) is compared.
    let (ip_rate, key_rate, route_rate) = (per_min(9), per_min(6), per_min(4));
    let route_a = format!("{key_a}-route");
    let route_b = format!("{key_b}-route");
    let checks_a = [
        LimitCheck::new("ip", Subject::Ip(ip_a), ip_rate),
        LimitCheck::new("key", Subject::Key(&key_a), key_rate),
        LimitCheck::new("route:/api/method/x", Subject::Key(&route_a), route_rate),
    ];
    let checks_b = [
        LimitCheck::new("ip", Subject::Ip(ip_b), ip_rate),
        LimitCheck::new("key", Subject::Key(&key_b), key_rate),
        LimitCheck::new("route:/api/method/x", Subject::Key(&route_b), route_rate),
    ];
    let mut refusals = [0; 3];
    for round in 0..14 {
        let batch = batch_side.check_batch(Some(ip_a), &checks_a).await;
        let seq = sequential(&seq_side, &seq_limiter, ip_b, &checks_b).await;
        assert_eq!(summary(&batch), seq, "round {round}");
        if let Some((i, _)) = batch.refused() {
            refusals[i] += 1;
        }
    }
    // A refusal charges the buckets before it, not those after it: rounds 1–4 admit all
    // three; 5–6 are refused by route (4); 7–9 by key (6); 10–14 by ip (9).
    assert_eq!(refusals, [5, 3, 2], "which check refused, by count");

    // Locked out on both sides: nothing decided, nothing charged.
    for _ in 0..4 {
        batch_side.record_failure(ip_a).await;
        seq_side.record_failure(ip_b).await;
    }
    let batch = batch_side.check_batch(Some(ip_a), &checks_a).await;
    assert!(batch.locked_out().is_some());
    assert_eq!(summary(&batch), sequential(&seq_side, &seq_limiter, ip_b, &checks_b).await);
}

#[tokio::test]
async fn a_lock_in_redis_refuses_the_batch_without_charging() {
    let redis = Redis::start();
    let url = redis.url();
    let (a, b) =
        (tracker(&url, Duration::from_millis(500)).await, tracker(&url, Duration::from_millis(500)).await);
    let mut admin = redis.admin().await;
    let (ip, key) = fresh_subjects();
    let checks = [LimitCheck::new("key", Subject::Key(&key), per_min(50))];
    assert!(b.check_batch(Some(ip), &checks).await.admitted());
    for _ in 0..4 {
        a.record_failure(ip).await;
    }
    let outcome = b.check_batch(Some(ip), &checks).await;
    let left = outcome.locked_out().expect("B honours A's lock");
    assert!(left > Duration::from_secs(55) && left <= Duration::from_secs(60), "{left:?}");
    let tat_before: String =
        redis::cmd("GET").arg(format!("fgw:rl:key:{key}")).query_async(&mut admin).await.unwrap();
    // Learnt locally: later batches are refused without Redis, and charge nothing.
    let evalsha = calls(&mut admin, "evalsha").await;
    assert!(b.check_batch(Some(ip), &checks).await.locked_out().is_some());
    assert_eq!(calls(&mut admin, "evalsha").await, evalsha);
    let tat_after: String =
        redis::cmd("GET").arg(format!("fgw:rl:key:{key}")).query_async(&mut admin).await.unwrap();
    assert_eq!(tat_before, tat_after);
}

#[tokio::test]
async fn the_script_is_reloaded_after_script_flush() {
    let redis = Redis::start();
    let tracker = tracker(&redis.url(), Duration::from_millis(500)).await;
    let mut admin = redis.admin().await;
    let (ip, key) = fresh_subjects();
    let checks = [LimitCheck::new("key", Subject::Key(&key), per_min(3))];
    assert_eq!(tracker.check_batch(Some(ip), &checks).await.decisions()[0].remaining, 2);
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut admin).await.unwrap();
    let loads = calls(&mut admin, "script|load").await + calls(&mut admin, "script").await;
    // NOSCRIPT → SCRIPT LOAD → EVALSHA: still decided in Redis (the bucket carries on).
    assert_eq!(tracker.check_batch(Some(ip), &checks).await.decisions()[0].remaining, 1);
    assert!(calls(&mut admin, "script|load").await + calls(&mut admin, "script").await > loads);
    let last = tracker.check_batch(Some(ip), &checks).await;
    assert_eq!((last.admitted(), last.decisions()[0].remaining), (true, 0));
    assert!(!tracker.check_batch(Some(ip), &checks).await.admitted());
}

#[tokio::test]
async fn batches_fall_back_to_local_limits_while_redis_is_stopped() {
    let mut redis = Redis::start();
    let tracker = tracker(&redis.url(), Duration::from_millis(100)).await;
    let (ip, key) = fresh_subjects();
    let checks = [
        LimitCheck::new("ip", Subject::Ip(ip), per_min(1000)),
        LimitCheck::new("key", Subject::Key(&key), per_min(10)),
    ];
    // Spend 4 of the 10 in Redis.
    for _ in 0..4 {
        assert!(tracker.check_batch(Some(ip), &checks).await.admitted());
    }

    redis.stop();
    // The local limiter starts fresh: 10 more are admitted locally, then refused; every
    // batch is answered (bounded by the 100 ms Redis timeout, then at once while degraded).
    let started = Instant::now();
    let admitted = {
        let mut n = 0;
        for _ in 0..20 {
            let outcome = tracker.check_batch(Some(ip), &checks).await;
            assert_eq!(outcome.decisions().len(), 2, "both buckets decided locally");
            n += usize::from(outcome.admitted());
        }
        n
    };
    assert_eq!(admitted, 10);
    assert!(started.elapsed() < Duration::from_secs(5), "degraded batches do not wait on Redis");
    // Failures are counted locally too; the lock then refuses batches locally.
    for _ in 0..4 {
        tracker.record_failure(ip).await;
    }
    assert!(tracker.check_batch(Some(ip), &checks).await.locked_out().is_some());

    // Back (same port, empty: the script must be loaded again): shared limits resume.
    redis.resume();
    let (_, key2) = fresh_subjects();
    let other_ip = IpAddr::from([192, 0, 2, 77]);
    let fresh = [LimitCheck::new("key", Subject::Key(&key2), per_min(5))];
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut admin = redis.admin().await;
    loop {
        // The degraded link probes Redis on traffic, at most once a second.
        tracker.check_batch(Some(other_ip), &fresh).await;
        let tat: Option<String> =
            redis::cmd("GET").arg(format!("fgw:rl:key:{key2}")).query_async(&mut admin).await.unwrap();
        if tat.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "Redis-backed batches did not resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_batches_share_a_call_and_admit_exactly_the_limit() {
    let redis = Redis::start();
    let proxy = CountingProxy::new(redis.port).await;
    let tracker = tracker(&proxy.url, Duration::from_millis(500)).await;
    let (ip, key) = fresh_subjects();
    let checks = [
        LimitCheck::new("ip", Subject::Ip(ip), per_min(1000)),
        LimitCheck::new("key", Subject::Key(&key), per_min(10)),
    ];
    // Loads the script and this runtime's connection, outside the count.
    let (warm_ip, warm_key) = fresh_subjects();
    let warm = [LimitCheck::new("key", Subject::Key(&warm_key), per_min(1000))];
    tracker.check_batch(Some(warm_ip), &warm).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    tracker.check_batch(Some(warm_ip), &warm).await;

    // 40 requests of one worker at once: they are queued together behind one call.
    let trips = proxy.round_trips();
    let outcomes =
        futures_util::future::join_all((0..40).map(|_| tracker.check_batch(Some(ip), &checks))).await;
    let used = proxy.round_trips() - trips;
    assert!((1..=2).contains(&used), "40 concurrent batches took {used} round trips");

    // Judged one after another, in order: exactly the key's 10, remaining 9 down to 0, then
    // refusals by the key bucket (the second check) with the per-IP bucket charged.
    let admitted: Vec<u32> =
        outcomes.iter().filter(|o| o.admitted()).map(|o| o.decisions()[1].remaining).collect();
    assert_eq!(admitted, (0..10).rev().collect::<Vec<_>>());
    for refused in outcomes.iter().filter(|o| !o.admitted()) {
        let (which, decision) = refused.refused().expect("refused by a limit");
        assert_eq!((which, decision.retry_after_secs()), (1, Some(6)));
    }
    assert!(outcomes[..10].iter().all(BatchOutcome::admitted), "the first ten queued are the ones admitted");
    // Every batch charged the per-IP bucket, this one too.
    let after = tracker.check_batch(Some(ip), &checks[..1]).await;
    assert_eq!(after.decisions()[0].remaining, 1000 - 41);
}
