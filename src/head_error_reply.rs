//! Frappe's error JSON for request heads the HTTP/1.1 parser refuses.
//!
//! hyper answers a head it cannot parse (a line that is not a header, a control byte in a
//! value, a bad request line or `Content-Length`, a head over its buffer, a URI over 64 KiB)
//! by itself, before any request reaches the pipeline, and offers no hook to change that
//! answer: a bare `400` / `431` / `414` with no body. This stream wrapper recognises that answer
//! on its way out and sends the gateway's own instead — the same status, Frappe's error JSON
//! and an `X-Request-Id` that the access-log line carries too — so every refusal a client sees
//! has one shape. (Where it is not recognised — its bytes share a write with the end of an
//! earlier pipelined response — hyper's answer goes out as it is, and the connection's end
//! logs it.)
//!
//! hyper's answer is recognisable exactly: a status line followed by `connection: close`,
//! `content-length: 0` and `date`, nothing else. Every response of the pipeline carries an
//! `X-Request-Id`, so none can look like it. Checking costs one comparison of the first bytes
//! of each write.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::{frappe_error_body, ErrorKind};
use crate::pipeline::ConnInfo;
use crate::request_log::RequestLog;

/// hyper's answer after its status line: the three headers it writes, then the date's value.
const HYPER_HEADERS: &[u8] = b"\r\nconnection: close\r\ncontent-length: 0\r\ndate: ";
/// An HTTP date (`Tue, 08 Dec 2026 00:47:42 GMT`) and the blank line.
const DATE_AND_END: usize = 29 + 4;

pin_project_lite::pin_project! {
    /// Passes bytes through, except hyper's own answer to an unparseable head (see the
    /// module docs).
    pub(crate) struct HeadErrorReply<I> {
        #[pin]
        inner: I,
        conn: Arc<ConnInfo>,
        reply: Option<Box<Reply>>,
    }
}

/// The answer being written instead of hyper's.
struct Reply {
    bytes: Vec<u8>,
    written: usize,
    /// The length of hyper's answer, reported as written once ours is.
    replaces: usize,
}

impl<I> HeadErrorReply<I> {
    pub(crate) fn new(inner: I, conn: Arc<ConnInfo>) -> Self {
        HeadErrorReply { inner, conn, reply: None }
    }
}

/// The status of hyper's answer to an unparseable head, when `data` is exactly that answer.
fn parse_error_answer(data: &[u8]) -> Option<ErrorKind> {
    // "HTTP/1.1 431 Request Header Fields Too Large" is the longest status line.
    let longest = 44 + HYPER_HEADERS.len() + DATE_AND_END;
    if !(12..=longest).contains(&data.len()) || !data.starts_with(b"HTTP/1.1 4") {
        return None;
    }
    let kind = match &data[9..12] {
        b"400" => ErrorKind::BadRequest,
        b"414" => ErrorKind::UriTooLong,
        b"431" => ErrorKind::HeadersTooLarge,
        _ => return None,
    };
    let line_end = data.iter().position(|&b| b == b'\r')?;
    let rest = &data[line_end..];
    let exact = rest.starts_with(HYPER_HEADERS)
        && rest.len() == HYPER_HEADERS.len() + DATE_AND_END
        && rest.ends_with(b"\r\n\r\n");
    exact.then_some(kind)
}

