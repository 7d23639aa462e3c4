//! Walking the workspace as a developer sees it, for `search` and `list_files`: `.gitignore`
//! (and `.ignore`) files are respected, `.git/` is skipped, other hidden files such as
//! `.github/` are included, symlinks are not followed, and the order is always the same.
//!
//! The walk always starts at the workspace root and prunes everything off the way to the asked
//! path, so `.gitignore` files above that path still apply; none outside the workspace do.

use std::path::{Path, PathBuf};

use ignore::overrides::{Override, OverrideBuilder};
use ignore::{DirEntry, WalkBuilder};

use super::workspace::{PathError, Workspace, display, is_escape};

/// What a walk covers.
pub(crate) struct Scope {
    /// The workspace root, symlinks resolved.
    pub root: PathBuf,
    /// The asked path relative to `root`, symlinks resolved; empty for the root.
    pub target: PathBuf,
    /// Whether `target` is a single file rather than a directory.
    pub is_file: bool,
}

impl Scope {
    /// The scope for the model's `path` (default: the whole workspace).
    pub(crate) fn resolve(workspace: &Workspace, path: Option<&str>) -> Result<Scope, String> {
        let relative = workspace
            .relative(path.unwrap_or("."))
            .map_err(|err| err.to_string())?;
        let probe = if relative.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &relative
        };
        let target = workspace.dir().canonicalize(probe).map_err(|err| {
            if is_escape(&err) {
                PathError::Outside(display(&relative)).to_string()
            } else {
                workspace.describe_error(&relative, &err)
            }
        })?;
        let meta = workspace
            .dir()
            .metadata(probe)
            .map_err(|err| workspace.describe_error(&relative, &err))?;
        let target = if target == Path::new(".") {
            PathBuf::new()
        } else {
            target
        };
        if target.components().any(|c| c.as_os_str() == ".git") {
            return Err(format!(
                "`{}` is inside `.git/`, which search and list_files skip; use shell with git \
                 commands to inspect the repository",
                display(&relative)
            ));
        }
        Ok(Scope {
            root: workspace.real_root().to_path_buf(),
            target,
            is_file: meta.is_file(),
        })
    }

    /// `path` (absolute, under the root) relative to the workspace root.
    pub(crate) fn relative<'p>(&self, path: &'p Path) -> &'p Path {
        path.strip_prefix(&self.root).unwrap_or(path)
    }
}

/// A `glob` argument compiled against the workspace root, e.g. `*.rs` or `src/**/*.toml`.
pub(crate) fn compile_glob(root: &Path, glob: Option<&str>) -> Result<Option<Override>, String> {
    let Some(glob) = glob.map(str::trim).filter(|glob| !glob.is_empty()) else {
        return Ok(None);
    };
    let mut builder = OverrideBuilder::new(root);
    builder
        .add(glob)
        .map_err(|err| format!("invalid glob `{glob}`: {err}"))?;
    builder
        .build()
        .map(Some)
        .map_err(|err| format!("invalid glob `{glob}`: {err}"))
}

/// Calls `visit` with every file (regular file or symlink) in `scope` that passes the ignore
/// rules and `glob`, in sorted order, until `visit` returns false. Returns whether the target
/// directory had to be walked despite being ignored.
pub(crate) fn walk_files(
    scope: &Scope,
    glob: Option<&Override>,
    mut visit: impl FnMut(&DirEntry) -> bool,
) -> bool {
    let mut target_seen = scope.target.as_os_str().is_empty();
    let mut keep_going = true;
    for entry in builder(&scope.root, &scope.root, &scope.target, glob)
        .build()
        .flatten()
    {
        if scope.relative(entry.path()) == scope.target {
            target_seen = true;
        }
        if is_file_like(&entry) && !visit(&entry) {
            keep_going = false;
            break;
        }
    }
    if target_seen || !keep_going {
        return false;
    }
    // The target itself is ignored: an explicitly asked path is walked anyway, as ripgrep does.
    let start = scope.root.join(&scope.target);
    for entry in builder(&start, &scope.root, &scope.target, glob)
        .build()
        .flatten()
    {
        if is_file_like(&entry) && !visit(&entry) {
            break;
        }
    }
    true
}

fn is_file_like(entry: &DirEntry) -> bool {
    entry
        .file_type()
        .is_some_and(|kind| kind.is_file() || kind.is_symlink())
}

fn builder(start: &Path, root: &Path, target: &Path, glob: Option<&Override>) -> WalkBuilder {
    let mut builder = WalkBuilder::new(start);
    builder
        .hidden(false)
        .parents(false)
        .ignore(true)
        .git_ignore(true)
        .git_exclude(true)
        .git_global(false)
        .require_git(false)
        .follow_links(false)
        .sort_by_file_name(|a, b| a.cmp(b));
    if let Some(glob) = glob {
        builder.overrides(glob.clone());
    }
    let root = root.to_path_buf();
    let target = target.to_path_buf();
    builder.filter_entry(move |entry| {
        if entry.file_name() == ".git" {
            return false;
        }
        let relative = entry.path().strip_prefix(&root).unwrap_or(entry.path());
        relative.starts_with(&target) || target.starts_with(relative)
    });
    builder
}
