//! The runbook: CLI → config → logging → state → bind → serve → drain.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use frappe_gateway::reload::ConfigSource;
use frappe_gateway::{app, config, tls};

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
    /// Validate the configuration and print the effective settings (secrets redacted).
    Check,
    /// Write a self-signed development certificate and key.
    GenCert {
        /// Host name the certificate is for (repeatable); localhost and 127.0.0.1 are added.
        #[arg(long = "host", default_value = "localhost")]
        hosts: Vec<String>,
        /// Directory to write gateway.crt and gateway.key into.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check) => check(&cli.config),
        Some(Command::GenCert { hosts, out }) => gen_cert(&hosts, &out),
        None => run(&cli.config),
    }
}

fn check(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok(config) => {
            println!("{}: OK\n\n{}", path.display(), app::describe(&config));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprint!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn gen_cert(hosts: &[String], out: &Path) -> ExitCode {
    let (cert, key) = (out.join("gateway.crt"), out.join("gateway.key"));
    match tls::write_self_signed(hosts, &cert, &key) {
        Ok(()) => {
            println!("wrote {} and {} for {}", cert.display(), key.display(), hosts.join(", "));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gen-cert failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &Path) -> ExitCode {
    let source = ConfigSource::file(path.to_path_buf());
    let config = match source.load() {
        Ok(config) => config,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let _log_guard = app::init_logging(&config.log.level);
    // The main runtime runs the admin listener and background tasks; proxy traffic runs on
    // the worker threads `app::run` starts.
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(config, source)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(app::StartError::Config(msg)) => {
            tracing::error!(error = %msg, "refusing to start");
            eprintln!("{msg}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(app::StartError::Runtime(e)) => {
            tracing::error!(error = %format!("{e:#}"), "gateway failed");
            ExitCode::FAILURE
        }
    }
}
