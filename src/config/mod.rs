//! `gateway.toml`: raw serde shape (`raw`), validation with key and line (`validate`), and the
//! typed runtime configuration (`types`).
mod raw;
mod types;
mod validate;
mod values;

pub use types::*;
pub use validate::{parse, ConfigError, ConfigIssue};
pub use values::{parse_cidr, parse_duration, parse_rate};

use std::path::Path;

/// Reads and validates the file at `path`, taking `_env` secrets from the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        issues: vec![ConfigIssue {
            key: "--config".into(),
            line: 0,
            message: format!("cannot read file: {e}"),
        }],
    })?;
    parse(&src, &file, &|name| std::env::var(name).ok())
}
