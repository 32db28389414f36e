//! Parses the `Authorization` header exactly as Frappe v15's `validate_auth` reads it.
//!
//! Frappe splits the value on single spaces and uses it only when that gives exactly two parts;
//! the scheme (`token`, `Basic`, `Bearer`) is compared case-insensitively; `token` and `Basic`
//! credentials must split on `:` into exactly two non-empty parts. Every form Frappe would not
//! authenticate is `Malformed` (the gateway answers 401), undecodable Basic is `BadBase64` (400,
//! Frappe's `InvalidAuthorizationToken`). Messages never echo what the client sent.

use std::borrow::Cow;
use std::fmt;

use http::{HeaderValue, StatusCode};

use crate::error::{ErrorKind, GatewayError};

/// The form every message points the client at.
pub const EXPECTED_FORM: &str = "expected `Authorization: token api_key:api_secret`";

/// Frappe's own message for `Basic` credentials that are not base64 (transcript 04h).
pub const BAD_BASE64_MESSAGE: &str = "Failed to decode token, please provide a valid base64-encoded token.";

/// Credentials taken from an `Authorization` header. `Debug` never shows the secret or token.
///
/// The token form borrows from the header; `Basic` owns its decoded text.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential<'a> {
    /// `token key:secret` or `Basic base64(key:secret)`. `key` is kept as sent; the store
    /// looks it up lowercased (Frappe's database matches keys case-insensitively).
    ApiKey { key: Cow<'a, str>, secret: Cow<'a, str> },
    /// `Bearer <token>` (a Frappe OAuth token), verified through Frappe like a key.
    Bearer(Cow<'a, str>),
}

impl fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::ApiKey { key, .. } => {
                f.debug_struct("ApiKey").field("key", key).field("secret", &"<redacted>").finish()
            }
            Credential::Bearer(_) => f.debug_tuple("Bearer").field(&"<redacted>").finish(),
        }
    }
}

/// Why a header cannot be used: each variant knows its status, `exc_type` and client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// No `Authorization` header at all (401).
    Missing,
    /// A header Frappe would not authenticate (401).
    Malformed(Malformed),
    /// `Basic` with undecodable base64 (400, as Frappe answers).
    BadBase64,
}

/// The particular way a header is malformed. None of them carries client data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// The header is present but empty (or only whitespace).
    Empty,
    /// Bytes other than visible ASCII, space and tab.
    NotText,
    /// One word: a scheme without credentials (or a tab instead of the space).
    NoCredentials,
    /// More than one space: `token  key:secret`, or trailing words.
    ExtraSpaces,
    /// A scheme other than token, Basic and Bearer.
    UnknownScheme,
    /// Credentials without a `:` between key and secret.
    NoColon,
    /// Credentials with more than one `:`.
    ExtraColon,
    EmptyKey,
    EmptySecret,
    /// `Basic` credentials that decode to bytes that are not UTF-8.
    BasicNotUtf8,
    /// A `Basic` api_key with a space, control or non-ASCII character: Frappe's database
    /// would find `"key "` or `"kéy"` as `"key"` (MariaDB collation), so such spellings are
    /// refused rather than verified and cached one by one.
    KeyNotPlain,
}

