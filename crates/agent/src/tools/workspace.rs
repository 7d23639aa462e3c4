//! Keeps the file tools inside the workspace.
//!
//! Paths from the model are first normalized lexically (so `..` past the root and absolute paths
//! elsewhere get a clear message), then every read and write goes through a `cap_std` directory
//! handle, whose operations refuse to leave the directory by any route, symlinks included. The
//! lexical step is for the message; `cap_std` is the guarantee.
//!
//! The tools run on the host over a workspace the agent controls, so files are opened only
//! when they are regular files, checked on the open handle, and never with a blocking open: a
//! FIFO the agent made would otherwise hang the host's open forever, and a device could be
//! read without end.

use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
use nix::libc;

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
    #[error(
        "`{0}` is {1}, not a regular file; the file tools only read and write regular files \
         (use shell to work with it)"
    )]
    NotRegular(String, &'static str),
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

    /// Opens `relative` for reading if it is a regular file (symbolic links are followed inside
    /// the workspace). The file type is checked on the opened handle, and the open itself never
    /// blocks. A directory opens too, for the caller's own message. Returns the file and what
    /// the handle says of it, or the message for the model.
    pub(crate) fn open_regular(
        &self,
        relative: &Path,
    ) -> Result<(std::fs::File, std::fs::Metadata), String> {
        let mut options = OpenOptions::new();
        options
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
        let file = self
            .dir
            .open_with(target(relative), &options)
            .map_err(|err| self.describe_error(relative, &err))?
            .into_std();
        let meta = file
            .metadata()
            .map_err(|err| self.describe_error(relative, &err))?;
        check_regular(relative, &meta.file_type())?;
        Ok((file, meta))
    }

    /// Replaces the content of `relative` (created if missing) with `content`, if it is a
    /// regular file: nothing is truncated or written before the opened handle says so, and the
    /// open never blocks on a FIFO.
    pub(crate) fn write_regular(&self, relative: &Path, content: &[u8]) -> Result<(), String> {
        let mut options = OpenOptions::new();
        options
            .write(true)
            .create(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
        let file = self
            .dir
            .open_with(relative, &options)
            .map_err(|err| self.describe_error(relative, &err))?
            .into_std();
        let io_error = |err: io::Error| self.describe_error(relative, &err);
        let meta = file.metadata().map_err(io_error)?;
        check_regular(relative, &meta.file_type())?;
        file.set_len(0).map_err(io_error)?;
        (&file).write_all(content).map_err(io_error)
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
            // A socket, or a FIFO opened for writing with no reader.
            _ if err.raw_os_error() == Some(libc::ENXIO) => {
                PathError::NotRegular(shown, "a FIFO, socket or device").to_string()
            }
            _ => format!("`{shown}`: {err}"),
        }
    }
}

/// `relative` as `cap_std` takes it: the root is `.`.
pub(crate) fn target(relative: &Path) -> &Path {
    if relative.as_os_str().is_empty() {
        Path::new(".")
    } else {
        relative
    }
}

/// Refuses anything but a regular file (directories get their own message from the callers).
fn check_regular(relative: &Path, kind: &std::fs::FileType) -> Result<(), String> {
    if kind.is_file() || kind.is_dir() {
        return Ok(());
    }
    Err(PathError::NotRegular(display(relative), describe_kind(kind)).to_string())
}

/// What a file type is, for messages.
fn describe_kind(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "a special file"
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
