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
