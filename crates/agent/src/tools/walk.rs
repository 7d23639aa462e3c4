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
//! no file itself.
//!
//! What a walk holds is bounded whatever the tree: it stops once it has read
//! [`MAX_WALK_ENTRIES`] directory entries in all (so the sorted entries of the directories it
//! is inside never add up to more), or [`MAX_IGNORE_BYTES`] of ignore files in all, and says
//! so; it goes no deeper than [`MAX_DEPTH`] levels.

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
/// The most directory entries one walk reads (and so holds at once).
const MAX_WALK_ENTRIES: usize = 200_000;
/// The deepest a walk goes below where it starts.
const MAX_DEPTH: usize = 256;
/// The most bytes of ignore files one walk reads, all directories together.
const MAX_IGNORE_BYTES: u64 = 4 * 1024 * 1024;

/// A walk's bounds (the constants above; smaller in tests).
#[derive(Debug, Clone, Copy)]
struct Bounds {
    entries: usize,
    depth: usize,
    ignore_bytes: u64,
}

impl Bounds {
    const DEFAULT: Bounds = Bounds {
        entries: MAX_WALK_ENTRIES,
        depth: MAX_DEPTH,
        ignore_bytes: MAX_IGNORE_BYTES,
    };
}

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
    /// The walk stopped at one of its bounds, or left out what lies below [`MAX_DEPTH`].
    pub cut: bool,
}

