//! `gateway.toml`: raw serde shape (`raw`), validation with key and line (`validate`), the
//! typed runtime configuration (`types`), and the effective config as `check` prints it
//! (`effective`).
pub mod effective;
mod raw;
mod toml_errors;
mod types;
mod validate;
mod values;

pub use effective::SourceInfo;
pub use types::*;
pub use validate::{parse, ConfigError, ConfigIssue};
pub use values::{parse_cidr, parse_duration, parse_rate};

use std::path::{Path, PathBuf};

/// Reads and validates the file at `path`, taking `_env` secrets from the process environment.
/// Errors name the file by its absolute path: the one actually read, whatever the working
/// directory was.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with_env(path, &|name| std::env::var(name).ok())
}

/// Like [`load`], with `_env` secrets looked up by `env` (a reload in tests passes its own).
pub fn load_with_env(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let (file, src) = read(path)?;
    parse(&src, &file, env)
}

/// Like [`load`], also returning what `check` reports beside the config: the file read, the
/// `_env` variable names and each route's index in the file.
pub fn load_with_source(path: &Path) -> Result<(Config, SourceInfo), ConfigError> {
    let (file, src) = read(path)?;
    let config = parse(&src, &file, &|name| std::env::var(name).ok())?;
    Ok((config, SourceInfo::read(&file, &src)))
}

/// The file's absolute name and its text.
fn read(path: &Path) -> Result<(String, String), ConfigError> {
    let file = absolute(path).display().to_string();
    match std::fs::read_to_string(path) {
        Ok(src) => Ok((file, src)),
        Err(e) => Err(ConfigError {
            file,
            issues: vec![ConfigIssue {
                key: "--config".into(),
                line: 0,
                message: format!("cannot read file: {e}"),
            }],
        }),
    }
}

/// `path` made absolute (symlinks resolved when it exists), for messages.
pub fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| std::env::current_dir().map_or_else(|_| path.to_path_buf(), |cwd| cwd.join(path)))
}
