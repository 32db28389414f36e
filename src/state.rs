//! Everything the request path reads, built once from the validated config.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::collections::HashMap;

use anyhow::{Context, Result};
use http::header::{HeaderName, HeaderValue};
use http::{Method, Uri};

use crate::access_log::AccessLog;
use crate::auth::{CredentialStore, FrappeClient, SyncStatus, VerifyBudget};
use crate::config::{AuthMode, Config, Rate, Route, UserPolicy};
use crate::metrics::Metrics;
use crate::policy::{
    ClientIpResolver, FailedAuthTracker, IpPolicy, RateLimiter, RestrictIpCache, RevocationBus, RoutePaths,
};
use crate::proxy::Upstream;

/// Where a matched route sends its requests.
pub struct Target {
    pub base: Uri,
    /// The Host header sent upstream.
    pub host: HeaderValue,
    pub site_name: Option<HeaderValue>,
}

/// A configured route with its precomputed target.
pub struct RouteEntry {
    pub path: Arc<str>,
    pub auth: AuthMode,
    pub per_ip: Option<Rate>,
    pub per_key: Option<Rate>,
    pub target: Arc<Target>,
    /// `[[route]] allow` (open when empty).
    pub ip_policy: IpPolicy,
    /// Rate-limit scopes of this route's own `per_ip` / `per_key` buckets.
    pub ip_scope: Arc<str>,
    pub key_scope: Arc<str>,
    /// Index into `Config::routes`, `None` for the implicit catch-all.
    pub index: Option<usize>,
}

/// Longest-prefix route table. Paths no route matches need a token (the implicit catch-all).
pub struct RouteTable {
    routes: Vec<RouteEntry>,
    fallback: RouteEntry,
}

impl RouteTable {
    fn build(config: &Config, default_target: &Arc<Target>) -> Result<Self> {
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| route_entry(i, r, default_target))
            .collect::<Result<Vec<_>>>()?;
        let fallback = RouteEntry {
            path: Arc::from("/"),
            auth: AuthMode::Token,
            per_ip: None,
            per_key: None,
            target: default_target.clone(),
            ip_policy: IpPolicy::new("route", &[], &[]),
            ip_scope: Arc::from("route-ip:/"),
            key_scope: Arc::from("route-key:/"),
            index: None,
        };
        Ok(RouteTable { routes, fallback })
    }

    /// The longest configured prefix of `path` (routes are sorted longest first).
    pub fn find(&self, path: &str) -> &RouteEntry {
        self.routes.iter().find(|r| path.starts_with(&*r.path)).unwrap_or(&self.fallback)
    }

    /// The route for a request: matched on the normalized path and on Frappe's canonical alias
    /// of it (`/api/v1/…`, `?cmd=`…); when they differ the stricter one applies, so no
    /// spelling of a path escapes its `deny` or `token` route.
    pub fn find_for(&self, paths: &RoutePaths<'_>) -> &RouteEntry {
        let primary = self.find(&paths.path);
        match &paths.alias {
            Some(alias) => {
                let aliased = self.find(alias);
                if strictness(aliased.auth) > strictness(primary.auth) {
                    aliased
                } else {
                    primary
                }
            }
            None => primary,
        }
    }
}

fn strictness(auth: AuthMode) -> u8 {
    match auth {
        AuthMode::Public => 0,
        AuthMode::Token => 1,
        AuthMode::Deny => 2,
    }
}

fn route_entry(i: usize, route: &Route, default_target: &Arc<Target>) -> Result<RouteEntry> {
    let target = match &route.upstream {
        Some(url) => Arc::new(Target {
            base: url.clone(),
            host: header_value(url.authority().map_or("", |a| a.as_str()))?,
            site_name: None,
        }),
        None => default_target.clone(),
    };
    Ok(RouteEntry {
        path: Arc::from(route.path.as_str()),
        auth: route.auth,
        per_ip: route.per_ip,
        per_key: route.per_key,
        target,
        ip_policy: IpPolicy::new("route", &route.allow, &[]),
        ip_scope: Arc::from(format!("route-ip:{}", route.path)),
        key_scope: Arc::from(format!("route-key:{}", route.path)),
        index: Some(i),
    })
}

fn header_value(s: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(s).with_context(|| format!("{s:?} is not a valid header value"))
}

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
            metrics: Arc::new(Metrics::new()),
            request_ids: RequestIds::new(),
            user_header: config.auth.user_header.clone(),
            proto: if config.server.tls.is_some() { "https" } else { "http" },
            config,
        })
    }
}
