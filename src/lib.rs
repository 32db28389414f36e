//! frappe-gateway: an authenticating TLS reverse proxy for ERPNext / Frappe v15 sites.
//!
//! The request path is `pipeline::handle`; [`app::start`] assembles a running gateway and
//! [`app::run`] runs one until a termination signal. The library's public surface is what
//! the binary, the integration tests and the benches use; everything else is crate-private.
#![forbid(unsafe_code)]

mod access_log;
mod activity_io;
mod admin;
pub mod app;
pub mod auth;
mod body;
pub mod check;
pub mod config;
mod error;
pub mod frappe_request;
mod head_error_reply;
pub mod health;
mod metrics;
mod outcome;
mod pipeline;
pub mod policy;
mod proxy;
pub mod reload;
mod request_body;
mod request_head;
mod request_log;
mod routes;
mod runtime;
mod server;
mod shard;
mod signals;
mod state;
mod status;
pub mod tls;
mod upstream;

/// `tokio::spawn` that keeps the spawning task's tracing subscriber, so a gateway started
/// under its own subscriber (as the in-process tests do) logs to it from every task.
pub(crate) fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    use tracing::instrument::WithSubscriber;
    tokio::spawn(future.with_current_subscriber())
}

/// Entry points for `benches/` only, not part of the library's API: the route table exactly as
/// a running gateway compiles it from a config, and the request pipeline up to the upstream call.
#[doc(hidden)]
pub mod bench_api {
    use std::net::IpAddr;
    use std::sync::Arc;

    use http::{HeaderValue, Request};
    use hyper::body::Incoming;

    use crate::access_log::AccessLog;
    use crate::auth::{CredentialStore, Verify, VerifyBudget};
    use crate::config::{AuthMode, Config};
    use crate::frappe_request::FrappeRequest;
    use crate::pipeline::ConnInfo;
    use crate::state::Shared;

    pub struct Routes(crate::runtime::Runtime);

    impl Routes {
        pub fn build(config: Config) -> anyhow::Result<Self> {
            Ok(Routes(crate::runtime::Runtime::build(config)?))
        }

        /// The auth mode of the route of the path as sent (the pipeline's first lookup).
        pub fn for_path(&self, path: &str) -> AuthMode {
            self.0.routes.for_path(path).auth
        }

        /// The auth mode of the route that judges what Frappe will run (the second lookup).
        pub fn for_request(&self, request: &FrappeRequest) -> AuthMode {
            self.0.routes.for_request(request).judged.auth
        }
    }

    /// A gateway's shared state built from a config as [`app::start`](crate::app::start) builds
    /// it (no listeners, no background tasks), and one client connection.
    pub struct Pipeline {
        conn: Arc<ConnInfo>,
    }

    impl Pipeline {
        /// The one difference from a running gateway: a credential not in the cache is verified
        /// by `verifier` instead of Frappe's whoami (through the store's own miss path and the
        /// configured verification budget). Requests come from `peer`, plain HTTP, worker 0.
        pub async fn build(config: Config, verifier: Arc<dyn Verify>, peer: IpAddr) -> anyhow::Result<Self> {
            let access_log = AccessLog::start(&config.log.access)?;
            let mut shared = Shared::new(config, None, None, access_log).await?;
            let runtime = shared.runtime();
            let frappe = &runtime.config.frappe;
            let budget = VerifyBudget::new(frappe.max_verify_concurrency, frappe.max_verify_rate);
            let store = CredentialStore::new(&runtime.config.auth, verifier).with_budget(budget);
            shared.auth.store = Arc::new(store);
            Ok(Pipeline { conn: Arc::new(ConnInfo::new(Arc::new(shared), peer, None, 0)) })
        }

        /// Authenticates `authorization` as the pipeline would on a miss (the verifier is asked
        /// unless the credential is cached): warms the cache.
        pub async fn authenticate(&self, authorization: &HeaderValue) -> Result<(), String> {
            let credential = crate::auth::parse(Some(authorization)).map_err(|e| e.to_string())?;
            let store = &self.conn.shared.auth.store;
            store.authenticate(&credential, authorization).await.map(drop).map_err(|e| format!("{e:?}"))
        }

        /// Calls the store made to its verifier so far.
        pub fn verify_calls(&self) -> u64 {
            self.conn.shared.auth.store.verify_calls()
        }

        /// One request as the gateway's `pipeline::handle` starts it (the runtime config loaded,
        /// the request id, client IP and access-log record begun), through every phase before
        /// the upstream call. `then` gets the verdict — `Ok(user)`: it would be forwarded (as
        /// `user` on a token route); `Err((status, reason))`: refused — and runs before the
        /// request's state is dropped, so a caller can stop its clock there. Nothing is sent
        /// upstream and no response is built.
        pub async fn admit<R>(
            &self,
            req: Request<Incoming>,
            then: impl FnOnce(Result<Option<&str>, (u16, &str)>) -> R,
        ) -> R {
            crate::pipeline::admit_for_bench(&self.conn, req, then).await
        }
    }
}
