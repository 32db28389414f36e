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
/// a running gateway compiles it from a config.
#[doc(hidden)]
pub mod bench_api {
    use crate::config::{AuthMode, Config};
    use crate::frappe_request::FrappeRequest;

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
}
