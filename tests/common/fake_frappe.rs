//! A fake Frappe v15 site for integration tests: a plain-HTTP hyper 1 server on an ephemeral
//! loopback port that authenticates and answers like Frappe 15.44 behind gunicorn (FRAPPE.md and
//! the transcripts in `tests/transcripts/`; the transcripts win), plus `/__test/*` endpoints for
//! proxying tests. All state is in memory; the handle's setters change it while tests run.
//!
//! ```ignore
//! let frappe = FakeFrappe::start().await;
//! frappe.add_user("api.user@example.com", "0a1b2c3d4e5f607", "0f1e2d3c4b5a697");
//! // point the gateway at frappe.url()
//! ```

mod api;
mod auth;
mod clock;
mod documents;
mod list_query;
mod params;
mod reply;
mod server;
mod state;
mod test_endpoints;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{HeaderMap, Method, Uri, Version};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use state::State;
pub use test_endpoints::{download_bytes, expected_download_sha256};

/// How `GET /api/method/frappe.auth.get_logged_user` (any API version) behaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhoamiMode {
    /// Authenticate and answer like Frappe.
    #[default]
    Normal,
    /// Read the request and never answer (until the fake stops).
    Hang,
    /// Answer 500 as Frappe does when its database is gone.
    Status500,
}

/// How the User endpoints (`/api/resource/User…`, `frappe.client.get_list` on User) behave,
/// to make the gateway's credential sync fail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UsersMode {
    /// Authenticate and answer like Frappe.
    #[default]
    Normal,
    /// 401 AuthenticationError whatever the credentials (a revoked sync token).
    Status401,
    /// 500, as when Frappe's database is gone.
    Status500,
}

/// One request as the fake received it (after the gateway rewrote it).
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    /// Bytes of request body read (the whole body; uploads are streamed and counted).
    pub body_len: usize,
    /// The TCP peer, i.e. the gateway's upstream socket.
    pub peer: SocketAddr,
}

impl RecordedRequest {
    /// The first value of a header, lossily decoded.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// Every value of a header, in arrival order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    pub fn path(&self) -> &str {
        self.uri.path()
    }
}

/// Counters the tests read; bumped when a request arrives, whatever its outcome.
#[derive(Default)]
struct Counters {
    whoami: AtomicUsize,
    /// whoami requests being answered right now, and the most there ever were at once.
    whoami_in_flight: AtomicUsize,
    whoami_max_in_flight: AtomicUsize,
    user_list: AtomicUsize,
    user_get: AtomicUsize,
    connections: AtomicUsize,
}

/// What the server tasks share with the handle.
struct Shared {
    state: Mutex<State>,
    counters: Counters,
    requests: Mutex<Vec<RecordedRequest>>,
}

impl Shared {
    /// Lock the state; a panic in another test thread must not poison every later call.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, request: RecordedRequest) {
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).push(request);
    }
}

/// Handle to a running fake Frappe. Dropping it (or [`FakeFrappe::stop`]) closes the listener
/// and every open connection, so the port then refuses connections.
pub struct FakeFrappe {
    shared: Arc<Shared>,
    addr: SocketAddr,
    running: Option<Running>,
}

struct Running {
    shutdown: watch::Sender<bool>,
    accept_task: JoinHandle<()>,
}

/// gunicorn's default `backlog` (what bench deploys in front of Frappe). Tokio's `bind` uses
/// 128: a burst of new upstream connections (a thousand first requests sharing one
/// verification, all forwarded at once) overflowed it on a busy machine, and the dropped SYNs
/// turned into the gateway's connect timeouts — a real site would have queued them.
const GUNICORN_BACKLOG: u32 = 2048;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(GUNICORN_BACKLOG)
}

