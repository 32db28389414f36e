//! frappe-gateway: an authenticating TLS reverse proxy for ERPNext / Frappe v15 sites.
//!
//! The request path is `pipeline::handle`; `app::run` assembles a running gateway.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod frappe_request;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod request_body;
pub mod request_head;
pub mod request_log;
pub mod routes;
pub mod server;
pub mod state;
pub mod tls;
