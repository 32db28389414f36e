//! The rate-limit phases: per-IP before any credential is looked at, the failed-auth lockout
//! before credentials are checked, per-key once the key is known. Each picks its rate by
//! precedence and echoes the tightest decision in the `RateLimit-*` headers.
//!
//! A credential fresh in the cache is known before any limit is asked (no I/O): then the
//! lockout, per-IP and per-key are decided together ([`lockout_ip_and_key`]), one Redis round
//! trip for the whole request; the user policies run after it, so a request they refuse has
//! still been charged to its key. A miss keeps the order lockout + per-IP, Frappe, per-key.

use std::time::Duration;

use super::context::Ctx;
use crate::auth::Admitted;
use crate::config::Rate;
use crate::error::GatewayError;
use crate::outcome::Limiter;
use crate::policy::rate_limit::LimitCheck;
use crate::policy::{Decision as LimitDecision, Subject};
use crate::routes::RouteEntry;
use crate::runtime::UserRules;

/// The per-IP limit, before any credential is looked at (so brute force never reaches Frappe).
/// A route's own `per_ip` replaces the global one and counts in its own bucket.
pub(super) async fn limit_ip(ctx: &mut Ctx<'_>, route: &RouteEntry) -> Result<(), GatewayError> {
    let Some((scope, rate)) = ip_rate(route, ctx.rt.per_ip) else { return Ok(()) };
    let subject = Subject::Ip(ctx.client_ip());
    apply(ctx, scope, subject, &rate, Limiter::PerIp).await
}

/// A route's own `per_ip`, for a request sent under another route's path (the route of the
/// call it runs): nothing when the route has none (the global limit counted the request).
pub(super) async fn limit_own_ip(ctx: &mut Ctx<'_>, route: &RouteEntry) -> Result<(), GatewayError> {
    let Some(rate) = route.per_ip else { return Ok(()) };
    let subject = Subject::Ip(ctx.client_ip());
    apply(ctx, &route.ip_scope, subject, &rate, Limiter::PerIp).await
}

/// Before credentials are checked: the failed-auth lockout and the per-IP limit, decided
/// together (one Redis round trip on the shared backend). A locked-out IP charges nothing.
pub(super) async fn lockout_and_ip(ctx: &mut Ctx<'_>, route: &RouteEntry) -> Result<(), GatewayError> {
    let ip = ctx.client_ip();
    let rate = ip_rate(route, ctx.rt.per_ip);
    let check = rate.map(|(scope, rate)| LimitCheck::new(scope, Subject::Ip(ip), rate));
    let outcome = ctx.shared.limits.failed_auth.check_batch(Some(ip), check.as_slice()).await;
    if let Some(left) = outcome.locked_out() {
        return Err(locked_out(left).with_reason("IP locked out after repeated failed authentication"));
    }
    if let Some(decision) = outcome.tightest() {
        ctx.note_rate(decision);
    }
    match (outcome.refused(), rate) {
        (Some((_, decision)), Some((scope, rate))) => Err(refused(Limiter::PerIp, scope, &rate, decision)),
        _ => Ok(()),
    }
}

/// For a credential the cache vouches for: the failed-auth lockout, the per-IP and the per-key
/// limit of the route as sent, decided in one batch (in that order; a locked-out IP charges
/// nothing). [`limit_key`] then skips the bucket charged here.
pub(super) async fn lockout_ip_and_key<'a>(
    ctx: &mut Ctx<'a>,
    route: &'a RouteEntry,
    admitted: &Admitted,
) -> Result<(), GatewayError> {
    let ip = ctx.client_ip();
    let ip_check =
        ip_rate(route, ctx.rt.per_ip).map(|(scope, rate)| LimitCheck::new(scope, Subject::Ip(ip), rate));
    let rt = ctx.rt;
    let key = key_rate(route, rt.user_rules(&admitted.user), rt.per_key);
    let key_check = key.map(|(scope, rate)| LimitCheck::new(scope, Subject::Key(&admitted.user), rate));
    let (both, one);
    let checks: &[LimitCheck<'_>] = match (ip_check, key_check) {
        (Some(ip), Some(key)) => {
            both = [ip, key];
            &both
        }
        (Some(only), None) | (None, Some(only)) => {
            one = [only];
            &one
        }
        (None, None) => &[],
    };
    let outcome = ctx.shared.limits.failed_auth.check_batch(Some(ip), checks).await;
    if let Some(left) = outcome.locked_out() {
        return Err(locked_out(left).with_reason("IP locked out after repeated failed authentication"));
    }
    if let Some(decision) = outcome.tightest() {
        ctx.note_rate(decision);
    }
    if let Some((index, decision)) = outcome.refused() {
        let refused_check = &checks[index];
        let limiter = match refused_check.subject {
            Subject::Ip(_) => Limiter::PerIp,
            _ => Limiter::PerKey,
        };
        return Err(refused(limiter, refused_check.scope, &refused_check.rate, decision));
    }
    ctx.key_charged = key;
    Ok(())
}

