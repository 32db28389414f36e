//! Policy: real client IP, allowlists, Frappe restrict_ip, rate limits, DocType/method rules.
//!
//! Everything here is plain library code the pipeline calls in security order: resolve the
//! client IP ([`ClientIpResolver`]), check IP policies ([`IpPolicy`], [`RestrictIp`]), check
//! the pre-auth limit and lockout ([`RateLimiter`], [`FailedAuthTracker`]), then the user's
//! DocType / method rules ([`FrappeCall`], [`check_call`]) and the per-key limit.

pub mod allowlist;
pub mod client_ip;
pub mod frappe_path;
pub mod rate_limit;
pub mod restrict_ip;
pub mod route_path;

pub use allowlist::{Denied, IpPolicy, IpSet};
pub use client_ip::ClientIpResolver;
pub use frappe_path::{check_call, doctype_allowed, rpc_allowed, CallDenied, FrappeCall};
pub use rate_limit::{
    Clock, Decision, FailedAuthTracker, LocalLimiter, ManualClock, MonotonicClock, RateLimiter, RedisLimiter,
    RevocationBus, SetupError, Subject,
};
pub use restrict_ip::{RestrictIp, RestrictIpCache};
pub use route_path::{route_paths, RoutePaths};
