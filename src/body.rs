//! The response body the gateway sends: the upstream's streamed body or one of the gateway's
//! own JSON answers, counted as it goes, carrying the request's access-log entry so the line
//! is written exactly once, when the response is finished or abandoned.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::request_log::RequestLog;

enum Inner {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

/// See the module docs. Dropping it writes the access-log line.
pub struct ResponseBody {
    inner: Inner,
    bytes_out: u64,
    log: Option<RequestLog>,
}

impl ResponseBody {
    pub fn upstream(body: Incoming) -> Self {
        ResponseBody { inner: Inner::Upstream(body), bytes_out: 0, log: None }
    }

    pub fn full(bytes: Bytes) -> Self {
        ResponseBody { inner: Inner::Full(Some(bytes).filter(|b| !b.is_empty())), bytes_out: 0, log: None }
    }

    pub fn empty() -> Self {
        ResponseBody { inner: Inner::Full(None), bytes_out: 0, log: None }
    }

    /// Hands the request's log entry to the body: it is written when the body is dropped.
    pub fn attach_log(&mut self, log: RequestLog) {
        self.log = Some(log);
    }
}

impl From<Bytes> for ResponseBody {
    fn from(bytes: Bytes) -> Self {
        ResponseBody::full(bytes)
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
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
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.bytes_out += data.len() as u64;
            }
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
