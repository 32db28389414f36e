//! Frappe's User webhook (FRAPPE.md §9): signature check, the user name in the body, and the
//! revocation it triggers. The HTTP endpoint (`POST /hooks/frappe`) lives in the admin server.

use base64::Engine;
use hmac::{Hmac, Mac};
use http::HeaderValue;
use sha2::Sha256;

use super::frappe::{SyncError, UserSource};
use super::store::{hidden_from_sync, CredentialStore};
use crate::config::Secret;

/// The header Frappe signs with when the Webhook has "Enable Security" on.
pub const SIGNATURE_HEADER: &str = "x-frappe-webhook-signature";

/// True when `header` is `base64(HMAC-SHA256(secret, body))` over the raw body, as Frappe
/// computes it. Missing, non-base64 or wrong signatures are false; the comparison is constant
/// time.
pub fn verify_signature(secret: &Secret, body: &[u8], header: Option<&HeaderValue>) -> bool {
    let Some(text) = header.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let Ok(signature) = base64::engine::general_purpose::STANDARD.decode(text.trim()) else {
        return false;
    };
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).expect("HMAC accepts any key length");
    mac.update(body);
    mac.verify_slice(&signature).is_ok()
}

/// The User's name from a webhook body: JSON `{"name": ...}` or `{"doc": {"name": ...}}`, or a
/// form-encoded `name=...`. `None` when there is none (or it is empty).
pub fn parse_user_name(body: &[u8]) -> Option<String> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => json_name(&value),
        Err(_) => form_name(body),
    }
}

fn json_name(value: &serde_json::Value) -> Option<String> {
    let direct = value.get("name").and_then(|n| n.as_str());
    let nested = || value.get("doc").and_then(|d| d.get("name")).and_then(|n| n.as_str());
    direct.or_else(nested).map(str::trim).filter(|n| !n.is_empty()).map(str::to_owned)
}

