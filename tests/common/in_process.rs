//! The gateway inside the test process: the config text is validated as the binary would
//! (secrets from the given `envs`, not the process environment), [`app::start`] binds
//! 127.0.0.1 port 0 and returns once ready, and the gateway's own logs are captured per
//! instance — its application log through a tracing subscriber of its own, its access log
//! through a FIFO — into the same [`Output`] the process harness uses, so waits wake on each
//! new line. Dropping a [`Gateway`] stops it and checks that nothing it logged holds a secret.
//!
//! Tests of the binary itself (quick start, exit codes, signals, config errors) use
//! [`GatewayProcess`](super::gateway::GatewayProcess) instead.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use frappe_gateway::app::{self, Running};
use frappe_gateway::config::AccessLogTarget;
use frappe_gateway::reload::{ConfigSource, ReloadError, ReloadReport};
use serde_json::Value;
use tempfile::TempDir;
use tracing::instrument::WithSubscriber;

use super::gateway::StartFailure;
use super::process::{Output, Stream};
use super::secrets;

pub struct Gateway {
    running: Option<Running>,
    output: Arc<Output>,
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    tls: bool,
    config_path: PathBuf,
    dispatch: tracing::Dispatch,
    _dir: TempDir,
}

impl Gateway {
    /// Validate `config_toml` (with `envs` as the environment) and start the gateway; panics
    /// with the reason and the captured log on failure.
    pub async fn start(config_toml: &str, envs: &[(&str, &str)]) -> Gateway {
        match Gateway::try_start(config_toml, envs).await {
            Ok(gateway) => gateway,
            Err(failure) => panic!("gateway did not start: {failure}"),
        }
    }

    pub async fn try_start(config_toml: &str, envs: &[(&str, &str)]) -> Result<Gateway, StartFailure> {
        for (_, value) in envs {
            secrets::remember(value);
        }
        let dir = tempfile::Builder::new().prefix("frappe-gateway-inproc-").tempdir().expect("temp dir");
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, config_toml).expect("write gateway.toml");
        let owned: Vec<(String, String)> = envs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        let source = ConfigSource::with_env(config_path.clone(), move |name| {
            owned.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
        });
        let mut config = source.load().map_err(|e| failure(format!("{e}")))?;

        // The access log goes through a FIFO to this instance's capture, unless the test
        // reads its own file.
        let access_fifo = dir.path().join("access.fifo");
        let (access_reader, access_writer) = std::io::pipe().expect("pipe");
        let capture_access = config.log.access == AccessLogTarget::Stdout;
        if capture_access {
            make_fifo(&access_fifo);
            config.log.access = AccessLogTarget::File(access_fifo.clone());
        }
        let (app_reader, app_writer) = std::io::pipe().expect("pipe");
        let output = match capture_access {
            true => {
                let fifo = access_fifo.clone();
                // Opening a FIFO for reading waits for its writer: do it on the reader thread.
                let reader = FifoReader { path: fifo, file: None };
                drop((access_reader, access_writer));
                Output::capture(reader, app_reader, None)
            }
            false => {
                drop(access_writer);
                Output::capture(access_reader, app_reader, None)
            }
        };
        let tls = config.server.tls.is_some();
        let dispatch = subscriber(&config.log.level, app_writer);
        let started = app::start(config, Some(source)).with_subscriber(dispatch.clone()).await;
        let running = match started {
            Ok(running) => running,
            Err(e) => {
                if capture_access {
                    // Unblock the FIFO reader thread.
                    let _ = std::fs::OpenOptions::new().write(true).open(&access_fifo);
                }
                drop(dispatch);
                return Err(failure(format!("{e:?}")));
            }
        };
        Ok(Gateway {
            proxy_addr: running.proxy_addr(),
            admin_addr: running.admin_addr(),
            running: Some(running),
            output,
            tls,
            config_path,
            dispatch,
            _dir: dir,
        })
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// `https://localhost:PORT` with TLS, else `http://127.0.0.1:PORT`. No trailing slash.
    pub fn base_url(&self) -> String {
        match self.tls {
            true => format!("https://localhost:{}", self.proxy_addr.port()),
            false => format!("http://{}", self.proxy_addr),
        }
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn stdout_text(&self) -> String {
        self.output.text(Stream::Stdout)
    }

    pub fn stderr_text(&self) -> String {
        self.output.text(Stream::Stderr)
    }

    /// Application-log lines as JSON.
    pub fn log_lines(&self) -> Vec<Value> {
        self.output.json_lines(Stream::Stderr)
    }

    /// Access-log lines as JSON (for a config that leaves `log.access = "stdout"`).
    pub fn access_log_lines(&self) -> Vec<Value> {
        self.output.json_lines(Stream::Stdout)
    }

    pub async fn wait_for_log(&self, predicate: impl Fn(&Value) -> bool, timeout: Duration) -> Option<Value> {
        self.output.wait_for_json(Stream::Stderr, predicate, timeout).await
    }

    /// An access-log line is written once the response is complete: wait for it.
    pub async fn wait_for_access_log(
        &self,
        predicate: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<Value> {
        self.output.wait_for_json(Stream::Stdout, predicate, timeout).await
    }

    /// Replace the config file (then [`Gateway::reload`]).
    pub fn write_config(&self, config_toml: &str) {
        std::fs::write(&self.config_path, config_toml).expect("rewrite gateway.toml");
    }

    /// What SIGHUP does for the binary: read the config file again and put it in force.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let running = self.running.as_ref().expect("running");
        tracing::dispatcher::with_default(&self.dispatch, || running.reload())
    }

    /// Polls `/readyz` (bounded) until it answers 200: the upstream answers and, with a sync
    /// token, the first user sync has completed. Panics after `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) {
        let url = format!("{}/readyz", self.admin_url());
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = reqwest::get(&url).await.map(|r| r.status().as_u16());
            if status.as_ref().is_ok_and(|s| *s == 200) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "not ready after {timeout:?}: {status:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Graceful shutdown, as SIGTERM does for the binary: in-flight requests finish.
    pub async fn shutdown(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().with_subscriber(self.dispatch.clone()).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        drop(self.running.take());
        self.output.assert_no_secrets();
    }
}

fn failure(reason: String) -> StartFailure {
    StartFailure { reason, status: None, stdout: String::new(), stderr: String::new() }
}

/// The binary's JSON log layout, written to `out`.
fn subscriber(level: &str, out: std::io::PipeWriter) -> tracing::Dispatch {
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(app::log_filter(level))
        .with_writer(Mutex::new(out))
        .finish();
    tracing::Dispatch::new(subscriber)
}

fn make_fifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("run mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Opens the FIFO on first read (the open blocks until the gateway opens its end).
struct FifoReader {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl std::io::Read for FifoReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.file.is_none() {
            self.file = Some(std::fs::File::open(&self.path)?);
        }
        self.file.as_mut().expect("opened").read(buf)
    }
}
