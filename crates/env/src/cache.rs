//! The setup cache: what a repository's setup script produced, kept as a layer keyed by
//! everything that can change it, so the next task with the same key starts from the layer
//! instead of running setup again.
//!
//! The key hashes the environment base (the backend and OS release, the host's installed system
//! packages, and each toolchain the host configuration binds, as its own input), the setup script, the workdir, the architecture, and
//! the contents of the repository's lockfiles and `cache_key` files. A miss says why: each
//! input that differs from the last layer built for the same repository, with its old and new
//! hash. Layers live under one directory, one per key (`<key>/layer`, `<key>/manifest.json`);
//! the least recently used are evicted when they outgrow the budget, and a lock per key makes
//! two tasks that need the same missing layer build it once.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use cap_std::fs::Dir;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::EnvConfig;
use crate::tree_files::{Links, TreeFileError, open_regular};

mod base;
mod removal;

pub use removal::remove_tree;

pub use base::{
    Base, PACKAGE_DATABASES, base_identity, bind_fingerprint, image_base_identity, is_rustup_home,
    packages_fingerprint,
};

/// Lockfiles that pin what setup installs, looked for in the repository root and the workdir.
const LOCKFILES: &[&str] = &[
    "Cargo.lock",
    "package-lock.json",
    "npm-shrinkwrap.json",
    "yarn.lock",
    "pnpm-lock.yaml",
    "bun.lockb",
    "poetry.lock",
    "Pipfile.lock",
    "uv.lock",
    "requirements.txt",
    "requirements-dev.txt",
    "go.sum",
    "Gemfile.lock",
    "composer.lock",
    "mix.lock",
    "flake.lock",
];

/// How a layer is laid out, as the sandbox reads it: `2` is `workspace/`, `home/` and
/// `system/<name>/` (setup runs as root, and HOME is kept); `1` was the workspace alone. A layer
/// of another layout is never used: the key differs, and the miss says `layout` changed.
const LAYOUT: &str = "2";

/// The cache input of the host's installed system packages.
const PACKAGES: &str = "packages";

/// What goes into a cache key, by name: `layout`, `base`, `packages` (the host's system
/// packages, where it has a package database), `bind:PATH`, `setup`, `workdir`, `arch`,
/// `file:PATH`, `repository`, and `image` (`REFERENCE@DIGEST`) for a task on an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    pub key: String,
    pub inputs: BTreeMap<String, String>,
}

impl CacheKey {
    /// The key of the setup of the working copy at `root` under `config`, on the environment
    /// base `base` (what the sandbox is built from: see [`base_identity`]).
    pub fn compute(root: &Path, config: &EnvConfig, base: &Base) -> CacheKey {
        let mut inputs = BTreeMap::new();
        inputs.insert("layout".to_string(), LAYOUT.to_string());
        inputs.insert("base".to_string(), digest(base.system.as_bytes()));
        if let Some(packages) = &base.packages {
            inputs.insert(PACKAGES.to_string(), digest(packages.as_bytes()));
        }
        for (path, fingerprint) in &base.binds {
            inputs.insert(
                format!("bind:{}", path.display()),
                digest(fingerprint.as_bytes()),
            );
        }
        let setup = config.environment.setup.as_deref().unwrap_or("");
        inputs.insert("setup".to_string(), digest(setup.as_bytes()));
        let workdir = config
            .environment
            .workdir
            .clone()
            .unwrap_or_else(|| PathBuf::from("."));
        inputs.insert("workdir".to_string(), workdir.display().to_string());
        inputs.insert("arch".to_string(), std::env::consts::ARCH.to_string());
        let tree = Dir::open_ambient_dir(root, cap_std::ambient_authority()).ok();
        let mut files: BTreeSet<PathBuf> = BTreeSet::new();
        // The workdir's own lockfiles too, when it is not the root ("." and "" are the root).
        let normalized: PathBuf = workdir
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect();
        let dirs = if normalized.as_os_str().is_empty() {
            vec![PathBuf::new()]
        } else {
            vec![PathBuf::new(), normalized]
        };
        for dir in dirs {
            for name in LOCKFILES {
                let path = dir.join(name);
                // Whatever stands there counts, link or FIFO; what it is decides the hash.
                let present = tree.as_ref().is_some_and(|tree| {
                    tree.symlink_metadata(&path)
                        .is_ok_and(|meta| !meta.is_dir())
                });
                if present {
                    files.insert(path);
                }
            }
        }
        let globs: Vec<_> = config
            .environment
            .cache_key
            .iter()
            .filter_map(|pattern| globset::Glob::new(pattern).ok())
            .map(|glob| glob.compile_matcher())
            .collect();
        if let (false, Some(tree)) = (globs.is_empty(), &tree) {
            let walked = walk_files(tree);
            for entry in walked.files {
                if globs.iter().any(|glob| glob.is_match(&entry)) {
                    files.insert(entry);
                }
            }
            if walked.cut {
                inputs.insert(
                    "walk".to_string(),
                    format!("cut at {MAX_WALK_ENTRIES} entries"),
                );
            }
        }
        for file in files {
            inputs.insert(format!("file:{}", file.display()), file_hash(root, &file));
        }
        let canonical = serde_json::to_vec(&inputs).unwrap_or_default();
        CacheKey {
            key: digest(&canonical)[..32].to_string(),
            inputs,
        }
    }

