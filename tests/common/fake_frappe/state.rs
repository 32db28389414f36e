//! The fake site's data: users and their keys, sessions, bearer tokens, documents, and the
//! switches tests flip (fault modes, `Connection: close`, site name).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::Value;

use super::clock::Clock;
use super::{UsersMode, WhoamiMode};

/// A document as ordered (field, value) pairs, so bodies keep Frappe's field order.
pub(super) type Doc = Vec<(String, Value)>;

/// The value of `field` in a document, `Null` when absent (as a SQL column would be).
pub(super) fn doc_get(doc: &Doc, field: &str) -> Value {
    doc.iter().find(|(k, _)| k == field).map(|(_, v)| v.clone()).unwrap_or(Value::Null)
}

fn has_name(doc: &Doc, name: &str) -> bool {
    doc.iter().any(|(k, v)| k == "name" && v.as_str() == Some(name))
}

/// Set `field`, keeping its position when it already exists.
pub(super) fn doc_set(doc: &mut Doc, field: &str, value: Value) {
    match doc.iter_mut().find(|(k, _)| k == field) {
        Some(slot) => slot.1 = value,
        None => doc.push((field.to_string(), value)),
    }
}

/// `len` random lowercase hex characters, like `frappe.generate_hash(length=len)`.
pub(super) fn random_hex(len: usize) -> String {
    let mut out = String::with_capacity(len);
    while out.len() < len {
        out.push_str(&format!("{:016x}", rand::random::<u64>()));
    }
    out.truncate(len);
    out
}

pub(super) struct User {
    pub name: String,
    pub enabled: bool,
    pub api_key: Option<String>,
    pub api_secret: Option<String>,
    pub password: Option<String>,
    pub restrict_ip: Option<String>,
    pub system_manager: bool,
    pub user_type: &'static str,
    pub creation: String,
    pub modified: String,
}

impl User {
    fn new(name: &str, user_type: &'static str, stamp: String) -> User {
        User {
            name: name.to_string(),
            enabled: true,
            api_key: None,
            api_secret: None,
            password: None,
            restrict_ip: None,
            system_manager: false,
            user_type,
            creation: stamp.clone(),
            modified: stamp,
        }
    }

    /// Frappe's `full_name`: the first name, which new-user defaults to the e-mail's local part.
    pub fn full_name(&self) -> String {
        self.name.split('@').next().unwrap_or(&self.name).to_string()
    }
}

pub(super) struct State {
    pub users: Vec<User>,
    pub bearers: HashMap<String, String>,
    /// sid → user name.
    pub sessions: HashMap<String, String>,
    pub docs: BTreeMap<String, Vec<Doc>>,
    pub known_doctypes: Vec<String>,
    pub clock: Clock,
    pub connection_close: bool,
    pub whoami_delay: Duration,
    pub whoami_mode: WhoamiMode,
    pub users_mode: UsersMode,
    pub site_name: Option<String>,
    pub allow_error_traceback: bool,
    /// `/__test/download` checksums already computed, by length.
    pub download_sha: HashMap<u64, String>,
}

