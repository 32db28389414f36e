//! Revocations seen by one instance (webhook) broadcast to all through Redis pub/sub.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::redis::Client;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::redis::RedisLink;
use super::RateLimiter;

/// The pub/sub channel every instance listens on.
pub(super) const CHANNEL: &str = "fgw:revoke";
/// How often an idle subscription is pinged, so a silently dead connection is noticed.
const PING_EVERY: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Publishes "drop this user's cached credentials" to the other instances and listens for
/// theirs. Only exists on the Redis backend.
///
/// Payload: `"<instance id> <user>"`; an instance ignores its own messages. Messages published
/// while a subscriber is disconnected are lost (Redis pub/sub keeps nothing): periodic sync
/// remains the safety net.
#[derive(Clone)]
pub struct RevocationBus {
    link: Arc<RedisLink>,
    instance_id: Arc<str>,
}

impl RevocationBus {
    /// `None` for the local backend (nothing to share with).
    pub fn new(limiter: &RateLimiter) -> Option<Self> {
        let link = limiter.redis_link()?.clone();
        Some(RevocationBus { link, instance_id: format!("{:016x}", rand::random::<u64>()).into() })
    }

    /// This instance's random id (also in the payload).
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Tells the other instances to drop `user`. Tries even while Redis is degraded (a
    /// revocation is rare and worth one timeout); returns false when Redis did not take it.
    pub async fn publish(&self, user: &str) -> bool {
        let payload = &format!("{} {user}", self.instance_id);
        self.link
            .run(true, |mut conn| async move {
                ::redis::cmd("PUBLISH").arg(CHANNEL).arg(payload).query_async::<i64>(&mut conn).await
            })
            .await
            .is_some()
    }

    /// Starts the subscriber: `on_revoke(user)` runs for every message from another instance.
    /// Reconnects with backoff (100 ms doubling to 5 s) when Redis goes away, logging the loss
    /// once (warn) and the reconnection once (info). Runs until `stop` becomes true or its
    /// sender is dropped.
    pub fn spawn_subscriber<F>(&self, on_revoke: F, stop: watch::Receiver<bool>) -> JoinHandle<()>
    where
        F: Fn(&str) + Send + Sync + 'static,
    {
        let client = self.link.client().clone();
        let id = self.instance_id.clone();
        crate::spawn(async move {
            let mut stop = stop;
            tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => {}
                _ = subscribe_forever(client, id, on_revoke) => {}
            }
        })
    }
}

impl fmt::Debug for RevocationBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationBus").field("instance_id", &self.instance_id).finish()
    }
}

async fn subscribe_forever<F: Fn(&str)>(client: Client, id: Arc<str>, on_revoke: F) {
    let mut backoff = Duration::from_millis(100);
    let mut lost = false;
    loop {
        let error = session(&client, &id, &on_revoke, &mut lost, &mut backoff).await;
        if !lost {
            tracing::warn!(error = %error, channel = CHANNEL, "revocation channel lost Redis; reconnecting");
            lost = true;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One subscription, until it fails; returns why.
async fn session<F: Fn(&str)>(
    client: &Client,
    id: &str,
    on_revoke: &F,
    lost: &mut bool,
    backoff: &mut Duration,
) -> String {
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(CHANNEL).await?;
        Ok::<_, ::redis::RedisError>(pubsub)
    };
    let (mut sink, mut stream) = match tokio::time::timeout(Duration::from_secs(3), connect).await {
        Ok(Ok(pubsub)) => pubsub.split(),
        Ok(Err(e)) => return e.to_string(),
        Err(_) => return "subscribe timed out".into(),
    };
    if std::mem::take(lost) {
        tracing::info!(channel = CHANNEL, "revocation channel reconnected");
    }
    *backoff = Duration::from_millis(100);
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else { return "subscription closed".into() };
                if let Some(user) = foreign_user(msg.get_payload_bytes(), id) {
                    on_revoke(user);
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(Duration::from_secs(2), sink.ping::<::redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return e.to_string(),
                    Err(_) => return "ping timed out".into(),
                }
            }
        }
    }
}

