//! Assembling a running gateway from a validated config: logging, TLS, state, listeners,
//! background tasks, and the shutdown sequence.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::access_log::AccessLog;
use crate::config::{Config, TlsFiles};
use crate::reload::{self, ConfigSource, ReloadError, ReloadReport};
use crate::state::Shared;
use crate::{admin, auth, server, signals, tls};

/// Why the gateway did not start (or stopped with an error).
#[derive(Debug)]
pub enum StartError {
    /// The configuration cannot work (exit status 2), e.g. certificate files missing.
    Config(String),
    /// Anything else: a port in use, an unreadable file.
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(e: anyhow::Error) -> Self {
        StartError::Runtime(e)
    }
}

/// JSON application logs on stderr, written by a background thread; `RUST_LOG` overrides
/// `log.level`. Keep the returned guard alive: dropping it flushes the last lines.
pub fn init_logging(level: &str) -> tracing_appender::non_blocking::WorkerGuard {
    // Application logs are a few lines a second; the default 128,000-line queue would hold
    // 4 MiB of idle memory.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(4096)
        .finish(std::io::stderr());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| log_filter(level));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(filter)
        .with_writer(writer)
        .init();
    guard
}

/// A started gateway: its bound addresses, and the handle that stops it.
pub struct Running {
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    admin: tokio::task::JoinHandle<()>,
}

impl Running {
    /// The proxy listener's real address (port 0 in the config → the ephemeral port).
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// The admin listener's real address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Reads the config source again and puts a valid result in force (see [`reload`]).
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        reload::reload(&self.shared)
    }

    /// Stops accepting, lets in-flight requests finish (at most `server.shutdown_grace`),
    /// then flushes the access log.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let workers = std::mem::take(&mut self.workers);
        let _ = tokio::task::spawn_blocking(move || workers.into_iter().for_each(|w| drop(w.join()))).await;
        self.admin.abort();
        self.shared.obs.access_log.close(Duration::from_secs(5));
        tracing::info!("stopped");
    }
}

/// A gateway dropped without [`Running::shutdown`] still stops: its listeners close and its
/// workers end once their connections have drained.
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.admin.abort();
    }
}

/// Binds the listeners, builds the shared state and starts serving; returns once the gateway
/// is ready to take requests (the "listening" log line has been written). With a `source`,
/// [`Running::reload`] (and SIGHUP, `POST /reload`) read it again.
pub async fn start(config: Config, source: Option<ConfigSource>) -> Result<Running, StartError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certificate = match &config.server.tls {
        Some(files) => Some(load_certificate(files, config.server.self_signed_if_missing)?),
        None => None,
    };
    let access_log = AccessLog::start(&config.log.access).map_err(|e| {
        StartError::Runtime(anyhow::anyhow!("cannot open access log {:?}: {e}", config.log.access))
    })?;
    let proxy_listeners = server::bind_workers(config.server.listen, config.server.workers)?;
    let admin_listener = server::bind(config.admin.listen, "admin.listen").await?;
    let proxy_addr = proxy_listeners[0].local_addr().map_err(anyhow::Error::from)?;
    let admin_addr = admin_listener.local_addr().map_err(anyhow::Error::from)?;
    let (upstream, max_connections) = (config.upstream.url.clone(), config.server.max_connections);
    let shared = Arc::new(Shared::new(config, certificate, source, access_log).await?);

    let (stop, stop_rx) = watch::channel(false);
    start_background_tasks(&shared, &stop_rx);
    let admin = crate::spawn(admin::serve_admin(admin_listener, shared.clone(), stop_rx.clone()));
    let workers = spawn_workers(proxy_listeners, &shared, max_connections, &stop_rx)?;
    tracing::info!(
        %proxy_addr,
        workers = workers.len(),
        %admin_addr,
        tls = shared.runtime().proto == "https",
        %upstream,
        "listening"
    );
    Ok(Running { proxy_addr, admin_addr, shared, stop, workers, admin })
}

/// `log.level` for the gateway, with its libraries' chatter kept at warnings.
pub fn log_filter(level: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::new(format!("{level},hyper=warn,h2=warn,rustls=warn,reqwest=warn"))
}

/// Runs until SIGTERM / SIGINT / SIGQUIT, then drains in-flight requests and returns.
/// SIGHUP reloads the configuration, SIGUSR1 reopens a file access log; any other catchable
/// signal is logged and ignored rather than killing the process.
pub async fn run(config: Config, source: ConfigSource) -> Result<(), StartError> {
    // Registered first, so a signal arriving while the gateway starts is not lost.
    let mut signals = signals::Signals::register().map_err(anyhow::Error::from)?;
    let running = start(config, Some(source)).await?;
    loop {
        match signals.next().await {
            signals::Signal::Terminate(name) => {
                tracing::info!(signal = name, "draining");
                break;
            }
            signals::Signal::Reload => {
                let _ = running.reload();
            }
            signals::Signal::ReopenLogs => running.shared.obs.access_log.reopen(),
            signals::Signal::Ignored(name) => tracing::warn!(signal = name, "signal ignored"),
        }
    }
    running.shutdown().await;
    Ok(())
}