impl Walked {
    /// The note for the model when the walk was cut short.
    pub(crate) fn cut_note(&self) -> Option<String> {
        self.cut.then(|| {
            format!(
                "[note: the walk stopped early (it reads at most {MAX_WALK_ENTRIES} directory \
                 entries and {} MiB of ignore files, and goes {MAX_DEPTH} directory levels \
                 deep); narrow it with path or glob]",
                MAX_IGNORE_BYTES >> 20
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
    visit: impl FnMut(Found<'_>) -> bool,
) -> Walked {
    walk_files_within(workspace, scope, glob, Bounds::DEFAULT, visit).0
}

/// [`walk_files`] within `bounds`; also returns how many directory entries it read.
fn walk_files_within(
    workspace: &Workspace,
    scope: &Scope,
    glob: Option<&Override>,
    bounds: Bounds,
    mut visit: impl FnMut(Found<'_>) -> bool,
) -> (Walked, usize) {
    let mut walk = Walk {
        root: &scope.root,
        target: &scope.target,
        glob,
        bounds,
        seen: 0,
        read: 0,
        ignore_read: 0,
        exhausted: false,
        cut: false,
        target_seen: scope.target.as_os_str().is_empty(),
    };
    let Ok(top) = workspace.dir().try_clone() else {
        let walked = Walked {
            forced: false,
            cut: false,
        };
        return (walked, 0);
    };
    let finished = walk.run(top, PathBuf::new(), &mut visit);
    if walk.target_seen || !finished {
        let walked = Walked {
            forced: false,
            cut: walk.cut,
        };
        return (walked, walk.read);
    }
    // The target itself is ignored: an explicitly asked path is walked anyway, as ripgrep does,
    // with the rules from there down.
    if let Ok(start) = workspace.dir().open_dir(&scope.target) {
        walk.run(start, scope.target.clone(), &mut visit);
    }
    let walked = Walked {
        forced: true,
        cut: walk.cut,
    };
    (walked, walk.read)
}

/// One walk's settings and counters.
struct Walk<'a> {
    root: &'a Path,
    target: &'a Path,
    glob: Option<&'a Override>,
    bounds: Bounds,
    /// Entries looked at.
    seen: usize,
    /// Entries read from directories (at least `seen`: a directory is read whole).
    read: usize,
    /// Bytes of ignore files read.
    ignore_read: u64,
    /// A bound on what the walk reads was reached: it stops.
    exhausted: bool,
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
            if self.exhausted {
                self.cut = true;
                return false;
            }
            let Some((name, kind)) = top.entries.next() else {
                stack.pop();
                continue;
            };
            self.seen += 1;
            if self.seen > self.bounds.entries {
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
                    if stack.len() > self.bounds.depth {
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

    /// `dir` with its entries sorted by name and its ignore rules read, within what is left of
    /// the walk's bounds (reaching one marks the walk exhausted).
    fn level(&mut self, dir: Dir, relative: PathBuf) -> Level {
        let room = self.bounds.entries.saturating_sub(self.read);
        let mut entries: Vec<(OsString, Kind)> = dir
            .entries()
            .map(|entries| {
                entries
                    .flatten()
                    .take(room + 1)
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
        if entries.len() > room {
            entries.truncate(room);
            self.exhausted = true;
        }
        self.read += entries.len();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut budget = self.bounds.ignore_bytes.saturating_sub(self.ignore_read);
        let rules = Rules::read(&dir, &self.root.join(&relative), &mut budget);
        let read = self.bounds.ignore_bytes.saturating_sub(self.ignore_read) - budget;
        self.ignore_read += read;
        if budget == 0 {
            self.exhausted = true;
        }
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
    /// The rules of `dir`, whose path (for matching only, never opened) is `path`, reading at
    /// most `budget` bytes of its ignore files (less what they took).
    fn read(dir: &Dir, path: &Path, budget: &mut u64) -> Rules {
        let exclude = match dir.symlink_metadata(".git") {
            Ok(meta) if meta.is_dir() => {
                rules_file(dir, Path::new(".git/info/exclude"), path, budget)
            }
            _ => Gitignore::empty(),
        };
        Rules {
            ignore: rules_file(dir, Path::new(".ignore"), path, budget),
            gitignore: rules_file(dir, Path::new(".gitignore"), path, budget),
            exclude,
        }
    }
}

/// The rules in the file `name` of `dir`, relative to `base`: none when it is missing, not a
/// regular file, a symlink or unreadable. Reads at most [`MAX_IGNORE_FILE_BYTES`] and what is
/// left of `budget`, and takes what it read from `budget`.
fn rules_file(dir: &Dir, name: &Path, base: &Path, budget: &mut u64) -> Gitignore {
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
    let read = file
        .take(MAX_IGNORE_FILE_BYTES.min(*budget))
        .read_to_end(&mut bytes);
    *budget = budget.saturating_sub(bytes.len() as u64);
    if read.is_err() {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Walks the whole of `root` within `bounds`: the files visited, whether it was cut, and
    /// how many directory entries it read.
    fn walk(root: &Path, bounds: Bounds) -> (Vec<PathBuf>, bool, usize) {
        let workspace = Workspace::open(root).unwrap();
        let scope = Scope::resolve(&workspace, None).unwrap();
        let mut files = Vec::new();
        let (walked, read) = walk_files_within(&workspace, &scope, None, bounds, |found| {
            files.push(found.relative.to_path_buf());
            true
        });
        (files, walked.cut, read)
    }

    #[test]
    fn a_wide_tree_is_read_only_up_to_the_entry_bound() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["a", "b", "c"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
            for i in 0..50 {
                std::fs::write(dir.path().join(sub).join(format!("f{i:02}")), "").unwrap();
            }
        }
        let all = walk(dir.path(), Bounds::DEFAULT);
        assert_eq!((all.0.len(), all.1, all.2), (150, false, 153));
        let bounds = Bounds {
            entries: 60,
            ..Bounds::DEFAULT
        };
        let (files, cut, read) = walk(dir.path(), bounds);
        assert!(cut);
        assert!(read <= 60, "{read} entries read");
        // Every directory it went into was read whole before its files were visited.
        assert_eq!(files.len(), 50, "{files:?}");
        assert!(files.iter().all(|file| file.starts_with("a")));
    }

    #[test]
    fn ignore_files_are_read_only_up_to_the_byte_bound() {
        let dir = tempfile::tempdir().unwrap();
        let rules: String = (0..200).map(|i| format!("never-{i}\n")).collect();
        for sub in ["a", "b", "c"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
            std::fs::write(dir.path().join(sub).join(".gitignore"), &rules).unwrap();
            std::fs::write(dir.path().join(sub).join("kept"), "").unwrap();
        }
        let (files, cut, _) = walk(dir.path(), Bounds::DEFAULT);
        assert_eq!((files.len(), cut), (6, false));
        let bounds = Bounds {
            ignore_bytes: rules.len() as u64 * 2,
            ..Bounds::DEFAULT
        };
        let (files, cut, _) = walk(dir.path(), bounds);
        assert!(cut, "{files:?}");
        assert!(files.len() < 6, "{files:?}");
    }
}
