//! Host side of a writable system: what a session whose commands run as root may see of the
//! host's system directories.
//!
//! Such a session maps a whole range of ids, and the host's directories are idmapped into it so
//! that their owners exist inside (that is what lets a package manager change them: overlayfs
//! copies up only files whose owner the namespace maps). It also means that root inside could
//! read every file of them that the host keeps from other users: `/etc/shadow`, private keys,
//! a database's files. Before the session starts, its upper directories are seeded so that
//! none of that shows: password hashes are replaced, everything else that other users may not
//! read is hidden (a whiteout, or an empty opaque directory), and of `/var` only what package
//! managers need is shown at all. The seeds are part of what the session keeps, so later
//! sessions stacking its layer see the same.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The parts of `/var` a writable system shows: package managers' state and caches. Everything
/// else under `/var` is an empty directory inside (logs, spools, mail, service data, `/var/tmp`).
const VAR_SHOWN: &[&str] = &[
    "lib/dpkg",
    "lib/apt",
    "lib/ucf",
    "lib/misc",
    "lib/pam",
    "lib/sgml-base",
    "lib/xml-core",
    "lib/python",
    "cache/debconf",
    "cache/apt",
    "cache/ldconfig",
];

/// Files whose content is replaced rather than hidden: the accounts stay (package scripts add
/// users and groups), the password hashes do not.
const SANITIZED: &[(&str, usize)] = &[("etc/shadow", 1), ("etc/gshadow", 1)];

/// Names under /etc the account tools write while they change shadow files, hidden whether or
/// not they exist when the session starts: the lower is the host's live /etc.
const ALWAYS_HIDDEN: &[&str] = &[
    "nshadow",
    "ngshadow",
    "shadow-",
    "gshadow-",
    "shadow+",
    "gshadow+",
    "npasswd",
    "ngroup",
    ".pwd.lock",
];

/// How many entries a seed walk looks at before it gives up (a host directory that large is
/// not a system directory).
const MAX_ENTRIES: usize = 2_000_000;

