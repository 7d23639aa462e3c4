//! Where each effective configuration value came from, so `nightshift env check` can answer
//! "why is my setup script this?" without the person reading three tools' files.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// Another tool whose configuration nightshift can read when a repository has no
/// `.nightshift.toml`. Listed in order of precedence: the first one found is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Importer {
    /// `.github/workflows/copilot-setup-steps.yml`, GitHub Copilot coding agent's setup job.
    CopilotSetupSteps,
    /// `.cursor/environment.json`, Cursor background agents' environment.
    Cursor,
    /// `.devcontainer/devcontainer.json` or `.devcontainer.json`.
    Devcontainer,
}

impl Importer {
    /// Every importer, most preferred first.
    pub const ALL: [Importer; 3] = [
        Importer::CopilotSetupSteps,
        Importer::Cursor,
        Importer::Devcontainer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Importer::CopilotSetupSteps => "copilot-setup-steps",
            Importer::Cursor => "cursor",
            Importer::Devcontainer => "devcontainer",
        }
    }
}

impl fmt::Display for Importer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where one value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// Written in `.nightshift.toml` (path relative to the repository root) at this line.
    File { path: PathBuf, line: usize },
    /// Taken from another tool's file: which importer, the file, and the field(s) read.
    Imported {
        importer: Importer,
        path: PathBuf,
        field: String,
    },
    /// nightshift's default, with what it was derived from when it depends on the repository.
    Default { reason: Option<String> },
}

impl Origin {
    pub(crate) fn default_value() -> Origin {
        Origin::Default { reason: None }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Imported { path, field, .. } => write!(f, "{} ({field})", path.display()),
            Origin::Default { reason: None } => f.write_str("default"),
            Origin::Default {
                reason: Some(reason),
            } => write!(f, "default: {reason}"),
        }
    }
}

/// Origins by key path (`environment.setup`, `checks.test`, `environment.env.RUST_LOG`).
/// Keys that are unset and have no default have no entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Provenance(BTreeMap<String, Origin>);

impl Provenance {
    pub fn get(&self, key: &str) -> Option<&Origin> {
        self.0.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Origin)> {
        self.0.iter().map(|(key, origin)| (key.as_str(), origin))
    }

    pub(crate) fn set(&mut self, key: impl Into<String>, origin: Origin) {
        self.0.insert(key.into(), origin);
    }
}
