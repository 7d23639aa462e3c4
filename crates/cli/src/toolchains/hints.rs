//! Tools a repository's ecosystems need that this host has on its PATH but the sandbox does not
//! see, and the `[sandbox]` lines that would show them: what `nightshift doctor` and
//! `nightshift env check` print, so a task does not find out the hard way (an old `cargo` from
//! /usr/bin, or none at all).

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nightshift_env::config::Ecosystem;

use super::{HostPaths, HostToolchains, SandboxSettings, check_one_bind, tilde, visible};

/// The namespaced sandbox's own `PATH`, after `[sandbox] path` (its sessions' base environment).
const SANDBOX_PATH: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Every tool looked for, for a check not tied to a repository.
pub const ALL_TOOLS: &[&str] = &[
    "cargo", "go", "node", "npm", "python3", "java", "mvn", "gradle",
];

/// The commands a task on a repository of these ecosystems is expected to run.
pub fn tools_of(ecosystems: &[Ecosystem]) -> Vec<&'static str> {
    let mut tools: Vec<&'static str> = Vec::new();
    for ecosystem in ecosystems {
        let needed: &[&'static str] = match ecosystem {
            Ecosystem::Cargo => &["cargo"],
            Ecosystem::Npm => &["node", "npm"],
            Ecosystem::Python => &["python3"],
            Ecosystem::Go => &["go"],
            Ecosystem::Maven => &["java", "mvn"],
            Ecosystem::Gradle => &["java", "gradle"],
            Ecosystem::RubyGems
            | Ecosystem::Composer
            | Ecosystem::NuGet
            | Ecosystem::Pub
            | Ecosystem::Hex => &[],
        };
        for tool in needed {
            if !tools.contains(tool) {
                tools.push(tool);
            }
        }
    }
    tools
}

/// What of the host the lookup uses, passed in.
#[derive(Debug, Clone, Copy)]
pub struct HostLookup<'a> {
    /// The host's `PATH`.
    pub path_var: Option<&'a OsStr>,
    /// The host's `RUSTUP_HOME`, when set.
    pub rustup_home: Option<&'a Path>,
}

/// A tool the host runs from somewhere the sandbox does not see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnseenTool {
    pub tool: &'static str,
    /// Where the host's `PATH` finds it.
    pub host: PathBuf,
    /// What it is, when known: "a rustup proxy", "a pyenv shim".
    pub kind: Option<&'static str>,
    /// What the sandbox finds under the same name instead.
    pub inside: Option<PathBuf>,
    /// Binds and `path` entries that would show it (empty when none can be bound safely).
    pub binds: Vec<PathBuf>,
    pub path: Vec<PathBuf>,
    /// Why no binds are suggested, when so.
    pub refused: Option<String>,
}