/// The user named by a payload from another instance; `None` for our own or malformed ones.
fn foreign_user<'a>(payload: &'a [u8], own_id: &str) -> Option<&'a str> {
    let (sender, user) = std::str::from_utf8(payload).ok()?.split_once(' ')?;
    (sender != own_id && !user.is_empty()).then_some(user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rate_limit::redis::tests::Switch;
    use crate::policy::rate_limit::{test_redis, MonotonicClock, RedisLimiter};
    use std::sync::Mutex;

    #[test]
    fn payloads_from_others_only() {
        assert_eq!(foreign_user(b"aaaa bob@example.com", "bbbb"), Some("bob@example.com"));
        assert_eq!(foreign_user(b"aaaa user with spaces", "bbbb"), Some("user with spaces"));
        assert_eq!(foreign_user(b"aaaa bob@example.com", "aaaa"), None);
        assert_eq!(foreign_user(b"no-space", "bbbb"), None);
        assert_eq!(foreign_user(b"aaaa ", "bbbb"), None);
        assert_eq!(foreign_user(b"aaaa \xff", "bbbb"), None);
    }

    #[test]
    fn local_backend_has_no_bus() {
        assert!(RevocationBus::new(&RateLimiter::local()).is_none());
    }

    async fn bus(url: &str) -> RevocationBus {
        let limiter = RedisLimiter::connect(url, Duration::from_millis(200), Arc::new(MonotonicClock::new()))
            .await
            .unwrap();
        RevocationBus::new(&RateLimiter::Redis(limiter)).unwrap()
    }

    fn recorder() -> (Arc<Mutex<Vec<String>>>, impl Fn(&str) + Send + Sync + 'static) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        (seen, move |user: &str| sink.lock().unwrap().push(user.to_string()))
    }

    async fn wait_for(seen: &Mutex<Vec<String>>, user: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while !seen.lock().unwrap().iter().any(|u| u == user) {
            assert!(tokio::time::Instant::now() < deadline, "{user} not received within 1 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn revocation_reaches_other_instances_not_self() {
        let Some(url) = test_redis::url("revocation_reaches_other_instances_not_self") else { return };
        let (a, b) = (bus(&url).await, bus(&url).await);
        let (stop_tx, stop_rx) = watch::channel(false);
        let (seen_a, on_a) = recorder();
        let (seen_b, on_b) = recorder();
        let task_a = a.spawn_subscriber(on_a, stop_rx.clone());
        let task_b = b.spawn_subscriber(on_b, stop_rx);
        let user = test_redis::unique("user");
        // The subscription is asynchronous: publish until B has it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while !seen_b.lock().unwrap().contains(&user) {
            assert!(tokio::time::Instant::now() < deadline);
            assert!(a.publish(&user).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let second = format!("{user}-2");
        assert!(a.publish(&second).await);
        wait_for(&seen_b, &second).await;
        assert!(seen_a.lock().unwrap().iter().all(|u| !u.starts_with(&user)), "A received its own message");
        stop_tx.send(true).unwrap();
        task_a.await.unwrap();
        task_b.await.unwrap();
    }

    #[tokio::test]
    async fn subscriber_reconnects_after_an_outage() {
        let Some(url) = test_redis::url("subscriber_reconnects_after_an_outage") else { return };
        let mut switch = Switch::new(&url).await;
        let listener = bus(&switch.url).await;
        let publisher = bus(&url).await;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (seen, on_revoke) = recorder();
        let task = listener.spawn_subscriber(on_revoke, stop_rx);
        let publish_until_seen = |user: String| {
            let (publisher, seen) = (publisher.clone(), seen.clone());
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while !seen.lock().unwrap().contains(&user) {
                    assert!(tokio::time::Instant::now() < deadline, "{user} never arrived");
                    publisher.publish(&user).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        publish_until_seen(test_redis::unique("before")).await;
        switch.cut();
        tokio::time::sleep(Duration::from_millis(300)).await;
        switch.restore().await;
        publish_until_seen(test_redis::unique("after")).await;
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }
}
