//! What can go wrong reading a repository's configuration. Errors stop a load: the file says
//! something nightshift cannot honour. Warnings do not: the value in question is ignored and
//! everything else is kept.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// A place in a configuration file, 1-based.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.path.display(), self.line, self.column)
    }
}

/// Why `.nightshift.toml` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{at}: invalid TOML{}: {message}", in_key(key.as_deref()))]
    Syntax {
        at: Location,
        /// The key being written where the syntax broke, when it can be told.
        key: Option<String>,
        message: String,
    },
    #[error("{at}: `{key}` must be {expected}, not {found}")]
    WrongType {
        at: Location,
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{at}: `{key}` = {value}: {reason}")]
    InvalidValue {
        at: Location,
        key: String,
        /// The offending value as written.
        value: String,
        reason: String,
    },
}

fn in_key(key: Option<&str>) -> String {
    match key {
        Some(key) => format!(" in `{key}`"),
        None => String::new(),
    }
}

impl ConfigError {
    /// Where in which file, when the error is about the file's contents.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { at, .. }
            | ConfigError::WrongType { at, .. }
            | ConfigError::InvalidValue { at, .. } => Some(at),
        }
    }

    /// The key path the error is about (`environment.workdir`), when known.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { key, .. } => key.as_deref(),
            ConfigError::WrongType { key, .. } | ConfigError::InvalidValue { key, .. } => Some(key),
        }
    }

    /// What the person can do about it. Nothing was started and nothing changed: the same
    /// command works once the file is fixed.
    pub fn hint(&self) -> String {
        match self {
            ConfigError::Read { .. } => {
                "make .nightshift.toml readable, or remove it to use the importers and defaults"
                    .into()
            }
            ConfigError::Syntax { .. } => {
                "fix the TOML at that position, then run `nightshift env check` to see the result"
                    .into()
            }
            ConfigError::WrongType { key, .. } | ConfigError::InvalidValue { key, .. } => {
                format!(
                    "fix `{key}` (docs/config.md lists every key with its type), then run `nightshift env check`"
                )
            }
        }
    }
}

/// What kind of thing a warning reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WarningKind {
    /// A key nightshift does not know; its value was ignored.
    UnknownKey,
    /// A setting of another tool that nightshift cannot honour (a container image, a devcontainer
    /// feature, a GitHub Actions `uses:` step); it was left out.
    Unsupported,
    /// An importer's file could not be parsed; it was skipped.
    MalformedImport,
    /// An importer's file was found but another source took precedence.
    Shadowed,
    /// A path that does not exist in the repository (it may be created later, so this is kept).
    MissingPath,
    /// A value kept as written though it probably does not mean what was intended (an unexpanded
    /// `${...}` reference, a variable set twice).
    Suspicious,
    /// A setting that can never take effect as written (a proxy secret for hosts no allowlist
    /// reaches).
    Ineffective,
}

/// Something worth fixing that did not stop the configuration from loading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigWarning {
    pub kind: WarningKind,
    /// The file, relative to the repository root.
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The key path the warning is about, when there is one.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}
