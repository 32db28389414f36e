//! The validated, typed runtime configuration that the rest of the gateway reads.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::header::HeaderName;
use http::{Method, Uri};
use ipnet::IpNet;

/// The whole validated configuration (`gateway.toml` after checks and defaults).
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub upstream: UpstreamConfig,
    pub frappe: FrappeConfig,
    pub auth: AuthConfig,
    pub network: NetworkConfig,
    pub rate_limit: RateLimitConfig,
    /// Sorted longest path first, so the first prefix match is the longest.
    pub routes: Vec<Route>,
    pub users: Vec<UserPolicy>,
    pub log: LogConfig,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// `None` serves plain HTTP.
    pub tls: Option<TlsFiles>,
    pub self_signed_if_missing: bool,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    /// Bodies up to this size are read whole before an upstream connection is used, and
    /// judged when Frappe would parse them (form, JSON); larger forms and JSON get 413.
    pub inspect_body_bytes: u64,
    /// A body larger than `inspect_body_bytes` is read whole into a temporary file before
    /// the upstream is contacted (`true`), or streamed through (`false`).
    pub request_buffering: bool,
    /// Bytes all spooled bodies may hold on disk at once; beyond, a large body gets 503.
    pub max_spool_bytes: u64,
    /// Bytes all request bodies being read into memory may hold at once; beyond, 503.
    pub max_buffered_bytes: u64,
    /// The same for the requests of one connection (HTTP/2 streams).
    pub max_buffered_bytes_per_connection: u64,
    /// How long a request body may take to arrive (buffered: in all; streamed: between chunks).
    pub body_read_timeout: Duration,
    /// How long in-flight requests may run after SIGTERM before the process exits anyway.
    pub shutdown_grace: Duration,
    /// Proxy worker threads, each with its own event loop and upstream pool, accepting on the
    /// same port (SO_REUSEPORT), the way nginx runs workers. Default: one per CPU.
    pub workers: usize,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Host names (lowercase, no trailing dot) the admin pages answer besides IP literals and
    /// `localhost`; `"*"` = any Host. Default empty. Guards against DNS rebinding; reloadable.
    pub allowed_hosts: Vec<String>,
}

/// Where requests are forwarded.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub url: Uri,
    /// Host header sent upstream (default: the url's authority).
    pub host: String,
    pub site_name: Option<String>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// Connections open to each backend at once, per instance (0 = no cap).
    pub max_connections: usize,
    /// How long a request waits for a connection when all are in use (then 503).
    pub queue_timeout: Duration,
}

/// Where keys are verified and users synced.
#[derive(Debug, Clone)]
pub struct FrappeConfig {
    pub url: Uri,
    pub sync_interval: Duration,
    /// `api_key:api_secret` of the sync user; `None` = TTL-only behaviour.
    pub sync_token: Option<Secret>,
    /// Shared secret of Frappe's webhook signature; `None` = webhook receiver disabled.
    pub webhook_secret: Option<Secret>,
    /// Time allowed for one call to Frappe (whoami, sync page).
    pub verify_timeout: Duration,
    /// Verifications of unknown credentials in flight at once (default 16); beyond, 503.
    pub max_verify_concurrency: usize,
    /// Verifications of unknown credentials started, process-wide (default `50/sec`).
    pub max_verify_rate: Rate,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub user_header: HeaderName,
    pub forward_authorization: bool,
    pub cache_capacity: u64,
    pub cache_ttl: Duration,
    pub negative_ttl: Duration,
    pub stale_if_error: Duration,
    /// Accept Administrator's credentials (default false). When true, its `enabled` and
    /// `restrict_ip` are read with its own credentials at each verification (sync cannot).
    pub allow_administrator: bool,
}

#[derive(Debug, Clone)]
pub struct NetworkConfig {
    pub trusted_proxies: Vec<IpNet>,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitBackend {
    Local,
    Redis,
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub backend: RateLimitBackend,
    /// Set when `backend = "redis"`.
    pub redis_url: Option<Secret>,
    pub redis_timeout: Duration,
    pub per_key: Option<Rate>,
    pub per_ip: Option<Rate>,
    pub failed_auth_per_ip: Option<Rate>,
    pub lockout: Duration,
}

/// A rate such as `"600/min"`: `count` requests per `per`, with a burst of `burst`
/// (default `count`: a fresh client may spend the whole period's allowance at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
    pub burst: u32,
}

impl Rate {
    /// Time between two replenished requests.
    pub fn emission_interval(&self) -> Duration {
        self.per / self.count
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, humantime::format_duration(self.per))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Token,
    Public,
    Deny,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Token => "token",
            AuthMode::Public => "public",
            AuthMode::Deny => "deny",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    pub path: String,
    pub auth: AuthMode,
    /// Empty = no route-level allowlist.
    pub allow: Vec<IpNet>,
    pub per_ip: Option<Rate>,
    pub per_key: Option<Rate>,
    /// Another backend for this prefix (it must trust the user header).
    pub upstream: Option<Uri>,
    /// Send the client's Authorization upstream. Default: `auth.forward_authorization` for
    /// the Frappe site, `false` for another backend (it gets only the user header).
    pub forward_authorization: Option<bool>,
}

/// Per-integration policy, by Frappe user name.
#[derive(Debug, Clone)]
pub struct UserPolicy {
    pub name: String,
    /// Empty = any address.
    pub allow: Vec<IpNet>,
    /// Empty = any method.
    pub methods: Vec<Method>,
    pub per_key: Option<Rate>,
    /// `None` = any DocType.
    pub doctypes: Option<Vec<String>>,
    /// `None` = any whitelisted method.
    pub rpc: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    Off,
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub access: AccessLogTarget,
    pub level: String,
    /// Log whole api_keys; by default a shortened key with a fingerprint.
    pub full_api_key: bool,
}

/// A secret read from the environment. Debug and Display never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    /// The secret itself; call only where it is sent or hashed.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}
