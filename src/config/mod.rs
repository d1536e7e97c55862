//! Configuration: read the file, parse it, validate it, reporting every error at once.
//!
//! [`load`] reads a file and hands its text to [`parse`]; parsing (`raw.rs`)
//! only checks TOML syntax, key names and value types; validation
//! (`validate.rs`) checks every value and collects every problem, so an
//! operator fixes a file in one pass. Relative paths in the file (certificates,
//! keys, CA bundles, the state directory) are relative to the current working
//! directory of the process.

mod raw;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_limits;
#[cfg(test)]
mod tests_listeners;
#[cfg(test)]
mod tests_senders;
mod types;
mod validate;
mod validate_limits;
mod validate_listeners;
mod validate_socket;
mod validate_vhosts;

use std::path::{Path, PathBuf};

pub use types::*;
pub use validate_limits::{parse_limit, parse_rate};

/// The `path` reported when the text did not come from a file.
const TEXT_PATH: &str = "<text>";

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The text is not TOML, has an unknown key, or a value of the wrong TOML type.
    /// Only the first such problem is reported.
    #[error("{}: invalid TOML: {message}", .path.display())]
    Syntax { path: PathBuf, message: String },
    /// The TOML is well-formed but values are wrong; every problem is listed.
    #[error("{} error(s) in {}:\n{}", .errors.len(), .path.display(), bullets(.errors))]
    Invalid { path: PathBuf, errors: Vec<String> },
}

/// Reads and validates the file; every problem at once.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_named(&text, path)
}

/// Parses and validates TOML text. The only I/O: checking that referenced
/// cert/key/CA files are readable, and resolving `[[vhost]] users` to uids.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_named(text, Path::new(TEXT_PATH))
}

/// [`parse`], with `path` naming the text's origin in errors.
fn parse_named(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    validate::validate(raw).map_err(|errors| ConfigError::Invalid {
        path: path.to_owned(),
        errors,
    })
}

/// One `  - ` line per error.
fn bullets(errors: &[String]) -> String {
    let lines: Vec<String> = errors.iter().map(|e| format!("  - {e}")).collect();
    lines.join("\n")
}
