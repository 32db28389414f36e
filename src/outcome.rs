//! The gateway's typed vocabulary of outcomes, shared by errors, the access log and metrics:
//! what was decided about a request, how its credentials were checked, which limiter refused.
//!
//! Each enum lists its variants in `ALL` (the metrics table is built from it) and names them
//! once in `as_str` (the log and the metric labels use it). Adding a variant is a compile
//! error until every `match` on it handles it.

use serde::{Serialize, Serializer};

/// Declares a fieldless enum with `ALL`, `as_str` and serialization as that name.
macro_rules! vocabulary {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub(crate) enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every variant, in declaration order (`variant as usize` indexes it).
            pub(crate) const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The name the access log and metric labels use.
            pub(crate) const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

vocabulary! {
    /// What became of a request: the access log's `decision`.
    Decision {
        /// Forwarded upstream (whatever the upstream answered).
        Allow => "allow",
        /// Refused by policy or as malformed (4xx from the gateway).
        Deny => "deny",
        /// Refused by a rate limit or the failed-auth lockout (429).
        RateLimited => "rate_limited",
        /// The gateway could not decide now (503): fail closed.
        Unavailable => "unavailable",
        /// The upstream failed or timed out (502 / 504).
        UpstreamError => "upstream_error",
        /// The client went away before the response was finished (logged as status 499).
        ClientClosed => "client_closed",
    }
}

vocabulary! {
    /// How a token request's credentials were checked: the access log's `auth`.
    AuthOutcome {
        /// Found in the credential cache, fresh, digest equal.
        Hit => "hit",
        /// Verified against Frappe just now (or by a concurrent request's call).
        MissVerified => "miss-verified",
        /// Frappe unreachable; served from a verification within `auth.stale_if_error`.
        Stale => "stale",
        /// Refused from the negative cache without asking Frappe.
        NegativeHit => "negative-hit",
        /// Wrong or malformed credentials.
        Rejected => "rejected",
        /// A user sync reports as disabled.
        Disabled => "disabled",
        /// Frappe could not be asked (503).
        Unavailable => "unavailable",
        /// An unknown credential while the verification budget is spent (503).
        OverBudget => "over-budget",
        /// Administrator's credentials while `auth.allow_administrator = false` (403).
        Administrator => "administrator",
    }
}

vocabulary! {
    /// Which limiter refused a request (429).
    Limiter {
        /// `per_ip`: the global or a route's per-IP limit.
        PerIp => "per_ip",
        /// `per_key`: a `[[user]]`'s, a route's or the global per-key limit.
        PerKey => "per_key",
        /// The failed-auth lockout.
        Lockout => "lockout",
    }
}

vocabulary! {
    /// A request method's class, for `gateway_route_requests_total{method}`.
    MethodClass {
        /// GET, HEAD.
        Read => "read",
        /// POST, PUT, PATCH, DELETE.
        Write => "write",
        /// Anything else (OPTIONS, an unknown method, a request hyper could not parse).
        Other => "other",
    }
}

impl MethodClass {
    pub(crate) fn of(method: Option<&http::Method>) -> Self {
        use http::Method;
        match method {
            Some(&Method::GET | &Method::HEAD) => MethodClass::Read,
            Some(&Method::POST | &Method::PUT | &Method::PATCH | &Method::DELETE) => MethodClass::Write,
            _ => MethodClass::Other,
        }
    }
}

vocabulary! {
    /// Why a request to the upstream failed: `gateway_upstream_errors_total{kind}`.
    UpstreamError {
        /// No connection could be made (refused, unreachable, `upstream.connect_timeout`).
        Connect => "connect",
        /// No response head within `upstream.timeout` (504).
        Timeout => "timeout",
        /// The connection was reset or closed before a whole response head arrived.
        Reset => "reset",
        /// The upstream answered something that is not HTTP.
        Protocol => "protocol",
        /// Every connection `upstream.max_connections` allows stayed in use for
        /// `upstream.queue_timeout` (503).
        Busy => "busy",
        /// Anything else.
        Other => "other",
    }
}

vocabulary! {
    /// What became of a `POST /hooks/frappe`: `gateway_webhook_events_total{outcome}`.
    WebhookOutcome {
        /// Signed, the user's credentials dropped (and re-read when a sync token is set).
        Applied => "applied",
        /// Applied, but re-reading the user from Frappe failed (the revocation stands).
        RefreshFailed => "refresh_failed",
        /// Missing or wrong signature (401).
        BadSignature => "bad_signature",
        /// Too large, unreadable, or no user name in it (400 / 413).
        BadBody => "bad_body",
        /// No webhook secret configured (503).
        Disabled => "disabled",
    }
}

vocabulary! {
    /// Why a TLS handshake on the proxy listener failed.
    TlsFailure {
        /// The client sent something that is not an acceptable TLS handshake.
        Error => "error",
        /// No handshake within `server.header_read_timeout`.
        Timeout => "timeout",
    }
}

vocabulary! {
    /// How a configuration reload ended: `gateway_config_reloads_total{result}`.
    ReloadResult {
        /// The new configuration is in force.
        Ok => "ok",
        /// Refused; the old configuration keeps serving.
        Error => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_variant_in_order() {
        for (i, d) in Decision::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i);
        }
        for (i, a) in AuthOutcome::ALL.iter().enumerate() {
            assert_eq!(*a as usize, i);
        }
        assert_eq!(Limiter::ALL.len(), 3);
        for (i, u) in UpstreamError::ALL.iter().enumerate() {
            assert_eq!(*u as usize, i);
        }
        assert_eq!(MethodClass::of(Some(&http::Method::PATCH)), MethodClass::Write);
        assert_eq!(MethodClass::of(Some(&http::Method::OPTIONS)), MethodClass::Other);
        assert_eq!(MethodClass::of(None), MethodClass::Other);
    }

    #[test]
    fn serializes_as_its_log_name() {
        assert_eq!(serde_json::to_string(&AuthOutcome::MissVerified).unwrap(), "\"miss-verified\"");
        assert_eq!(Decision::ClientClosed.to_string(), "client_closed");
    }
}
