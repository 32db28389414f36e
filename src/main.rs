//! The runbook: CLI → config → logging → state → bind → serve → drain.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};

use frappe_gateway::reload::ConfigSource;
use frappe_gateway::{app, check, config, health, tls};

/// Exit status for a configuration the gateway refuses (bad key, missing certificate…).
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "frappe-gateway",
    version,
    about = "Authenticating TLS reverse proxy for ERPNext / Frappe v15"
)]
struct Cli {
    /// Configuration file.
    #[arg(long, short, global = true, default_value = "gateway.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Pre-deploy gate (like `nginx -t`): validate the configuration, read the certificate
    /// and key, warn about risky settings, print the effective config as TOML (secrets
    /// redacted). Exit 0 ok, 1 warnings with --strict, 2 errors.
    Check {
        /// Warnings fail the check too (exit 1).
        #[arg(long)]
        strict: bool,
        /// Do not print the effective config; only findings and the verdict (stderr).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Write a self-signed development certificate and key.
    GenCert {
        /// Host name the certificate is for (repeatable); localhost and 127.0.0.1 are added.
        #[arg(long = "host", default_value = "localhost")]
        hosts: Vec<String>,
        /// Directory to write gateway.crt and gateway.key into.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
    },
    /// Ask a running gateway's admin listener for /healthz (container healthchecks).
    /// Exit 0 when it answers 200, else 1.
    Health {
        /// URL to ask; default: /healthz on the config's admin.listen.
        #[arg(long)]
        url: Option<String>,
        /// Give up after this long.
        #[arg(long, default_value = "3s", value_parser = config::parse_duration)]
        timeout: Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { strict, quiet }) => check(&cli.config, strict, quiet),
        Some(Command::GenCert { hosts, out }) => gen_cert(&hosts, &out),
        Some(Command::Health { url, timeout }) => health(&cli.config, url, timeout),
        None => run(&cli.config),
    }
}

/// Writes to stdout; a closed pipe (`check | head -1`) is not an error worth a panic.
fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
}

/// Writes to stderr, ignoring a closed stream like [`out`].
fn err(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

fn check(path: &Path, strict: bool, quiet: bool) -> ExitCode {
    let (config, source) = match config::load_with_source(path) {
        Ok(loaded) => loaded,
        Err(e) => {
            err(&e.to_string());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let report = check::run(&config, &source, SystemTime::now());
    if !quiet {
        out(&config::effective::render(&config, &source));
    }
    err(&report.render(&source.file, strict));
    ExitCode::from(report.exit_code(strict))
}

fn gen_cert(hosts: &[String], dir: &Path) -> ExitCode {
    let (cert, key) = (dir.join("gateway.crt"), dir.join("gateway.key"));
    match tls::write_self_signed(hosts, &cert, &key) {
        Ok(()) => {
            out(&format!("wrote {} and {} for {}\n", cert.display(), key.display(), hosts.join(", ")));
            ExitCode::SUCCESS
        }
        Err(e) => {
            err(&format!("gen-cert failed: {e:#}\n"));
            ExitCode::FAILURE
        }
    }
}

fn health(path: &Path, url: Option<String>, timeout: Duration) -> ExitCode {
    let url = match url {
        Some(url) => url,
        None => match config::load(path) {
            Ok(config) => health::default_url(config.admin.listen),
            Err(e) => {
                err(&e.to_string());
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    match health::probe(&url, timeout) {
        Ok(status) => {
            out(&format!("{url}: {status}\n"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            err(&format!("unhealthy: {e:#}\n"));
            ExitCode::FAILURE
        }
    }
}

fn run(path: &Path) -> ExitCode {
    let source = ConfigSource::file(path.to_path_buf());
    let config = match source.load() {
        Ok(config) => config,
        Err(e) => {
            err(&e.to_string());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let _log_guard = app::init_logging(&config.log.level);
    // The main runtime runs the admin listener and background tasks; proxy traffic runs on
    // the worker threads `app::run` starts.
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            err(&format!("cannot start the async runtime: {e}\n"));
            return ExitCode::FAILURE;
        }
    };
    let file = config::absolute(path).display().to_string();
    match runtime.block_on(app::run(config, source)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(app::StartError::Config(msg)) => {
            tracing::error!(error = %msg, config = %file, "refusing to start");
            err(&format!("{file}: {msg}\n"));
            ExitCode::from(EXIT_CONFIG)
        }
        Err(app::StartError::Runtime(e)) => {
            tracing::error!(error = %format!("{e:#}"), "gateway failed");
            ExitCode::FAILURE
        }
    }
}
