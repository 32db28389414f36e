//! The response body the gateway sends: the upstream's streamed body or one of the gateway's
//! own JSON answers, counted as it goes. It carries the request's access-log entry and
//! finishes it when the last byte has been handed to the connection; a body dropped before
//! that (the client went away) leaves the entry to its drop guard.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::request_log::RequestLog;
use crate::upstream::UpstreamResponse;

enum Inner {
    Upstream(UpstreamResponse),
    Full(Option<Bytes>),
}

/// See the module docs.
pub(crate) struct ResponseBody {
    inner: Inner,
    bytes_out: u64,
    log: Option<Box<RequestLog>>,
}

impl ResponseBody {
    pub(crate) fn upstream(body: UpstreamResponse) -> Self {
        ResponseBody { inner: Inner::Upstream(body), bytes_out: 0, log: None }
    }

    pub(crate) fn full(bytes: Bytes) -> Self {
        ResponseBody { inner: Inner::Full(Some(bytes).filter(|b| !b.is_empty())), bytes_out: 0, log: None }
    }

    /// Hands the request's log entry to the body, which finishes it at the body's end.
    pub(crate) fn log_when_complete(&mut self, log: Box<RequestLog>) {
        self.log = Some(log);
    }

    fn finish_log(&mut self) {
        if let Some(log) = self.log.take() {
            log.finish(self.bytes_out);
        }
    }
}

impl From<Bytes> for ResponseBody {
    fn from(bytes: Bytes) -> Self {
        ResponseBody::full(bytes)
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // An empty body may never be polled (HEAD, 204, 304); otherwise the client left early
        // and the entry's drop guard logs what was sent.
        if self.is_end_stream() {
            return self.finish_log();
        }
        if let Some(log) = self.log.as_mut() {
            log.set_bytes_out(self.bytes_out);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Upstream(body) => Pin::new(body).poll_frame(cx),
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes_out += data.len() as u64;
                }
            }
            // An upstream that fails mid-body ends the response too: log what was sent.
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.finish_log(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(body) => body.is_end_stream(),
            Inner::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(body) => body.size_hint(),
            Inner::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
