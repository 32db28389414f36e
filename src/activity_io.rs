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

/// How many reads and writes moved bytes. A count, not a time: reading the clock on every
/// read and write of a busy connection costs more than the idle check needs.
pub(crate) struct Activity {
    moves: AtomicU64,
}

/// The idle check looks at the count this many times per `idle_timeout`.
const CHECKS_PER_LIMIT: u32 = 4;

impl Activity {
    fn touch(&self) {
        // One writer (the connection's I/O): a plain store, no read-modify-write.
        self.moves.store(self.moves.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }

    /// Resolves once no byte has moved for `limit`: between `limit` and 1.25 × `limit` after
    /// the last one, never before.
    pub(crate) async fn idle_for(&self, limit: Duration) {
        // At least a millisecond: a zero limit must not spin.
        let step = (limit / CHECKS_PER_LIMIT).max(Duration::from_millis(1));
        let mut seen = self.moves.load(Ordering::Relaxed);
        let mut quiet_checks = 0;
        loop {
            tokio::time::sleep(step).await;
            let now = self.moves.load(Ordering::Relaxed);
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
        let activity = Arc::new(Activity { moves: AtomicU64::new(0) });
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
        let activity = Arc::new(Activity { moves: AtomicU64::new(0) });
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
}
