//! Authorization: turns the judged route and the credentials into an [`Admission`], the only
//! thing [`forward`](super::forward::forward) accepts.

use http::header::{HeaderValue, AUTHORIZATION};
use http::request::Parts;

use super::context::Ctx;
use super::limits;
use super::pre_auth::route_denied;
use crate::auth;
use crate::config::AuthMode;
use crate::error::GatewayError;
use crate::outcome::AuthOutcome;
use crate::routes::{RouteEntry, RouteMatch};

/// How a request was let through.
pub(crate) enum Admission {
    /// A `public` route: forwarded as the client sent it (Frappe checks sessions itself).
    Public,
    /// A CORS preflight: carries no credentials, so none go upstream, and no body.
    Preflight,
    /// A `token` route: the user the gateway vouches for in the trusted user header.
    Authenticated(auth::Admitted),
}

/// On a token route the credentials are checked before the body is read, so a client
/// without valid ones never gets to send one (a preflight carries none).
pub(super) fn credentials_first(sent: &RouteEntry, preflight: bool) -> bool {
    sent.auth == AuthMode::Token && !preflight
}

/// The admission for the judged route; `early` holds the credentials checked before the body
/// (see [`credentials_first`]).
pub(super) async fn admit(
    ctx: &mut Ctx<'_>,
    routes: &RouteMatch<'_>,
    head: &Parts,
    preflight: bool,
    early: Option<auth::Admitted>,
) -> Result<Admission, GatewayError> {
    Ok(match routes.judged.auth {
        _ if preflight => Admission::Preflight,
        AuthMode::Public => Admission::Public,
        AuthMode::Deny => return Err(route_denied(routes.judged)),
        AuthMode::Token => match early {
            Some(admitted) => Admission::Authenticated(admitted),
            // The body made a public path run a token call (a `cmd`).
            None => {
                limits::check_lockout(ctx).await?;
                Admission::Authenticated(credentials(ctx, head).await?)
            }
        },
    })
}

/// The credentials of a request on a token route, with the limits that come before them: a
/// credential fresh in the cache is known without any I/O, so the lockout, per-IP and per-key
/// limits are decided together (one Redis round trip); otherwise the lockout and per-IP come
/// first and only then is Frappe asked.
pub(super) async fn limited_credentials<'a>(
    ctx: &mut Ctx<'a>,
    sent: &'a RouteEntry,
    head: &Parts,
) -> Result<auth::Admitted, GatewayError> {
    let header = head.headers.get(AUTHORIZATION);
    let cached = match auth::parse(header) {
        Ok(credential) => ctx.shared.auth.store.fresh_hit(&credential).await,
        Err(_) => None,
    };
    let Some(admitted) = cached else {
        limits::lockout_and_ip(ctx, sent).await?;
        return credentials(ctx, head).await;
    };
    limits::lockout_ip_and_key(ctx, sent, &admitted).await?;
    note_admitted(ctx, &admitted);
    Ok(admitted)
}

/// Checks the credentials (the lockout was decided before); returns who they belong to.
pub(super) async fn credentials(ctx: &mut Ctx<'_>, head: &Parts) -> Result<auth::Admitted, GatewayError> {
    let admitted = verify(ctx, head.headers.get(AUTHORIZATION)).await?;
    note_admitted(ctx, &admitted);
    Ok(admitted)
}

/// Who the request is, for the access log.
fn note_admitted(ctx: &mut Ctx<'_>, admitted: &auth::Admitted) {
    ctx.log.auth = Some(admitted.outcome.outcome());
    ctx.log.user = Some(admitted.user.clone());
    ctx.log.api_key = Some(admitted.api_key.clone());
    ctx.log.full_api_key = ctx.rt.full_api_key;
}

/// Parses the header and asks the credential store. Wrong and malformed credentials count
/// towards the failed-auth lockout; "cannot verify now" (Frappe unreachable, verification
/// budget spent) does not: it is not the client's fault.
async fn verify(ctx: &mut Ctx<'_>, header: Option<&HeaderValue>) -> Result<auth::Admitted, GatewayError> {
    let (err, counts) = match auth::parse(header) {
        Ok(credential) => {
            let raw = header.expect("parsed credentials come from a header");
            match ctx.shared.auth.store.authenticate(&credential, raw).await {
                Ok(admitted) => return Ok(admitted),
                Err(rejection) => {
                    ctx.log.auth = Some(rejection.outcome());
                    let counts = rejection.counts_as_failure();
                    (GatewayError::from(rejection), counts)
                }
            }
        }
        Err(auth::HeaderError::Missing) => (GatewayError::from(auth::HeaderError::Missing), false),
        Err(malformed) => {
            ctx.log.auth = Some(AuthOutcome::Rejected);
            (GatewayError::from(malformed), true)
        }
    };
    Err(match counts {
        true => limits::record_failure(ctx, err).await,
        false => err,
    })
}
