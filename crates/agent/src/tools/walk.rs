//! Walking the workspace as a developer sees it, for `search` and `list_files`: `.gitignore`
//! (and `.ignore`, and `.git/info/exclude`) rules are respected, `.git/` is skipped, other
//! hidden files such as `.github/` are included, symlinks are not followed, and the order is
//! always the same.
//!
//! The walk always starts at the workspace root and prunes everything off the way to the asked
//! path, so `.gitignore` files above that path still apply; none outside the workspace do.
//!
//! The agent controls the workspace and the walk runs on the host, so it never goes by host
//! paths: every directory is opened through its parent's handle without following links, and
//! the ignore files are read the same way, only when they are regular files (a `.gitignore`
//! that is a symlink to a host file or a FIFO is skipped, as git skips a symlinked one), and
//! only their first [`MAX_IGNORE_FILE_BYTES`]. The `ignore` crate matches the rules; it reads
//! no file itself. The walk stops after [`MAX_WALK_ENTRIES`] entries.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use ignore::overrides::{Override, OverrideBuilder};
use nix::libc;

use super::workspace::{PathError, Workspace, display, is_escape};

/// The most bytes of one ignore file read; the rest of a larger one is left out.
const MAX_IGNORE_FILE_BYTES: u64 = 256 * 1024;
/// The most directory entries one walk looks at.
const MAX_WALK_ENTRIES: usize = 200_000;
/// The deepest a walk goes below where it starts.
const MAX_DEPTH: usize = 256;

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
        if !meta.is_dir() && !meta.is_file() {
            // Says what it is; the open does not block.
            workspace.open_regular(&relative)?;
        }
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

/// A file the walk found.
pub(crate) struct Found<'a> {
    /// Relative to the workspace root.
    pub relative: &'a Path,
    /// A symbolic link (never followed) rather than a regular file.
    pub is_symlink: bool,
}

/// How a walk went.
pub(crate) struct Walked {
    /// The target directory is ignored and was walked anyway, because it was asked for.
    pub forced: bool,
    /// The walk stopped at [`MAX_WALK_ENTRIES`] entries or [`MAX_DEPTH`] levels.
    pub cut: bool,
}

impl Walked {
    /// The note for the model when the walk was cut short.
    pub(crate) fn cut_note(&self) -> Option<String> {
        self.cut.then(|| {
            format!(
                "[note: the walk stopped after {MAX_WALK_ENTRIES} entries or {MAX_DEPTH} \
                 directory levels; narrow it with path or glob]"
            )
        })
    }
}

/// Calls `visit` with every file (regular file or symlink) in `scope` that passes the ignore
/// rules and `glob`, in sorted order, until `visit` returns false.
pub(crate) fn walk_files(
    workspace: &Workspace,
    scope: &Scope,
    glob: Option<&Override>,
    mut visit: impl FnMut(Found<'_>) -> bool,
) -> Walked {
    let mut walk = Walk {
        root: &scope.root,
        target: &scope.target,
        glob,
        seen: 0,
        cut: false,
        target_seen: scope.target.as_os_str().is_empty(),
    };
    let Ok(top) = workspace.dir().try_clone() else {
        return Walked {
            forced: false,
            cut: false,
        };
    };
    let finished = walk.run(top, PathBuf::new(), &mut visit);
    if walk.target_seen || !finished {
        return Walked {
            forced: false,
            cut: walk.cut,
        };
    }
    // The target itself is ignored: an explicitly asked path is walked anyway, as ripgrep does,
    // with the rules from there down.
    if let Ok(start) = workspace.dir().open_dir(&scope.target) {
        walk.run(start, scope.target.clone(), &mut visit);
    }
    Walked {
        forced: true,
        cut: walk.cut,
    }
}

/// One walk's settings and counters.
struct Walk<'a> {
    root: &'a Path,
    target: &'a Path,
    glob: Option<&'a Override>,
    seen: usize,
    cut: bool,
    target_seen: bool,
}