    /// The same key for `repo`'s tasks only: a layer is what one repository's setup made, and
    /// another repository that writes the same setup script and lockfiles must not be able to
    /// build the layer this one's tasks then mount.
    pub fn for_repository(mut self, repo: &str) -> CacheKey {
        self.inputs
            .insert("repository".to_string(), digest(repo.as_bytes()));
        self.rehashed()
    }

    /// The same key for a setup on the image `reference`, which resolved to the manifest
    /// `digest`: a layer holds what setup changed over that image's files, and is used over no
    /// other (a tag that moved is a miss that says where it points now).
    pub fn on_image(mut self, reference: &str, digest: &str) -> CacheKey {
        self.inputs
            .insert("image".to_string(), format!("{reference}@{digest}"));
        self.rehashed()
    }

    /// A key of these inputs alone (a step built over an image: its parent's key, the step).
    pub fn of(inputs: BTreeMap<String, String>) -> CacheKey {
        CacheKey {
            key: String::new(),
            inputs,
        }
        .rehashed()
    }

    fn rehashed(mut self) -> CacheKey {
        let canonical = serde_json::to_vec(&self.inputs).unwrap_or_default();
        self.key = digest(&canonical)[..32].to_string();
        self
    }
}

/// The hash of a lockfile or `cache_key` file of the working copy, read as the repository
/// could not abuse it: inside the working copy, a regular file, streamed up to
/// [`MAX_HASHED_BYTES`]. Anything else is described instead, so it still decides the key.
fn file_hash(root: &Path, relative: &Path) -> String {
    let opened = match open_regular(root, relative, Links::FollowInside) {
        Ok(opened) => opened,
        Err(TreeFileError::Outside { .. }) => return "outside the working copy".into(),
        Err(TreeFileError::NotRegular { kind, .. }) => {
            return format!("not a regular file: {kind}");
        }
        Err(_) => return "unreadable".into(),
    };
    if opened.len > MAX_HASHED_BYTES {
        return format!("too large: {} bytes", opened.len);
    }
    let mut hasher = Sha256::new();
    let mut reader = opened.file.take(MAX_HASHED_BYTES + 1);
    let mut buffer = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                total += n as u64;
                hasher.update(&buffer[..n]);
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return "unreadable".into(),
        }
    }
    if total > MAX_HASHED_BYTES {
        return format!("too large: over {MAX_HASHED_BYTES} bytes");
    }
    hex::encode(hasher.finalize())
}

/// The most bytes of one lockfile or `cache_key` file hashed; a larger file's key input is its
/// size.
const MAX_HASHED_BYTES: u64 = 64 * 1024 * 1024;
/// The most directory entries the `cache_key` walk looks at.
const MAX_WALK_ENTRIES: usize = 100_000;

/// The regular files of a working copy, for `cache_key` globs.
struct Walked {
    /// Relative to the root, skipping `.git`.
    files: Vec<PathBuf>,
    /// Whether the walk stopped at [`MAX_WALK_ENTRIES`].
    cut: bool,
}

