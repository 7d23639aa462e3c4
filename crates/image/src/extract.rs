//! Writing a layer's tar entries beneath its root, confined by the kernel.
//!
//! Every path is resolved from a descriptor of the layer's root with `openat2(RESOLVE_BENEATH
//! | RESOLVE_NO_MAGICLINKS)`, so any resolution that would leave the root (through `..`, an
//! absolute symlink, or a relative one that climbs too far) fails with `EXDEV` instead of
//! writing elsewhere; every final component is created with `*at` calls that do not follow
//! symlinks. Symlinks themselves are stored as written: the sandbox resolves them inside its
//! root.
//!
//! OCI whiteouts become overlayfs whiteouts: `.wh.NAME` a 0:0 character device named NAME,
//! `.wh..wh..opq` the `user.overlay.opaque` xattr on its directory (and `trusted.overlay.opaque`
//! when running as root, for overlays mounted without `userxattr`). Device nodes, FIFOs and
//! sockets are skipped and counted: a sandbox has no use for them and an unprivileged
//! unpacker cannot make them.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, fchmod, futimens, mkdirat, mknodat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown, fchownat, linkat, symlinkat};

use crate::Owner;
use crate::error::ImageError;
use crate::remove::{exists_at, remove_at};
use crate::unpack::{Unpacked, normalize};

/// The metadata a directory gets once all its entries are written (modes last, so a `0555`
/// directory can still be filled, and times last, since filling it changes them).
#[derive(Debug, Clone, Copy)]
struct DirMeta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
}

/// The state of one layer's extraction.
pub(crate) struct Extraction<'a> {
    root: OwnedFd,
    owner: Owner,
    label: &'a str,
    dest: &'a Path,
    /// Directories by relative path ("" is the root).
    dirs: HashMap<PathBuf, DirMeta>,
    /// The last parent directory opened, reused while entries stay in one directory.
    cached_parent: Option<(PathBuf, OwnedFd)>,
    stats: Unpacked,
    as_root: bool,
    /// Whether `.wh.` names are whiteouts (an image layer's), or refused (an archive's).
    whiteouts: bool,
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

impl<'a> Extraction<'a> {
    pub(crate) fn new(root: OwnedFd, owner: Owner, label: &'a str, dest: &'a Path) -> Self {
        Extraction {
            root,
            owner,
            label,
            dest,
            dirs: HashMap::new(),
            cached_parent: None,
            stats: Unpacked::default(),
            as_root: nix::unistd::geteuid().is_root(),
            whiteouts: true,
        }
    }

    /// For a tar that is not an image layer: a `.wh.` name is refused rather than taken as a
    /// whiteout, which could delete what lies below the destination in the image.
    pub(crate) fn refusing_whiteouts(mut self) -> Self {
        self.whiteouts = false;
        self
    }

    fn corrupt(&self, detail: impl Into<String>) -> ImageError {
        ImageError::CorruptLayer {
            digest: self.label.to_string(),
            detail: detail.into(),
        }
    }

