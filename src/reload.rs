//! Live reload (SIGHUP, `POST /reload`): the config file and the certificate files are read
//! again; a valid result is compiled into a new [`Runtime`] and swapped in with one store, so
//! a request in flight finishes under the rules it started with and the next one is judged
//! by the new ones. New TLS handshakes present the new certificate; open connections keep
//! theirs. Settings that live in long-running parts (listeners, workers, pools, the credential
//! store, the limiter, the sync task, the log writers) keep their old values and are reported
//! as needing a restart. An invalid file changes nothing.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::config::{self, Config, ConfigError};
use crate::runtime::Runtime;
use crate::state::Shared;
use crate::tls;

/// Looks up an environment variable (the `_env` secrets).
type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Where the running configuration came from, so it can be read again.
#[derive(Clone)]
pub struct ConfigSource {
    path: PathBuf,
    env: EnvLookup,
}

impl ConfigSource {
    /// `path`, with `_env` secrets from the process environment (as at start).
    pub fn file(path: PathBuf) -> Self {
        ConfigSource { path, env: Arc::new(|name| std::env::var(name).ok()) }
    }

    /// `path`, with secrets looked up by `env` (tests pass their own environment).
    pub fn with_env(path: PathBuf, env: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        ConfigSource { path, env: Arc::new(env) }
    }

    /// Reads and validates the file, with the same key-and-line errors as at start.
    pub fn load(&self) -> Result<Config, ConfigError> {
        config::load_with_env(&self.path, &*self.env)
    }
}

/// What a successful reload changed.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct ReloadReport {
    /// Settings now in force (config sections, and `tls_certificate` when its files changed).
    pub changed: Vec<&'static str>,
    /// Settings that changed in the file but keep their old value until a restart.
    pub restart_required: Vec<&'static str>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(ConfigError),
    #[error("TLS certificate: {0:#}")]
    Certificate(anyhow::Error),
    #[error("{0:#}")]
    Build(anyhow::Error),
    #[error("the gateway was started without a config file to reload")]
    NoSource,
}

/// Reloads from the gateway's config source; logs the outcome once and counts it.
pub(crate) fn reload(shared: &Shared) -> Result<ReloadReport, ReloadError> {
    let outcome = match &shared.source {
        Some(source) => source.load().map_err(ReloadError::Config).and_then(|config| apply(shared, config)),
        None => Err(ReloadError::NoSource),
    };
    shared.obs.metrics.record_reload(outcome.is_ok());
    match &outcome {
        Ok(report) => tracing::info!(
            changed = ?report.changed,
            restart_required = ?report.restart_required,
            "configuration reloaded"
        ),
        Err(e) => {
            tracing::error!(error = %e, "configuration reload failed; the previous configuration stays in force")
        }
    }
    outcome
}

/// Swaps in `new` (after keeping the restart-only settings at their running values).
fn apply(shared: &Shared, mut new: Config) -> Result<ReloadReport, ReloadError> {
    let old = shared.runtime();
    let mut report = ReloadReport::default();
    keep_restart_only(&old.config, &mut new, &mut report.restart_required);
    for (section, old_value, new_value) in live_sections(&old.config, &new) {
        if old_value != new_value {
            report.changed.push(section);
        }
    }
    let certificate = match &new.server.tls {
        Some(files) => Some(tls::Certificate::load(files).map_err(ReloadError::Certificate)?),
        None => None,
    };
    let not_after = new.server.tls.as_ref().and_then(|files| tls::certificate_not_after(&files.cert).ok());
    let runtime = Runtime::build(new).map_err(ReloadError::Build)?;
    if let Some(certificate) = certificate {
        let current = shared.tls.load();
        if current.as_ref().is_none_or(|c| c.fingerprint != certificate.fingerprint) {
            report.changed.push("tls_certificate");
            shared.obs.metrics.set_certificate_expiry(not_after);
        }
        shared.tls.store(Some(Arc::new(certificate)));
    }
    shared.obs.metrics.register_routes(runtime.routes.paths());
    shared.swap_runtime(runtime);
    Ok(report)
}