/// Files under `tree` (relative), skipping `.git`, for `cache_key` globs. Symbolic links are
/// neither listed nor followed, and every directory is opened through its parent's handle, so
/// the walk stays in the tree.
fn walk_files(tree: &Dir) -> Walked {
    let mut walked = Walked {
        files: Vec::new(),
        cut: false,
    };
    let Ok(top) = tree.try_clone() else {
        return walked;
    };
    let mut stack = vec![(top, PathBuf::new())];
    let mut seen = 0usize;
    while let Some((dir, relative)) = stack.pop() {
        let Ok(entries) = dir.entries() else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_WALK_ENTRIES {
                walked.cut = true;
                return walked;
            }
            let name = entry.file_name();
            let path = relative.join(&name);
            match entry.file_type() {
                Ok(kind) if kind.is_dir() && name != ".git" => {
                    if let Ok(child) = open_dir_nofollow(&dir, &name) {
                        stack.push((child, path));
                    }
                }
                Ok(kind) if kind.is_file() => walked.files.push(path),
                _ => {}
            }
        }
    }
    walked
}

/// The subdirectory `name` of `dir`, never through a symbolic link.
fn open_dir_nofollow(dir: &Dir, name: &std::ffi::OsStr) -> std::io::Result<Dir> {
    use cap_std::fs::OpenOptionsExt;
    let mut options = cap_std::fs::OpenOptions::new();
    options
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW);
    Ok(Dir::from_std_file(
        dir.open_with(name, &options)?.into_std(),
    ))
}

fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The answer of [`SetupCache::lookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The layer for this key, ready to mount.
    Hit { layer: PathBuf },
    /// No layer; why, input by input.
    Miss { reasons: Vec<String> },
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    key: String,
    inputs: BTreeMap<String, String>,
    created_at: String,
}

/// The directory of setup layers.
#[derive(Debug, Clone)]
pub struct SetupCache {
    root: PathBuf,
    budget_bytes: u64,
}

/// Held while a key's layer is looked up and, on a miss, built.
pub struct KeyLock {
    _file: File,
}

impl SetupCache {
    /// Layers under `root`, evicted beyond `budget_bytes`.
    pub fn new(root: impl Into<PathBuf>, budget_bytes: u64) -> SetupCache {
        SetupCache {
            root: root.into(),
            budget_bytes,
        }
    }

    /// Waits for and takes the build lock of `key` (blocking: call it off async threads).
    pub fn lock(&self, key: &CacheKey) -> std::io::Result<KeyLock> {
        self.make_private_root()?;
        let dir = self.root.join("locks");
        std::fs::create_dir_all(&dir)?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{}.lock", key.key)))?;
        file.lock()?;
        Ok(KeyLock { _file: file })
    }

    /// The layer for `key`, or why there is none, compared with the last layer built for the
    /// same repository (`repo` identifies it).
    pub fn lookup(&self, repo: &str, key: &CacheKey) -> Lookup {
        let layer = self.root.join(&key.key).join("layer");
        if layer.is_dir() {
            // Last use, for eviction.
            let _ = File::create(self.root.join(&key.key).join("last-used"));
            return Lookup::Hit { layer };
        }
        let previous = std::fs::read(self.index(repo))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Manifest>(&bytes).ok());
        let Some(previous) = previous else {
            return Lookup::Miss {
                reasons: vec!["no setup layer was built for this repository yet".into()],
            };
        };
        let mut reasons = Vec::new();
        for (name, new) in &key.inputs {
            match previous.inputs.get(name) {
                Some(old) if old == new => {}
                Some(old) if name == "image" => reasons.push(image_change(old, new)),
                Some(old) if name == PACKAGES => reasons.push(format!(
                    "the host's system packages changed (`{name}` {} -> {})",
                    short(old),
                    short(new)
                )),
                Some(old) => reasons.push(format!(
                    "`{name}` changed ({} -> {})",
                    short(old),
                    short(new)
                )),
                None if name == PACKAGES => reasons.push(format!(
                    "the host's system packages are part of the key now (`{name}` is new: {})",
                    short(new)
                )),
                None => reasons.push(format!("`{name}` is new ({})", short(new))),
            }
        }
        for name in previous
            .inputs
            .keys()
            .filter(|name| !key.inputs.contains_key(*name))
        {
            if name == PACKAGES {
                reasons.push(format!(
                    "the host's system packages changed (`{name}` is gone: no package database is read now)"
                ));
            } else {
                reasons.push(format!("`{name}` is gone"));
            }
        }
        if reasons.is_empty() {
            reasons.push("the layer built for these inputs was evicted".into());
        }
        Lookup::Miss { reasons }
    }

    /// The layer directory, readable by its owner only: a layer holds what a setup running as
    /// root left (setuid programs among them), which no other user of the host may run.
    fn make_private_root(&self) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&self.root)?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
    }

    /// Where a session should leave its changes for `key` before [`SetupCache::commit`]: on
    /// the cache's filesystem, so the commit is a rename. What an earlier process of the same
    /// id left there is discarded first, and so is what earlier discards could not remove.
    pub fn staging(&self, key: &CacheKey) -> std::io::Result<PathBuf> {
        self.make_private_root()?;
        self.sweep_discarded();
        let dir = self.root.join("staging");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}-{}", key.key, std::process::id()));
        self.discard(&path)?;
        Ok(path)
    }

    /// Where a session should leave a layer only one task uses (`name` says which), never
    /// committed, looked up or served to another: on the cache's filesystem, in its private
    /// directory. The task [`SetupCache::discard`]s it when it ends.
    pub fn unshared(&self, name: &str) -> std::io::Result<PathBuf> {
        self.make_private_root()?;
        self.sweep_discarded();
        let dir = self.root.join("unshared");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(name);
        self.discard(&path)?;
        Ok(path)
    }

    /// Keeps the changes at `staged` as the layer of `key` and returns its path. The
    /// repository's `.git` is never part of a layer: it belongs to each task's own base (a
    /// setup that deleted it left a whiteout there, which goes the same way). On an error the
    /// staged layer is left where it is, for the caller to discard.
    pub fn commit(&self, repo: &str, key: &CacheKey, staged: &Path) -> std::io::Result<PathBuf> {
        let git = staged.join("workspace").join(".git");
        removal::remove_tree(&git).map_err(|err| {
            std::io::Error::new(
                err.kind(),
                format!("removing the repository's .git from the layer: {err}"),
            )
        })?;
        let dir = self.root.join(&key.key);
        std::fs::create_dir_all(&dir)?;
        let layer = dir.join("layer");
        // The layer it replaces leaves before this one takes its place.
        self.discard(&layer)?;
        std::fs::rename(staged, &layer)?;
        let manifest = Manifest {
            key: key.key.clone(),
            inputs: key.inputs.clone(),
            created_at: unix_seconds(),
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("manifest.json"), &json)?;
        std::fs::create_dir_all(self.root.join("index"))?;
        std::fs::write(self.index(repo), &json)?;
        let _ = File::create(dir.join("last-used"));
        self.evict(&key.key);
        Ok(layer)
    }

    fn index(&self, repo: &str) -> PathBuf {
        self.root
            .join("index")
            .join(format!("{}.json", &digest(repo.as_bytes())[..16]))
    }

    /// Removes least recently used layers, never `keep`, until the rest fit the budget.
    fn evict(&self, keep: &str) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        let mut layers: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter(|entry| entry.path().join("layer").is_dir())
            .map(|entry| {
                let dir = entry.path();
                let used = std::fs::metadata(dir.join("last-used"))
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                (used, size_of(&dir.join("layer")), dir)
            })
            .collect();
        let mut total: u64 = layers.iter().map(|(_, size, _)| size).sum();
        layers.sort_by_key(|(used, _, _)| *used);
        for (_, size, dir) in layers {
            if total <= self.budget_bytes {
                break;
            }
            if dir.file_name().is_some_and(|name| name == keep) {
                continue;
            }
            // Out of its place at once, so that a removal that fails half way never leaves a
            // partial layer to be found.
            if self.discard(&dir).is_ok() || !dir.exists() {
                total = total.saturating_sub(size);
            }
        }
    }
}

/// Why a layer built on the image `old` (`REFERENCE@DIGEST`) does not serve `new`.
fn image_change(old: &str, new: &str) -> String {
    match (old.rsplit_once('@'), new.rsplit_once('@')) {
        (Some((old_ref, old_digest)), Some((new_ref, new_digest))) if old_ref == new_ref => {
            format!("`image`: {new_ref} now points at {new_digest} (it was {old_digest})")
        }
        _ => format!("`image` changed ({old} -> {new})"),
    }
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

fn unix_seconds() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs().to_string())
        .unwrap_or_default()
}

/// Bytes of the files under `path` (symlinks not followed).
fn size_of(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => stack.push(entry.path()),
                Ok(meta) => total += meta.len(),
                Err(_) => {}
            }
        }
    }
    total
}
