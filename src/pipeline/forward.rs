//! The last phase: the request goes upstream as its [`Admission`] allows, and the answer
//! streams back. It takes a [`Forwardable`], which carries the [`Admission`]: there is none
//! without one.

use http::request::Parts;
use http::{Request, Response, StatusCode};

use super::authorize::Admission;
use super::context::Ctx;
use crate::body::ResponseBody;
use crate::error::GatewayError;
use crate::proxy::{self, ForwardInfo};
use crate::request_body::UpstreamBody;
use crate::routes::RouteEntry;

/// What the phases before the upstream call hand to [`forward`], built by
/// [`admit`](super::admit) once every one of them has passed.
pub(super) struct Forwardable<'r> {
    /// The route of the path as sent: it picks the backend.
    pub(super) route: &'r RouteEntry,
    pub(super) head: Parts,
    pub(super) body: UpstreamBody,
    /// The path and query to send upstream when they differ from the client's
    /// (`FrappeRequest::forward`).
    pub(super) path_and_query: Option<String>,
    pub(super) admission: Admission,
}

impl Forwardable<'_> {
    /// The user the request goes upstream as (`None`: a public route or a preflight).
    pub(super) fn user(&self) -> Option<&str> {
        match &self.admission {
            Admission::Authenticated(admitted) => Some(&admitted.user),
            Admission::Public | Admission::Preflight => None,
        }
    }
}

pub(super) async fn forward(
    ctx: &mut Ctx<'_>,
    forwardable: Forwardable<'_>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let Forwardable { route, head, body, path_and_query, admission } = forwardable;
    let target = &route.target;
    // A public route to Frappe keeps the client's Authorization and cookies: Frappe checks
    // them itself. Another backend gets only what the route opts into.
    let (user, authorization, cookies) = match &admission {
        Admission::Authenticated(admitted) => (Some(&*admitted.user), route.forward_authorization, false),
        Admission::Public => (None, target.frappe || route.forward_authorization, true),
        Admission::Preflight => (None, false, false),
    };
    let info = ForwardInfo {
        base: &target.base,
        host: &target.host,
        site_name: target.site_name.as_ref(),
        client_ip: ctx.client_ip(),
        proto: ctx.rt.proto,
        request_id: &ctx.request_id,
        user: user.map(|u| (&ctx.rt.user_header, u)),
        authorization,
        cookies,
        path_and_query: path_and_query.as_deref(),
    };
    let mut req = Request::from_parts(head, body);
    let client_upgrade =
        proxy::is_upgrade(&req).then(|| req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>()).flatten();
    proxy::prepare(&mut req, &info);
    proxy::frame_streamed_body(&mut req);
    let stats = ctx.log.body_stats.clone().unwrap_or_default();
    ctx.log.upstream = Some(target.address.clone());
    let (mut upstream_response, took) = ctx.shared.upstreams[ctx.worker].send(req, &stats).await?;
    ctx.log.upstream_time = Some(took);
    ctx.log.upstream_status = Some(upstream_response.status().as_u16());

    if let Some(client_upgrade) = client_upgrade {
        if upstream_response.status() == StatusCode::SWITCHING_PROTOCOLS {
            proxy::tunnel(ctx.conn.clone(), client_upgrade, hyper::upgrade::on(&mut upstream_response));
        }
    }
    proxy::prepare_response(&mut upstream_response);
    Ok(upstream_response.map(ResponseBody::upstream))
}