impl FakeFrappe {
    /// Bind 127.0.0.1:0 and serve on the current tokio runtime. Ready when this returns.
    ///
    /// The site starts with the built-in `Administrator` (System Manager, no keys) and `Guest`
    /// users, known doctypes ToDo, Customer and Sales Invoice, and no fault injected.
    pub async fn start() -> FakeFrappe {
        let listener = listen("127.0.0.1:0".parse().unwrap()).expect("bind fake frappe");
        let addr = listener.local_addr().expect("fake frappe local addr");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new()),
            counters: Counters::default(),
            requests: Mutex::new(Vec::new()),
        });
        let running = server::spawn(listener, shared.clone());
        FakeFrappe { shared, addr, running: Some(running) }
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Close the listener and all connections (in-flight requests are dropped). Afterwards
    /// connecting to [`FakeFrappe::addr`] is refused. State is kept for [`FakeFrappe::restart`].
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.shutdown.send(true);
            running.accept_task.abort();
            // Awaiting the aborted task guarantees the listener is closed when we return.
            let _ = running.accept_task.await;
        }
    }

    /// Listen again on the same port with the same state (Frappe coming back after an outage).
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = listen(self.addr).expect("rebind fake frappe on its old port");
        self.running = Some(server::spawn(listener, self.shared.clone()));
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    // ----- users and credentials -------------------------------------------------------

    /// Add (or give keys to) a user: enabled, System User, not System Manager, no
    /// restrict_ip. Bumps `modified`.
    pub fn add_user(&self, name: &str, api_key: &str, api_secret: &str) {
        self.shared.state().upsert_user(name, api_key, api_secret);
    }

    /// Add a user without API keys (one who signs in with a password or OAuth): enabled,
    /// System User, no restrict_ip.
    pub fn add_user_without_keys(&self, name: &str) {
        self.shared.state().ensure_user(name);
    }

    /// Add a user with the System Manager role, as the gateway's sync user needs.
    pub fn add_sync_user(&self, name: &str, api_key: &str, api_secret: &str) {
        let mut state = self.shared.state();
        state.upsert_user(name, api_key, api_secret);
        state.user_mut(name).system_manager = true;
    }

    /// Enable or disable a user (Frappe 15.44 still accepts a disabled user's keys).
    pub fn set_enabled(&self, name: &str, enabled: bool) {
        self.shared.state().mutate_user(name, |u| u.enabled = enabled);
    }

    /// What "Generate Keys" does: keep the api_key (create one if missing), replace the
    /// secret with 15 new hex characters, bump `modified`. Returns the new secret.
    pub fn regenerate_secret(&self, name: &str) -> String {
        self.shared.state().regenerate_secret(name)
    }

    /// Delete a user: it vanishes from lists and its keys and sessions stop working.
    pub fn delete_user(&self, name: &str) {
        self.shared.state().delete_user(name);
    }

    pub fn set_restrict_ip(&self, name: &str, restrict_ip: Option<&str>) {
        let value = restrict_ip.map(str::to_string);
        self.shared.state().mutate_user(name, move |u| u.restrict_ip = value);
    }

    pub fn set_system_manager(&self, name: &str, system_manager: bool) {
        self.shared.state().mutate_user(name, |u| u.system_manager = system_manager);
    }

    /// Password for `POST /api/method/login`.
    pub fn set_password(&self, name: &str, password: &str) {
        let value = Some(password.to_string());
        self.shared.state().mutate_user(name, move |u| u.password = value);
    }

    /// An OAuth bearer token that authenticates as `user`.
    pub fn add_bearer(&self, token: &str, user: &str) {
        super::secrets::remember(token);
        let mut state = self.shared.state();
        state.bearers.insert(token.to_string(), user.to_string());
    }

    pub fn remove_bearer(&self, token: &str) {
        self.shared.state().bearers.remove(token);
    }

    /// A cookie session for `user`, as `POST /api/method/login` makes; returns the `sid`.
    pub fn create_session(&self, user: &str) -> String {
        self.shared.state().create_session(user)
    }

    pub fn user_api_key(&self, name: &str) -> Option<String> {
        self.shared.state().user(name).and_then(|u| u.api_key.clone())
    }

    pub fn user_secret(&self, name: &str) -> Option<String> {
        self.shared.state().user(name).and_then(|u| u.api_secret.clone())
    }

    /// The user's `modified` stamp, `"YYYY-MM-DD HH:MM:SS.ffffff"`.
    pub fn user_modified(&self, name: &str) -> Option<String> {
        self.shared.state().user(name).map(|u| u.modified.clone())
    }

    // ----- site behaviour ------------------------------------------------------------

    /// Answer every Frappe response with `Connection: close`, as gunicorn's sync workers do.
    /// Off by default so pooled tests stay fast. `Server: gunicorn` is always sent.
    pub fn set_connection_close(&self, close: bool) {
        self.shared.state().connection_close = close;
    }

    /// Delay before whoami answers (after the request is read).
    pub fn set_whoami_delay(&self, delay: Duration) {
        self.shared.state().whoami_delay = delay;
    }

    pub fn set_whoami_mode(&self, mode: WhoamiMode) {
        self.shared.state().whoami_mode = mode;
    }

    pub fn set_users_mode(&self, mode: UsersMode) {
        self.shared.state().users_mode = mode;
    }

    /// Serve only this site: a request whose `X-Frappe-Site-Name` (else `Host`, port removed)
    /// names another site gets Frappe's 404 HTML page "<site> does not exist". Default: any.
    pub fn set_site_name(&self, site: Option<&str>) {
        self.shared.state().site_name = site.map(str::to_string);
    }

    /// System Settings `allow_error_traceback`: on (Frappe's default) error bodies carry
    /// `exception` and `exc`; off they shrink to `exc_type` and `_server_messages`.
    pub fn set_allow_error_traceback(&self, allow: bool) {
        self.shared.state().allow_error_traceback = allow;
    }

    /// DocTypes other than User that `/api/resource/<DocType>` serves from the in-memory
    /// store; every other DocType is 404 "DocType X not found". Replaces the default set.
    pub fn set_known_doctypes(&self, doctypes: &[&str]) {
        self.shared.state().set_known_doctypes(doctypes);
    }

    /// Store a document directly (seeding). Missing standard fields (name, owner, creation,
    /// modified, docstatus…) are filled in. Returns the stored document.
    pub fn insert_doc(&self, doctype: &str, doc: serde_json::Value) -> serde_json::Value {
        let mut state = self.shared.state();
        let owner = "Administrator".to_string();
        let stored = state.insert_doc(doctype, doc, &owner);
        reply::doc_to_value(&stored)
    }

    /// Documents stored for a DocType, in insertion order.
    pub fn docs(&self, doctype: &str) -> Vec<serde_json::Value> {
        let state = self.shared.state();
        state.docs.get(doctype).map(|docs| docs.iter().map(reply::doc_to_value).collect()).unwrap_or_default()
    }

    // ----- counters and recorded requests --------------------------------------------

    /// Requests that reached whoami (any API version, any outcome).
    pub fn whoami_calls(&self) -> usize {
        self.shared.counters.whoami.load(Ordering::SeqCst)
    }

    /// The most whoami requests the fake was answering at the same time (from the moment a
    /// request was read to its answer, the configured delay included).
    pub fn whoami_max_in_flight(&self) -> usize {
        self.shared.counters.whoami_max_in_flight.load(Ordering::SeqCst)
    }

    /// User list requests (`/api/resource/User`, `/api/v2/document/User`,
    /// `frappe.client.get_list` with doctype User).
    pub fn user_list_calls(&self) -> usize {
        self.shared.counters.user_list.load(Ordering::SeqCst)
    }

    /// Single-user reads (`/api/resource/User/NAME`, `/api/v2/document/User/NAME`).
    pub fn user_get_calls(&self) -> usize {
        self.shared.counters.user_get.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far (tells pooled from per-request connections).
    pub fn connections_accepted(&self) -> usize {
        self.shared.counters.connections.load(Ordering::SeqCst)
    }

    pub fn reset_counters(&self) {
        let c = &self.shared.counters;
        for counter in [&c.whoami, &c.whoami_max_in_flight, &c.user_list, &c.user_get, &c.connections] {
            counter.store(0, Ordering::SeqCst);
        }
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The most recent request whose path starts with `path_prefix`.
    pub fn last_request_to(&self, path_prefix: &str) -> Option<RecordedRequest> {
        let requests = self.shared.requests.lock().unwrap_or_else(|e| e.into_inner());
        requests.iter().rev().find(|r| r.uri.path().starts_with(path_prefix)).cloned()
    }

    pub fn clear_requests(&self) {
        self.shared.requests.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl Drop for FakeFrappe {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            // Connection tasks watch this channel; the accept loop is aborted outright.
            let _ = running.shutdown.send(true);
            running.accept_task.abort();
        }
    }
}