    fn unsafe_entry(&self, path: &Path, reason: &str) -> ImageError {
        ImageError::UnsafeEntry {
            digest: self.label.to_string(),
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }

    /// Maps a failed system call on `rel` to what it means for this layer.
    fn fs_error(&self, errno: Errno, action: &'static str, rel: &Path) -> ImageError {
        match errno {
            Errno::EXDEV => {
                self.unsafe_entry(rel, "passes through a symlink that leads out of the layer")
            }
            Errno::ELOOP => self.unsafe_entry(rel, "passes through a symlink loop"),
            Errno::ENOTDIR => self.corrupt(format!(
                "entry `{}` needs a directory where the layer has a file",
                rel.display()
            )),
            other => ImageError::Io {
                action,
                path: self.dest.join(rel),
                source: io::Error::from(other),
            },
        }
    }

    pub(crate) fn extract<R: Read>(
        &mut self,
        archive: &mut tar::Archive<R>,
    ) -> Result<(), ImageError> {
        let entries = archive
            .entries()
            .map_err(|e| self.corrupt(format!("not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| self.corrupt(format!("unreadable tar entry: {e}")))?;
            let raw_path = PathBuf::from(OsStr::from_bytes(&entry.path_bytes()));
            let rel =
                normalize(&raw_path).map_err(|reason| self.unsafe_entry(&raw_path, reason))?;
            self.entry(&mut entry, &rel)
                .map_err(|error| self.name_entry(error, &rel))?;
        }
        Ok(())
    }

    /// Writes one entry at `rel`.
    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: &Path,
    ) -> Result<(), ImageError> {
        let header = entry.header();
        let meta = DirMeta {
            mode: header.mode().unwrap_or(0o755) & 0o7777,
            uid: header.uid().unwrap_or(0),
            gid: header.gid().unwrap_or(0),
            mtime: header.mtime().map_or(0, |t| i64::try_from(t).unwrap_or(0)),
        };
        let kind = header.entry_type();
        let name = rel.file_name().map(OsStr::to_os_string);
        let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        let Some(name) = name else {
            // The root itself (`./`): only its metadata matters.
            if kind.is_dir() {
                self.dirs.insert(PathBuf::new(), meta);
            }
            return Ok(());
        };
        let name_bytes = name.as_bytes();
        if !self.whiteouts && name_bytes.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return Err(self.unsafe_entry(
                rel,
                "is a whiteout (a `.wh.` name), which only an image layer may hold",
            ));
        }
        if name_bytes == OPAQUE_MARKER.as_bytes() {
            self.opaque(&parent, meta)?;
            return Ok(());
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if !hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                self.whiteout(&parent, OsStr::from_bytes(hidden), rel, meta)?;
            }
            // Other `.wh..wh.` names are aufs bookkeeping with no meaning here.
            return Ok(());
        }
        match kind {
            tar::EntryType::Directory => self.directory(&parent, &name, rel, meta)?,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.file(&parent, &name, rel, meta, entry)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        self.corrupt(format!("symlink `{}` has no target", rel.display()))
                    })?
                    .into_owned();
                self.symlink(&parent, &name, rel, meta, OsStr::from_bytes(&target))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        self.corrupt(format!("hard link `{}` has no target", rel.display()))
                    })?
                    .into_owned();
                self.hard_link(&parent, &name, rel, Path::new(OsStr::from_bytes(&target)))?;
            }
            _ => self.stats.skipped += 1,
        }
        Ok(())
    }

    /// An entry refused because a path on its way is unsafe is reported under its own name,
    /// with the offending path beside it.
    fn name_entry(&self, error: ImageError, rel: &Path) -> ImageError {
        match error {
            ImageError::UnsafeEntry {
                digest,
                path,
                reason,
            } if Path::new(&path) != rel => ImageError::UnsafeEntry {
                digest,
                path: rel.display().to_string(),
                reason: format!("{reason} (at `{path}`)"),
            },
            other => other,
        }
    }

    /// Opens a directory beneath the root, following symlinks only while they stay inside.
    fn open_dir(&self, rel: &Path) -> nix::Result<OwnedFd> {
        let path: &Path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        loop {
            match openat2(self.root.as_fd(), path, how) {
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                other => return other,
            }
        }
    }

    /// The directory `rel`, created (with its missing parents) when the layer did not list it.
    fn parent_dir(&mut self, rel: &Path, mtime: i64) -> Result<OwnedFd, ImageError> {
        let cached = matches!(&self.cached_parent, Some((path, _)) if path == rel);
        if !cached {
            let fd = match self.open_dir(rel) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => self.create_dirs(rel, mtime)?,
                Err(e) => return Err(self.fs_error(e, "open a directory of", rel)),
            };
            self.cached_parent = Some((rel.to_path_buf(), fd));
        }
        match &self.cached_parent {
            Some((_, fd)) => fd
                .try_clone()
                .map_err(ImageError::io("open a directory of", self.dest.join(rel))),
            None => Err(self.corrupt("internal: no parent directory")),
        }
    }

    fn create_dirs(&mut self, rel: &Path, mtime: i64) -> Result<OwnedFd, ImageError> {
        let mut current = self
            .open_dir(Path::new(""))
            .map_err(|e| self.fs_error(e, "open", Path::new("")))?;
        let mut prefix = PathBuf::new();
        for component in rel.components() {
            prefix.push(component);
            match self.open_dir(&prefix) {
                Ok(fd) => current = fd,
                Err(Errno::ENOENT) => {
                    match mkdirat(current.as_fd(), component.as_os_str(), Mode::S_IRWXU) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(self.fs_error(e, "create directory", &prefix)),
                    }
                    self.dirs.entry(prefix.clone()).or_insert(DirMeta {
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                        mtime,
                    });
                    current = self
                        .open_dir(&prefix)
                        .map_err(|e| self.fs_error(e, "open", &prefix))?;
                }
                Err(e) => return Err(self.fs_error(e, "open", &prefix)),
            }
        }
        Ok(current)
    }

    /// Makes room for a new entry `name` in `parent`: removes what is there, except a
    /// directory when `keep_dir` (a directory entry over a directory updates it). Returns
    /// whether a directory was kept.
    fn clear(
        &mut self,
        parent: &Path,
        name: &OsStr,
        rel: &Path,
        keep_dir: bool,
    ) -> Result<bool, ImageError> {
        let dir = self.parent_dir(parent, 0)?;
        let existing =
            match nix::sys::stat::fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                Err(Errno::ENOENT) => return Ok(false),
                Err(e) => return Err(self.fs_error(e, "inspect", rel)),
            };
        let is_dir = SFlag::from_bits_truncate(existing.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        if is_dir && keep_dir {
            return Ok(true);
        }
        remove_at(dir.as_fd(), name).map_err(|e| self.fs_error(e, "replace", rel))?;
        if is_dir {
            self.dirs.retain(|path, _| !path.starts_with(rel));
        }
        // Anything cached may have lived beneath what was removed.
        self.cached_parent = None;
        Ok(false)
    }

    fn directory(
        &mut self,
        parent: &Path,
        name: &OsStr,
        rel: &Path,
        meta: DirMeta,
    ) -> Result<(), ImageError> {
        if !self.clear(parent, name, rel, true)? {
            let dir = self.parent_dir(parent, meta.mtime)?;
            match mkdirat(dir.as_fd(), name, Mode::S_IRWXU) {
                Ok(()) => {}
                Err(e) => return Err(self.fs_error(e, "create directory", rel)),
            }
        }
        self.dirs.insert(rel.to_path_buf(), meta);
        self.stats.directories += 1;
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        parent: &Path,
        name: &OsStr,
        rel: &Path,
        meta: DirMeta,
        content: &mut R,
    ) -> Result<(), ImageError> {
        self.clear(parent, name, rel, false)?;
        let dir = self.parent_dir(parent, meta.mtime)?;
        let fd = openat(
            dir.as_fd(),
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .map_err(|e| self.fs_error(e, "create file", rel))?;
        let mut file = File::from(fd);
        let mut buffer = vec![0u8; 128 * 1024];
        loop {
            let n = match content.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(self.corrupt(format!("reading `{}`: {e}", rel.display())));
                }
            };
            file.write_all(&buffer[..n])
                .map_err(ImageError::io("write layer file", self.dest.join(rel)))?;
            self.stats.file_bytes += n as u64;
        }
        self.set_owner_mode_time(file.as_fd(), rel, meta)?;
        self.stats.files += 1;
        Ok(())
    }

    /// Owner first: chown clears setuid and setgid, which the mode then restores.
    fn set_owner_mode_time(
        &self,
        fd: BorrowedFd<'_>,
        rel: &Path,
        meta: DirMeta,
    ) -> Result<(), ImageError> {
        if let (Some(uid), Some(gid)) = (self.owner.map(meta.uid), self.owner.map(meta.gid)) {
            fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                .map_err(|e| self.fs_error(e, "change the owner of", rel))?;
        }
        fchmod(fd, Mode::from_bits_truncate(meta.mode))
            .map_err(|e| self.fs_error(e, "change the mode of", rel))?;
        let time = TimeSpec::new(meta.mtime, 0);
        futimens(fd, &time, &time).map_err(|e| self.fs_error(e, "set the time of", rel))?;
        Ok(())
    }

    fn symlink(
        &mut self,
        parent: &Path,
        name: &OsStr,
        rel: &Path,
        meta: DirMeta,
        target: &OsStr,
    ) -> Result<(), ImageError> {
        self.clear(parent, name, rel, false)?;
        let owner = self.owner;
        let dir = self.parent_dir(parent, meta.mtime)?;
        let dir = dir.as_fd();
        let result = symlinkat(target, dir, name).and_then(|()| {
            if let (Some(uid), Some(gid)) = (owner.map(meta.uid), owner.map(meta.gid)) {
                fchownat(
                    dir,
                    name,
                    Some(Uid::from_raw(uid)),
                    Some(Gid::from_raw(gid)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )?;
            }
            let time = TimeSpec::new(meta.mtime, 0);
            utimensat(dir, name, &time, &time, UtimensatFlags::NoFollowSymlink)
        });
        result.map_err(|e| self.fs_error(e, "create symlink", rel))?;
        self.stats.symlinks += 1;
        Ok(())
    }

    fn hard_link(
        &mut self,
        parent: &Path,
        name: &OsStr,
        rel: &Path,
        target: &Path,
    ) -> Result<(), ImageError> {
        let target_rel = normalize(target).map_err(|reason| {
            self.unsafe_entry(
                rel,
                &format!(
                    "is a hard link whose target `{}` {reason}",
                    target.display()
                ),
            )
        })?;
        let (Some(target_name), target_parent) = (
            target_rel.file_name().map(OsStr::to_os_string),
            target_rel
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        ) else {
            return Err(self.unsafe_entry(rel, "is a hard link to the layer's root"));
        };
        if target_rel == rel {
            return Ok(());
        }
        let target_dir = match self.open_dir(&target_parent) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                return Err(self.corrupt(format!(
                    "hard link `{}` points at `{}`, which the layer does not contain",
                    rel.display(),
                    target.display()
                )));
            }
            Err(Errno::EXDEV) => {
                return Err(self.unsafe_entry(
                    rel,
                    &format!(
                        "is a hard link whose target `{}` passes through a symlink that leads out of the layer",
                        target.display()
                    ),
                ));
            }
            Err(e) => return Err(self.fs_error(e, "open the hard link target of", rel)),
        };
        if !exists_at(target_dir.as_fd(), &target_name)
            .map_err(|e| self.fs_error(e, "inspect", &target_rel))?
        {
            return Err(self.corrupt(format!(
                "hard link `{}` points at `{}`, which the layer does not contain",
                rel.display(),
                target.display()
            )));
        }
        self.clear(parent, name, rel, false)?;
        let dir = self.parent_dir(parent, 0)?;
        // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink, never what it names.
        linkat(
            target_dir.as_fd(),
            target_name.as_os_str(),
            dir.as_fd(),
            name,
            AtFlags::empty(),
        )
        .map_err(|e| self.fs_error(e, "create hard link", rel))?;
        self.stats.hard_links += 1;
        Ok(())
    }

    fn whiteout(
        &mut self,
        parent: &Path,
        hidden: &OsStr,
        rel: &Path,
        meta: DirMeta,
    ) -> Result<(), ImageError> {
        if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.as_bytes().contains(&b'/')
        {
            return Err(self.corrupt(format!("whiteout `{}` names nothing", rel.display())));
        }
        let target = parent.join(hidden);
        self.clear(parent, hidden, &target, false)?;
        let dir = self.parent_dir(parent, meta.mtime)?;
        mknodat(dir.as_fd(), hidden, SFlag::S_IFCHR, Mode::empty(), nix::sys::stat::makedev(0, 0))
            .map_err(|e| match e {
                Errno::EPERM => ImageError::Io {
                    action: "create an overlay whiteout (needs Linux 5.8 or later when unprivileged) for",
                    path: self.dest.join(&target),
                    source: io::Error::from(e),
                },
                other => self.fs_error(other, "create whiteout", &target),
            })?;
        self.stats.whiteouts += 1;
        Ok(())
    }

    fn opaque(&mut self, dir_rel: &Path, meta: DirMeta) -> Result<(), ImageError> {
        self.parent_dir(dir_rel, meta.mtime)?;
        let dir = self
            .open_dir(dir_rel)
            .map_err(|e| self.fs_error(e, "open", dir_rel))?;
        set_xattr(dir.as_fd(), c"user.overlay.opaque", b"y")
            .map_err(|e| self.fs_error(e, "mark opaque", dir_rel))?;
        if self.as_root {
            set_xattr(dir.as_fd(), c"trusted.overlay.opaque", b"y")
                .map_err(|e| self.fs_error(e, "mark opaque", dir_rel))?;
        }
        self.stats.opaque_directories += 1;
        Ok(())
    }

    /// Finishes the directories and returns what was unpacked.
    pub(crate) fn finish(mut self) -> Result<Unpacked, ImageError> {
        self.finish_directories()?;
        Ok(self.stats)
    }

    /// Gives every directory its owner, mode and time, deepest first (a parent whose mode
    /// forbids entering it would hide its children otherwise).
    fn finish_directories(&mut self) -> Result<(), ImageError> {
        self.cached_parent = None;
        let mut dirs: Vec<(PathBuf, DirMeta)> = self.dirs.drain().collect();
        dirs.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
        let strict = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        // The root gets the usual 0755 when the layer does not say otherwise.
        if !dirs.iter().any(|(path, _)| path.as_os_str().is_empty()) {
            dirs.push((
                PathBuf::new(),
                DirMeta {
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                },
            ));
        }
        for (rel, meta) in dirs {
            let path: &Path = if rel.as_os_str().is_empty() {
                Path::new(".")
            } else {
                &rel
            };
            let fd = match openat2(self.root.as_fd(), path, strict) {
                Ok(fd) => fd,
                // Replaced by a later entry of another kind (a symlink is not followed at the
                // end of the path): nothing to finish.
                Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => continue,
                Err(e) => return Err(self.fs_error(e, "finish directory", &rel)),
            };
            self.set_owner_mode_time(fd.as_fd(), &rel, meta)?;
        }
        Ok(())
    }
}

/// Sets an extended attribute on an open file.
fn set_xattr(fd: BorrowedFd<'_>, name: &std::ffi::CStr, value: &[u8]) -> nix::Result<()> {
    // SAFETY: the descriptor is open for the duration of the call, `name` is NUL-terminated
    // and `value` is a valid buffer of the given length.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(rc).map(drop)
}
