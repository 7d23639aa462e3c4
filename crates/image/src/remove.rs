//! Removing unpacked trees whatever their modes, without following their symlinks.
//!
//! Layers hold directories their owner may not write (`0555` is common) and symlinks to
//! anywhere; `std::fs::remove_dir_all` stops at the former. Removal works through directory
//! descriptors and makes each directory writable before emptying it.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FchmodatFlags, Mode, fchmod, fchmodat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// Removes `name` in `parent` and everything beneath it. A missing `name` is not an error.
pub(crate) fn remove_at(parent: BorrowedFd<'_>, name: &OsStr) -> nix::Result<()> {
    match unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EISDIR | Errno::EPERM) => {}
        Err(e) => return Err(e),
    }
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let dir = match openat(parent, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::EACCES) => {
            fchmodat(parent, name, Mode::S_IRWXU, FchmodatFlags::FollowSymlink)?;
            openat(parent, name, flags, Mode::empty())?
        }
        Err(e) => return Err(e),
    };
    // Best effort: root may write anyway, and an owner may make its directory writable.
    let _ = fchmod(dir.as_fd(), Mode::S_IRWXU);
    let mut names: Vec<OsString> = Vec::new();
    {
        let mut listing = nix::dir::Dir::from_fd(dir.try_clone().map_err(io_errno)?)?;
        for entry in listing.iter() {
            let entry = entry?;
            let child = entry.file_name().to_bytes();
            if child != b"." && child != b".." {
                names.push(OsStr::from_bytes(child).to_os_string());
            }
        }
    }
    for child in &names {
        remove_at(dir.as_fd(), child)?;
    }
    drop(dir);
    match unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes the tree at `path` (a file, a symlink or a directory). A missing path is fine.
pub(crate) fn remove_tree(path: &Path) -> std::io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "refusing to remove a path without a parent",
        ));
    };
    let parent = std::fs::File::open(parent)?;
    remove_at(parent.as_fd(), name).map_err(std::io::Error::from)
}

fn io_errno(e: std::io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

/// Whether a directory entry named `name` exists in `parent`, without following a symlink.
pub(crate) fn exists_at(parent: BorrowedFd<'_>, name: &OsStr) -> nix::Result<bool> {
    match nix::sys::stat::fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(_) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}