/// The sections a reload puts in force, as (name, old, new) renderings (secrets redacted:
/// a changed secret alone does not show as a change, but is in force all the same).
fn live_sections(old: &Config, new: &Config) -> Vec<(&'static str, String, String)> {
    let d = |v: &dyn std::fmt::Debug| format!("{v:?}");
    vec![
        ("route", d(&old.routes), d(&new.routes)),
        ("user", d(&old.users), d(&new.users)),
        ("network", d(&old.network), d(&new.network)),
        (
            "rate_limit",
            d(&(old.rate_limit.per_ip, old.rate_limit.per_key)),
            d(&(new.rate_limit.per_ip, new.rate_limit.per_key)),
        ),
        ("upstream", d(&old.upstream), d(&new.upstream)),
        ("server", d(&old.server), d(&new.server)),
        ("auth", d(&old.auth), d(&new.auth)),
        ("log", d(&old.log), d(&new.log)),
        // `admin.listen` is restart-only (kept above); `admin.allowed_hosts` is read per request.
        ("admin", d(&old.admin), d(&new.admin)),
    ]
}

/// Settings built into long-running parts: a changed value is reported and the running one
/// kept, so the swapped-in config says what is really in force.
fn keep_restart_only(old: &Config, new: &mut Config, restart: &mut Vec<&'static str>) {
    macro_rules! keep {
        ($($key:literal => $($field:ident).+;)+) => {$(
            if format!("{:?}", old.$($field).+) != format!("{:?}", new.$($field).+) {
                restart.push($key);
                new.$($field).+ = old.$($field).+.clone();
            }
        )+};
    }
    keep! {
        "server.listen" => server.listen;
        "server.workers" => server.workers;
        "server.max_connections" => server.max_connections;
        "server.header_read_timeout" => server.header_read_timeout;
        "server.idle_timeout" => server.idle_timeout;
        "server.shutdown_grace" => server.shutdown_grace;
        "admin.listen" => admin.listen;
        "upstream.connect_timeout" => upstream.connect_timeout;
        "upstream.timeout" => upstream.timeout;
        "upstream.max_connections" => upstream.max_connections;
        "upstream.queue_timeout" => upstream.queue_timeout;
        "frappe.url" => frappe.url;
        "frappe.sync_interval" => frappe.sync_interval;
        "frappe.verify_timeout" => frappe.verify_timeout;
        "frappe.max_verify_concurrency" => frappe.max_verify_concurrency;
        "frappe.max_verify_rate" => frappe.max_verify_rate;
        "auth.cache_capacity" => auth.cache_capacity;
        "auth.cache_ttl" => auth.cache_ttl;
        "auth.negative_ttl" => auth.negative_ttl;
        "auth.stale_if_error" => auth.stale_if_error;
        "auth.allow_administrator" => auth.allow_administrator;
        "rate_limit.backend" => rate_limit.backend;
        "rate_limit.redis_url" => rate_limit.redis_url;
        "rate_limit.redis_timeout" => rate_limit.redis_timeout;
        "rate_limit.failed_auth_per_ip" => rate_limit.failed_auth_per_ip;
        "rate_limit.lockout" => rate_limit.lockout;
        "log.access" => log.access;
        "log.level" => log.level;
    }
    // Turning TLS on or off changes what the listener speaks; new certificate files are live.
    if old.server.tls.is_some() != new.server.tls.is_some() {
        restart.push("server.tls_cert");
        new.server.tls = old.server.tls.clone();
    }
    // The sync task holds the token it started with; the webhook receiver reads the new one.
    if old.frappe.sync_token.as_ref().map(|s| s.expose())
        != new.frappe.sync_token.as_ref().map(|s| s.expose())
    {
        restart.push("frappe.sync_token_env");
        new.frappe.sync_token = old.frappe.sync_token.clone();
    }
}
