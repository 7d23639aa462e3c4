//! Keeps the file tools inside the workspace.
//!
//! Paths from the model are first normalized lexically (so `..` past the root and absolute paths
//! elsewhere get a clear message), then every read and write goes through a `cap_std` directory
//! handle, whose operations refuse to leave the directory by any route, symlinks included. The
//! lexical step is for the message; `cap_std` is the guarantee.

use std::io;
use std::path::{Component, Path, PathBuf};

use cap_std::fs::Dir;

/// The workspace directory, opened as a capability.
pub(crate) struct Workspace {
    dir: Dir,
    /// The workspace as the session names it.
    given: PathBuf,
    /// The same directory with symlinks resolved, for walking it.
    real: PathBuf,
    /// What `realpath` says of the workspace: for a sandbox's live view through
    /// `/proc/<pid>/root`, the path commands inside see (`/workspace`). Absolute paths under it
    /// are the model's way of naming workspace files too.
    alias: PathBuf,
}

/// Why a path cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PathError {
    #[error(
        "`{0}` is outside the workspace; the file tools only work inside it. Use a path \
         relative to the workspace root, such as `src/main.rs`"
    )]
    Outside(String),
    #[error(
        "`{0}` is inside `.git/`, which the file tools never write to; use `shell` to run git \
         commands instead"
    )]
    InGitDir(String),
    #[error("`{0}` is a symlink whose target does not exist; write to the target path itself")]
    DanglingSymlink(String),
    #[error("the workspace {path} cannot be opened: {source}")]
    Open { path: PathBuf, source: io::Error },
}

impl Workspace {
    /// Opens the workspace at `root` (a host path). Blocking.
    pub(crate) fn open(root: &Path) -> Result<Self, PathError> {
        let open_error = |source| PathError::Open {
            path: root.to_path_buf(),
            source,
        };
        let dir = Dir::open_ambient_dir(root, cap_std::ambient_authority()).map_err(open_error)?;
        // realpath of a path through /proc/<pid>/root resolves to the sandbox's own view,
        // which does not exist on the host: walk the given path then.
        let alias = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        let real = if alias.is_dir() {
            alias.clone()
        } else {
            root.to_path_buf()
        };
        Ok(Workspace {
            dir,
            given: root.to_path_buf(),
            real,
            alias,
        })
    }

    pub(crate) fn dir(&self) -> &Dir {
        &self.dir
    }

    /// The workspace's host path with symlinks resolved.
    pub(crate) fn real_root(&self) -> &Path {
        &self.real
    }

    /// Turns the model's `path` into a normalized path relative to the workspace root. The root
    /// itself is the empty path. Absolute paths are accepted when they lie in the workspace.
    pub(crate) fn relative(&self, path: &str) -> Result<PathBuf, PathError> {
        let path = path.trim();
        let raw = Path::new(path);
        let inside = if raw.is_absolute() {
            raw.strip_prefix(&self.given)
                .or_else(|_| raw.strip_prefix(&self.real))
                .or_else(|_| raw.strip_prefix(&self.alias))
                .map_err(|_| PathError::Outside(path.to_string()))?
        } else {
            raw
        };
        let mut normalized = PathBuf::new();
        for component in inside.components() {
            match component {
                Component::Normal(part) => normalized.push(part),
                Component::CurDir => {}
                Component::ParentDir => {
                    if !normalized.pop() {
                        return Err(PathError::Outside(path.to_string()));
                    }
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(PathError::Outside(path.to_string()));
                }
            }
        }
        Ok(normalized)
    }

    /// Checks that writing `relative` would land neither in `.git/` nor outside the workspace,
    /// following any symlinks on the way.
    pub(crate) fn check_writable(&self, relative: &Path) -> Result<(), PathError> {
        let shown = display(relative);
        if in_git_dir(relative) {
            return Err(PathError::InGitDir(shown));
        }
        if let Ok(meta) = self.dir.symlink_metadata(relative)
            && meta.is_symlink()
        {
            match self.dir.canonicalize(relative) {
                Ok(_) => {}
                Err(err) if is_escape(&err) => return Err(PathError::Outside(shown)),
                Err(_) => return Err(PathError::DanglingSymlink(shown)),
            }
        }
        // The deepest part of the path that exists says where the write really goes.
        let mut probe = relative.to_path_buf();
        loop {
            let target = if probe.as_os_str().is_empty() {
                Path::new(".")
            } else {
                &probe
            };
            match self.dir.canonicalize(target) {
                Ok(real) if in_git_dir(&real) => return Err(PathError::InGitDir(shown)),
                Ok(_) => return Ok(()),
                Err(err) if is_escape(&err) => return Err(PathError::Outside(shown)),
                Err(_) => {
                    if !probe.pop() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The message for an I/O error on `relative`, recognizing `cap_std`'s refusals.
    pub(crate) fn describe_error(&self, relative: &Path, err: &io::Error) -> String {
        let shown = display(relative);
        if is_escape(err) {
            return PathError::Outside(shown).to_string();
        }
        match err.kind() {
            io::ErrorKind::NotFound => format!(
                "`{shown}` does not exist; check the path with list_files (paths are relative \
                 to the workspace root)"
            ),
            io::ErrorKind::PermissionDenied => format!("`{shown}` is not accessible: {err}"),
            _ => format!("`{shown}`: {err}"),
        }
    }
}

/// A relative path as shown to the model; the root is `.`.
pub(crate) fn display(relative: &Path) -> String {
    if relative.as_os_str().is_empty() {
        ".".to_string()
    } else {
        relative.display().to_string()
    }
}

fn in_git_dir(relative: &Path) -> bool {
    relative.components().any(|c| c.as_os_str() == ".git")
}

/// Whether `cap_std` refused the operation because it would have left the directory.
pub(crate) fn is_escape(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::PermissionDenied
        && err.to_string().contains("outside of the filesystem")
}
