//! What a running gateway shares between requests and background tasks, split by who reads
//! it: the runtime configuration (one swappable value), authentication, limits, upstream
//! connections and observability. Built once by [`app::start`](crate::app::start).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http::HeaderValue;

use crate::access_log::AccessLog;
use crate::auth::{CredentialStore, FrappeClient, SyncStatus, VerifyBudget};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::{FailedAuthTracker, RateLimiter, RestrictIpCache, RevocationBus};
use crate::reload::ConfigSource;
use crate::request_body::ByteGauge;
use crate::runtime::Runtime;
use crate::tls::Certificate;
use crate::upstream::{ConnectionCap, Upstream};

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
    /// Bytes held by spooled request bodies now (bounded by `server.max_spool_bytes`).
    pub(crate) spooled: Arc<ByteGauge>,
    /// Bytes of request bodies read into memory now (bounded by `server.max_buffered_bytes`).
    pub(crate) buffered: Arc<ByteGauge>,
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
        let u = &config.upstream;
        let cap = ConnectionCap::split(u.max_connections, config.server.workers, u.queue_timeout);
        let new_upstream = |cap| Upstream::new(u.connect_timeout, u.timeout, cap);
        let frappe = Arc::new(FrappeClient::new(
            &config.frappe.url,
            &config.upstream.host,
            config.upstream.site_name.as_deref(),
            config.frappe.verify_timeout,
        )?);
        let budget = VerifyBudget::new(config.frappe.max_verify_concurrency, config.frappe.max_verify_rate);
        let mut store = CredentialStore::new(&config.auth, frappe.clone()).with_budget(budget);
        if let Some(token) = &config.frappe.sync_token {
            store = store.with_user_reader(frappe.clone(), token.clone());
        }
        let auth = AuthState {
            store: Arc::new(store),
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
            (0..config.server.workers).map(|_| new_upstream(cap).with_metrics(metrics.clone())).collect();
        // The readiness probe's one request at a time needs no cap.
        let probe = new_upstream(ConnectionCap::split(0, 1, u.queue_timeout));
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
            spooled: Arc::default(),
            buffered: Arc::default(),
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

    /// `{prefix:016x}{counter:08x}`, formatted on the stack: one allocation, shared by the
    /// response header, the upstream request and the access log.
    pub(crate) fn next(&self) -> RequestId {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 32];
        hex(self.prefix, 16, &mut id[..16]);
        let digits = (16 - n.leading_zeros() as usize / 4).max(8);
        hex(n, digits, &mut id[16..16 + digits]);
        // An owned buffer: clones share it (a copied slice would be copied again when first
        // cloned).
        let id = Bytes::from_owner(id).slice(..16 + digits);
        RequestId::unindexed(HeaderValue::from_maybe_shared(id).expect("hex digits are a valid header value"))
    }
}

/// Writes the low `digits` hex digits of `n` into `out`, most significant first.
fn hex(n: u64, digits: usize, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in out[..digits].iter_mut().enumerate() {
        *byte = DIGITS[(n >> (4 * (digits - 1 - i)) & 0xf) as usize];
    }
}

/// One request's id (`X-Request-Id`): visible ASCII, at most 128 bytes. Cloning it is a
/// reference count, not a copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RequestId(HeaderValue);

impl RequestId {
    /// A trusted proxy's id, kept when it is visible ASCII of 1 to 128 bytes.
    pub(crate) fn inherited(value: &HeaderValue) -> Option<Self> {
        let bytes = value.as_bytes();
        let valid = !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(u8::is_ascii_graphic);
        valid.then(|| RequestId::unindexed(value.clone()))
    }

    /// Unique to one response: HTTP/2 sends it as a never-indexed literal, since indexing it
    /// would only evict header-table entries that do repeat.
    fn unindexed(mut value: HeaderValue) -> Self {
        value.set_sensitive(true);
        RequestId(value)
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(self.0.as_bytes()).expect("request ids are visible ASCII")
    }

    pub(crate) fn header(&self) -> HeaderValue {
        self.0.clone()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_prefix_and_counter_in_hex() {
        let ids = RequestIds { prefix: 0x0123_4567_89ab_cdef, next: AtomicU64::new(0x2a) };
        assert_eq!(ids.next().as_str(), "0123456789abcdef0000002a");
        assert_eq!(ids.next().as_str(), "0123456789abcdef0000002b");
        ids.next.store(0x1_0000_0000, Ordering::Relaxed);
        assert_eq!(ids.next().as_str(), "0123456789abcdef100000000");
    }

    #[test]
    fn only_visible_ascii_ids_are_inherited() {
        let keep = HeaderValue::from_static("edge-1234");
        assert_eq!(RequestId::inherited(&keep).unwrap().as_str(), "edge-1234");
        for bad in [HeaderValue::from_static(""), HeaderValue::from_static("a b")] {
            assert!(RequestId::inherited(&bad).is_none());
        }
        assert!(RequestId::inherited(&HeaderValue::from_str(&"x".repeat(129)).unwrap()).is_none());
    }
}