impl Malformed {
    fn message(self) -> &'static str {
        match self {
            Malformed::Empty => {
                "empty Authorization header; expected `Authorization: token api_key:api_secret`"
            }
            Malformed::NotText => {
                "Authorization header contains characters other than printable ASCII; \
                 expected `Authorization: token api_key:api_secret`"
            }
            Malformed::NoCredentials => {
                "Authorization header has no credentials after the scheme; \
                 expected `Authorization: token api_key:api_secret`"
            }
            Malformed::ExtraSpaces => {
                "Authorization header must be the scheme, exactly one space, then the credentials; \
                 expected `Authorization: token api_key:api_secret`"
            }
            Malformed::UnknownScheme => {
                "unsupported Authorization scheme (use token, Basic or Bearer); \
                 expected `Authorization: token api_key:api_secret`"
            }
            Malformed::NoColon => {
                "credentials must be api_key and api_secret joined by one colon; \
                 expected `Authorization: token api_key:api_secret`"
            }
            Malformed::ExtraColon => {
                "credentials contain more than one colon; expected `Authorization: token api_key:api_secret`"
            }
            Malformed::EmptyKey => "api_key is empty; expected `Authorization: token api_key:api_secret`",
            Malformed::EmptySecret => {
                "api_secret is empty; expected `Authorization: token api_key:api_secret`"
            }
            Malformed::BasicNotUtf8 => {
                "Basic credentials do not decode to text; expected `Authorization: token api_key:api_secret`"
            }
            Malformed::KeyNotPlain => {
                "api_key may only hold visible ASCII characters; expected `Authorization: token api_key:api_secret`"
            }
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Malformed::Empty => "malformed: empty",
            Malformed::NotText => "malformed: not printable ASCII",
            Malformed::NoCredentials => "malformed: one word",
            Malformed::ExtraSpaces => "malformed: extra spaces",
            Malformed::UnknownScheme => "malformed: unknown scheme",
            Malformed::NoColon => "malformed: no colon",
            Malformed::ExtraColon => "malformed: extra colon",
            Malformed::EmptyKey => "malformed: empty api_key",
            Malformed::EmptySecret => "malformed: empty api_secret",
            Malformed::BasicNotUtf8 => "malformed: Basic not UTF-8",
            Malformed::KeyNotPlain => "malformed: api_key not visible ASCII",
        }
    }
}

impl HeaderError {
    /// 401 for missing / malformed, 400 for undecodable Basic.
    pub fn status(self) -> StatusCode {
        self.error_kind().status()
    }

    /// `AuthenticationError`, or `InvalidAuthorizationToken` for undecodable Basic.
    pub fn exc_type(self) -> &'static str {
        self.error_kind().exc_type()
    }

    /// The gateway's error kind for this refusal.
    pub fn error_kind(self) -> ErrorKind {
        match self {
            HeaderError::BadBase64 => ErrorKind::InvalidAuthorizationToken,
            _ => ErrorKind::Unauthorized,
        }
    }

    /// What the client is told. Never contains anything the client sent.
    pub fn message(self) -> &'static str {
        match self {
            HeaderError::Missing => {
                "missing Authorization header; expected `Authorization: token api_key:api_secret`"
            }
            HeaderError::Malformed(m) => m.message(),
            HeaderError::BadBase64 => BAD_BASE64_MESSAGE,
        }
    }

    /// A short reason for the access log (`missing`, `malformed: no colon`, `bad base64`).
    pub fn reason(self) -> &'static str {
        match self {
            HeaderError::Missing => "missing",
            HeaderError::Malformed(m) => m.reason(),
            HeaderError::BadBase64 => "bad base64",
        }
    }
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for HeaderError {}

impl From<HeaderError> for GatewayError {
    fn from(e: HeaderError) -> Self {
        GatewayError::new(e.error_kind(), e.message()).with_reason(e.reason())
    }
}

/// Reads the credentials out of an `Authorization` header value.
///
/// `None` → `Missing`. Surrounding spaces and tabs are not part of the value (transcript 12a).
/// Fails with `Malformed` for every form Frappe v15 would not authenticate and `BadBase64` for
/// `Basic` that Python's `base64.b64decode` rejects. Does not allocate for `token` and `Bearer`.
pub fn parse(value: Option<&HeaderValue>) -> Result<Credential<'_>, HeaderError> {
    let value = value.ok_or(HeaderError::Missing)?;
    let text = value.to_str().map_err(|_| HeaderError::Malformed(Malformed::NotText))?;
    let text = text.trim_matches([' ', '\t']);
    if text.is_empty() {
        return Err(HeaderError::Malformed(Malformed::Empty));
    }
    let (scheme, credentials) = split_scheme(text)?;
    if scheme.eq_ignore_ascii_case("token") {
        let (key, secret) = split_pair(credentials)?;
        Ok(Credential::ApiKey { key: Cow::Borrowed(key), secret: Cow::Borrowed(secret) })
    } else if scheme.eq_ignore_ascii_case("basic") {
        decode_basic(credentials)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Ok(Credential::Bearer(Cow::Borrowed(credentials)))
    } else {
        Err(HeaderError::Malformed(Malformed::UnknownScheme))
    }
}

