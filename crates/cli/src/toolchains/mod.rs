//! `[sandbox]` of `config.toml`: the host's toolchains a sandbox may see.
//!
//! The sandbox shows only the host's system directories; a toolchain installed elsewhere (rustup
//! under `~/.rustup`, Go under `/opt/go`) is invisible unless the installation's owner binds it.
//! This is host configuration only: a repository's `.nightshift.toml` never reaches it. Because a
//! bind shows everything under it, each one is checked before any sandbox starts: it must exist,
//! and it may not be, contain, or sit inside a credential store or nightshift's own home; the
//! places the sandbox builds itself (`/`, `/tmp`, `/proc`, ...) are refused too.

mod error;
pub mod hints;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use error::{BindError, Key, Relation};

/// The sandbox user's HOME: writable, so a bound toolchain's caches go there.
pub const SANDBOX_HOME: &str = "/home/agent";

/// Credential stores under the host user's HOME that no bind may show.
const CREDENTIALS: &[&str] = &[
    ".ssh",
    ".aws",
    ".netrc",
    ".git-credentials",
    ".docker/config.json",
    ".config/gh",
    ".npmrc",
    ".pypirc",
    ".cargo/credentials",
    ".cargo/credentials.toml",
    ".gnupg",
    ".kube",
    ".config/gcloud",
];

/// Never bound themselves: the sandbox builds its own root and scratch, and a whole home shows
/// every secret in it.
const REFUSED_EXACTLY: &[&str] = &["/", "/home", "/root"];
/// Never bound, nor anything under them: kernel interfaces, devices, sockets, and the sandbox's
/// own /tmp (a tmpfs that would hide a bind there).
const REFUSED_TREES: &[&str] = &["/proc", "/sys", "/dev", "/run", "/var/run", "/tmp"];

/// The host's directories every sandbox shows read-only (the namespaced sandbox's system binds).
pub const SYSTEM_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/etc"];

/// `[sandbox]` as written in `config.toml`.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSettings {
    /// Host paths bound read-only at the same path inside; `~` is the host user's HOME.
    #[serde(default)]
    pub binds: Vec<String>,
    /// Directories put before `PATH` inside, first first.
    #[serde(default)]
    pub path: Vec<String>,
}

/// Where the checks look: passed in, never read from the process environment here.
#[derive(Debug, Clone)]
pub struct HostPaths {
    /// The host user's HOME, which `~` stands for and the credential stores live under.
    pub home: Option<PathBuf>,
    /// NIGHTSHIFT_HOME: the secret key, the database, every task's files.
    pub nightshift_home: PathBuf,
    /// The settings file itself (it may hold provider keys).
    pub config_file: PathBuf,
}

/// `[sandbox]` checked, and what the sandbox gets from it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HostToolchains {
    /// Each bind, canonical (symlinks resolved): what was checked, and what the setup cache
    /// fingerprints.
    pub binds: Vec<PathBuf>,
    /// What the sandbox binds: `binds`, and each written path that leads to one through a
    /// symbolic link, so that the path as written works inside too.
    pub mounts: Vec<PathBuf>,
    /// `path`, canonical.
    pub path: Vec<PathBuf>,
    /// Variables that make the bound toolchains work (`RUSTUP_HOME`, `CARGO_HOME`, `GOROOT`...).
    pub env: Vec<(String, String)>,
}

impl SandboxSettings {
    /// Checks every entry and works out the toolchains' variables.
    pub fn resolve(&self, host: &HostPaths) -> Result<HostToolchains, BindError> {
        let protected = protected_paths(host);
        let mut toolchains = HostToolchains::default();
        for entry in &self.binds {
            let (written, canonical) = locate(Key::Binds, entry, host.home.as_deref())?;
            check_bind(entry, &canonical, &protected)?;
            if !toolchains.binds.contains(&canonical) {
                toolchains.binds.push(canonical.clone());
                toolchains.mounts.push(canonical.clone());
            }
            if written != canonical && !toolchains.mounts.contains(&written) {
                toolchains.mounts.push(written);
            }
        }
        for entry in &self.path {
            let (_, canonical) = locate(Key::Path, entry, host.home.as_deref())?;
            if !visible(&canonical, &toolchains.binds) {
                return Err(BindError::Unbound {
                    entry: entry.clone(),
                    path: canonical,
                });
            }
            if !toolchains.path.contains(&canonical) {
                toolchains.path.push(canonical);
            }
        }
        toolchains.env = toolchain_env(&toolchains.binds);
        Ok(toolchains)
    }
}

