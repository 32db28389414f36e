//! Secrets must never reach a log. Every secret a test hands the gateway is remembered here
//! as it is created (the fake Frappe's users and bearer tokens, the harness's environment),
//! and every gateway the harness ran checks its own output when it is dropped: no remembered
//! secret, no `<15 hex>:<15 hex>` pair (a Frappe `api_key:api_secret`), no base64 word that
//! decodes to one (a `Basic` credential). No hand-kept list, no test that must run last.

use std::collections::BTreeSet;
use std::sync::Mutex;

use base64::Engine as _;

static REMEMBERED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Remember a secret (values shorter than 8 characters are too common to search for).
pub fn remember(secret: &str) {
    if secret.len() >= 8 {
        REMEMBERED.lock().unwrap_or_else(|e| e.into_inner()).insert(secret.to_string());
    }
}

/// What in `text` looks like a leaked secret (empty when nothing does).
pub fn leaks(text: &str) -> Vec<String> {
    let remembered = REMEMBERED.lock().unwrap_or_else(|e| e.into_inner());
    let mut found: Vec<String> =
        remembered.iter().filter(|s| text.contains(s.as_str())).map(|s| format!("secret {s:?}")).collect();
    if has_key_secret_pair(text) {
        found.push("an api_key:api_secret pair".into());
    }
    if has_basic_credential(text) {
        found.push("a Basic credential".into());
    }
    found
}

fn is_hex15(s: &str) -> bool {
    s.len() == 15 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `<15 hex>:<15 hex>` anywhere in `text`.
pub fn has_key_secret_pair(text: &str) -> bool {
    let bytes = text.as_bytes();
    (15..bytes.len().saturating_sub(15)).any(|i| {
        bytes[i] == b':'
            && text.get(i - 15..i).is_some_and(is_hex15)
            && text.get(i + 1..i + 16).is_some_and(is_hex15)
    })
}

/// A base64 word that decodes to `<15 hex>:<15 hex>`.
pub fn has_basic_credential(text: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '='))
        .filter(|w| w.len() >= 40)
        .filter_map(|w| base64::engine::general_purpose::STANDARD.decode(w).ok())
        .filter_map(|d| String::from_utf8(d).ok())
        .any(|d| has_key_secret_pair(&d))
}