impl Reply {
    /// The gateway's answer for `kind`, with hyper's status line and date; logged now.
    fn new(kind: ErrorKind, hyper_answer: &[u8], conn: &Arc<ConnInfo>) -> Self {
        let request_id = conn.shared.obs.request_ids.next();
        let body = frappe_error_body(kind, message(kind), request_id.as_str());
        let status_line = &hyper_answer[..hyper_answer.iter().position(|&b| b == b'\r').unwrap_or(0)];
        let date = &hyper_answer[hyper_answer.len() - DATE_AND_END..hyper_answer.len() - 4];
        let mut bytes = Vec::with_capacity(status_line.len() + 160 + body.len());
        bytes.extend_from_slice(status_line);
        bytes.extend_from_slice(b"\r\ncontent-type: application/json\r\nx-request-id: ");
        bytes.extend_from_slice(request_id.as_str().as_bytes());
        bytes.extend_from_slice(b"\r\nconnection: close\r\ncontent-length: ");
        bytes.extend_from_slice(body.len().to_string().as_bytes());
        bytes.extend_from_slice(b"\r\ndate: ");
        bytes.extend_from_slice(date);
        bytes.extend_from_slice(b"\r\n\r\n");
        bytes.extend_from_slice(body.as_bytes());
        conn.set_unparsed_answered();
        RequestLog::unparsed(conn, kind, request_id, body.len() as u64);
        Reply { bytes, written: 0, replaces: hyper_answer.len() }
    }

    /// Writes what is left of the answer.
    fn poll_write_rest<I: AsyncWrite>(
        &mut self,
        mut inner: Pin<&mut I>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.written < self.bytes.len() {
            let n = ready!(inner.as_mut().poll_write(cx, &self.bytes[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// What the client is told; the access log says the same.
pub(crate) fn message(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::HeadersTooLarge => "request head larger than the HTTP parser accepts",
        ErrorKind::UriTooLong => "request URI too long",
        _ => "malformed request head: the request line or a header is not valid HTTP/1.1",
    }
}

impl<I: AsyncRead> AsyncRead for HeadErrorReply<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<I: AsyncWrite> AsyncWrite for HeadErrorReply<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        if this.reply.is_none() {
            if let Some(kind) = parse_error_answer(data) {
                *this.reply = Some(Box::new(Reply::new(kind, data, this.conn)));
            }
        }
        match this.reply.as_deref_mut() {
            // Ours is written in place of hyper's; once it is, hyper's counts as written.
            Some(reply) if reply.replaces > 0 => {
                ready!(reply.poll_write_rest(this.inner, cx))?;
                Poll::Ready(Ok(std::mem::take(&mut reply.replaces)))
            }
            _ => this.inner.poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut this = self.project();
        if let Some(reply) = this.reply.as_mut() {
            ready!(reply.poll_write_rest(this.inner.as_mut(), cx))?;
        }
        this.inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut this = self.project();
        if let Some(reply) = this.reply.as_mut() {
            ready!(reply.poll_write_rest(this.inner.as_mut(), cx))?;
        }
        this.inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "Tue, 08 Dec 2026 00:47:42 GMT";

    fn hyper_answer(status_line: &str) -> Vec<u8> {
        format!("{status_line}\r\nconnection: close\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n")
            .into_bytes()
    }

    #[test]
    fn hypers_answers_are_recognised() {
        let cases = [
            ("HTTP/1.1 400 Bad Request", ErrorKind::BadRequest),
            ("HTTP/1.1 414 URI Too Long", ErrorKind::UriTooLong),
            ("HTTP/1.1 431 Request Header Fields Too Large", ErrorKind::HeadersTooLarge),
        ];
        for (line, kind) in cases {
            assert_eq!(parse_error_answer(&hyper_answer(line)), Some(kind), "{line}");
        }
    }

    /// Anything the pipeline sends has more headers (at least `x-request-id`) or a body.
    #[test]
    fn other_responses_pass_through() {
        let with_id = format!(
            "HTTP/1.1 400 Bad Request\r\nx-request-id: 1\r\nconnection: close\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n"
        );
        let with_body = [hyper_answer("HTTP/1.1 400 Bad Request"), b"{}".to_vec()].concat();
        let other_status = hyper_answer("HTTP/1.1 404 Not Found");
        let ok = hyper_answer("HTTP/1.1 200 OK");
        for data in [with_id.as_bytes(), &with_body, &other_status, &ok, b"HTTP/1.1 4", b""] {
            assert_eq!(parse_error_answer(data), None, "{:?}", String::from_utf8_lossy(data));
        }
    }
}