/// Checks one bind the way [`SandboxSettings::resolve`] does; for suggestions.
pub fn check_one_bind(entry: &str, host: &HostPaths) -> Result<PathBuf, BindError> {
    let (_, canonical) = locate(Key::Binds, entry, host.home.as_deref())?;
    check_bind(entry, &canonical, &protected_paths(host))?;
    Ok(canonical)
}

/// `entry` with `~` expanded, and its canonical form; it must be absolute and exist.
fn locate(key: Key, entry: &str, home: Option<&Path>) -> Result<(PathBuf, PathBuf), BindError> {
    let written = expand(key, entry, home)?;
    let canonical = std::fs::canonicalize(&written).map_err(|err| BindError::Missing {
        key,
        entry: entry.to_string(),
        path: written.clone(),
        reason: if err.kind() == std::io::ErrorKind::NotFound {
            "does not exist".into()
        } else {
            format!("cannot be resolved: {err}")
        },
    })?;
    Ok((written, canonical))
}

/// `~` and `~/...` as the host user's HOME; anything else must be absolute already.
pub fn expand(key: Key, entry: &str, home: Option<&Path>) -> Result<PathBuf, BindError> {
    let rest = match entry.strip_prefix('~') {
        Some("") => Some(""),
        Some(rest) if rest.starts_with('/') => Some(rest.trim_start_matches('/')),
        _ => None,
    };
    let path = match rest {
        Some(rest) => {
            let Some(home) = home else {
                return Err(BindError::NoHome {
                    key,
                    entry: entry.to_string(),
                });
            };
            if rest.is_empty() {
                home.to_path_buf()
            } else {
                home.join(rest)
            }
        }
        None => PathBuf::from(entry),
    };
    if !path.is_absolute() {
        return Err(BindError::Relative {
            key,
            entry: entry.to_string(),
        });
    }
    Ok(path)
}

/// A path no bind may show, and what it holds.
struct Protected {
    /// As reached from the host user's HOME (or as configured).
    written: PathBuf,
    /// Symlinks resolved, when it exists.
    canonical: Option<PathBuf>,
    holds: &'static str,
}

fn protected_paths(host: &HostPaths) -> Vec<Protected> {
    let mut found = Vec::new();
    let mut add = |path: PathBuf, holds: &'static str| {
        // Only what exists can be shown; a bind inside something missing cannot exist either.
        if std::fs::symlink_metadata(&path).is_err() {
            return;
        }
        let canonical = std::fs::canonicalize(&path).ok();
        found.push(Protected {
            written: path,
            canonical,
            holds,
        });
    };
    if let Some(home) = &host.home {
        let home = std::fs::canonicalize(home).unwrap_or_else(|_| home.clone());
        for credential in CREDENTIALS {
            add(home.join(credential), "credentials");
        }
    }
    add(
        host.nightshift_home.clone(),
        "nightshift's secret key, database and every task's files",
    );
    add(
        host.config_file.clone(),
        "nightshift's settings (provider keys, among others)",
    );
    found
}

