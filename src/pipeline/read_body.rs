//! The body phase: the body is read where it must be judged or buffered, judged where Frappe
//! parses it (its `form_dict` can name the call Frappe runs), and handed back ready to go
//! upstream. Small bodies are read whole first, so no upstream connection waits on a slow client.

use std::sync::Arc;

use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::request::Parts;
use hyper::body::Incoming;

use super::context::Ctx;
use crate::error::{ErrorKind, GatewayError};
use crate::frappe_request::{body_kind, BodyKind, FormError, FrappeRequest, MultipartScan};
use crate::request_body::{self, BodyStats, ReadBody, UpstreamBody};
use crate::routes::RouteEntry;

pub(super) async fn read(
    ctx: &mut Ctx<'_>,
    head: &mut Parts,
    body: Incoming,
    declared: Option<u64>,
    route: &RouteEntry,
    frappe: &mut FrappeRequest,
    preflight: bool,
) -> Result<UpstreamBody, GatewayError> {
    let stats = Arc::new(BodyStats::default());
    ctx.log.body_stats = Some(stats.clone());
    if preflight {
        head.headers.remove(CONTENT_LENGTH);
        return Ok(UpstreamBody::empty(stats));
    }
    let kind = match route.target.frappe {
        true => body_kind(head.headers.get(CONTENT_TYPE).map(|v| v.as_bytes())).map_err(form_refused)?,
        false => BodyKind::Opaque,
    };
    let limits = &ctx.rt.body_limits;
    let memory = (&ctx.conn.buffered, &ctx.shared.buffered);
    match request_body::read(body, declared, limits, memory).await? {
        ReadBody::Complete(bytes, held) => {
            // An empty body adds nothing to the query's form_dict, read with the head (a
            // multipart form is still parsed: an empty one is malformed).
            let adds_fields = !bytes.is_empty() || matches!(kind, BodyKind::Multipart { .. });
            if route.target.frappe && adds_fields {
                frappe.judge_body(&head.method, &head.uri, &kind, &bytes).map_err(form_refused)?;
            }
            head.headers.remove(TRANSFER_ENCODING);
            if !bytes.is_empty() {
                head.headers.insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            }
            Ok(UpstreamBody::full(bytes, held, stats))
        }
        ReadBody::Partial { prefix, share, rest } => {
            let scan = match kind {
                BodyKind::Multipart { boundary } => Some(MultipartScan::new(&boundary)),
                BodyKind::Opaque => None,
                // Frappe would parse it whole: what cannot be judged is not forwarded.
                BodyKind::Json | BodyKind::UrlEncoded => {
                    return Err(request_body::too_large_to_judge(limits))
                }
            };
            if !limits.buffer_all {
                return Ok(UpstreamBody::streamed(prefix, share, rest, limits, scan, stats));
            }
            let spooled = request_body::spool(prefix, rest, limits, scan, &ctx.shared.spooled).await?;
            // The prefix is on disk now: its memory is free.
            drop(share);
            head.headers.remove(TRANSFER_ENCODING);
            head.headers.insert(CONTENT_LENGTH, HeaderValue::from(spooled.len()));
            Ok(UpstreamBody::spooled(spooled, stats))
        }
    }
}

fn form_refused(e: FormError) -> GatewayError {
    GatewayError::new(ErrorKind::BadRequest, e.to_string()).with_reason(format!("body refused: {e}"))
}
