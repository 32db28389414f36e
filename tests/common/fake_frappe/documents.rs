//! The document APIs: `/api/resource/<DocType>[/<name>]` (v1) and `/api/v2/document/...`
//! over the in-memory store, and the User list and documents built from the users table.

use http::Method;
use serde_json::Value;

use super::api::{is_system_manager, method_not_allowed, ApiRequest};
use super::auth::Identity;
use super::list_query::ListQuery;
use super::params::Params;
use super::reply::{doc_to_json, json_str, ApiVersion, FrappeError, Outcome};
use super::state::{doc_set, Doc, State, User};

fn doctype_not_found(doctype: &str) -> FrappeError {
    FrappeError::not_found(format!("DocType {doctype} not found"))
}

fn no_read_permission(doctype: &str) -> FrappeError {
    FrappeError::permission(None, Some(format!("Insufficient Permission for {doctype}")))
}

pub(super) fn list(
    state: &State,
    params: &Params,
    version: ApiVersion,
    doctype: &str,
    identity: &Identity,
) -> Result<Outcome, FrappeError> {
    list_rows(state, params, version, doctype, identity).map(Outcome::data)
}

/// The JSON array `get_list` returns. On User, api_key / restrict_ip / api_secret are left
/// out unless the caller is a System Manager, and Administrator / Guest are listed only for
/// Administrator (FRAPPE.md §4, transcripts 06a/06e).
pub(super) fn list_rows(
    state: &State,
    params: &Params,
    version: ApiVersion,
    doctype: &str,
    identity: &Identity,
) -> Result<String, FrappeError> {
    if !state.doctype_known(doctype) {
        return Err(doctype_not_found(doctype));
    }
    if identity.is_guest() {
        return Err(no_read_permission(doctype));
    }
    let query = ListQuery::parse(params, version)?;
    let rows: Vec<String> = if doctype == "User" {
        let docs: Vec<Doc> = state
            .users
            .iter()
            .filter(|u| identity.user == "Administrator" || !is_builtin(u))
            .map(user_doc)
            .collect();
        let sm = is_system_manager(state, identity);
        let visible = |field: &str| sm || !is_restricted_user_field(field);
        let selected = query.select(&docs);
        selected.iter().map(|d| query.project(d, visible)).collect()
    } else {
        let docs = state.docs.get(doctype).map(Vec::as_slice).unwrap_or(&[]);
        let selected = query.select(docs);
        selected.iter().map(|d| query.project(d, |_| true)).collect()
    };
    Ok(format!("[{}]", rows.join(",")))
}

fn is_builtin(user: &User) -> bool {
    user.name == "Administrator" || user.name == "Guest"
}

fn is_restricted_user_field(field: &str) -> bool {
    matches!(field, "api_key" | "api_secret" | "restrict_ip" | "roles")
}

/// The User columns the fake knows, in the order Frappe's doc shows them.
fn user_doc(u: &User) -> Doc {
    let masked = u.api_secret.as_ref().map(|s| "*".repeat(s.len()));
    let local = u.name.split('@').next().unwrap_or(&u.name).to_string();
    let email = if u.name.contains('@') { u.name.as_str() } else { "" };
    vec![
        ("name".into(), Value::from(u.name.as_str())),
        ("owner".into(), Value::from("Administrator")),
        ("creation".into(), Value::from(u.creation.as_str())),
        ("modified".into(), Value::from(u.modified.as_str())),
        ("modified_by".into(), Value::from("Administrator")),
        ("docstatus".into(), Value::from(0)),
        ("idx".into(), Value::from(0)),
        ("enabled".into(), Value::from(u8::from(u.enabled))),
        ("email".into(), Value::from(email)),
        ("first_name".into(), Value::from(local.as_str())),
        ("full_name".into(), Value::from(u.full_name())),
        ("username".into(), Value::from(local)),
        ("user_type".into(), Value::from(u.user_type)),
        ("restrict_ip".into(), Value::from(u.restrict_ip.clone())),
        ("api_key".into(), Value::from(u.api_key.clone())),
        ("api_secret".into(), Value::from(masked)),
    ]
}

