//! Everything the request path reads, built once from the validated config.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use http::header::{HeaderName, HeaderValue};
use http::Uri;

use crate::access_log::AccessLog;
use crate::metrics::Metrics;
use crate::config::{AuthMode, Config, Rate, Route};
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
            index: None,
        };
        Ok(RouteTable { routes, fallback })
    }

    /// The longest configured prefix of `path` (routes are sorted longest first).
    pub fn find(&self, path: &str) -> &RouteEntry {
        self.routes.iter().find(|r| path.starts_with(&*r.path)).unwrap_or(&self.fallback)
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

/// Shared, read-mostly state of a running gateway.
pub struct AppState {
    pub config: Config,
    pub routes: RouteTable,
    pub upstream: Upstream,
    pub access_log: AccessLog,
    pub metrics: Arc<Metrics>,
    pub request_ids: RequestIds,
    pub user_header: HeaderName,
    /// `https` when TLS is terminated here.
    pub proto: &'static str,
}

impl AppState {
    pub fn new(config: Config, access_log: AccessLog) -> Result<Self> {
        let default_target = Arc::new(Target {
            base: config.upstream.url.clone(),
            host: header_value(&config.upstream.host)?,
            site_name: config.upstream.site_name.as_deref().map(header_value).transpose()?,
        });
        let routes = RouteTable::build(&config, &default_target)?;
        let upstream = Upstream::new(config.upstream.connect_timeout, config.upstream.timeout);
        Ok(AppState {
            routes,
            upstream,
            access_log,
            metrics: Arc::new(Metrics::new()),
            request_ids: RequestIds::new(),
            user_header: config.auth.user_header.clone(),
            proto: if config.server.tls.is_some() { "https" } else { "http" },
            config,
        })
    }
}
