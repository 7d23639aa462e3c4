//! Why a `[sandbox]` entry of `config.toml` was refused, and what to write instead.

use std::fmt;
use std::path::PathBuf;

/// Which list of `[sandbox]` an entry is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Binds,
    Path,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Key::Binds => "binds",
            Key::Path => "path",
        })
    }
}

/// Where a bind stands to something no sandbox may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    Is,
    Contains,
    Inside,
}

/// A refused `[sandbox]` entry. Nothing starts with it: every sandbox would show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindError {
    /// `~` was written, but the host user's home is unknown.
    NoHome { key: Key, entry: String },
    /// Not absolute after `~` expansion.
    Relative { key: Key, entry: String },
    /// It does not exist, or cannot be resolved.
    Missing {
        key: Key,
        entry: String,
        path: PathBuf,
        reason: String,
    },
    /// A socket, a device or a FIFO.
    NotADirectory { entry: String, path: PathBuf },
    /// A place the sandbox builds itself, or one that shows far too much.
    System {
        entry: String,
        path: PathBuf,
        why: &'static str,
    },
    /// It is, contains or sits inside a credential store or nightshift's own files.
    Protected {
        entry: String,
        path: PathBuf,
        protected: PathBuf,
        holds: &'static str,
        relation: Relation,
        /// Directories right under the bind that hold nothing protected.
        narrower: Vec<PathBuf>,
    },
    /// A `path` entry no bind shows.
    Unbound { entry: String, path: PathBuf },
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindError::NoHome { key, entry } => write!(
                f,
                "[sandbox] {key} entry `{entry}` starts with `~`, but the host user's home is unknown"
            ),
            BindError::Relative { key, entry } => {
                write!(f, "[sandbox] {key} entry `{entry}` is not an absolute path")
            }
            BindError::Missing {
                key,
                entry,
                path,
                reason,
            } => write!(
                f,
                "[sandbox] {key} entry `{entry}` ({}) {reason}",
                path.display()
            ),
            BindError::NotADirectory { entry, path } => write!(
                f,
                "[sandbox] binds entry `{entry}` ({}) is neither a directory nor a regular file",
                path.display()
            ),
            BindError::System { entry, path, why } => write!(
                f,
                "[sandbox] binds entry `{entry}` ({}) is refused: {why}",
                path.display()
            ),
            BindError::Protected {
                entry,
                path,
                protected,
                holds,
                relation,
                ..
            } => {
                let relation = match relation {
                    Relation::Is => "is",
                    Relation::Contains => "contains",
                    Relation::Inside => "is inside",
                };
                write!(
                    f,
                    "[sandbox] binds entry `{entry}` ({}) {relation} {}, which holds {holds}: \
                     no sandbox may see it",
                    path.display(),
                    protected.display()
                )
            }
            BindError::Unbound { entry, path } => write!(
                f,
                "[sandbox] path entry `{entry}` ({}) is not under any of the binds nor a system \
                 directory, so the sandbox cannot see it",
                path.display()
            ),
        }
    }
}

impl BindError {
    /// What to do about it.
    pub fn hint(&self, home: Option<&std::path::Path>) -> String {
        match self {
            BindError::NoHome { .. } => "set HOME, or write the absolute path".into(),
            BindError::Relative { .. } => {
                "write an absolute path, or one starting with `~/` (the host user's HOME)".into()
            }
            BindError::Missing { .. } => {
                "install the toolchain there, or remove the entry from config.toml".into()
            }
            BindError::NotADirectory { .. } => "bind the toolchain's directory instead".into(),
            BindError::System { .. } => {
                "bind only the toolchain's own directories, e.g. `~/.rustup` and `~/.cargo/bin`, \
                 or `/opt/go`; a toolchain under /tmp must move elsewhere first"
                    .into()
            }
            BindError::Protected {
                relation: Relation::Contains,
                narrower,
                ..
            } if !narrower.is_empty() => {
                let narrower: Vec<String> = narrower
                    .iter()
                    .map(|dir| format!("`{}`", super::tilde(dir, home)))
                    .collect();
                format!(
                    "bind narrower directories that hold no credentials instead, e.g. {}",
                    narrower.join(", ")
                )
            }
            BindError::Protected { .. } => "remove it from binds in config.toml".into(),
            BindError::Unbound { .. } => {
                "add it, or a directory above it, to binds in config.toml".into()
            }
        }
    }
}