/// A directory being walked: its handle, its entries still to look at, and its own rules.
struct Level {
    dir: Dir,
    relative: PathBuf,
    entries: std::vec::IntoIter<(OsString, Kind)>,
    rules: Rules,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

impl Walk<'_> {
    /// Walks `dir` (at `relative` in the workspace). Returns false when `visit` asked to stop
    /// or the walk was cut.
    fn run(
        &mut self,
        dir: Dir,
        relative: PathBuf,
        visit: &mut impl FnMut(Found<'_>) -> bool,
    ) -> bool {
        let mut stack = vec![self.level(dir, relative)];
        while let Some(top) = stack.last_mut() {
            let Some((name, kind)) = top.entries.next() else {
                stack.pop();
                continue;
            };
            self.seen += 1;
            if self.seen > MAX_WALK_ENTRIES {
                self.cut = true;
                return false;
            }
            if name == ".git" {
                continue;
            }
            let path = top.relative.join(&name);
            let on_the_way = path.starts_with(self.target) || self.target.starts_with(&path);
            if !on_the_way || self.ignored(&stack, &path, kind == Kind::Dir) {
                continue;
            }
            if path == self.target {
                self.target_seen = true;
            }
            match kind {
                Kind::Dir => {
                    if stack.len() > MAX_DEPTH {
                        self.cut = true;
                        continue;
                    }
                    let parent = &stack[stack.len() - 1].dir;
                    if let Ok(child) = open_dir_nofollow(parent, &name) {
                        let level = self.level(child, path);
                        stack.push(level);
                    }
                }
                Kind::File | Kind::Symlink => {
                    let found = Found {
                        relative: &path,
                        is_symlink: kind == Kind::Symlink,
                    };
                    if !visit(found) {
                        return false;
                    }
                }
                Kind::Other => {}
            }
        }
        true
    }

    /// `dir` with its entries sorted by name and its ignore rules read.
    fn level(&self, dir: Dir, relative: PathBuf) -> Level {
        let mut entries: Vec<(OsString, Kind)> = dir
            .entries()
            .map(|entries| {
                entries
                    .flatten()
                    .take(MAX_WALK_ENTRIES + 1)
                    .map(|entry| {
                        let kind = match entry.file_type() {
                            Ok(kind) if kind.is_dir() => Kind::Dir,
                            Ok(kind) if kind.is_file() => Kind::File,
                            Ok(kind) if kind.is_symlink() => Kind::Symlink,
                            _ => Kind::Other,
                        };
                        (entry.file_name(), kind)
                    })
                    .collect()
            })
            .unwrap_or_default();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let rules = Rules::read(&dir, &self.root.join(&relative));
        Level {
            dir,
            relative,
            entries: entries.into_iter(),
            rules,
        }
    }

    /// Whether `path` (relative) is left out by `glob` or the ignore rules of the directories
    /// on `stack`, the deepest deciding, as ripgrep decides: `glob` first, then `.ignore`, then
    /// `.gitignore`, then `.git/info/exclude`.
    fn ignored(&self, stack: &[Level], path: &Path, is_dir: bool) -> bool {
        let absolute = self.root.join(path);
        if let Some(glob) = self.glob {
            match glob.matched(&absolute, is_dir) {
                Match::Ignore(_) => return true,
                Match::Whitelist(_) => return false,
                Match::None => {}
            }
        }
        let deepest = |pick: fn(&Rules) -> &Gitignore| {
            stack
                .iter()
                .rev()
                .map(|level| pick(&level.rules).matched(&absolute, is_dir))
                .find(|matched| !matched.is_none())
        };
        deepest(|rules| &rules.ignore)
            .or_else(|| deepest(|rules| &rules.gitignore))
            .or_else(|| deepest(|rules| &rules.exclude))
            .is_some_and(|matched| matched.is_ignore())
    }
}

/// The ignore rules a directory adds.
struct Rules {
    ignore: Gitignore,
    gitignore: Gitignore,
    exclude: Gitignore,
}

impl Rules {
    /// The rules of `dir`, whose path (for matching only, never opened) is `path`.
    fn read(dir: &Dir, path: &Path) -> Rules {
        let exclude = match dir.symlink_metadata(".git") {
            Ok(meta) if meta.is_dir() => rules_file(dir, Path::new(".git/info/exclude"), path),
            _ => Gitignore::empty(),
        };
        Rules {
            ignore: rules_file(dir, Path::new(".ignore"), path),
            gitignore: rules_file(dir, Path::new(".gitignore"), path),
            exclude,
        }
    }
}

/// The rules in the file `name` of `dir`, relative to `base`: none when it is missing, not a
/// regular file, a symlink or unreadable.
fn rules_file(dir: &Dir, name: &Path, base: &Path) -> Gitignore {
    let mut options = OpenOptions::new();
    options
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_NOFOLLOW);
    let Ok(file) = dir.open_with(name, &options) else {
        return Gitignore::empty();
    };
    let file = file.into_std();
    if !file.metadata().is_ok_and(|meta| meta.is_file()) {
        return Gitignore::empty();
    }
    let mut bytes = Vec::new();
    if file
        .take(MAX_IGNORE_FILE_BYTES)
        .read_to_end(&mut bytes)
        .is_err()
    {
        return Gitignore::empty();
    }
    let mut builder = GitignoreBuilder::new(base);
    for line in String::from_utf8_lossy(&bytes).lines() {
        // A line git would not understand is skipped, as git skips it.
        let _ = builder.add_line(None, line);
    }
    builder.build().unwrap_or_else(|_| Gitignore::empty())
}

/// The subdirectory `name` of `dir`, never through a symbolic link.
fn open_dir_nofollow(dir: &Dir, name: &std::ffi::OsStr) -> std::io::Result<Dir> {
    let mut options = OpenOptions::new();
    options
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW);
    Ok(Dir::from_std_file(
        dir.open_with(name, &options)?.into_std(),
    ))
}