/// `scheme credentials`, split on single spaces into exactly two parts (Python `split(" ")`).
fn split_scheme(text: &str) -> Result<(&str, &str), HeaderError> {
    let mut parts = text.split(' ');
    let scheme = parts.next().unwrap_or_default();
    let credentials = parts.next().ok_or(HeaderError::Malformed(Malformed::NoCredentials))?;
    if parts.next().is_some() {
        return Err(HeaderError::Malformed(Malformed::ExtraSpaces));
    }
    Ok((scheme, credentials))
}

/// `key:secret`, split on `:` into exactly two non-empty parts.
fn split_pair(credentials: &str) -> Result<(&str, &str), HeaderError> {
    let mut parts = credentials.split(':');
    let key = parts.next().unwrap_or_default();
    let secret = parts.next().ok_or(HeaderError::Malformed(Malformed::NoColon))?;
    if parts.next().is_some() {
        return Err(HeaderError::Malformed(Malformed::ExtraColon));
    }
    if key.is_empty() {
        return Err(HeaderError::Malformed(Malformed::EmptyKey));
    }
    if secret.is_empty() {
        return Err(HeaderError::Malformed(Malformed::EmptySecret));
    }
    Ok((key, secret))
}

fn decode_basic(token: &str) -> Result<Credential<'static>, HeaderError> {
    let bytes = python_b64decode(token.as_bytes()).ok_or(HeaderError::BadBase64)?;
    let text = String::from_utf8(bytes).map_err(|_| HeaderError::Malformed(Malformed::BasicNotUtf8))?;
    let (key, secret) = split_pair(&text)?;
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HeaderError::Malformed(Malformed::KeyNotPlain));
    }
    Ok(Credential::ApiKey { key: Cow::Owned(key.to_owned()), secret: Cow::Owned(secret.to_owned()) })
}

/// Python's `base64.b64decode(s)` (binascii's non-strict mode), which Frappe calls: characters
/// outside the standard alphabet are skipped, a complete padding ends the input, and a final
/// group of one character, or of two or three without padding, is an error (`None`).
fn python_b64decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3 + 3);
    let (mut quad_pos, mut left, mut pads) = (0u8, 0u8, 0u8);
    for &byte in input {
        if byte == b'=' {
            if quad_pos >= 2 {
                pads += 1;
                if quad_pos + pads >= 4 {
                    return Some(out);
                }
            }
            continue;
        }
        let Some(v) = sextet(byte) else { continue };
        pads = 0;
        match quad_pos {
            0 => left = v,
            1 => {
                out.push((left << 2) | (v >> 4));
                left = v & 0x0f;
            }
            2 => {
                out.push((left << 4) | (v >> 2));
                left = v & 0x03;
            }
            _ => out.push((left << 6) | v),
        }
        quad_pos = (quad_pos + 1) % 4;
    }
    (quad_pos == 0).then_some(out)
}