fn form_name(body: &[u8]) -> Option<String> {
    let body = std::str::from_utf8(body).ok()?;
    let raw = body.split('&').find_map(|pair| pair.strip_prefix("name="))?;
    let spaced = raw.replace('+', " ");
    let name = percent_encoding::percent_decode_str(&spaced).decode_utf8().ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// A User was updated or deleted in Frappe: drop its cached credentials at once, then (with a
/// sync token) read its record again so a disabled user stays refused although Frappe's whoami
/// would still accept the key. Returns whether the record was re-read: not without a sync
/// token, and not for a user the sync user cannot see by design (Administrator: Frappe answers
/// it 403, which is no misconfiguration) — its next request is verified again and reads its own
/// record. A failed refresh is returned (and logged); the revocation stands either way.
pub async fn handle_user_event(
    store: &CredentialStore,
    source: &dyn UserSource,
    sync_token: Option<&Secret>,
    name: &str,
) -> Result<bool, SyncError> {
    let Some(token) = sync_token else {
        drop_credentials(store, name);
        return Ok(false);
    };
    if hidden_from_sync(name) {
        drop_credentials(store, name);
        tracing::info!(
            user = name,
            self_read = store.administrator_allowed(),
            "webhook: Frappe hides this user from the sync user, so it is not re-read with the sync token; {}",
            self_read_note(store)
        );
        return Ok(false);
    }
    // Read first, then drop and apply together: dropped first, the credentials would be
    // verified again while the read is in flight — and Frappe 15 accepts a disabled user's key.
    let read_from = store.now();
    let read = source.get_user(token, name).await;
    drop_credentials(store, name);
    match read {
        Ok(user) => {
            store.apply_user(user, name, read_from);
            Ok(true)
        }
        Err(error) => {
            tracing::warn!(user = name, error = %error, "webhook: cannot refresh the user from Frappe");
            Err(error)
        }
    }
}

fn drop_credentials(store: &CredentialStore, name: &str) {
    store.revoke_user(name);
    tracing::info!(user = name, "webhook: cached credentials of the user dropped");
}

/// What happens to the credentials of users sync cannot see, for logs.
pub(crate) fn self_read_note(store: &CredentialStore) -> &'static str {
    if store.administrator_allowed() {
        "its credentials are verified by self-read: its own User record (enabled, restrict_ip), read \
         with its own credentials at each verification"
    } else {
        "its credentials are refused at the gateway (auth.allow_administrator = false)"
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use futures_util::future::BoxFuture;
    use http::header::HeaderName;

    use super::*;
    use crate::auth::directory::SyncedUser;
    use crate::auth::header::parse;
    use crate::auth::store::{Rejection, Verify, VerifyError};
    use crate::config::AuthConfig;

    fn sign(secret: &str, body: &[u8]) -> HeaderValue {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        let encoded = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        HeaderValue::from_str(&encoded).unwrap()
    }

    #[test]
    fn signatures() {
        let secret = Secret::new("webhooksecret".into());
        let body = br#"{"name": "api.user@example.com"}"#;
        assert!(verify_signature(&secret, body, Some(&sign("webhooksecret", body))));
        assert!(!verify_signature(&secret, body, Some(&sign("othersecret", body))));
        assert!(!verify_signature(&secret, b"{\"name\": \"x\"}", Some(&sign("webhooksecret", body))));
        assert!(!verify_signature(&secret, body, None));
        assert!(!verify_signature(&secret, body, Some(&HeaderValue::from_static("!!not base64!!"))));
        assert!(!verify_signature(&secret, body, Some(&HeaderValue::from_static(""))));
    }

    #[test]
    fn user_names() {
        assert_eq!(parse_user_name(br#"{"name": "a@x"}"#).as_deref(), Some("a@x"));
        assert_eq!(parse_user_name(br#"{"doc": {"name": "a@x"}}"#).as_deref(), Some("a@x"));
        assert_eq!(
            parse_user_name(b"doctype=User&name=api.user%40example.com").as_deref(),
            Some("api.user@example.com")
        );
        assert_eq!(parse_user_name(b"name=first+last"), Some("first last".into()));
        assert_eq!(parse_user_name(br#"{"name": ""}"#), None);
        assert_eq!(parse_user_name(br#"{"name": 3}"#), None);
        assert_eq!(parse_user_name(b"doctype=User"), None);
    }

    struct Frappe;

    impl Verify for Frappe {
        fn verify<'a>(&'a self, _: &'a HeaderValue) -> BoxFuture<'a, Result<String, VerifyError>> {
            // Frappe 15.0–15.53 accepts a disabled user's key.
            Box::pin(async { Ok("api.user@example.com".to_owned()) })
        }
    }

    impl UserSource for Frappe {
        fn list_users<'a>(&'a self, _: &'a Secret) -> BoxFuture<'a, Result<Vec<SyncedUser>, SyncError>> {
            Box::pin(async { Ok(Vec::new()) })
        }

        fn get_user<'a>(
            &'a self,
            _: &'a Secret,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Option<SyncedUser>, SyncError>> {
            Box::pin(async move {
                Ok(Some(SyncedUser {
                    name: name.into(),
                    enabled: false,
                    api_key: Some("key".into()),
                    modified: "m2".into(),
                    restrict_ip: None,
                }))
            })
        }
    }

    #[tokio::test]
    async fn a_user_event_revokes_and_refreshes() {
        let cfg = AuthConfig {
            user_header: HeaderName::from_static("x-frappe-user"),
            forward_authorization: true,
            cache_capacity: 100,
            cache_ttl: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(30),
            stale_if_error: Duration::from_secs(600),
            allow_administrator: false,
        };
        let store = CredentialStore::new(&cfg, Arc::new(Frappe));
        let value = HeaderValue::from_static("token key:secret");
        let credential = parse(Some(&value)).unwrap();
        assert!(store.authenticate(&credential, &value).await.is_ok());
        let token = Secret::new("sync:token".into());
        assert!(handle_user_event(&store, &Frappe, Some(&token), "api.user@example.com").await.unwrap());
        assert_eq!(store.authenticate(&credential, &value).await.unwrap_err(), Rejection::Disabled);
    }

    /// Sync cannot read Administrator (Frappe answers a System Manager 403): a refresh with the
    /// sync token is never tried, so no misleading "give it the System Manager role" appears.
    struct NoReads;

    impl UserSource for NoReads {
        fn list_users<'a>(&'a self, _: &'a Secret) -> BoxFuture<'a, Result<Vec<SyncedUser>, SyncError>> {
            Box::pin(async { Ok(Vec::new()) })
        }

        fn get_user<'a>(
            &'a self,
            _: &'a Secret,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Option<SyncedUser>, SyncError>> {
            panic!("{name} must not be read with the sync token")
        }
    }

    #[tokio::test]
    async fn administrator_events_revoke_without_a_sync_read() {
        let cfg = AuthConfig {
            user_header: HeaderName::from_static("x-frappe-user"),
            forward_authorization: true,
            cache_capacity: 100,
            cache_ttl: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(30),
            stale_if_error: Duration::from_secs(600),
            allow_administrator: true,
        };
        let store = CredentialStore::new(&cfg, Arc::new(Frappe));
        let token = Secret::new("sync:token".into());
        assert!(!handle_user_event(&store, &NoReads, Some(&token), "Administrator").await.unwrap());
        assert!(self_read_note(&store).contains("self-read"));
    }
}
