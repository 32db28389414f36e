//! Judging a multipart body too large to buffer while it streams upstream.
//!
//! The body's chunks are fed, as they pass, to `multer` (driven synchronously from the body's
//! own `poll_frame`, so there is no extra task and no copy: `Bytes` are shared). A part named
//! `cmd`, `sid` or `run_method` in a streamed body is refused — those belong in a body of at
//! most `server.inspect_body_bytes` that can be judged whole — and the caller then aborts the
//! upstream request before its body completes, so Frappe never runs it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::Stream;

use super::form::{judged_part, FormError};

/// See the module docs.
pub struct MultipartScan {
    feed: Arc<Mutex<Feed>>,
    multipart: multer::Multipart<'static>,
    field: Option<multer::Field<'static>>,
    done: bool,
}

#[derive(Default)]
struct Feed {
    chunks: VecDeque<Bytes>,
    closed: bool,
    waker: Option<Waker>,
}

/// The parser's input: whatever has been pushed so far.
struct FeedStream(Arc<Mutex<Feed>>);

impl Stream for FeedStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut feed = self.0.lock().expect("feed lock");
        match feed.chunks.pop_front() {
            Some(chunk) => Poll::Ready(Some(Ok(chunk))),
            None if feed.closed => Poll::Ready(None),
            None => {
                feed.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl MultipartScan {
    pub fn new(boundary: &str) -> Self {
        let feed = Arc::new(Mutex::new(Feed::default()));
        let multipart = multer::Multipart::new(FeedStream(feed.clone()), boundary.to_string());
        MultipartScan { feed, multipart, field: None, done: false }
    }

    /// Hands the parser the next chunk of the body.
    pub fn push(&mut self, chunk: Bytes) {
        let mut feed = self.feed.lock().expect("feed lock");
        feed.chunks.push_back(chunk);
        if let Some(waker) = feed.waker.take() {
            waker.wake();
        }
    }

    /// The body has ended.
    pub fn close(&mut self) {
        let mut feed = self.feed.lock().expect("feed lock");
        feed.closed = true;
        if let Some(waker) = feed.waker.take() {
            waker.wake();
        }
    }

    /// Parses what has been pushed: `Ready(Ok)` once the closing boundary is judged,
    /// `Ready(Err)` on a judged field or a malformed body, `Pending` while it needs more bytes.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), FormError>> {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if let Some(field) = self.field.as_mut() {
                match Pin::new(field).poll_next(cx) {
                    Poll::Ready(Some(Ok(_))) => continue,
                    Poll::Ready(Some(Err(_))) => return Poll::Ready(Err(FormError::BadMultipart)),
                    Poll::Ready(None) => self.field = None,
                    Poll::Pending => return Poll::Pending,
                }
            }
            match self.multipart.poll_next_field(cx) {
                Poll::Ready(Ok(Some(field))) => {
                    if let Some(name) = judged_part(field.headers())? {
                        return Poll::Ready(Err(FormError::StreamedField(name)));
                    }
                    self.field = Some(field);
                }
                Poll::Ready(Ok(None)) => self.done = true,
                Poll::Ready(Err(_)) => return Poll::Ready(Err(FormError::BadMultipart)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::task::noop_waker_ref;

    fn run(scan: &mut MultipartScan, chunks: &[&[u8]]) -> Vec<Poll<Result<(), FormError>>> {
        let mut cx = Context::from_waker(noop_waker_ref());
        chunks
            .iter()
            .map(|c| {
                scan.push(Bytes::copy_from_slice(c));
                scan.poll(&mut cx)
            })
            .collect()
    }

    #[test]
    fn a_clean_body_is_judged_at_its_closing_boundary_even_split_byte_by_byte() {
        let body = b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n\r\n0123456789\r\n--B\r\nContent-Disposition: form-data; name=\"is_private\"\r\n\r\n1\r\n--B--\r\n";
        let mut scan = MultipartScan::new("B");
        let chunks: Vec<&[u8]> = body.chunks(1).collect();
        let polls = run(&mut scan, &chunks);
        let closing = body.windows(5).position(|w| w == b"--B--").unwrap() + 4;
        assert!(polls[..closing].iter().all(|p| p.is_pending()), "judged before the closing boundary");
        scan.close();
        let mut cx = Context::from_waker(noop_waker_ref());
        assert_eq!(scan.poll(&mut cx), Poll::Ready(Ok(())));
    }

    #[test]
    fn a_judged_field_is_refused_as_soon_as_its_headers_are_read() {
        let head = b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nxxxx\r\n--B\r\nContent-Disposition: form-data; name=\"cmd\"\r\n\r\n";
        let mut scan = MultipartScan::new("B");
        let polls = run(&mut scan, &[head]);
        assert_eq!(polls[0], Poll::Ready(Err(FormError::StreamedField("cmd"))));
    }

    #[test]
    fn a_truncated_body_is_malformed() {
        let mut scan = MultipartScan::new("B");
        run(&mut scan, &[b"--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nxx"]);
        scan.close();
        let mut cx = Context::from_waker(noop_waker_ref());
        assert_eq!(scan.poll(&mut cx), Poll::Ready(Err(FormError::BadMultipart)));
    }
}
