//! What a running gateway shares between requests and background tasks, split by who reads
//! it: the runtime configuration (one swappable value), authentication, limits, upstream
//! connections and observability. Built once by [`app::start`](crate::app::start).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use arc_swap::{ArcSwap, ArcSwapOption};

use crate::access_log::AccessLog;
use crate::auth::{CredentialStore, FrappeClient, SyncStatus, VerifyBudget};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::{FailedAuthTracker, RateLimiter, RestrictIpCache, RevocationBus};
use crate::proxy::Upstream;
use crate::reload::ConfigSource;
use crate::runtime::Runtime;
use crate::tls::Certificate;

/// See the module docs.
pub(crate) struct Shared {
    runtime: ArcSwap<Runtime>,
    /// The certificate new TLS handshakes present (`None`: plain HTTP); swapped by a reload.
    pub(crate) tls: ArcSwapOption<Certificate>,
    /// Where the config came from, for reloads (`None`: started from a `Config` value).
    pub(crate) source: Option<ConfigSource>,
    pub(crate) auth: AuthState,
    pub(crate) limits: LimitState,
    /// One upstream pool per proxy worker (index = worker), so a request and its pooled
    /// connection live on the same thread; `probe` is the admin listener's own.
    pub(crate) upstreams: Vec<Upstream>,
    pub(crate) probe: Upstream,
    pub(crate) obs: Observability,
}

/// Authentication and its background machinery.
pub(crate) struct AuthState {
    pub(crate) store: Arc<CredentialStore>,
    pub(crate) frappe: Arc<FrappeClient>,
    /// `Some` when a sync token is configured.
    pub(crate) sync_status: Option<Arc<SyncStatus>>,
    pub(crate) restrict_ip: RestrictIpCache,
}

/// Rate limits, lockouts and the cross-instance revocation bus.
pub(crate) struct LimitState {
    pub(crate) limiter: Arc<RateLimiter>,
    pub(crate) failed_auth: FailedAuthTracker,
    /// `Some` on the Redis backend.
    pub(crate) revocations: Option<RevocationBus>,
}

/// The access log, metrics and request ids.
pub(crate) struct Observability {
    pub(crate) access_log: AccessLog,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) request_ids: RequestIds,
}

impl Shared {
    pub(crate) async fn new(
        config: Config,
        certificate: Option<Certificate>,
        source: Option<ConfigSource>,
        access_log: AccessLog,
    ) -> Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let new_upstream = || Upstream::new(config.upstream.connect_timeout, config.upstream.timeout);
        let frappe = Arc::new(FrappeClient::new(
            &config.frappe.url,
            &config.upstream.host,
            config.upstream.site_name.as_deref(),
            config.frappe.verify_timeout,
        )?);
        let budget = VerifyBudget::new(config.frappe.max_verify_concurrency, config.frappe.max_verify_rate);
        let auth = AuthState {
            store: Arc::new(CredentialStore::new(&config.auth, frappe.clone()).with_budget(budget)),
            frappe,
            sync_status: config.frappe.sync_token.as_ref().map(|_| Arc::new(SyncStatus::new())),
            restrict_ip: RestrictIpCache::new(10_000, Duration::from_secs(600)),
        };
        let limiter = Arc::new(RateLimiter::from_config(&config.rate_limit).await?);
        let limits = LimitState {
            failed_auth: FailedAuthTracker::from_config(limiter.clone(), &config.rate_limit),
            revocations: RevocationBus::new(&limiter),
            limiter,
        };
        if let Some(files) = &config.server.tls {
            match crate::tls::certificate_not_after(&files.cert) {
                Ok(not_after) => metrics.set_certificate_expiry(Some(not_after)),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot read the certificate's expiry"),
            }
        }
        let upstreams =
            (0..config.server.workers).map(|_| new_upstream().with_metrics(metrics.clone())).collect();
        let probe = new_upstream();
        let runtime = Runtime::build(config)?;
        metrics.register_routes(runtime.routes.paths());
        Ok(Shared {
            tls: ArcSwapOption::from(certificate.map(Arc::new)),
            source,
            upstreams,
            probe,
            auth,
            limits,
            obs: Observability { access_log, metrics, request_ids: RequestIds::new() },
            runtime: ArcSwap::from_pointee(runtime),
        })
    }

    /// The runtime configuration now in force; a request holds on to the one it started with.
    pub(crate) fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Puts a new runtime configuration in force for every request that starts from now on.
    pub(crate) fn swap_runtime(&self, runtime: Runtime) {
        self.runtime.store(Arc::new(runtime));
    }
}

/// Request ids: a random per-process prefix and a counter — unique across instances, cheap.
pub(crate) struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl RequestIds {
    pub(crate) fn new() -> Self {
        RequestIds { prefix: rand::random(), next: AtomicU64::new(1) }
    }

    pub(crate) fn next(&self) -> Arc<str> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Arc::from(format!("{:016x}{:08x}", self.prefix, n))
    }
}
