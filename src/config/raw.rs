//! The shape of `gateway.toml` as written: serde structs that keep each value's span, so
//! validation can name the line. Unknown keys are rejected here.

use serde::Deserialize;
use toml::Spanned;

pub(super) type S<T> = Option<Spanned<T>>;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub admin: RawAdmin,
    pub upstream: Option<Spanned<RawUpstream>>,
    #[serde(default)]
    pub frappe: RawFrappe,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub network: RawNetwork,
    #[serde(default)]
    pub rate_limit: RawRateLimit,
    #[serde(default)]
    pub route: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    pub user: Vec<Spanned<RawUser>>,
    #[serde(default)]
    pub log: RawLog,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub listen: S<String>,
    pub tls_cert: S<String>,
    pub tls_key: S<String>,
    pub self_signed_if_missing: Option<bool>,
    pub max_connections: S<u64>,
    pub header_read_timeout: S<String>,
    pub idle_timeout: S<String>,
    pub max_header_bytes: S<u64>,
    pub max_body_bytes: S<u64>,
    pub inspect_body_bytes: S<u64>,
    pub request_buffering: Option<bool>,
    pub max_spool_bytes: S<u64>,
    pub max_buffered_bytes: S<u64>,
    pub max_buffered_bytes_per_connection: S<u64>,
    pub body_read_timeout: S<String>,
    pub shutdown_grace: S<String>,
    pub workers: S<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub listen: S<String>,
    pub allowed_hosts: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub url: S<String>,
    pub host: S<String>,
    pub site_name: S<String>,
    pub connect_timeout: S<String>,
    pub timeout: S<String>,
    pub max_connections: S<u64>,
    pub queue_timeout: S<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFrappe {
    pub url: S<String>,
    pub sync_interval: S<String>,
    pub sync_token_env: S<String>,
    pub webhook_secret_env: S<String>,
    pub verify_timeout: S<String>,
    pub max_verify_concurrency: S<u64>,
    pub max_verify_rate: S<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub user_header: S<String>,
    pub forward_authorization: Option<bool>,
    pub cache_capacity: S<u64>,
    pub cache_ttl: S<String>,
    pub negative_ttl: S<String>,
    pub stale_if_error: S<String>,
    pub allow_administrator: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetwork {
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    pub allow: Option<Vec<Spanned<String>>>,
    pub deny: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    pub backend: S<String>,
    pub redis_url_env: S<String>,
    pub redis_timeout: S<String>,
    pub per_key: S<String>,
    pub per_ip: S<String>,
    pub failed_auth_per_ip: S<String>,
    pub lockout: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub path: S<String>,
    pub auth: S<String>,
    pub allow: Option<Vec<Spanned<String>>>,
    pub per_ip: S<String>,
    pub per_key: S<String>,
    pub upstream: S<String>,
    pub forward_authorization: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    pub name: S<String>,
    pub allow: Option<Vec<Spanned<String>>>,
    pub methods: Option<Vec<Spanned<String>>>,
    pub per_key: S<String>,
    pub doctypes: Option<Vec<String>>,
    pub rpc: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub access: S<String>,
    pub level: S<String>,
    pub full_api_key: Option<bool>,
}