/// The per-key limit, counted by the key's user (see `Subject`): `[[user]] per_key`, else the
/// route's, else the global one — unless the
/// same bucket was charged with the lockout (a body that changed the judged route to one with
/// another per-key rate is charged here too).
pub(super) async fn limit_key(
    ctx: &mut Ctx<'_>,
    route: &RouteEntry,
    rules: Option<&UserRules>,
    user: &str,
) -> Result<(), GatewayError> {
    let Some((scope, rate)) = key_rate(route, rules, ctx.rt.per_key) else { return Ok(()) };
    if ctx.key_charged == Some((scope, rate)) {
        return Ok(());
    }
    apply(ctx, scope, Subject::Key(user), &rate, Limiter::PerKey).await
}

/// 429 while the client's IP is locked out after too many failed authentications.
pub(super) async fn check_lockout(ctx: &Ctx<'_>) -> Result<(), GatewayError> {
    match ctx.shared.limits.failed_auth.locked(ctx.client_ip()).await {
        Some(left) => Err(locked_out(left).with_reason("IP locked out after repeated failed authentication")),
        None => Ok(()),
    }
}

/// Counts a failed authentication; the refusal to send instead when it locks the IP out.
pub(super) async fn record_failure(ctx: &Ctx<'_>, err: GatewayError) -> GatewayError {
    match ctx.shared.limits.failed_auth.record_failure(ctx.client_ip()).await {
        Some(lockout) => locked_out(lockout).with_reason(format!("{}; IP now locked out", err.reason)),
        None => err,
    }
}

fn locked_out(left: Duration) -> GatewayError {
    GatewayError::rate_limited(
        Limiter::Lockout,
        "too many failed authentication attempts from this address",
        Some(left),
    )
}

fn ip_rate(route: &RouteEntry, global: Option<Rate>) -> Option<(&str, Rate)> {
    match (route.per_ip, global) {
        (Some(rate), _) => Some((&route.ip_scope, rate)),
        (None, Some(rate)) => Some(("ip", rate)),
        (None, None) => None,
    }
}

fn key_rate<'r>(
    route: &'r RouteEntry,
    rules: Option<&UserRules>,
    global: Option<Rate>,
) -> Option<(&'r str, Rate)> {
    match (rules.and_then(|r| r.policy.per_key), route.per_key, global) {
        (Some(rate), _, _) => Some(("user-key", rate)),
        (None, Some(rate), _) => Some((&route.key_scope, rate)),
        (None, None, Some(rate)) => Some(("key", rate)),
        (None, None, None) => None,
    }
}

async fn apply(
    ctx: &mut Ctx<'_>,
    scope: &str,
    subject: Subject<'_>,
    rate: &Rate,
    limiter: Limiter,
) -> Result<(), GatewayError> {
    let decision = ctx.shared.limits.limiter.check(scope, subject, rate).await;
    ctx.note_rate(decision);
    match decision.allowed {
        true => Ok(()),
        false => Err(refused(limiter, scope, rate, decision)),
    }
}

fn refused(limiter: Limiter, scope: &str, rate: &Rate, decision: LimitDecision) -> GatewayError {
    GatewayError::rate_limited(limiter, "rate limit exceeded; retry later", decision.retry_after)
        .with_reason(format!("{limiter} limit {rate} exceeded ({scope})"))
}
