//! The gateway's own refusals: one error type, one table from kind to status and Frappe
//! `exc_type`, and the Frappe-shaped JSON body every client library already parses.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::outcome::{Decision, Limiter};

/// What went wrong, which decides the status, the `exc_type` and the log's `decision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: the request itself is malformed.
    BadRequest,
    /// 400: `Basic` credentials that are not base64 (Frappe's own status and exc_type).
    InvalidAuthorizationToken,
    /// 401: missing, malformed or wrong credentials.
    Unauthorized,
    /// 403: IP, method, DocType or route not allowed.
    Forbidden,
    /// 405: a request method the gateway never forwards (`CONNECT`).
    MethodNotAllowed,
    /// 408: the request body did not arrive within `server.body_read_timeout`.
    RequestTimeout,
    /// 413: body over `server.max_body_bytes`.
    PayloadTooLarge,
    /// 429: a rate limit or a failed-auth lockout.
    TooManyRequests,
    /// 431: headers over `server.max_header_bytes`.
    HeadersTooLarge,
    /// 414: a request URI over the HTTP parser's 64 KiB.
    UriTooLong,
    /// 502: the upstream refused, reset or sent garbage.
    BadGateway,
    /// 503: cannot verify now, or overloaded.
    Unavailable,
    /// 504: the upstream did not answer within `upstream.timeout`.
    GatewayTimeout,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::BadRequest | ErrorKind::InvalidAuthorizationToken => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorKind::UriTooLong => StatusCode::URI_TOO_LONG,
            ErrorKind::BadGateway => StatusCode::BAD_GATEWAY,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The Frappe exception class name clients see in `exc_type`.
    pub fn exc_type(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "ValidationError",
            ErrorKind::InvalidAuthorizationToken => "InvalidAuthorizationToken",
            ErrorKind::Unauthorized => "AuthenticationError",
            ErrorKind::Forbidden => "PermissionError",
            ErrorKind::MethodNotAllowed => "MethodNotAllowed",
            ErrorKind::RequestTimeout => "RequestTimeout",
            ErrorKind::PayloadTooLarge => "RequestEntityTooLarge",
            ErrorKind::TooManyRequests => "TooManyRequestsError",
            ErrorKind::HeadersTooLarge => "RequestHeaderFieldsTooLarge",
            ErrorKind::UriTooLong => "RequestURITooLarge",
            ErrorKind::BadGateway => "BadGatewayError",
            ErrorKind::Unavailable => "ServiceUnavailableError",
            ErrorKind::GatewayTimeout => "GatewayTimeoutError",
        }
    }

    fn title(self) -> &'static str {
        match self {
            ErrorKind::Unauthorized | ErrorKind::InvalidAuthorizationToken => "Not Authorized",
            ErrorKind::Forbidden => "Not Permitted",
            ErrorKind::TooManyRequests => "Too Many Requests",
            ErrorKind::BadGateway | ErrorKind::Unavailable | ErrorKind::GatewayTimeout => {
                "Service Unavailable"
            }
            _ => "Message",
        }
    }

    /// The access log's `decision` for a request that ended with this error.
    pub(crate) fn decision(self) -> Decision {
        match self {
            ErrorKind::BadGateway | ErrorKind::GatewayTimeout => Decision::UpstreamError,
            ErrorKind::Unavailable => Decision::Unavailable,
            ErrorKind::TooManyRequests => Decision::RateLimited,
            ErrorKind::BadRequest
            | ErrorKind::InvalidAuthorizationToken
            | ErrorKind::Unauthorized
            | ErrorKind::Forbidden
            | ErrorKind::MethodNotAllowed
            | ErrorKind::RequestTimeout
            | ErrorKind::PayloadTooLarge
            | ErrorKind::HeadersTooLarge
            | ErrorKind::UriTooLong => Decision::Deny,
        }
    }
}

/// A refusal the gateway answers itself. `message` goes to the client; `reason` only to the log.
#[derive(Debug, Clone)]
pub(crate) struct GatewayError {
    pub kind: ErrorKind,
    pub message: Cow<'static, str>,
    pub reason: Cow<'static, str>,
    pub retry_after: Option<Duration>,
    /// The limiter that refused, for a 429.
    pub limiter: Option<Limiter>,
}

impl GatewayError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        let message = message.into();
        GatewayError { kind, reason: message.clone(), message, retry_after: None, limiter: None }
    }

    /// Adds an operator-facing reason that is logged but not sent.
    pub(crate) fn with_reason(mut self, reason: impl Into<Cow<'static, str>>) -> Self {
        self.reason = reason.into();
        self
    }

    pub(crate) fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// A 429 from `limiter`, retryable after `after` when known.
    pub(crate) fn rate_limited(
        limiter: Limiter,
        message: impl Into<Cow<'static, str>>,
        after: Option<Duration>,
    ) -> Self {
        let mut err = Self::new(ErrorKind::TooManyRequests, message);
        (err.limiter, err.retry_after) = (Some(limiter), after);
        err
    }

    /// The access log's `decision`.
    pub(crate) fn decision(&self) -> Decision {
        self.kind.decision()
    }

    pub(crate) fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Forbidden, message)
    }

    /// The response: Frappe's error JSON plus `request_id`, and `Retry-After` when set.
    pub(crate) fn to_response<B: From<Bytes>>(&self, request_id: &str) -> Response<B> {
        let body = frappe_error_body(self.kind, &self.message, request_id);
        let mut response = Response::new(B::from(Bytes::from(body)));
        *response.status_mut() = self.kind.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(after) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(ceil_secs(after)));
        }
        response
    }
}

/// Whole seconds, rounded up (a client that waits this long will be admitted).
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `{"exception": "...", "exc_type": "...", "exc": "[\"...\"]", "_server_messages": "[\"{...}\"]",
/// "request_id": "..."}` exactly as Frappe nests it: `_server_messages` is a JSON string holding a
/// list of JSON strings. `exc` is Frappe's traceback field: client libraries such as
/// `frappeclient` raise only when it is present, so it holds one line naming the error (never a
/// traceback).
pub(crate) fn frappe_error_body(kind: ErrorKind, message: &str, request_id: &str) -> String {
    let inner =
        serde_json::json!({ "message": message, "title": kind.title(), "indicator": "red" }).to_string();
    let server_messages = serde_json::Value::Array(vec![inner.into()]).to_string();
    let exception = format!("frappe.exceptions.{}: {}", kind.exc_type(), message);
    let exc = serde_json::Value::Array(vec![exception.clone().into()]).to_string();
    serde_json::json!({
        "exception": exception,
        "exc_type": kind.exc_type(),
        "exc": exc,
        "_server_messages": server_messages,
        "request_id": request_id,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_frappe_shape() {
        let body = frappe_error_body(ErrorKind::Unauthorized, "missing Authorization header", "rid1");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["exc_type"], "AuthenticationError");
        assert_eq!(v["request_id"], "rid1");
        let list: Vec<String> = serde_json::from_str(v["_server_messages"].as_str().unwrap()).unwrap();
        let msg: serde_json::Value = serde_json::from_str(&list[0]).unwrap();
        assert_eq!(msg["message"], "missing Authorization header");
        assert_eq!(msg["indicator"], "red");
        let exc: Vec<String> = serde_json::from_str(v["exc"].as_str().unwrap()).unwrap();
        assert_eq!(
            exc,
            vec!["frappe.exceptions.AuthenticationError: missing Authorization header".to_string()]
        );
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
        assert_eq!(ceil_secs(Duration::from_secs(3)), 3);
    }
}
