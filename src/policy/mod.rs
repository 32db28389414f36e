//! Policy: real client IP, allowlists, Frappe restrict_ip, rate limits, DocType/method rules.
//!
//! Everything here is plain library code the pipeline calls in security order: resolve the
//! client IP ([`ClientIpResolver`]), check IP policies ([`IpPolicy`], [`RestrictIp`]), check
//! the pre-auth limit and lockout ([`RateLimiter`], [`FailedAuthTracker`]), then the user's
//! DocType / method rules ([`check_call`]) and the per-key limit.

pub mod allowlist;
pub mod call_rules;
pub mod client_ip;
pub mod rate_limit;
pub mod restrict_ip;

pub use allowlist::{Denied, IpPolicy, IpSet};
pub use call_rules::{check_call, CallDenied};
pub(crate) use client_ip::push_ip_text;
pub use client_ip::ClientIpResolver;
pub use rate_limit::{
    Clock, Decision, FailedAuthTracker, LocalLimiter, ManualClock, MonotonicClock, RateLimiter, RedisLimiter,
    RevocationBus, SetupError, Subject,
};
pub use restrict_ip::{RestrictIp, RestrictIpCache};