fn check_bind(entry: &str, bind: &Path, protected: &[Protected]) -> Result<(), BindError> {
    let system = |why: &'static str| BindError::System {
        entry: entry.to_string(),
        path: bind.to_path_buf(),
        why,
    };
    if REFUSED_EXACTLY
        .iter()
        .any(|refused| bind == Path::new(refused))
    {
        return Err(system(
            "it would show the whole host or every user's home, secrets included",
        ));
    }
    if bind.starts_with("/tmp") {
        return Err(system(
            "the sandbox has its own /tmp, a scratch tmpfs that would hide a bind there",
        ));
    }
    if REFUSED_TREES
        .iter()
        .any(|refused| bind.starts_with(refused))
    {
        return Err(system(
            "the sandbox makes its own /proc, /sys, /dev and /run; the host's hold kernel \
             interfaces, devices and sockets",
        ));
    }
    match std::fs::metadata(bind) {
        Ok(meta) if meta.is_dir() || meta.is_file() => {}
        _ => {
            return Err(BindError::NotADirectory {
                entry: entry.to_string(),
                path: bind.to_path_buf(),
            });
        }
    }
    for guarded in protected {
        let places = std::iter::once(&guarded.written).chain(guarded.canonical.as_ref());
        for place in places {
            let relation = if place == bind {
                Relation::Is
            } else if place.starts_with(bind) {
                Relation::Contains
            } else if bind.starts_with(place) {
                Relation::Inside
            } else {
                continue;
            };
            let narrower = match relation {
                Relation::Contains => narrower_binds(bind, protected),
                Relation::Is | Relation::Inside => Vec::new(),
            };
            return Err(BindError::Protected {
                entry: entry.to_string(),
                path: bind.to_path_buf(),
                protected: place.clone(),
                holds: guarded.holds,
                relation,
                narrower,
            });
        }
    }
    Ok(())
}

/// Directories right under `bind` that hold nothing protected, `bin` first: what to bind
/// instead of `bind`.
fn narrower_binds(bind: &Path, protected: &[Protected]) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(bind) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .map(|entry| entry.path())
        .filter(|dir| {
            !protected.iter().any(|guarded| {
                std::iter::once(&guarded.written)
                    .chain(guarded.canonical.as_ref())
                    .any(|place| place.starts_with(dir) || dir.starts_with(place))
            })
        })
        .collect();
    dirs.sort_by_key(|dir| (!dir.ends_with("bin"), dir.clone()));
    dirs.truncate(3);
    dirs
}

/// Whether the sandbox shows `path`: under a system directory or a bind.
pub fn visible(path: &Path, binds: &[PathBuf]) -> bool {
    SYSTEM_DIRS.iter().any(|dir| path.starts_with(dir))
        || binds.iter().any(|bind| path.starts_with(bind))
}

/// The variables that make bound toolchains work inside with their caches in the sandbox's
/// writable HOME: rustup proxies find their toolchains through `RUSTUP_HOME`; cargo keeps its
/// registry in `CARGO_HOME` (it finds its binaries through `PATH`); Go finds its standard library
/// through `GOROOT` and keeps modules in `GOPATH`.
fn toolchain_env(binds: &[PathBuf]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |key: &str, value: String| {
        if !env.iter().any(|(existing, _)| existing == key) {
            env.push((key.to_string(), value));
        }
    };
    for bind in binds {
        if nightshift_env::cache::is_rustup_home(bind) {
            set("RUSTUP_HOME", bind.display().to_string());
        }
        if bind.join("cargo").is_file() || bind.join("bin/cargo").is_file() {
            set("CARGO_HOME", format!("{SANDBOX_HOME}/.cargo"));
        }
        if is_go_root(bind) {
            set("GOROOT", bind.display().to_string());
            set("GOPATH", format!("{SANDBOX_HOME}/go"));
        }
    }
    env
}

/// A Go installation's root: `bin/go` and `src/runtime`.
pub fn is_go_root(path: &Path) -> bool {
    path.join("bin/go").is_file() && path.join("src/runtime").is_dir()
}

/// `path` with the host user's HOME written as `~`, as config.toml would say it.
pub fn tilde(path: &Path, home: Option<&Path>) -> String {
    if let Some(home) = home {
        let homes = [Some(home.to_path_buf()), std::fs::canonicalize(home).ok()];
        for home in homes.iter().flatten() {
            if let Ok(rest) = path.strip_prefix(home)
                && home != Path::new("/")
            {
                return if rest.as_os_str().is_empty() {
                    "~".into()
                } else {
                    format!("~/{}", rest.display())
                };
            }
        }
    }
    path.display().to_string()
}
