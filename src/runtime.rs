//! The runtime configuration: everything the request path reads that `gateway.toml` decides,
//! compiled once from a validated [`Config`]. It sits behind one `ArcSwap` in
//! [`Shared`](crate::state::Shared): a request loads it once and keeps that version to its
//! end, so a reload is a single swap and never changes the rules under a running request.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;
use http::header::HeaderName;

use crate::config::{Config, Rate, UserPolicy};
use crate::policy::{ClientIpResolver, IpPolicy};
use crate::request_body::BodyLimits;
use crate::routes::{address_of, header_value, RouteTable, Target};

/// See the module docs.
pub(crate) struct Runtime {
    pub(crate) routes: RouteTable,
    pub(crate) client_ip: ClientIpResolver,
    /// `network.allow` / `network.deny`.
    pub(crate) network: IpPolicy,
    users: HashMap<String, UserRules>,
    /// The global `rate_limit.per_ip` / `per_key` (routes and users may override them).
    pub(crate) per_ip: Option<Rate>,
    pub(crate) per_key: Option<Rate>,
    pub(crate) body_limits: BodyLimits,
    /// `server.max_header_bytes`.
    pub(crate) max_header_bytes: usize,
    /// `auth.user_header`: stripped from every request, set on authenticated ones.
    pub(crate) user_header: HeaderName,
    /// `log.full_api_key`.
    pub(crate) full_api_key: bool,
    /// `https` when TLS is terminated here.
    pub(crate) proto: &'static str,
    /// The validated file this was compiled from, for the admin listener and reload reports;
    /// the request path reads the compiled fields above instead.
    pub(crate) config: Arc<Config>,
    /// SHA-256 (hex) of the effective configuration as `check` prints it (secrets redacted):
    /// equal on two instances that run the same settings, whatever the file's comments.
    pub(crate) fingerprint: String,
    /// When this configuration was compiled (start, or the reload that brought it).
    pub(crate) loaded_at: std::time::SystemTime,
}

/// A `[[user]]` entry with its allowlist compiled.
pub(crate) struct UserRules {
    pub(crate) ip_policy: IpPolicy,
    pub(crate) policy: UserPolicy,
}

impl Runtime {
    pub(crate) fn build(config: Config) -> Result<Self> {
        let default_target = Arc::new(Target {
            base: config.upstream.url.clone(),
            host: header_value(&config.upstream.host)?,
            site_name: config.upstream.site_name.as_deref().map(header_value).transpose()?,
            frappe: true,
            address: address_of(&config.upstream.url),
        });
        let users = config
            .users
            .iter()
            .map(|u| {
                let rules = UserRules { ip_policy: IpPolicy::new("user", &u.allow, &[]), policy: u.clone() };
                (u.name.to_lowercase(), rules)
            })
            .collect();
        Ok(Runtime {
            routes: RouteTable::build(&config, &default_target)?,
            client_ip: ClientIpResolver::new(&config.network.trusted_proxies),
            network: IpPolicy::new("network", &config.network.allow, &config.network.deny),
            users,
            per_ip: config.rate_limit.per_ip,
            per_key: config.rate_limit.per_key,
            body_limits: BodyLimits {
                inspect: config.server.inspect_body_bytes,
                max: config.server.max_body_bytes,
                read_timeout: config.server.body_read_timeout,
                buffer_all: config.server.request_buffering,
                max_spool: config.server.max_spool_bytes,
                max_buffered: config.server.max_buffered_bytes,
                max_buffered_per_connection: config.server.max_buffered_bytes_per_connection,
            },
            max_header_bytes: config.server.max_header_bytes,
            user_header: config.auth.user_header.clone(),
            full_api_key: config.log.full_api_key,
            proto: if config.server.tls.is_some() { "https" } else { "http" },
            fingerprint: fingerprint(&config),
            loaded_at: std::time::SystemTime::now(),
            config: Arc::new(config),
        })
    }

    /// The `[[user]]` rules for `user` (Frappe user names are case-insensitive).
    pub(crate) fn user_rules(&self, user: &str) -> Option<&UserRules> {
        if self.users.is_empty() {
            return None;
        }
        self.users.get(&user.to_lowercase())
    }
}

/// See [`Runtime::fingerprint`].
fn fingerprint(config: &Config) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{config:#?}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