impl State {
    pub fn new() -> State {
        let mut clock = Clock::default();
        let mut admin = User::new("Administrator", "System User", clock.stamp());
        admin.system_manager = true;
        let guest = User::new("Guest", "Website User", clock.stamp());
        State {
            users: vec![admin, guest],
            bearers: HashMap::new(),
            sessions: HashMap::new(),
            docs: BTreeMap::new(),
            known_doctypes: ["ToDo", "Customer", "Sales Invoice"].map(String::from).to_vec(),
            clock,
            connection_close: false,
            whoami_delay: Duration::ZERO,
            whoami_mode: WhoamiMode::Normal,
            users_mode: UsersMode::Normal,
            site_name: None,
            allow_error_traceback: true,
            download_sha: HashMap::new(),
        }
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// The user; panics with a readable message when a test names one that does not exist.
    pub fn user_mut(&mut self, name: &str) -> &mut User {
        self.users
            .iter_mut()
            .find(|u| u.name == name)
            .unwrap_or_else(|| panic!("fake frappe: no user {name:?}"))
    }

    /// Apply a change to a user and bump its `modified`, as saving the User doc does.
    pub fn mutate_user(&mut self, name: &str, change: impl FnOnce(&mut User)) {
        let stamp = self.clock.stamp();
        let user = self.user_mut(name);
        change(user);
        user.modified = stamp;
    }

    /// A System User without keys, unless `name` exists.
    pub fn ensure_user(&mut self, name: &str) {
        if self.user(name).is_none() {
            let stamp = self.clock.stamp();
            self.users.push(User::new(name, "System User", stamp));
        }
    }

    pub fn upsert_user(&mut self, name: &str, api_key: &str, api_secret: &str) {
        self.ensure_user(name);
        crate::common::secrets::remember(api_secret);
        let (key, secret) = (api_key.to_string(), api_secret.to_string());
        self.mutate_user(name, move |u| {
            u.api_key = Some(key);
            u.api_secret = Some(secret);
        });
    }

    pub fn regenerate_secret(&mut self, name: &str) -> String {
        let secret = random_hex(15);
        crate::common::secrets::remember(&secret);
        let new_secret = secret.clone();
        self.mutate_user(name, move |u| {
            u.api_key.get_or_insert_with(|| random_hex(15));
            u.api_secret = Some(new_secret);
        });
        secret
    }

    pub fn delete_user(&mut self, name: &str) {
        self.users.retain(|u| u.name != name);
        self.sessions.retain(|_, user| user != name);
        self.bearers.retain(|_, user| user != name);
    }

    pub fn create_session(&mut self, user: &str) -> String {
        let sid = random_hex(56);
        self.sessions.insert(sid.clone(), user.to_string());
        sid
    }

    /// Key lookup as MariaDB's utf8mb4_unicode_ci collation does it: case-insensitive, and
    /// trailing spaces are ignored (a PAD SPACE collation).
    pub fn user_by_api_key(&self, api_key: &str) -> Option<&User> {
        let wanted = api_key.trim_end_matches(' ');
        if wanted.is_empty() {
            return None;
        }
        self.users.iter().find(|u| {
            u.api_key.as_deref().is_some_and(|k| k.trim_end_matches(' ').eq_ignore_ascii_case(wanted))
        })
    }

    pub fn set_known_doctypes(&mut self, doctypes: &[&str]) {
        self.known_doctypes = doctypes.iter().map(|d| d.to_string()).collect();
    }

    /// User always exists; other DocTypes only when configured.
    pub fn doctype_known(&self, doctype: &str) -> bool {
        doctype == "User" || self.known_doctypes.iter().any(|d| d == doctype)
    }

    /// Insert a document the way `frappe.new_doc(...).insert()` shapes it: standard fields
    /// first, the DocType's defaults, the posted fields, then `doctype`.
    pub fn insert_doc(&mut self, doctype: &str, posted: Value, owner: &str) -> Doc {
        let stamp = self.clock.stamp();
        let posted = match posted {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        let name = match posted.get("name") {
            Some(Value::String(name)) if !name.is_empty() => name.clone(),
            _ => random_hex(10),
        };
        let mut doc: Doc = vec![
            ("name".into(), Value::from(name)),
            ("owner".into(), Value::from(owner)),
            ("creation".into(), Value::from(stamp.clone())),
            ("modified".into(), Value::from(stamp)),
            ("modified_by".into(), Value::from(owner)),
            ("docstatus".into(), Value::from(0)),
            ("idx".into(), Value::from(0)),
        ];
        if doctype == "ToDo" {
            doc_set(&mut doc, "status", Value::from("Open"));
            doc_set(&mut doc, "priority", Value::from("Medium"));
            doc_set(&mut doc, "date", Value::from(self.clock.today()));
        }
        for (field, value) in posted {
            if field != "doctype" && !value.is_null() {
                doc_set(&mut doc, &field, value);
            }
        }
        doc_set(&mut doc, "doctype", Value::from(doctype));
        self.docs.entry(doctype.to_string()).or_default().push(doc.clone());
        doc
    }

    pub fn find_doc_mut(&mut self, doctype: &str, name: &str) -> Option<&mut Doc> {
        self.docs.get_mut(doctype)?.iter_mut().find(|d| has_name(d, name))
    }

    pub fn delete_doc(&mut self, doctype: &str, name: &str) -> bool {
        let Some(docs) = self.docs.get_mut(doctype) else {
            return false;
        };
        let before = docs.len();
        docs.retain(|d| !has_name(d, name));
        docs.len() != before
    }
}
