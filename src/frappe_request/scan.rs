//! Judging a multipart body too large to buffer while it streams upstream.
//!
//! The body's chunks are fed, as they pass, to the werkzeug decoder of `multipart` in the
//! 64 KiB pieces werkzeug itself reads, so that it reads the body as Frappe will. A part named
//! `cmd`, `sid` or `run_method` in a streamed body is refused — those belong in a body of at
//! most `server.inspect_body_bytes` that can be judged whole — and the caller then aborts the
//! upstream request before its body completes, so Frappe never runs it.

use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};

use super::form::FormError;
use super::multipart::{Judge, CHUNK};

/// See the module docs.
pub struct MultipartScan {
    judge: Judge,
    /// Bytes not yet fed: less than one werkzeug read.
    pending: BytesMut,
    closed: bool,
    verdict: Option<Result<(), FormError>>,
}

impl MultipartScan {
    pub fn new(boundary: &str) -> Self {
        MultipartScan {
            judge: Judge::new(boundary, true),
            pending: BytesMut::new(),
            closed: false,
            verdict: None,
        }
    }

    /// Hands the parser the next chunk of the body.
    pub fn push(&mut self, chunk: Bytes) {
        if self.verdict.is_some() {
            return;
        }
        self.pending.extend_from_slice(&chunk);
        while self.pending.len() >= CHUNK {
            let read = self.pending.split_to(CHUNK);
            if let Err(verdict) = self.judge.feed(Some(&read)) {
                self.verdict = Some(Err(verdict.into()));
                return;
            }
        }
    }

    /// The body has ended.
    pub fn close(&mut self) {
        if self.closed || self.verdict.is_some() {
            return;
        }
        self.closed = true;
        let rest = std::mem::take(&mut self.pending);
        let fed = match rest.is_empty() {
            true => Ok(()),
            false => self.judge.feed(Some(&rest)),
        };
        self.verdict = Some(fed.and_then(|()| self.judge.feed(None)).map_err(FormError::from));
    }

    /// The body has ended: the verdict on the whole form.
    pub fn finish(&mut self) -> Result<(), FormError> {
        self.close();
        self.verdict().unwrap_or(Err(FormError::BadMultipart))
    }

    /// `Ready(Ok)` once the closed body is judged clean, `Ready(Err)` on a judged field or a
    /// malformed body, `Pending` while it needs more bytes. Judging happens in `push` and
    /// `close`; nothing here waits.
    pub fn poll(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), FormError>> {
        match self.verdict() {
            Some(verdict) => Poll::Ready(verdict),
            None => Poll::Pending,
        }
    }

    /// The verdict once there is one: a refusal as soon as a judged field is seen, `Ok` once
    /// the whole form has been read (after [`Self::close`]).
    pub fn verdict(&self) -> Option<Result<(), FormError>> {
        self.verdict.clone()
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
        assert!(polls.iter().all(|p| p.is_pending()), "judged before the body ended");
        scan.close();
        let mut cx = Context::from_waker(noop_waker_ref());
        assert_eq!(scan.poll(&mut cx), Poll::Ready(Ok(())));
    }

    /// Refused once werkzeug's read that holds its headers is complete (64 KiB, or the end).
    #[test]
    fn a_judged_field_is_refused_once_the_read_holding_its_headers_is_in() {
        let head = b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nxxxx\r\n--B\r\nContent-Disposition: form-data; name=\"cmd\"\r\n\r\n";
        let mut scan = MultipartScan::new("B");
        let mut body = head.to_vec();
        body.resize(CHUNK, b'x');
        let polls = run(&mut scan, &[&body[..100], &body[100..]]);
        assert_eq!(polls, [Poll::Pending, Poll::Ready(Err(FormError::StreamedField("cmd")))]);
        let mut short = MultipartScan::new("B");
        assert_eq!(run(&mut short, &[head]), [Poll::Pending]);
        short.close();
        let mut cx = Context::from_waker(noop_waker_ref());
        assert_eq!(short.poll(&mut cx), Poll::Ready(Err(FormError::StreamedField("cmd"))));
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
