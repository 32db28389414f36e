//! `[[user]] doctypes` and `rpc`: which DocTypes and methods a key may call, judged on the
//! call the Frappe request model says Frappe will run.

use crate::frappe_request::{rpc_entry_matches, Call};

/// Why a key's `[[user]] doctypes` / `rpc` rules refused a call. `Display` names the DocType or
/// method, which is fine to tell the client: it is their own request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallDenied {
    #[error("DocType {0:?} is not allowed for this API key")]
    DocType(String),
    #[error("method {0:?} is not allowed for this API key")]
    Method(String),
}

/// Applies a user's rules to a call; `None` lists mean "any" (the config's default).
///
/// The document API and document methods need their DocType in `doctypes`; a dotted method
/// needs an `rpc` entry; a DocType controller function (`/api/v2/method/<DocType>/<m>`) needs
/// both — the DocType, and an `rpc` entry naming it as `"<DocType>.<m>"` or by its dotted
/// controller path. Pages and paths Frappe does not route name neither, and pass.
pub fn check_call(
    call: &Call,
    doctypes: Option<&[String]>,
    rpc: Option<&[String]>,
) -> Result<(), CallDenied> {
    if let (Some(doctype), Some(allowed)) = (call.doctype(), doctypes) {
        if !allowed.iter().any(|d| d == doctype) {
            return Err(CallDenied::DocType(doctype.to_string()));
        }
    }
    let needs_rpc = matches!(call, Call::Method(_) | Call::DocTypeMethod { .. });
    match rpc {
        Some(allowed) if needs_rpc && !allowed.iter().any(|entry| rpc_entry_matches(entry, call)) => {
            Err(CallDenied::Method(call.rpc().unwrap_or_default().into_owned()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    use crate::frappe_request::FrappeRequest;

    fn call(uri: &str) -> Call {
        FrappeRequest::from_head(&Method::GET, &uri.parse().unwrap()).unwrap().call
    }

    #[test]
    fn user_rules() {
        let doctypes = vec!["ToDo".to_string(), "Sales Invoice".to_string(), "User".to_string()];
        let rpc = vec![
            "frappe.client.get_list".to_string(),
            "ToDo.get_stats".to_string(),
            "frappe.core.doctype.user.user.generate_keys".to_string(),
        ];
        let check = |p: &str| check_call(&call(p), Some(&doctypes), Some(&rpc));
        assert_eq!(check("/api/resource/ToDo"), Ok(()));
        assert_eq!(check("/api/resource/ToDo/NAME"), Ok(()));
        assert_eq!(check("/api/resource/Sales%20Invoice"), Ok(()));
        assert_eq!(check("/api/resource/Customer"), Err(CallDenied::DocType("Customer".into())));
        assert_eq!(check("/api/resource/todo"), Err(CallDenied::DocType("todo".into())));
        assert_eq!(check("/api/method/frappe.client.get_list"), Ok(()));
        assert_eq!(check("/api/resource/ToDo?cmd=frappe.client.get_list"), Ok(()));
        assert_eq!(
            check("/api/resource/ToDo?cmd=frappe.client.get_value"),
            Err(CallDenied::Method("frappe.client.get_value".into()))
        );
        assert_eq!(
            check("/api/v2/method/frappe.client.get_password"),
            Err(CallDenied::Method("frappe.client.get_password".into()))
        );
        assert_eq!(check("/api/v2/method/ToDo/get_stats"), Ok(()));
        assert_eq!(check("/api/v2/method/User/generate_keys"), Ok(()));
        assert_eq!(check("/api/method/frappe.core.doctype.user.user.generate_keys"), Ok(()));
        assert_eq!(check("/api/v2/method/ToDo/other"), Err(CallDenied::Method("ToDo.other".into())));
        assert_eq!(check("/api/v2/method/Note/get_stats"), Err(CallDenied::DocType("Note".into())));
        assert_eq!(check("/api/v2/document/ToDo/x/method/submit"), Ok(()));
        assert_eq!(check("/app/todo"), Ok(()));
        assert_eq!(
            CallDenied::DocType("Sales Invoice".into()).to_string(),
            "DocType \"Sales Invoice\" is not allowed for this API key"
        );
        assert_eq!(check_call(&call("/api/resource/Customer"), None, None), Ok(()));
    }
}
