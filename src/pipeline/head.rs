//! The first phase: the request head alone — hygiene, size limits, and the path as the Frappe
//! request model reads it. Nothing here needs a route, a credential or the body.

use http::request::Parts;
use http::Method;

use super::context::Ctx;
use crate::error::{ErrorKind, GatewayError};
use crate::frappe_request::{FrappeRequest, PathError};
use crate::request_body;
use crate::request_head;

/// Checks the head and reads its path; returns the request model and the declared length.
pub(super) fn admit(ctx: &Ctx<'_>, head: &mut Parts) -> Result<(FrappeRequest, Option<u64>), GatewayError> {
    request_head::check(head, &ctx.rt.user_header)?;
    check_header_size(head, ctx.rt.max_header_bytes)?;
    let declared = request_body::declared_length(&head.headers, &ctx.rt.body_limits)?;
    let frappe = FrappeRequest::from_head(&head.method, &head.uri).map_err(path_refused)?;
    Ok((frappe, declared))
}

/// A CORS preflight carries no credentials by design; Frappe answers it.
pub(super) fn is_cors_preflight(head: &Parts) -> bool {
    head.method == Method::OPTIONS && head.headers.contains_key("access-control-request-method")
}

/// 431 when the request line and headers exceed `max_header_bytes` (hyper's own, larger
/// limit catches the rest before a request exists).
fn check_header_size(head: &Parts, max: usize) -> Result<(), GatewayError> {
    let size = head.uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        + head.headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum::<usize>();
    if size > max {
        return Err(GatewayError::new(
            ErrorKind::HeadersTooLarge,
            "request headers are larger than the gateway allows",
        )
        .with_reason(format!("{size} header bytes > max_header_bytes {max}")));
    }
    Ok(())
}

fn path_refused(e: PathError) -> GatewayError {
    GatewayError::new(ErrorKind::BadRequest, format!("{e}; send the path without it"))
        .with_reason(format!("path refused: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder().uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn header_size_counts_the_path_and_every_header() {
        let h = head("/api/method/ping", &[("x-a", "1234567890")]);
        let size = "/api/method/ping".len() + "x-a".len() + 10 + 4;
        assert!(check_header_size(&h, size).is_ok());
        let err = check_header_size(&h, size - 1).unwrap_err();
        assert_eq!(err.kind, ErrorKind::HeadersTooLarge);
    }

    #[test]
    fn preflight_needs_options_and_the_cors_request_header() {
        let mut h = head("/api/resource/ToDo", &[("access-control-request-method", "POST")]);
        assert!(!is_cors_preflight(&h));
        h.method = Method::OPTIONS;
        assert!(is_cors_preflight(&h));
        assert!(!is_cors_preflight(&head("/x", &[])));
    }
}
