//! Reading the files of an untrusted tree from the host: a working copy cloned from the
//! repository, a person's checkout the repository's configuration points into, a sandbox's live
//! workspace.
//!
//! The repository and the agent choose what is at every path, so every read here resolves the
//! path inside the tree's root (a symbolic link or `..` can never lead to a host file), opens
//! regular files only, without blocking (a FIFO would hang the open forever, a device would
//! never end), and reads with a bound the caller gives.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};

/// What may stand at the last component of the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// A symbolic link is followed as long as it stays inside the tree.
    FollowInside,
    /// A symbolic link is refused.
    Refuse,
}

/// Why a file of the tree was not read.
#[derive(Debug, thiserror::Error)]
pub enum TreeFileError {
    #[error("`{}` does not exist", .path.display())]
    NotFound { path: PathBuf },
    #[error("`{}` leads outside {} (through `..` or a symbolic link); it was not read", .path.display(), .root.display())]
    Outside { path: PathBuf, root: PathBuf },
    #[error("`{}` is a symbolic link, which is not followed here; it was not read", .path.display())]
    Symlink { path: PathBuf },
    #[error("`{}` is {kind}, not a regular file; it was not read", .path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("`{}` is larger than the {limit} bytes read from such a file; it was not read", .path.display())]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("`{}` cannot be read: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl TreeFileError {
    /// Whether the file is simply not there (as opposed to there and refused or unreadable).
    pub fn is_not_found(&self) -> bool {
        matches!(self, TreeFileError::NotFound { .. })
    }
}

/// A regular file of the tree, opened, with its size when it was opened.
#[derive(Debug)]
pub struct RegularFile {
    pub file: File,
    pub len: u64,
}

/// Opens `relative` under `root` for reading, if it is a regular file inside the tree.
pub fn open_regular(
    root: &Path,
    relative: &Path,
    links: Links,
) -> Result<RegularFile, TreeFileError> {
    let dir = Dir::open_ambient_dir(root, cap_std::ambient_authority()).map_err(|source| {
        TreeFileError::Io {
            path: root.to_path_buf(),
            source,
        }
    })?;
    open_regular_in(&dir, root, relative, links)
}

/// [`open_regular`] in the already opened tree `dir` (whose host path is `root`, for messages).
pub fn open_regular_in(
    dir: &Dir,
    root: &Path,
    relative: &Path,
    links: Links,
) -> Result<RegularFile, TreeFileError> {
    let error = |source: io::Error| classify(root, relative, source);
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    if links == Links::Refuse {
        let meta = dir.symlink_metadata(relative).map_err(error)?;
        if meta.is_symlink() {
            return Err(TreeFileError::Symlink {
                path: relative.to_path_buf(),
            });
        }
        flags |= libc::O_NOFOLLOW;
    }
    let mut options = OpenOptions::new();
    options.read(true).custom_flags(flags);
    let file = dir
        .open_with(relative, &options)
        .map_err(|err| {
            // O_NOFOLLOW on a link swapped in since the check.
            if err.raw_os_error() == Some(libc::ELOOP) {
                TreeFileError::Symlink {
                    path: relative.to_path_buf(),
                }
            } else {
                error(err)
            }
        })?
        .into_std();
    let meta = file.metadata().map_err(error)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        return Err(TreeFileError::NotRegular {
            path: relative.to_path_buf(),
            kind: describe_kind(&kind),
        });
    }
    Ok(RegularFile {
        file,
        len: meta.len(),
    })
}

/// The whole of `relative`, refused when it holds more than `limit` bytes.
pub fn read_regular(
    root: &Path,
    relative: &Path,
    links: Links,
    limit: u64,
) -> Result<Vec<u8>, TreeFileError> {
    let opened = open_regular(root, relative, links)?;
    let too_large = || TreeFileError::TooLarge {
        path: relative.to_path_buf(),
        limit,
    };
    if opened.len > limit {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    opened
        .file
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| TreeFileError::Io {
            path: relative.to_path_buf(),
            source,
        })?;
    // It may have grown since it was opened.
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

/// At most the first `limit` bytes of `relative`, and its whole size.
pub fn read_head(
    root: &Path,
    relative: &Path,
    links: Links,
    limit: u64,
) -> Result<(Vec<u8>, u64), TreeFileError> {
    let opened = open_regular(root, relative, links)?;
    let mut bytes = Vec::new();
    opened
        .file
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(|source| TreeFileError::Io {
            path: relative.to_path_buf(),
            source,
        })?;
    let len = opened.len.max(bytes.len() as u64);
    Ok((bytes, len))
}

/// What a file type is, for messages.
pub fn describe_kind(kind: &std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else {
        "a special file"
    }
}

fn classify(root: &Path, relative: &Path, err: io::Error) -> TreeFileError {
    let path = relative.to_path_buf();
    if err.kind() == io::ErrorKind::NotFound {
        TreeFileError::NotFound { path }
    } else if is_escape(&err) {
        TreeFileError::Outside {
            path,
            root: root.to_path_buf(),
        }
    } else {
        TreeFileError::Io { path, source: err }
    }
}

/// Whether `cap_std` refused an operation because it would have left the tree.
fn is_escape(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::PermissionDenied
        && err.to_string().contains("outside of the filesystem")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[test]
    fn refuses_links_out_fifos_devices_and_large_files_and_reads_the_rest() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("tree");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(outer.path().join("host.txt"), "host secret\n").unwrap();
        std::fs::write(root.join("sub/real.txt"), "inside\n").unwrap();
        std::os::unix::fs::symlink(outer.path().join("host.txt"), root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../host.txt", root.join("rel")).unwrap();
        std::os::unix::fs::symlink("sub/real.txt", root.join("inside")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", root.join("zero")).unwrap();
        mkfifo(&root.join("fifo"));
        std::fs::write(root.join("big"), vec![b'x'; 2048]).unwrap();

        let read = |name: &str, links| read_regular(&root, Path::new(name), links, 1024);
        assert_eq!(read("sub/real.txt", Links::Refuse).unwrap(), b"inside\n");
        assert_eq!(read("inside", Links::FollowInside).unwrap(), b"inside\n");
        assert!(matches!(
            read("inside", Links::Refuse),
            Err(TreeFileError::Symlink { .. })
        ));
        for name in ["abs", "rel", "zero", "../host.txt"] {
            let err = read(name, Links::FollowInside).unwrap_err();
            assert!(
                matches!(err, TreeFileError::Outside { .. }),
                "{name}: {err}"
            );
        }
        // The FIFO has no writer: a blocking open would never return.
        let err = read("fifo", Links::FollowInside).unwrap_err();
        assert!(err.to_string().contains("is a FIFO"), "{err}");
        let err = read("big", Links::Refuse).unwrap_err();
        assert!(matches!(err, TreeFileError::TooLarge { .. }), "{err}");
        let (head, len) = read_head(&root, Path::new("big"), Links::Refuse, 10).unwrap();
        assert_eq!((head.len(), len), (10, 2048));
        assert!(read("nope", Links::Refuse).unwrap_err().is_not_found());
        assert!(matches!(
            read("sub", Links::Refuse),
            Err(TreeFileError::NotRegular { .. })
        ));
    }
}
