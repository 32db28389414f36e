//! Checks on the request head before anything reads it: request forms the gateway never
//! forwards, and header spellings that would let a client slip an identity past the checks.
//!
//! WSGI servers map header names to `HTTP_X_FRAPPE_USER`-style keys, so `X_Frappe_User`
//! reaches Frappe as the trusted user header; nginx drops such names by default
//! (`underscores_in_headers off`). A header listed in `Connection` is removed by every hop, so
//! `Connection: authorization` would remove the very header the gateway verified, and
//! `Connection: content-type` the one by which it read the body's `cmd` (Frappe would then
//! read the query's).

use http::header::{
    HeaderName, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HOST, TRANSFER_ENCODING,
};
use http::request::Parts;
use http::Method;

use crate::error::{ErrorKind, GatewayError};
use crate::proxy::{SPOOFABLE, X_REQUEST_ID};

/// Headers the gateway judges a request by (or Frappe by them): never removed on a client's
/// word through `Connection`.
const JUDGED_HEADERS: [HeaderName; 6] =
    [AUTHORIZATION, COOKIE, CONTENT_TYPE, CONTENT_LENGTH, TRANSFER_ENCODING, HOST];

/// Refuses what must not be forwarded and drops client copies of the user header.
pub(crate) fn check(head: &mut Parts, user_header: &HeaderName) -> Result<(), GatewayError> {
    if head.method == Method::CONNECT {
        return Err(GatewayError::new(ErrorKind::MethodNotAllowed, "CONNECT is not supported")
            .with_reason("CONNECT request"));
    }
    for name in head.headers.keys() {
        if name.as_str().contains('_') && is_protected(&name.as_str().replace('_', "-"), user_header) {
            return Err(bad_header(format!(
                "header name {name} is not accepted (underscores in identity headers)"
            )));
        }
    }
    for unique in [&AUTHORIZATION, &CONTENT_TYPE] {
        if head.headers.get_all(unique).iter().nth(1).is_some() {
            return Err(bad_header(format!("only one {unique} header is accepted")));
        }
    }
    let hop_named = head
        .headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .find(|t| JUDGED_HEADERS.iter().any(|h| h.as_str() == t) || t == user_header.as_str());
    if let Some(token) = hop_named {
        return Err(bad_header(format!("Connection may not name {token}")));
    }
    while head.headers.remove(user_header).is_some() {}
    Ok(())
}

/// Whether `folded` (lower case, `_` as `-`) names a header the gateway sets or Frappe trusts.
fn is_protected(folded: &str, user_header: &HeaderName) -> bool {
    folded == user_header.as_str() || folded == X_REQUEST_ID.as_str() || SPOOFABLE.contains(&folded)
}

fn bad_header(message: String) -> GatewayError {
    GatewayError::new(ErrorKind::BadRequest, message.clone()).with_reason(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: Method, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder().method(method).uri("/api/resource/ToDo");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn check_headers(headers: &[(&str, &str)]) -> Result<Parts, u16> {
        let mut parts = head(Method::GET, headers);
        let user = HeaderName::from_static("x-frappe-user");
        check(&mut parts, &user).map(|()| parts).map_err(|e| e.kind.status().as_u16())
    }

    #[test]
    fn identity_headers_in_any_spelling() {
        assert_eq!(check_headers(&[("X_Frappe_User", "Administrator")]).unwrap_err(), 400);
        assert_eq!(check_headers(&[("remote_addr", "1.2.3.4")]).unwrap_err(), 400);
        assert_eq!(check_headers(&[("x_forwarded_for", "1.2.3.4")]).unwrap_err(), 400);
        let parts = check_headers(&[("X-Frappe-User", "Administrator"), ("x_custom", "1")]).unwrap();
        assert!(!parts.headers.contains_key("x-frappe-user"));
        assert!(parts.headers.contains_key("x_custom"));
    }

    #[test]
    fn ambiguous_heads_are_refused() {
        assert_eq!(
            check_headers(&[("authorization", "token a:b"), ("authorization", "token c:d")]).unwrap_err(),
            400
        );
        assert_eq!(
            check_headers(&[("content-type", "text/plain"), ("content-type", "application/json")])
                .unwrap_err(),
            400
        );
        for token in
            ["authorization", "Cookie", "keep-alive, X-Frappe-User", "content-type", "Content-Length"]
        {
            assert_eq!(check_headers(&[("connection", token)]).unwrap_err(), 400, "{token}");
        }
        assert!(check_headers(&[("connection", "keep-alive")]).is_ok());
        let mut connect = head(Method::CONNECT, &[]);
        let user = HeaderName::from_static("x-frappe-user");
        assert_eq!(check(&mut connect, &user).unwrap_err().kind.status().as_u16(), 405);
    }
}