/// Starts one proxy worker thread per listener, each with its own single-threaded event loop
/// (thread-per-core, as nginx runs workers): a request, its TLS session and its upstream
/// connection stay on one thread, with no cross-thread wake-ups on the hot path.
fn spawn_workers(
    listeners: Vec<std::net::TcpListener>,
    state: &Arc<Shared>,
    max_connections: usize,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<std::thread::JoinHandle<()>>> {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    listeners
        .into_iter()
        .enumerate()
        .map(|(worker, listener)| {
            let (state, stop, slots) = (state.clone(), stop.clone(), slots.clone());
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            // The worker logs where the gateway was started from (its own subscriber in tests).
            let dispatch = tracing::dispatcher::get_default(|d| d.clone());
            let thread = std::thread::Builder::new().name(format!("proxy-{worker}")).spawn(move || {
                let _logging = tracing::dispatcher::set_default(&dispatch);
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => server::serve_proxy(listener, state, slots, worker, stop).await,
                        Err(e) => tracing::error!(worker, error = %e, "proxy worker cannot use its listener"),
                    }
                });
            })?;
            Ok(thread)
        })
        .collect()
}

/// Credential sync (when a sync token is set) and the cross-instance revocation subscriber
/// (on the Redis backend). Both stop when `stop` turns true.
fn start_background_tasks(state: &Arc<Shared>, stop: &watch::Receiver<bool>) {
    let runtime = state.runtime();
    let frappe = &runtime.config.frappe;
    match (&frappe.sync_token, &state.auth.sync_status) {
        (Some(token), Some(status)) => {
            auth::spawn_sync(
                state.auth.store.clone(),
                state.auth.frappe.clone(),
                token.clone(),
                frappe.sync_interval,
                status.clone(),
                stop.clone(),
            );
        }
        _ => tracing::warn!(
            "no sync token (frappe.sync_token_env is unset): disabled users and regenerated keys are only \
             noticed when cached credentials expire (auth.cache_ttl) or a webhook arrives"
        ),
    }
    if frappe.webhook_secret.is_none() {
        tracing::warn!(
            "no webhook secret (frappe.webhook_secret_env is unset): POST /hooks/frappe is disabled"
        );
    }
    if let Some(bus) = &state.limits.revocations {
        let state = state.clone();
        bus.spawn_subscriber(
            move |user| {
                // Drop at once, then re-read the user like a webhook would: Frappe's whoami
                // still accepts a disabled user's key, so a plain cache drop is not enough.
                state.auth.store.revoke_user(user);
                let (state, user) = (state.clone(), user.to_string());
                crate::spawn(async move {
                    let runtime = state.runtime();
                    let token = runtime.config.frappe.sync_token.as_ref();
                    let _ = auth::webhook::handle_user_event(
                        &state.auth.store,
                        state.auth.frappe.as_ref(),
                        token,
                        &user,
                    )
                    .await;
                    tracing::info!(user, "revocation from another instance applied");
                });
            },
            stop.clone(),
        );
    }
}

/// Loads the configured certificate, or — when the files are missing and the operator opted
/// in with `self_signed_if_missing` — writes a self-signed pair there first.
fn load_certificate(files: &TlsFiles, self_signed_if_missing: bool) -> Result<tls::Certificate, StartError> {
    let missing = tls::missing_files(files);
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
        if !self_signed_if_missing {
            return Err(StartError::Config(format!(
                "TLS file missing: {}. Create a development pair with `frappe-gateway gen-cert --host <name> --out {}`, \
                 point server.tls_cert / server.tls_key at real files, or set server.self_signed_if_missing = true",
                names.join(", "),
                files.cert.parent().map_or(".".into(), |p| p.display().to_string()),
            )));
        }
        tls::write_self_signed(&["localhost".to_string()], &files.cert, &files.key)?;
        tracing::warn!(
            cert = %files.cert.display(),
            key = %files.key.display(),
            "TLS FILES WERE MISSING: SERVING A SELF-SIGNED CERTIFICATE (server.self_signed_if_missing = true). \
             Clients will not trust it; install a real certificate for production"
        );
    }
    tls::Certificate::load(files).map_err(|e| StartError::Config(format!("{e:#}")))
}
