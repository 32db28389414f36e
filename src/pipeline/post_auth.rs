//! Post-auth phases: the policies tied to the authenticated user — no session beside the
//! token, Frappe's `restrict_ip`, the `[[user]]` rules on the call Frappe will run, the
//! per-key limit. Public routes and preflights have no user and pass.

use std::net::IpAddr;

use http::request::Parts;
use http::Method;

use super::authorize::Admission;
use super::context::Ctx;
use super::limits;
use super::pre_auth::check_ip;
use crate::error::{ErrorKind, GatewayError};
use crate::frappe_request::{Call, FrappeRequest};
use crate::policy::check_call;
use crate::routes::RouteMatch;
use crate::runtime::UserRules;

pub(super) async fn check(
    ctx: &mut Ctx<'_>,
    routes: &RouteMatch<'_>,
    head: &Parts,
    frappe: &FrappeRequest,
    admission: &Admission,
) -> Result<(), GatewayError> {
    let Admission::Authenticated(admitted) = admission else { return Ok(()) };
    if frappe.sid && routes.sent.target.frappe {
        return Err(session_refused());
    }
    let ip = ctx.client_ip();
    if let Some(raw) = &admitted.restrict_ip {
        check_ip(ctx.shared.auth.restrict_ip.get(raw).check(ip))?;
    }
    let rt = ctx.rt;
    let rules = rt.user_rules(&admitted.user);
    if let Some(rules) = rules {
        check_user_rules(rules, ip, &head.method, &frappe.call)?;
    }
    limits::limit_key(ctx, routes.judged, rules, &admitted.user).await
}

/// `[[user]]` rules: source address, HTTP method, DocTypes and RPC methods.
fn check_user_rules(rules: &UserRules, ip: IpAddr, method: &Method, call: &Call) -> Result<(), GatewayError> {
    check_ip(rules.ip_policy.check(ip))?;
    let policy = &rules.policy;
    if !policy.methods.is_empty() && !policy.methods.contains(method) {
        return Err(GatewayError::forbidden(format!("method {method} is not allowed for this API key"))
            .with_reason(format!("[[user]] methods excludes {method}")));
    }
    check_call(call, policy.doctypes.as_deref(), policy.rpc.as_deref()).map_err(|denied| {
        let message = denied.to_string();
        GatewayError::forbidden(message.clone()).with_reason(format!("[[user]] rules: {message}"))
    })
}

/// A `sid` anywhere in `form_dict` would let Frappe act as a session's user instead of the
/// token's (FRAPPE.md §8, §11).
fn session_refused() -> GatewayError {
    GatewayError::new(
        ErrorKind::BadRequest,
        "session ids (sid) are not accepted on token routes; authenticate with `Authorization: token api_key:api_secret`",
    )
    .with_reason("sid in form_dict on a token route")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UserPolicy;
    use crate::policy::IpPolicy;

    fn rules(methods: &[Method], doctypes: Option<&[&str]>) -> UserRules {
        let allow = vec!["10.0.0.0/8".parse().unwrap()];
        UserRules {
            ip_policy: IpPolicy::new("user", &allow, &[]),
            policy: UserPolicy {
                name: "u@example.com".into(),
                allow,
                methods: methods.to_vec(),
                per_key: None,
                doctypes: doctypes.map(|d| d.iter().map(|s| s.to_string()).collect()),
                rpc: None,
            },
        }
    }

    fn call(uri: &str) -> Call {
        FrappeRequest::from_head(&Method::GET, &uri.parse().unwrap()).unwrap().call
    }

    #[test]
    fn user_rules_check_address_method_and_doctype() {
        let r = rules(&[Method::GET], Some(&["ToDo"]));
        let inside: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(check_user_rules(&r, inside, &Method::GET, &call("/api/resource/ToDo")).is_ok());
        let outside: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(check_user_rules(&r, outside, &Method::GET, &call("/api/resource/ToDo")).is_err());
        assert!(check_user_rules(&r, inside, &Method::POST, &call("/api/resource/ToDo")).is_err());
        assert!(check_user_rules(&r, inside, &Method::GET, &call("/api/resource/User")).is_err());
    }
}
