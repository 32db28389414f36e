//! Pre-auth phases: what the client address and the route decide before any credential is
//! looked at — the network allowlist, the route's own allowlist and `deny`, the per-IP limit.

use std::net::IpAddr;

use super::context::Ctx;
use super::limits;
use crate::config::AuthMode;
use crate::error::GatewayError;
use crate::frappe_request::Call;
use crate::policy::Denied;
use crate::routes::{RouteEntry, RouteMatch};

/// The phases for the route of the path as sent. When credentials are checked next, the
/// per-IP limit is left to [`authorize::limited_credentials`](super::authorize::limited_credentials),
/// which decides it with the failed-auth lockout (and, for a cached key, the per-key limit).
pub(super) async fn admit(
    ctx: &mut Ctx<'_>,
    sent: &RouteEntry,
    call: &Call,
    credentials_next: bool,
) -> Result<(), GatewayError> {
    ctx.note_call(sent, call);
    let ip = ctx.client_ip();
    check_ip(ctx.rt.network.check(ip))?;
    admit_route(sent, ip)?;
    match credentials_next {
        true => Ok(()),
        false => limits::limit_ip(ctx, sent).await,
    }
}

/// The route of the call Frappe will run, once the body is read: its allowlist, `deny` and
/// own `per_ip` apply too, whichever spelling of the call was sent (`cmd` on another path,
/// `/api/v1/…`, `/api/v2/…`). The route as sent was checked and charged already.
pub(super) async fn admit_call_route(
    ctx: &mut Ctx<'_>,
    routes: &RouteMatch<'_>,
    call: &Call,
) -> Result<(), GatewayError> {
    ctx.note_call(routes.judged, call);
    if std::ptr::eq(routes.widest, routes.sent) {
        return Ok(());
    }
    admit_route(routes.widest, ctx.client_ip())?;
    limits::limit_own_ip(ctx, routes.widest).await
}

/// A route's own allowlist and `deny`.
fn admit_route(route: &RouteEntry, ip: IpAddr) -> Result<(), GatewayError> {
    check_ip(route.ip_policy.check(ip))?;
    if route.auth == AuthMode::Deny {
        return Err(route_denied(route));
    }
    Ok(())
}

pub(super) fn route_denied(route: &RouteEntry) -> GatewayError {
    GatewayError::forbidden("this API path is not available through the gateway")
        .with_reason(format!("route {} is auth = \"deny\"", route.path))
}

/// An IP policy's refusal as the client's 403 (the policy's name goes only to the log).
pub(super) fn check_ip(result: Result<(), Denied>) -> Result<(), GatewayError> {
    result.map_err(|denied| GatewayError::forbidden(denied.public_message()).with_reason(denied.to_string()))
}
