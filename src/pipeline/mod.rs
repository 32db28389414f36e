//! The whole request path, top to bottom, in security order. Each phase is a plain call that
//! either passes (with a typed result) or returns the refusal:
//!
//! head hygiene and size limits → the Frappe request model (path) → route, IP policy, per-IP
//! limit → credentials (after the failed-auth lockout) → body, judged where Frappe parses it →
//! the routes of what Frappe will run → [`Admission`] → the user's policies → forward.
//!
//! On a token route a key fresh in the cache is recognised in memory first; the lockout,
//! per-IP and per-key limits are then one batch (one Redis round trip), see [`limits`].
//!
//! [`admit`] runs every phase before the upstream call and returns a [`Forwardable`], what
//! [`forward::forward`] sends upstream. For a bodyless request with a key fresh in the cache on
//! the local limiter it does no I/O (`benches/pipeline.rs` measures it).
//!
//! [`handle`] is the one exit: [`Ctx::finish`] turns a refusal into a Frappe-shaped response,
//! adds the request id and rate-limit headers, and hands the access-log entry to the response
//! body, which writes it when the response is complete.

mod authorize;
mod context;
mod forward;
mod head;
mod limits;
mod post_auth;
mod pre_auth;
mod read_body;

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::ResponseBody;
use crate::error::GatewayError;

pub(crate) use context::ConnInfo;
use context::Ctx;
use forward::Forwardable;

/// Entry point for every request on the proxy listener.
pub(crate) async fn handle(
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    // This request's rules, to its end: a reload swaps in new ones for later requests.
    let runtime = conn.shared.runtime();
    let mut ctx = Ctx::begin(&conn, &runtime, &req);
    let outcome = process(&mut ctx, req).await;
    Ok(ctx.finish(outcome))
}

/// For [`bench_api`](crate::bench_api) only: a request started as [`handle`] starts it, through
/// [`admit`]. `then` sees the verdict (the user a request goes upstream as, or the refusal's
/// status and reason) before the request's state is dropped; nothing is sent upstream and
/// [`Ctx::finish`] is not called (the access-log entry is the drop guard's).
pub(crate) async fn admit_for_bench<R>(
    conn: &Arc<ConnInfo>,
    req: Request<Incoming>,
    then: impl FnOnce(Result<Option<&str>, (u16, &str)>) -> R,
) -> R {
    let runtime = conn.shared.runtime();
    let mut ctx = Ctx::begin(conn, &runtime, &req);
    match admit(&mut ctx, req).await {
        Ok(forwardable) => then(Ok(forwardable.user())),
        Err(err) => then(Err((err.kind.status().as_u16(), &err.reason))),
    }
}

/// The pipeline proper: everything before the upstream call, then the call.
async fn process(ctx: &mut Ctx<'_>, req: Request<Incoming>) -> Result<Response<ResponseBody>, GatewayError> {
    let forwardable = admit(ctx, req).await?;
    forward::forward(ctx, forwardable).await
}

/// Every phase before the upstream call, in order. The route of the path as sent is checked
/// first (cheap refusals need no body); then the body is read where Frappe would parse it, the
/// Frappe request model says what Frappe will run, and the routes of every spelling of that
/// call are judged.
async fn admit<'r>(ctx: &mut Ctx<'r>, req: Request<Incoming>) -> Result<Forwardable<'r>, GatewayError> {
    let (mut head, body) = req.into_parts();
    let (mut frappe, declared) = head::admit(ctx, &mut head)?;
    let sent = ctx.rt.routes.for_path(&frappe.path);
    let preflight = head::is_cors_preflight(&head);
    let credentials_first = authorize::credentials_first(sent, preflight);
    pre_auth::admit(ctx, sent, &frappe.call, credentials_first).await?;
    let early = match credentials_first {
        true => Some(authorize::limited_credentials(ctx, sent, &head).await?),
        false => None,
    };
    let body = read_body::read(ctx, &mut head, body, declared, sent, &mut frappe, preflight).await?;
    let routes = ctx.rt.routes.for_request(&frappe);
    pre_auth::admit_call_route(ctx, &routes, &frappe.call).await?;
    let admission = authorize::admit(ctx, &routes, &head, preflight, early).await?;
    post_auth::check(ctx, &routes, &head, &frappe, &admission).await?;
    Ok(Forwardable { route: routes.sent, head, body, path_and_query: frappe.forward, admission })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, B, Fut, F: Fn(A, B) -> Fut>(_: &F) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// Every request's future is moved (memcpy) into hyper's HTTP/1.1 dispatcher, and on
    /// HTTP/2 into its box (`server::Protocol::Http2`): rarely used, large futures (a new
    /// upstream connection, a Frappe verification) are boxed so that every request does not
    /// carry and copy their size. It was 6.9 KiB before that (debug build; 3.8 KiB in release).
    #[test]
    fn the_request_future_stays_small() {
        let size = future_size(&handle);
        assert!(size <= 5 * 1024, "pipeline::handle's future is {size} bytes");
    }
}