/// Each of `tools` that the host finds on its PATH but the sandbox, configured as `configured`,
/// does not (or finds another one of).
pub fn unseen_tools(
    tools: &[&'static str],
    lookup: HostLookup<'_>,
    configured: &HostToolchains,
    host: &HostPaths,
) -> Vec<UnseenTool> {
    let host_dirs: Vec<PathBuf> = lookup
        .path_var
        .map(|path| std::env::split_paths(path).collect())
        .unwrap_or_default();
    let sandbox_dirs: Vec<PathBuf> = configured
        .path
        .iter()
        .cloned()
        .chain(SANDBOX_PATH.iter().map(PathBuf::from))
        .collect();
    let mut unseen = Vec::new();
    for tool in tools {
        let Some(found) = find(tool, &host_dirs) else {
            continue;
        };
        // What runs: a pyenv shim runs the interpreter of the global version.
        let runs = pyenv_root(&found)
            .and_then(|root| pyenv_version(root, tool).ok())
            .and_then(|(_, path)| path.first().map(|bin| bin.join(tool)))
            .unwrap_or_else(|| found.clone());
        let Ok(real) = std::fs::canonicalize(&runs) else {
            continue;
        };
        let inside = sandbox_dirs.iter().find_map(|dir| {
            let candidate = dir.join(tool);
            let real = std::fs::canonicalize(&candidate).ok()?;
            let dir = std::fs::canonicalize(dir).ok()?;
            (is_executable(&real)
                && visible(&real, &configured.binds)
                && visible(&dir, &configured.binds))
            .then_some((candidate, real))
        });
        if inside.as_ref().is_some_and(|(_, inside)| *inside == real) {
            continue;
        }
        unseen.push(suggest(
            tool,
            found,
            &real,
            inside.map(|(path, _)| path),
            lookup,
            host,
        ));
    }
    unseen
}

fn find(tool: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter()
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(tool))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

fn suggest(
    tool: &'static str,
    found: PathBuf,
    real: &Path,
    inside: Option<PathBuf>,
    lookup: HostLookup<'_>,
    host: &HostPaths,
) -> UnseenTool {
    let mut unseen = UnseenTool {
        tool,
        host: found.clone(),
        kind: None,
        inside,
        binds: Vec::new(),
        path: Vec::new(),
        refused: None,
    };
    let Some(dir) = found.parent().map(Path::to_path_buf) else {
        return unseen;
    };
    let attempt = if dir.join("rustup").is_file() {
        // A rustup proxy: it needs its rustup home, where the toolchains are.
        unseen.kind = Some("a rustup proxy");
        let rustup_home = lookup
            .rustup_home
            .map(Path::to_path_buf)
            .or_else(|| host.home.as_ref().map(|home| home.join(".rustup")))
            .filter(|home| nightshift_env::cache::is_rustup_home(home));
        Ok((
            rustup_home.into_iter().chain([dir.clone()]).collect(),
            vec![dir],
        ))
    } else if let Some(root) = pyenv_root(&found) {
        // A pyenv shim runs pyenv itself; the interpreter it picks can be bound instead.
        unseen.kind = Some("a pyenv shim");
        pyenv_version(root, tool)
    } else {
        Ok(generic(&dir, real, host))
    };
    let (binds, path) = match attempt {
        Ok(lines) => lines,
        Err(refused) => {
            unseen.refused = Some(refused);
            return unseen;
        }
    };
    for bind in &binds {
        if let Err(err) = check_one_bind(&bind.display().to_string(), host) {
            unseen.refused = Some(err.to_string());
            return unseen;
        }
    }
    unseen.binds = binds;
    unseen.path = path;
    unseen
}

/// The pyenv root of a tool in its `shims` directory.
fn pyenv_root(tool: &Path) -> Option<&Path> {
    let shims = tool.parent()?;
    let root = shims.parent()?;
    (shims.ends_with("shims") && root.join("versions").is_dir()).then_some(root)
}

/// The prefix of pyenv's global version (`<root>/version`), when it has `tool`, and its `bin`.
fn pyenv_version(root: &Path, tool: &str) -> Result<(Vec<PathBuf>, Vec<PathBuf>), String> {
    let version = std::fs::read_to_string(root.join("version")).unwrap_or_default();
    let version = version.lines().next().unwrap_or("").trim();
    let prefix = root.join("versions").join(version);
    if version.is_empty() || !prefix.join("bin").join(tool).is_file() {
        return Err(format!(
            "pyenv has no global version with {tool} ({}); bind the interpreter `pyenv which {tool}` prints, by its prefix",
            root.join("version").display()
        ));
    }
    Ok((vec![prefix.clone()], vec![prefix.join("bin")]))
}

/// The installation prefix of a tool found in `dir` (`<prefix>/bin`), or `dir` itself; and the
/// real file's, when a symbolic link leads outside it.
fn generic(dir: &Path, real: &Path, host: &HostPaths) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut binds: Vec<PathBuf> = Vec::new();
    for place in [Some(dir), real.parent()].into_iter().flatten() {
        let canonical = std::fs::canonicalize(place).unwrap_or_else(|_| place.to_path_buf());
        if visible(&canonical, &binds) {
            continue;
        }
        let prefix = canonical
            .parent()
            .filter(|_| canonical.ends_with("bin"))
            .filter(|prefix| check_one_bind(&prefix.display().to_string(), host).is_ok());
        binds.push(prefix.unwrap_or(&canonical).to_path_buf());
    }
    let on_path = SANDBOX_PATH.iter().any(|on_path| dir == Path::new(on_path));
    (
        binds,
        if on_path {
            Vec::new()
        } else {
            vec![dir.to_path_buf()]
        },
    )
}

/// The report: one line per tool, then the `[sandbox]` lines to put in `config_file` (the
/// configured entries and the suggested ones, as config.toml spells them).
pub fn render(
    unseen: &[UnseenTool],
    configured: &SandboxSettings,
    config_file: &Path,
    home: Option<&Path>,
) -> String {
    let mut out = String::from("Toolchains this host runs from outside what the sandbox sees:\n");
    let mut binds = configured.binds.clone();
    let mut path = configured.path.clone();
    for tool in unseen {
        let kind = tool
            .kind
            .map(|kind| format!(" ({kind})"))
            .unwrap_or_default();
        let inside = match &tool.inside {
            Some(inside) => format!("the sandbox finds {} instead", inside.display()),
            None => "the sandbox finds none".into(),
        };
        out.push_str(&format!(
            "  {}: {}{kind}; {inside}\n",
            tool.tool,
            tool.host.display()
        ));
        if let Some(refused) = &tool.refused {
            out.push_str(&format!("    cannot suggest a bind: {refused}\n"));
        }
        for bind in &tool.binds {
            if !binds.iter().any(|entry| same_place(entry, bind, home)) {
                binds.push(tilde(bind, home));
            }
        }
        for dir in &tool.path {
            if !path.iter().any(|entry| same_place(entry, dir, home)) {
                path.push(tilde(dir, home));
            }
        }
    }
    if binds != configured.binds || path != configured.path {
        let list = |items: &[String]| {
            items
                .iter()
                .map(|item| format!("{item:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "To give tasks the same tools, set in {}:\n  [sandbox]\n  binds = [{}]\n  path = [{}]\n",
            config_file.display(),
            list(&binds),
            list(&path)
        ));
    }
    out
}

/// Whether the config.toml entry `entry` names `path` (however either is spelled).
fn same_place(entry: &str, path: &Path, home: Option<&Path>) -> bool {
    let Ok(entry) = super::expand(super::Key::Binds, entry, home) else {
        return false;
    };
    let canonical =
        |path: &Path| std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    canonical(&entry) == canonical(path)
}
