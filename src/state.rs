//! Everything the request path reads, built once from the validated config.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::collections::HashMap;

use anyhow::Result;
use http::header::HeaderName;
use http::Method;

use crate::access_log::AccessLog;
use crate::auth::{CredentialStore, FrappeClient, SyncStatus, VerifyBudget};
use crate::config::{Config, Rate, UserPolicy};
use crate::metrics::Metrics;
use crate::policy::{
    ClientIpResolver, FailedAuthTracker, IpPolicy, RateLimiter, RestrictIpCache, RevocationBus,
};
use crate::proxy::Upstream;
use crate::request_body::BodyLimits;
use crate::routes::{header_value, RouteTable, Target};

/// Request ids: a random per-process prefix and a counter — unique across instances, cheap.
pub struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl RequestIds {
    pub fn new() -> Self {
        RequestIds { prefix: rand::random(), next: AtomicU64::new(1) }
    }

    pub fn next(&self) -> Arc<str> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Arc::from(format!("{:016x}{:08x}", self.prefix, n))
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

/// A `[[user]]` entry, ready for per-request checks.
pub struct UserRules {
    pub ip_policy: IpPolicy,
    /// Empty = any method.
    pub methods: Vec<Method>,
    pub per_key: Option<Rate>,
    pub doctypes: Option<Vec<String>>,
    pub rpc: Option<Vec<String>>,
}

impl UserRules {
    fn new(user: &UserPolicy) -> Self {
        UserRules {
            ip_policy: IpPolicy::new("user", &user.allow, &[]),
            methods: user.methods.clone(),
            per_key: user.per_key,
            doctypes: user.doctypes.clone(),
            rpc: user.rpc.clone(),
        }
    }
}

/// Authentication and its background machinery.
pub struct AuthState {
    pub store: Arc<CredentialStore>,
    pub frappe: Arc<FrappeClient>,
    /// `Some` when a sync token is configured.
    pub sync_status: Option<Arc<SyncStatus>>,
    pub restrict_ip: RestrictIpCache,
}

/// Rate limits, lockouts and the cross-instance revocation bus.
pub struct LimitState {
    pub limiter: Arc<RateLimiter>,
    pub failed_auth: FailedAuthTracker,
    /// `Some` on the Redis backend.
    pub revocations: Option<RevocationBus>,
}

/// Shared, read-mostly state of a running gateway.
pub struct AppState {
    pub config: Config,
    pub routes: RouteTable,
    pub client_ip: ClientIpResolver,
    /// `network.allow` / `network.deny`.
    pub network: IpPolicy,
    /// `[[user]]` rules by lowercased user name.
    pub users: HashMap<String, UserRules>,
    pub auth: AuthState,
    pub limits: LimitState,
    /// One upstream pool per proxy worker (index = worker), so a request and its pooled
    /// connection live on the same thread.
    pub upstreams: Vec<Upstream>,
    /// The admin listener's own client for readiness probes.
    pub probe: Upstream,
    pub access_log: AccessLog,
    /// `server.inspect_body_bytes`, `max_body_bytes`, `body_read_timeout`.
    pub body_limits: BodyLimits,
    pub metrics: Arc<Metrics>,
    pub request_ids: RequestIds,
    pub user_header: HeaderName,
    /// `https` when TLS is terminated here.
    pub proto: &'static str,
}

impl AppState {
    /// The `[[user]]` rules for `user` (Frappe user names are case-insensitive).
    pub fn user_rules(&self, user: &str) -> Option<&UserRules> {
        if self.users.is_empty() {
            return None;
        }
        self.users.get(&user.to_lowercase())
    }

    pub async fn new(config: Config, access_log: AccessLog) -> Result<Self> {
        let default_target = Arc::new(Target {
            base: config.upstream.url.clone(),
            host: header_value(&config.upstream.host)?,
            site_name: config.upstream.site_name.as_deref().map(header_value).transpose()?,
            frappe: true,
        });
        let routes = RouteTable::build(&config, &default_target)?;
        let new_upstream = || Upstream::new(config.upstream.connect_timeout, config.upstream.timeout);
        let upstreams = (0..config.server.workers).map(|_| new_upstream()).collect();
        let probe = new_upstream();
        let frappe = Arc::new(FrappeClient::new(
            &config.frappe.url,
            &config.upstream.host,
            config.upstream.site_name.as_deref(),
            config.frappe.verify_timeout,
        )?);
        let auth = AuthState {
            store: Arc::new(CredentialStore::new(&config.auth, frappe.clone()).with_budget(
                VerifyBudget::new(config.frappe.max_verify_concurrency, config.frappe.max_verify_rate),
            )),
            frappe,
            sync_status: config.frappe.sync_token.as_ref().map(|_| Arc::new(SyncStatus::new())),
            restrict_ip: RestrictIpCache::new(10_000, std::time::Duration::from_secs(600)),
        };
        let limiter = Arc::new(RateLimiter::from_config(&config.rate_limit).await?);
        let limits = LimitState {
            failed_auth: FailedAuthTracker::from_config(limiter.clone(), &config.rate_limit),
            revocations: RevocationBus::new(&limiter),
            limiter,
        };
        let users = config.users.iter().map(|u| (u.name.to_lowercase(), UserRules::new(u))).collect();
        Ok(AppState {
            routes,
            client_ip: ClientIpResolver::new(&config.network.trusted_proxies),
            network: IpPolicy::new("network", &config.network.allow, &config.network.deny),
            users,
            auth,
            limits,
            upstreams,
            probe,
            access_log,
            body_limits: BodyLimits {
                inspect: config.server.inspect_body_bytes,
                max: config.server.max_body_bytes,
                read_timeout: config.server.body_read_timeout,
            },
            metrics: Arc::new(Metrics::new()),
            request_ids: RequestIds::new(),
            user_header: config.auth.user_header.clone(),
            proto: if config.server.tls.is_some() { "https" } else { "http" },
            config,
        })
    }
}