fn sextet(byte: u8) -> Option<u8> {
    match byte {
        b'A'..=b'Z' => Some(byte - b'A'),
        b'a'..=b'z' => Some(byte - b'a' + 26),
        b'0'..=b'9' => Some(byte - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    fn api_key(header: &str) -> (String, String) {
        match parse(Some(&hv(header))) {
            Ok(Credential::ApiKey { key, secret }) => (key.into_owned(), secret.into_owned()),
            other => panic!("{header:?} → {other:?}"),
        }
    }

    fn err(header: &str) -> HeaderError {
        parse(Some(&hv(header))).expect_err(header)
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn token_forms_frappe_accepts() {
        // 01, 04c, 04m: the scheme is case-insensitive; the key is kept as sent.
        for scheme in ["token", "Token", "TOKEN", "tOkEn"] {
            assert_eq!(api_key(&format!("{scheme} abc123:s3cret")), ("abc123".into(), "s3cret".into()));
        }
        assert_eq!(api_key("token ABC:def").0, "ABC");
    }

    #[test]
    fn token_borrows_from_the_header() {
        let value = hv("token k:s");
        match parse(Some(&value)).unwrap() {
            Credential::ApiKey { key: Cow::Borrowed(_), secret: Cow::Borrowed(_) } => {}
            other => panic!("allocated: {other:?}"),
        }
    }

    #[test]
    fn surrounding_whitespace_is_not_part_of_the_value() {
        // 12a: `Authorization:  token KEY:SECRET_NEW` is accepted.
        assert_eq!(api_key("  token k:s"), ("k".into(), "s".into()));
        assert_eq!(api_key("\ttoken k:s \t"), ("k".into(), "s".into()));
    }

    #[test]
    fn basic_forms() {
        // 04d: Basic carrying key:secret; 04i (wrong secret) parses fine and fails at Frappe.
        assert_eq!(api_key(&format!("Basic {}", b64("KEY:SECRET"))), ("KEY".into(), "SECRET".into()));
        assert_eq!(api_key(&format!("basic {}", b64("k:s"))), ("k".into(), "s".into()));
        assert_eq!(api_key(&format!("BASIC {}", b64("key:wrongsecret1234"))).1, "wrongsecret1234");
    }

    #[test]
    fn basic_follows_python_b64decode() {
        // Characters outside the alphabet are skipped; data after complete padding is ignored.
        let good = b64("key:secret");
        assert!(good.ends_with("=="), "{good}");
        let pair = ("key".to_string(), "secret".to_string());
        assert_eq!(api_key(&format!("Basic !{good}!")), pair);
        assert_eq!(api_key(&format!("Basic {good}garbage")), pair);
        // 04h: `!!notbase64!!` is 9 data characters: 1 more than a multiple of 4.
        assert_eq!(err("Basic !!notbase64!!"), HeaderError::BadBase64);
        // Missing padding is "Incorrect padding" in Python.
        assert_eq!(err(&format!("Basic {}", good.trim_end_matches('='))), HeaderError::BadBase64);
        assert_eq!(err("Basic a"), HeaderError::BadBase64);
    }

    #[test]
    fn basic_that_decodes_to_a_bad_pair_is_401() {
        assert_eq!(err(&format!("Basic {}", b64("nocolon"))), HeaderError::Malformed(Malformed::NoColon));
        assert_eq!(err(&format!("Basic {}", b64("a:b:c"))), HeaderError::Malformed(Malformed::ExtraColon));
        assert_eq!(err(&format!("Basic {}", b64(":s"))), HeaderError::Malformed(Malformed::EmptyKey));
        assert_eq!(err("Basic ////"), HeaderError::Malformed(Malformed::BasicNotUtf8));
        assert_eq!(err("Basic ===="), HeaderError::Malformed(Malformed::NoColon));
    }

    #[test]
    fn bearer() {
        // 04e: `Bearer xyz` parses; Frappe decides (401 for an unknown token).
        match parse(Some(&hv("Bearer xyz"))).unwrap() {
            Credential::Bearer(t) => assert_eq!(t, "xyz"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(Some(&hv("bearer a:b"))), Ok(Credential::Bearer(_))));
    }

    #[test]
    fn malformed_forms_from_the_transcripts() {
        use Malformed::*;
        let cases = [
            ("token KEYSECRET", NoColon),           // 04a
            ("token", NoCredentials),               // 04b
            ("token  KEY:SECRET", ExtraSpaces),     // 04j
            ("token KEY:SECRET:extra", ExtraColon), // 04k
            ("token KEY:", EmptySecret),            // 04l
            ("token :SECRET", EmptyKey),
            ("token :", EmptyKey),
            ("token KEY:SECRET trailing", ExtraSpaces),
            ("tokenKEY:SECRET", NoCredentials),
            ("token\tKEY:SECRET", NoCredentials),
            ("Digest x", UnknownScheme),
            ("Bearer", NoCredentials),
            ("Bearer a b", ExtraSpaces),
        ];
        for (header, expected) in cases {
            assert_eq!(err(header), HeaderError::Malformed(expected), "{header:?}");
            assert_eq!(err(header).status(), StatusCode::UNAUTHORIZED);
        }
    }

    #[test]
    fn missing_and_empty() {
        // 04g / 04f: Frappe runs as Guest; the gateway demands credentials.
        assert_eq!(parse(None), Err(HeaderError::Missing));
        assert_eq!(err(""), HeaderError::Malformed(Malformed::Empty));
        assert_eq!(err("   "), HeaderError::Malformed(Malformed::Empty));
        assert!(HeaderError::Missing.message().starts_with("missing Authorization header"));
    }

    /// Spellings Frappe's collation would fold into another key are refused.
    #[test]
    fn basic_keys_are_visible_ascii() {
        for key in ["key ", " key", "k\tey", "kéy"] {
            let header = format!("Basic {}", b64(&format!("{key}:secret")));
            assert_eq!(err(&header), HeaderError::Malformed(Malformed::KeyNotPlain), "{key:?}");
        }
        assert_eq!(
            api_key(&format!("Basic {}", b64("key:s é cret"))).1,
            "s é cret",
            "the secret is Frappe's to judge"
        );
    }

    #[test]
    fn non_ascii_is_malformed() {
        let value = HeaderValue::from_bytes(b"token k\xe9y:secret").unwrap();
        assert_eq!(parse(Some(&value)), Err(HeaderError::Malformed(Malformed::NotText)));
    }

    #[test]
    fn statuses_and_exc_types() {
        assert_eq!(HeaderError::BadBase64.status(), StatusCode::BAD_REQUEST);
        assert_eq!(HeaderError::BadBase64.exc_type(), "InvalidAuthorizationToken");
        assert_eq!(HeaderError::BadBase64.message(), BAD_BASE64_MESSAGE);
        assert_eq!(HeaderError::Missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(HeaderError::Missing.exc_type(), "AuthenticationError");
        let every = [
            Malformed::Empty,
            Malformed::NotText,
            Malformed::NoCredentials,
            Malformed::ExtraSpaces,
            Malformed::UnknownScheme,
            Malformed::NoColon,
            Malformed::ExtraColon,
            Malformed::EmptyKey,
            Malformed::EmptySecret,
            Malformed::BasicNotUtf8,
        ];
        for m in every {
            assert!(HeaderError::Malformed(m).message().contains(EXPECTED_FORM));
            assert_eq!(HeaderError::Malformed(m).exc_type(), "AuthenticationError");
        }
    }

    #[test]
    fn messages_and_debug_never_echo_the_secret() {
        for header in ["token key:topsecret:x", "token key:topsecret trailing", "Digest topsecret"] {
            let e = err(header);
            assert!(!e.message().contains("topsecret") && !format!("{e:?}").contains("topsecret"));
        }
        let value = hv("token key:topsecret");
        let cred = parse(Some(&value)).unwrap();
        let debug = format!("{cred:?}");
        assert!(debug.contains("key") && !debug.contains("topsecret"), "{debug}");
        let value = hv("Bearer topsecret");
        let bearer = parse(Some(&value)).unwrap();
        assert!(!format!("{bearer:?}").contains("topsecret"));
    }

    #[test]
    fn converts_to_a_gateway_error() {
        let e = GatewayError::from(HeaderError::BadBase64);
        assert_eq!(e.kind, ErrorKind::InvalidAuthorizationToken);
        assert_eq!(e.message, BAD_BASE64_MESSAGE);
    }
}