/// Seeds `upper`, the upper directory of the overlay of the host's `/<name>`, so that the
/// session sees nothing of it that other users of the host could not read. Entries of the
/// upper directory are owned as the idmapped lower's would be inside: host id `u` becomes
/// `host_id + u`, for `u` below `range`.
pub(crate) fn seed_upper(name: &str, upper: &Path, host_id: u32, range: u32) -> Result<(), String> {
    let host = Path::new("/").join(name);
    let owner = Owner { host_id, range };
    // The overlay's root shows the upper directory's mode and owner: the host directory's,
    // so that every user inside can reach what is below (a package's own user, apt's _apt).
    let meta = std::fs::symlink_metadata(&host).ok().filter(|m| m.is_dir());
    let (mode, uid, gid) = meta
        .as_ref()
        .map_or((0o755, 0, 0), |m| (m.mode() & 0o7777, m.uid(), m.gid()));
    std::os::unix::fs::lchown(upper, Some(owner.map(uid)), Some(owner.map(gid)))
        .map_err(|e| io("setting the owner of", upper, e))?;
    std::fs::set_permissions(upper, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io("setting the mode of", upper, e))?;
    let Some(meta) = meta else {
        return Ok(());
    };
    let mut seed = Seed {
        upper: upper.to_path_buf(),
        host: host.clone(),
        device: meta.dev(),
        owner,
        entries: 0,
    };
    if name == "var" {
        seed.var()
    } else {
        seed.walk(Path::new(""))?;
        if name == "etc" {
            for hidden in ALWAYS_HIDDEN {
                let relative = Path::new(hidden);
                if !seed.upper.join(relative).exists() {
                    let like = std::fs::symlink_metadata(&seed.host)
                        .map_err(|e| io("reading", &seed.host, e))?;
                    seed.hide(relative, &like)?;
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct Owner {
    host_id: u32,
    range: u32,
}

impl Owner {
    /// The host id a lower entry owned by `id` shows as, through the idmapped mount.
    fn map(self, id: u32) -> u32 {
        if id < self.range {
            self.host_id + id
        } else {
            self.host_id
        }
    }
}

struct Seed {
    upper: PathBuf,
    host: PathBuf,
    device: u64,
    owner: Owner,
    entries: usize,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

/// Whether other users of the host may not read `meta`'s file (or list and enter its
/// directory). Links are only text; everything that is neither file, directory nor link
/// (sockets, FIFOs, devices) is hidden.
fn hidden(meta: &std::fs::Metadata) -> bool {
    let mode = meta.mode();
    let kind = meta.file_type();
    if kind.is_symlink() {
        false
    } else if kind.is_dir() {
        mode & 0o005 != 0o005
    } else if kind.is_file() {
        mode & 0o004 == 0
    } else {
        true
    }
}

impl Seed {
    /// Looks at everything under `relative` (relative to the host directory).
    fn walk(&mut self, relative: &Path) -> Result<(), String> {
        let dir = self.host.join(relative);
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| io("listing (so as to hide what it holds)", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io("listing", &dir, e))?;
            self.entries += 1;
            if self.entries > MAX_ENTRIES {
                return Err(format!(
                    "{} has more than {MAX_ENTRIES} entries",
                    self.host.display()
                ));
            }
            let path = relative.join(entry.file_name());
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Gone since it was listed: nothing left to hide.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("reading", &self.host.join(&path), e)),
            };
            if let Some((_, field)) = SANITIZED
                .iter()
                .find(|(file, _)| self.host.join(&path) == Path::new("/").join(file))
            {
                self.sanitize(&path, &meta, *field)?;
            } else if hidden(&meta) {
                self.hide(&path, &meta)?;
            } else if meta.is_dir() && meta.dev() == self.device {
                self.walk(&path)?;
            }
        }
        Ok(())
    }

    /// `/var`: [`VAR_SHOWN`] as the host has it (less what is hidden), every other directory
    /// empty, every other file hidden.
    fn var(&mut self) -> Result<(), String> {
        self.show_only(Path::new(""), VAR_SHOWN)
    }

    fn show_only(&mut self, relative: &Path, shown: &[&str]) -> Result<(), String> {
        let dir = self.host.join(relative);
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| io("listing (so as to hide what it holds)", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io("listing", &dir, e))?;
            let path = relative.join(entry.file_name());
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Gone since it was listed: nothing left to hide.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("reading", &self.host.join(&path), e)),
            };
            let name = path.as_os_str().as_bytes();
            let exact = shown.iter().any(|s| s.as_bytes() == name);
            let prefix: Vec<&str> = shown
                .iter()
                .filter_map(|s| {
                    s.as_bytes()
                        .strip_prefix(name)
                        .filter(|rest| rest.first() == Some(&b'/'))
                        .map(|_| *s)
                })
                .collect();
            if meta.file_type().is_symlink() {
                continue;
            } else if hidden(&meta) {
                self.hide(&path, &meta)?;
            } else if exact {
                if meta.is_dir() && meta.dev() == self.device {
                    self.walk(&path)?;
                }
            } else if !prefix.is_empty() && meta.is_dir() {
                self.show_only(&path, &prefix)?;
            } else if meta.is_dir() {
                self.parents(&path)?;
                self.opaque_dir(&path, &meta)?;
            } else {
                self.hide(&path, &meta)?;
            }
        }
        Ok(())
    }

    /// Makes the directories above `relative` in the upper directory, as the lower has them
    /// (a directory made here shadows the lower's mode and owner).
    fn parents(&self, relative: &Path) -> Result<(), String> {
        let mut at = PathBuf::new();
        let Some(parent) = relative.parent() else {
            return Ok(());
        };
        for part in parent.components() {
            at.push(part);
            let upper = self.upper.join(&at);
            if upper.exists() {
                continue;
            }
            let lower = self.host.join(&at);
            let meta = std::fs::symlink_metadata(&lower).map_err(|e| io("reading", &lower, e))?;
            self.make_dir(&upper, &meta)?;
        }
        Ok(())
    }

    fn make_dir(&self, upper: &Path, like: &std::fs::Metadata) -> Result<(), String> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(upper)
            .map_err(|e| io("creating", upper, e))?;
        self.own(upper, like)?;
        std::fs::set_permissions(upper, std::fs::Permissions::from_mode(like.mode() & 0o7777))
            .map_err(|e| io("setting the mode of", upper, e))
    }

    fn own(&self, upper: &Path, like: &std::fs::Metadata) -> Result<(), String> {
        std::os::unix::fs::lchown(
            upper,
            Some(self.owner.map(like.uid())),
            Some(self.owner.map(like.gid())),
        )
        .map_err(|e| io("setting the owner of", upper, e))
    }

    /// An overlayfs whiteout: a character device 0:0, which hides the lower entry.
    fn hide(&self, relative: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
        self.parents(relative)?;
        let upper = self.upper.join(relative);
        nix::sys::stat::mknod(
            &upper,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o000),
            0,
        )
        .map_err(|e| format!("hiding {}: {e}", upper.display()))?;
        self.own(&upper, meta)
    }

    /// An empty directory that hides the lower's contents.
    fn opaque_dir(&self, relative: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
        let upper = self.upper.join(relative);
        self.make_dir(&upper, meta)?;
        xattr_set(&upper, "user.overlay.opaque", b"y")
    }

    /// A copy of a colon-separated accounts file with `field` of every line replaced by `*`.
    fn sanitize(
        &self,
        relative: &Path,
        meta: &std::fs::Metadata,
        field: usize,
    ) -> Result<(), String> {
        let lower = self.host.join(relative);
        let text = std::fs::read(&lower).map_err(|e| io("reading", &lower, e))?;
        let mut out = Vec::with_capacity(text.len());
        for line in text.split(|b| *b == b'\n').filter(|line| !line.is_empty()) {
            let fields: Vec<&[u8]> = line.split(|b| *b == b':').collect();
            for (i, value) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(b':');
                }
                out.extend_from_slice(if i == field { b"*" } else { value });
            }
            out.push(b'\n');
        }
        self.parents(relative)?;
        let upper = self.upper.join(relative);
        std::fs::write(&upper, &out).map_err(|e| io("writing", &upper, e))?;
        self.own(&upper, meta)?;
        std::fs::set_permissions(
            &upper,
            std::fs::Permissions::from_mode(meta.mode() & 0o7777),
        )
        .map_err(|e| io("setting the mode of", &upper, e))
    }
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) -> Result<(), String> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} has a NUL byte", path.display()))?;
    let c_name = std::ffi::CString::new(OsStr::new(name).as_bytes())
        .map_err(|_| format!("{name} has a NUL byte"))?;
    // SAFETY: both strings are NUL-terminated and live across the call; value is a valid slice.
    let ret = unsafe {
        libc::lsetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if ret != 0 {
        return Err(io(
            &format!("setting {name} on"),
            path,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
