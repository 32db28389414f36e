//! An I/O stream that counts when bytes move, for the proxy listener's idle timeout.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pin_project_lite::pin_project! {
    /// An I/O stream that counts when bytes move, for the idle timeout.
    pub(crate) struct ActivityIo<I> {
        #[pin]
        inner: I,
        activity: Arc<Activity>,
    }
}

/// How many reads and writes moved bytes, and the connection's requests. A count, not a time:
/// reading the clock on every read and write of a busy connection costs more than the idle
/// check needs.
#[derive(Default)]
pub(crate) struct Activity {
    moves: AtomicU64,
    /// Requests begun on the connection, and how many of them are not finished.
    requests: AtomicU64,
    in_flight: AtomicU64,
}

/// The idle check looks at the count this many times per `idle_timeout`.
const CHECKS_PER_LIMIT: u32 = 4;

impl Activity {
    fn touch(&self) {
        // One writer (the connection's I/O): a plain store, no read-modify-write.
        self.moves.store(self.moves.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }

    pub(crate) fn request_started(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Resolves once no byte has moved for `limit`: between `limit` and 1.25 × `limit` after
    /// the last one, never before (a WebSocket tunnel: bytes are all there is).
    pub(crate) async fn idle_for(&self, limit: Duration) {
        self.quiet_for(limit, || self.moves.load(Ordering::Relaxed)).await
    }

    /// Resolves once the connection has been idle for `limit`: no request begun and none in
    /// flight, or, while one is in flight, no byte moved. Bytes alone between requests do not
    /// count: HTTP/2 PINGs (or any frame that starts no request) must not keep a connection,
    /// and its `server.max_connections` slot, forever.
    pub(crate) async fn idle_between_requests(&self, limit: Duration) {
        self.quiet_for(limit, || {
            let requests = self.requests.load(Ordering::Relaxed);
            match self.in_flight.load(Ordering::Relaxed) {
                0 => requests,
                // Mixed so that bytes moved during a request count as progress.
                _ => requests ^ self.moves.load(Ordering::Relaxed).rotate_left(32) ^ (1 << 63),
            }
        })
        .await
    }

    /// Resolves once `progress` has not changed for `limit`.
    async fn quiet_for(&self, limit: Duration, progress: impl Fn() -> u64) {
        // At least a millisecond: a zero limit must not spin.
        let step = (limit / CHECKS_PER_LIMIT).max(Duration::from_millis(1));
        let mut seen = progress();
        let mut quiet_checks = 0;
        loop {
            tokio::time::sleep(step).await;
            let now = progress();
            if now != seen {
                (seen, quiet_checks) = (now, 0);
            } else if quiet_checks + 1 == CHECKS_PER_LIMIT {
                return;
            } else {
                quiet_checks += 1;
            }
        }
    }
}

impl<I> ActivityIo<I> {
    pub(crate) fn new(inner: I) -> (Self, Arc<Activity>) {
        let activity = Arc::new(Activity::default());
        (ActivityIo { inner, activity: activity.clone() }, activity)
    }
}

impl<I: AsyncRead> AsyncRead for ActivityIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        polled
    }
}

impl<I: AsyncWrite> AsyncWrite for ActivityIo<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Never before `limit` of quiet, at most a quarter of it late (plus scheduling slack);
    /// moving bytes restart it.
    #[tokio::test]
    async fn idle_resolves_between_the_limit_and_a_quarter_past_it() {
        let limit = Duration::from_millis(800);
        let activity = Arc::new(Activity::default());
        let started = std::time::Instant::now();
        let last_touch = {
            let activity = activity.clone();
            tokio::spawn(async move {
                for _ in 0..5 {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    activity.touch();
                }
                started.elapsed()
            })
        };
        activity.idle_for(limit).await;
        let closed = started.elapsed();
        let last_touch = last_touch.await.unwrap();
        assert!(closed >= last_touch + limit, "closed {closed:?} after start, last byte at {last_touch:?}");
        let slack = Duration::from_millis(150);
        assert!(
            closed <= last_touch + limit + limit / 4 + slack,
            "closed {closed:?}, last byte at {last_touch:?}"
        );
    }

    /// Between requests bytes do not count (HTTP/2 PINGs); during one, they do.
    #[tokio::test]
    async fn between_requests_only_requests_count() {
        let limit = Duration::from_millis(400);
        let activity = Arc::new(Activity::default());
        let pinger = {
            let activity = activity.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    activity.touch();
                }
            })
        };
        let started = tokio::time::Instant::now();
        activity.idle_between_requests(limit).await;
        assert!(started.elapsed() < limit * 2, "bytes alone kept it: {:?}", started.elapsed());
        // A request in flight whose bytes keep moving is not idle.
        activity.request_started();
        let busy = tokio::time::timeout(limit * 3, activity.idle_between_requests(limit)).await;
        assert!(busy.is_err(), "a request moving bytes was taken as idle");
        pinger.abort();
        activity.request_finished();
        activity.idle_between_requests(limit).await;
    }
}
