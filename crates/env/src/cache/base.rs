//! What a setup layer is built on, as cache inputs: the sandbox backend and the host's OS
//! release, the host's installed system packages, and each host directory (toolchain) the
//! sandbox binds. Every one is fingerprinted cheaply, since it is computed for every task.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// What a setup layer is built on: the system the sandbox shows read-only under every layer, and
/// the host directories (toolchains) it binds. Each bind is its own cache input, so a miss
/// caused by a toolchain upgrade names the toolchain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// The sandbox backend and the host's OS release.
    pub system: String,
    /// The host's installed system packages (see [`packages_fingerprint`]), when the host has a
    /// package database nightshift reads: a layer built over the host's `/usr` is stale once
    /// `apt upgrade` changed what lies under it, though the OS release stayed the same.
    pub packages: Option<String>,
    /// Each bound host path with its [`bind_fingerprint`].
    pub binds: Vec<(PathBuf, String)>,
}

impl Base {
    /// A base with no binds and no package database.
    pub fn system(system: impl Into<String>) -> Base {
        Base {
            system: system.into(),
            packages: None,
            binds: Vec::new(),
        }
    }

    /// The same base over a host whose packages have the fingerprint `packages`.
    pub fn with_packages(self, packages: impl Into<String>) -> Base {
        Base {
            packages: Some(packages.into()),
            ..self
        }
    }
}

/// The base of a sandbox whose root is an image: the backend alone. The image is an input of
/// its own (see [`super::CacheKey::on_image`]), and nothing of the host shows through it, its
/// system, its packages and its toolchains included.
pub fn image_base_identity(backend: &str) -> Base {
    Base::system(format!("{backend}\nimage"))
}

/// The base of the sandbox backend `backend` with the host directories `binds` bound read-only.
pub fn base_identity(backend: &str, binds: &[PathBuf]) -> Base {
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    Base {
        system: format!("{backend}\n{release}"),
        packages: packages_fingerprint(PACKAGE_DATABASES),
        binds: binds
            .iter()
            .map(|bind| (bind.clone(), bind_fingerprint(bind)))
            .collect(),
    }
}

/// The package databases read for [`Base::packages`]: each is one text file that the package
/// manager rewrites whenever a package is installed, upgraded or removed, and hashing it costs
/// a few milliseconds. (dpkg's for Debian and Ubuntu, apk's for Alpine; rpm's and pacman's are
/// a database or a directory tree, not cheap to read for every task, and are left out.)
pub const PACKAGE_DATABASES: &[&str] = &["/var/lib/dpkg/status", "/lib/apk/db/installed"];

/// The most bytes of one package database hashed; a larger one's input is its size.
const MAX_DATABASE_BYTES: u64 = 256 << 20;

/// A hash of the package databases among `databases` that exist (each named, so a database
/// that appears or goes away changes it too); `None` when none does.
pub fn packages_fingerprint(databases: &[&str]) -> Option<String> {
    let mut hasher = Sha256::new();
    let mut found = false;
    for database in databases {
        let Ok(file) = std::fs::File::open(database) else {
            continue;
        };
        found = true;
        hasher.update(database.as_bytes());
        hasher.update([0]);
        match file.metadata() {
            Ok(meta) if meta.is_file() && meta.len() <= MAX_DATABASE_BYTES => {}
            Ok(meta) => {
                hasher.update(format!("not hashed: {} bytes", meta.len()).as_bytes());
                continue;
            }
            Err(err) => {
                hasher.update(format!("unreadable: {}", err.kind()).as_bytes());
                continue;
            }
        }
        let mut reader = file.take(MAX_DATABASE_BYTES);
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => hasher.update(&buffer[..n]),
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => {
                    hasher.update(format!("unreadable: {}", err.kind()).as_bytes());
                    break;
                }
            }
        }
        hasher.update([0]);
    }
    found.then(|| hex::encode(hasher.finalize()))
}

/// How many directory entries a fingerprint looks at, so a huge bind stays cheap.
const FINGERPRINT_ENTRIES: usize = 10_000;

/// A cheap identity of a bound host directory, never a full walk: for a rustup home, its
/// `settings.toml` and each installed toolchain's name and channel hash (`update-hashes/`, which
/// `rustup update` rewrites even when a toolchain keeps its name); for anything else, the names,
/// kinds, sizes and modification times of its top two levels.
pub fn bind_fingerprint(path: &Path) -> String {
    if is_rustup_home(path) {
        return rustup_fingerprint(path);
    }
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {}
        Ok(meta) => return format!("file {} {}", meta.len(), modified_nanos(&meta)),
        Err(err) => return format!("unreadable: {}", err.kind()),
    }
    let mut lines = Vec::new();
    let mut dirs = vec![(PathBuf::new(), 0)];
    let mut seen = 0;
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(path.join(&dir)) else {
            lines.push(format!("{} unreadable", dir.display()));
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > FINGERPRINT_ENTRIES {
                lines.push("…".into());
                break;
            }
            let relative = dir.join(entry.file_name());
            // The entry itself: a symlink is not followed.
            let Ok(meta) = entry.metadata() else {
                lines.push(format!("{} unreadable", relative.display()));
                continue;
            };
            let kind = match meta.file_type() {
                kind if kind.is_dir() => 'd',
                kind if kind.is_symlink() => 'l',
                _ => 'f',
            };
            lines.push(format!(
                "{kind} {} {} {}",
                relative.display(),
                meta.len(),
                modified_nanos(&meta)
            ));
            if kind == 'd' && depth == 0 {
                dirs.push((relative, depth + 1));
            }
        }
    }
    lines.sort();
    lines.join("\n")
}

fn modified_nanos(meta: &std::fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |since| since.as_nanos())
}

/// Whether `path` is a rustup home: `toolchains/` and `settings.toml`.
pub fn is_rustup_home(path: &Path) -> bool {
    path.join("toolchains").is_dir() && path.join("settings.toml").is_file()
}

fn rustup_fingerprint(home: &Path) -> String {
    let settings = std::fs::read_to_string(home.join("settings.toml")).unwrap_or_default();
    let mut toolchains: Vec<String> = std::fs::read_dir(home.join("toolchains"))
        .map(|entries| {
            entries
                .flatten()
                .take(FINGERPRINT_ENTRIES)
                .filter_map(|entry| entry.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    toolchains.sort();
    let mut lines = vec!["rustup".to_string(), settings];
    for name in toolchains {
        let hash =
            std::fs::read_to_string(home.join("update-hashes").join(&name)).unwrap_or_default();
        lines.push(format!("toolchain {name} {}", hash.trim()));
    }
    lines.join("\n")
}