pub(super) fn create(
    state: &mut State,
    req: &ApiRequest,
    doctype: &str,
    identity: &Identity,
) -> Result<Outcome, FrappeError> {
    if !state.doctype_known(doctype) {
        return Err(doctype_not_found(doctype));
    }
    if identity.is_guest() || doctype == "User" {
        return Err(no_create_permission(doctype, &identity.user));
    }
    let posted = posted_data(req);
    let doc = state.insert_doc(doctype, posted, &identity.user);
    Ok(Outcome::data(doc_to_json(&doc)))
}

/// Transcript 08f, word for word.
fn no_create_permission(doctype: &str, user: &str) -> FrappeError {
    let message = format!(
        "Not allowed via controller permission check<br>User <strong>{user}</strong> does not \
         have doctype access via role permission for document <strong>{doctype}</strong><br>\
         User <strong>{user}</strong> does not have access to this document"
    );
    FrappeError {
        bare_exception: true,
        ..FrappeError::permission(
            Some(message),
            Some(format!("Insufficient Permission for {doctype} (<strong>create</strong>)")),
        )
    }
}

/// `get_request_form_data`: the JSON body, else the `data` parameter, else `form_dict`.
fn posted_data(req: &ApiRequest) -> Value {
    if let Ok(value @ Value::Object(_)) = serde_json::from_slice::<Value>(&req.body) {
        return value;
    }
    if let Some(Ok(value @ Value::Object(_))) = req.params.get_json("data") {
        return value;
    }
    let fields = ["description", "priority", "status", "name"];
    let map = fields
        .iter()
        .filter_map(|f| req.params.get_str(f).map(|v| (f.to_string(), Value::from(v))))
        .collect();
    Value::Object(map)
}

pub(super) fn single(
    state: &mut State,
    req: &ApiRequest,
    version: ApiVersion,
    doctype: &str,
    name: &str,
    identity: &Identity,
) -> Result<Outcome, FrappeError> {
    if !state.doctype_known(doctype) {
        return Err(doctype_not_found(doctype));
    }
    if identity.is_guest() {
        return Err(no_read_permission(doctype));
    }
    if doctype == "User" {
        return match req.method {
            Method::GET => read_user(state, name, identity),
            _ => Err(FrappeError::permission(None, None)),
        };
    }
    let missing = || FrappeError::not_found(format!("{doctype} {name} not found"));
    match req.method {
        Method::GET => {
            let doc = state.find_doc_mut(doctype, name).ok_or_else(missing)?;
            Ok(Outcome::data(doc_to_json(doc)))
        }
        Method::PUT | Method::PATCH => {
            let stamp = state.clock.stamp();
            let doc = state.find_doc_mut(doctype, name).ok_or_else(missing)?;
            if let Value::Object(changes) = posted_data(req) {
                for (field, value) in changes {
                    doc_set(doc, &field, value);
                }
            }
            doc_set(doc, "modified", Value::from(stamp));
            doc_set(doc, "modified_by", Value::from(identity.user.as_str()));
            Ok(Outcome::data(doc_to_json(doc)))
        }
        Method::DELETE => match state.delete_doc(doctype, name) {
            true => Ok(Outcome { status: 202, ..Outcome::rpc(version, json_str("ok")) }),
            false => Err(missing()),
        },
        _ => Err(method_not_allowed()),
    }
}

/// A user may read their own User doc; System Managers read anyone's except Administrator's and
/// Guest's, which only Administrator may read (FRAPPE.md §12: a System Manager gets 403 on
/// `User/Administrator`; User's permission hook refuses the standard users to everyone else).
fn read_user(state: &State, name: &str, identity: &Identity) -> Result<Outcome, FrappeError> {
    if matches!(name, "Administrator" | "Guest") && identity.user != "Administrator" {
        let why = "Insufficient Permission for User (<strong>read</strong>)";
        return Err(FrappeError::permission(None, Some(why.into())));
    }
    let sm = is_system_manager(state, identity);
    if !sm && identity.user != name {
        return Err(FrappeError::permission(None, None));
    }
    let user = state.user(name).ok_or_else(|| FrappeError::not_found(format!("User {name} not found")))?;
    let mut doc: Doc =
        user_doc(user).into_iter().filter(|(field, _)| sm || !is_restricted_user_field(field)).collect();
    doc_set(&mut doc, "doctype", Value::from("User"));
    if sm && user.system_manager {
        let roles = serde_json::json!([{"role": "System Manager", "doctype": "Has Role"}]);
        doc_set(&mut doc, "roles", roles);
    }
    Ok(Outcome::data(doc_to_json(&doc)))
}
