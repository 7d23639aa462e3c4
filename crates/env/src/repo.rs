//! The source repository a task starts from and the working copy it runs in.
//!
//! The working copy is a `git clone --local` of the source at the base commit: its objects are
//! hard links to the source's where the filesystem allows (fast for large repositories), it
//! stands alone (a sandbox that cannot see the source still has a working git), it never sees
//! the source's uncommitted changes, and it has its own index and working tree, so nothing the
//! agent does touches the person's checkout. The result comes back by fetching the task's commit into
//! the source as a new branch ref; the person's working tree and current branch stay as they were.

use std::path::{Path, PathBuf};

use crate::git::{GitError, git, git_streamed};
use crate::secrets::Redactor;

/// Why a repository operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("{path} is not a git repository ({detail})")]
    NotARepository { path: PathBuf, detail: String },
    /// A remote repository could not be fetched (or its credential used).
    #[error("the remote repository {url} cannot be used: {detail}")]
    Remote { url: String, detail: String },
    #[error("the repository {repo} has no branch `{base}`{}", list_branches(.available))]
    UnknownBase {
        repo: PathBuf,
        base: String,
        available: Vec<String>,
    },
    #[error("the repository {repo} has no commits yet")]
    EmptyRepository { repo: PathBuf },
    #[error("the branch `{branch}` already exists in {repo}")]
    BranchExists { repo: PathBuf, branch: String },
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("{} is not a git bundle nightshift made: {reason}; nothing was fetched from it", .path.display())]
    NotABundle { path: PathBuf, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn list_branches(available: &[String]) -> String {
    if available.is_empty() {
        String::new()
    } else {
        format!(" (branches: {})", available.join(", "))
    }
}

impl EnvError {
    /// What the person can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            EnvError::NotARepository { .. } => {
                Some("pass --repo the path of a git repository (run `git init` to make one)".into())
            }
            EnvError::UnknownBase { .. } => {
                Some("pass --base one of the repository's branches, or omit it to use the checked-out branch".into())
            }
            EnvError::EmptyRepository { .. } => {
                Some("commit something first: a task starts from a commit".into())
            }
            EnvError::BranchExists { .. } => Some("delete or rename the existing branch".into()),
            EnvError::Remote { .. } => Some(
                "check the URL and that the remote is reachable from this machine; a remote that needs a login takes a credential: `nightshift repo add URL --credential SECRET`".into(),
            ),
            EnvError::NotABundle { .. } | EnvError::Git(_) | EnvError::Io { .. } => None,
        }
    }

    /// True when the request itself was wrong, as opposed to git failing.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            EnvError::NotARepository { .. }
            | EnvError::UnknownBase { .. }
            | EnvError::EmptyRepository { .. }
            | EnvError::Remote { .. } => true,
            EnvError::BranchExists { .. }
            | EnvError::NotABundle { .. }
            | EnvError::Git(_)
            | EnvError::Io { .. } => false,
        }
    }
}

/// A person's repository that tasks start from and hand back to.
#[derive(Debug, Clone)]
pub struct SourceRepo {
    root: PathBuf,
}

/// The base a task starts from: a branch name and the commit it pointed at when resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedBase {
    /// The branch, or `HEAD` when the source had a detached HEAD and no base was given.
    pub name: String,
    pub commit: String,
}

impl SourceRepo {
    /// Opens the repository containing `path` (its top level, for a path inside a work tree).
    pub async fn open(path: &Path) -> Result<SourceRepo, EnvError> {
        let not_a_repo = |detail: String| EnvError::NotARepository {
            path: path.into(),
            detail,
        };
        if !path.is_dir() {
            return Err(not_a_repo("no such directory".into()));
        }
        let root = git(path, ["rev-parse", "--show-toplevel"])
            .await
            .map_err(|err| not_a_repo(short_git_reason(&err)))?;
        Ok(SourceRepo {
            root: PathBuf::from(root),
        })
    }

    /// The repository's top-level directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A bare mirror of a remote repository (see [`crate::Mirrors`]), at `git_dir`.
    pub(crate) fn bare(git_dir: PathBuf) -> SourceRepo {
        SourceRepo { root: git_dir }
    }

    /// Resolves `base` (a branch name) to its current commit; `None` is the checked-out branch.
    pub async fn resolve_base(&self, base: Option<&str>) -> Result<ResolvedBase, EnvError> {
        let name = match base {
            Some(name) => name.to_string(),
            None => match git(&self.root, ["symbolic-ref", "--quiet", "--short", "HEAD"]).await {
                Ok(branch) => branch,
                Err(_) => "HEAD".to_string(),
            },
        };
        let rev = if name == "HEAD" {
            "HEAD^{commit}".to_string()
        } else {
            format!("refs/heads/{name}^{{commit}}")
        };
        match git(&self.root, ["rev-parse", "--verify", "--quiet", &rev]).await {
            Ok(commit) if !commit.is_empty() => Ok(ResolvedBase { name, commit }),
            _ => {
                let available = self.branches().await?;
                if available.is_empty() {
                    return Err(EnvError::EmptyRepository {
                        repo: self.root.clone(),
                    });
                }
                Err(EnvError::UnknownBase {
                    repo: self.root.clone(),
                    base: name,
                    available,
                })
            }
        }
    }

    /// Local branch names, at most 20.
    pub async fn branches(&self) -> Result<Vec<String>, EnvError> {
        let out = git(
            &self.root,
            [
                "for-each-ref",
                "--count=20",
                "--format=%(refname:short)",
                "refs/heads/",
            ],
        )
        .await?;
        Ok(out.lines().map(str::to_string).collect())
    }

    /// Whether the work tree has changes that are not committed (which a task does not see).
    pub async fn has_uncommitted_changes(&self) -> Result<bool, EnvError> {
        let status = git(
            &self.root,
            ["status", "--porcelain", "--untracked-files=normal"],
        )
        .await?;
        Ok(!status.is_empty())
    }

    /// Makes the task's working copy at `dest` (which must not exist), checked out at `base`.
    pub async fn checkout(
        &self,
        base: &ResolvedBase,
        dest: &Path,
    ) -> Result<WorkingCopy, EnvError> {
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|source| EnvError::Io {
                    what: format!("creating {}", parent.display()),
                    source,
                })?;
        }
        let parent = dest.parent().unwrap_or(Path::new("/"));
        // A local clone hard-links the source's object files; a task handing back at the same
        // moment writes (and renames away) temporary packs there, and the person's own git may
        // hold a lock file there for a moment (`maintenance.lock`), which fails the clone now
        // and then ("hardlink different from source", "failed to create link ... No such
        // file"). Such a clone is made again from scratch.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let cloned = git(
                parent,
                [
                    "clone".as_ref(),
                    "--quiet".as_ref(),
                    "--local".as_ref(),
                    "--no-checkout".as_ref(),
                    self.root.as_os_str(),
                    dest.as_os_str(),
                ],
            )
            .await;
            match cloned {
                Ok(_) => break,
                Err(GitError::Failed { ref stderr, .. })
                    if attempt < 4 && (stderr.contains("tmp_") || stderr.contains("/objects/")) =>
                {
                    let _ = tokio::fs::remove_dir_all(dest).await;
                    tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
                }
                Err(err) => return Err(err.into()),
            }
        }
        git(dest, ["checkout", "--quiet", "--detach", &base.commit]).await?;
        Ok(WorkingCopy {
            root: dest.to_path_buf(),
            base_commit: base.commit.clone(),
        })
    }

    /// Which of `paths` differ between the commits `from` and `to`.
    pub async fn changed_paths(
        &self,
        from: &str,
        to: &str,
        paths: &[&str],
    ) -> Result<Vec<String>, EnvError> {
        let mut args = vec!["diff", "--name-only", from, to, "--"];
        args.extend(paths);
        let listed = git(&self.root, args).await?;
        Ok(listed.lines().map(str::to_string).collect())
    }

    /// How many commits `to` has that `from` does not (`git rev-list --count from..to`): zero
    /// when `to` is `from` or one of its ancestors.
    pub async fn commits_between(&self, from: &str, to: &str) -> Result<u64, EnvError> {
        let range = format!("{from}..{to}");
        let counted = git(&self.root, ["rev-list", "--count", &range, "--"]).await?;
        counted.trim().parse().map_err(|_| EnvError::Io {
            what: format!("counting the commits of {range}"),
            source: std::io::Error::other(format!("git printed {counted:?}, not a count")),
        })
    }

    /// Whether `branch` exists.
    pub async fn has_branch(&self, branch: &str) -> Result<bool, EnvError> {
        let rev = format!("refs/heads/{branch}");
        Ok(git(&self.root, ["rev-parse", "--verify", "--quiet", &rev])
            .await
            .is_ok())
    }
}

/// The first line of a git bundle, by version.
const BUNDLE_SIGNATURES: [&[u8]; 2] = [b"# v2 git bundle\n", b"# v3 git bundle\n"];

/// Whether `path` is a regular file, not a symbolic link, that starts with a git bundle's
/// signature. Opening never blocks (a FIFO is refused, not waited on).
fn check_bundle(path: &Path) -> Result<(), EnvError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let refuse = |reason: String| EnvError::NotABundle {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|err| match err.raw_os_error() {
            Some(libc::ELOOP) => refuse("it is a symbolic link".into()),
            _ => refuse(format!("it cannot be opened ({err})")),
        })?;
    let meta = file
        .metadata()
        .map_err(|err| refuse(format!("it cannot be inspected ({err})")))?;
    if !meta.is_file() {
        let kind = crate::tree_files::describe_kind(&meta.file_type());
        return Err(refuse(format!("it is {kind}, not a regular file")));
    }
    let mut head = Vec::with_capacity(16);
    file.take(16)
        .read_to_end(&mut head)
        .map_err(|err| refuse(format!("it cannot be read ({err})")))?;
    if !BUNDLE_SIGNATURES.contains(&head.as_slice()) {
        return Err(refuse(
            "it does not start with `# v2 git bundle` or `# v3 git bundle`".into(),
        ));
    }
    Ok(())
}

/// The last line of what git said, for short error messages.
fn short_git_reason(err: &GitError) -> String {
    match err {
        GitError::Failed { stderr, .. } => stderr
            .lines()
            .last()
            .unwrap_or("git refused")
            .trim_start_matches("fatal: ")
            .into(),
        GitError::Spawn(_) | GitError::Read { .. } => err.to_string(),
    }
}

/// Where a working copy keeps the task's result for handing off.
const RESULT_REF: &str = "refs/nightshift/result";

/// Where the working copy keeps its base commit, so that a bundle's prerequisite (the base) is
/// reachable from a ref: git checks a bundle against the refs only, not a detached `HEAD`, and
/// the refs a clone copies can miss the base's branch when the source's refs are being rewritten
/// at that moment (other tasks handing off, `git gc --auto` packing refs).
const BASE_REF: &str = "refs/nightshift/base";

/// Size of a committed change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitStats {
    pub files_changed: u32,
    pub insertions: u32,
    pub deletions: u32,
}

/// A task's own clone of the source repository.
#[derive(Debug, Clone)]
pub struct WorkingCopy {
    root: PathBuf,
    base_commit: String,
}

impl WorkingCopy {
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn base_commit(&self) -> &str {
        &self.base_commit
    }

    /// Fetches the commits of a bundle (made by `git bundle create FILE BASE..HEAD` from a
    /// copy of this repository) and returns the commit its `HEAD` points at, kept under
    /// `refs/nightshift/result`. Only git objects cross over, never configuration, and each is
    /// checked (`transfer.fsckObjects`). The bundle comes from the agent: host git only opens
    /// it once it is known to be a regular file (not a link) that starts as a git bundle does.
    pub async fn import_bundle(&self, bundle: &Path) -> Result<String, EnvError> {
        let path = bundle.to_path_buf();
        tokio::task::spawn_blocking(move || check_bundle(&path))
            .await
            .map_err(|err| EnvError::NotABundle {
                path: bundle.to_path_buf(),
                reason: format!("checking it failed: {err}"),
            })??;
        git(&self.root, ["update-ref", BASE_REF, &self.base_commit]).await?;
        let refspec = format!("+HEAD:{RESULT_REF}");
        let fetch = [
            "fetch".as_ref(),
            "--quiet".as_ref(),
            "--no-tags".as_ref(),
            "--no-write-fetch-head".as_ref(),
            bundle.as_os_str(),
            refspec.as_ref(),
        ];
        match git(&self.root, fetch).await {
            Ok(_) => {}
            // git checks a bundle's prerequisites against every ref, and the copy's
            // remote-tracking refs came from a source that other tasks were handing back into
            // while it was cloned: one can name objects the clone did not take. The copy needs
            // none of them once the agent is done: they go, and the fetch is tried once more.
            Err(GitError::Failed { stderr, .. }) if stderr.contains("not connected") => {
                git(&self.root, ["remote", "remove", "origin"]).await?;
                git(&self.root, fetch).await?;
            }
            Err(err) => return Err(err.into()),
        }
        Ok(git(&self.root, ["rev-parse", RESULT_REF]).await?)
    }

    /// What the checked-out commit changed since it left `from` (`git diff FROM...HEAD`: from
    /// their merge base), as text for reading.
    pub async fn diff_since(&self, from: &str) -> Result<String, EnvError> {
        Ok(git(
            &self.root,
            [
                "diff",
                "--no-color",
                "--no-ext-diff",
                &format!("{from}...HEAD"),
            ],
        )
        .await?)
    }

    /// The change from the base to `head`, as a patch `git apply` takes.
    pub async fn diff(&self, head: &str) -> Result<String, EnvError> {
        Ok(git(&self.root, ["diff", "--binary", &self.base_commit, head]).await?)
    }

    /// The names of the secrets `redactor` finds, in any form, in what the commits from the
    /// base to `head` would bring into the source repository: every new object's bytes as they
    /// are, so binary files (which a patch compresses), file names, commit messages and
    /// authors, and each commit on the way, not only the last (a value committed and removed
    /// again is still in the branch's history).
    pub async fn secrets_in_commits(
        &self,
        head: &str,
        redactor: &Redactor,
    ) -> Result<Vec<String>, EnvError> {
        if redactor.is_empty() {
            return Ok(Vec::new());
        }
        let range = format!("{}..{head}", self.base_commit);
        let mut objects = git(
            &self.root,
            ["rev-list", "--objects", "--no-object-names", &range],
        )
        .await?;
        objects.push('\n');
        let (root, redactor) = (self.root.clone(), redactor.clone());
        let found = tokio::task::spawn_blocking(move || {
            git_streamed(
                &root,
                &["cat-file", "--batch"],
                objects.into_bytes(),
                |out| redactor.names_in_reader(std::io::BufReader::with_capacity(1 << 16, out)),
            )
        })
        .await
        .map_err(|err| EnvError::Io {
            what: "checking the result for secrets".into(),
            source: std::io::Error::other(err.to_string()),
        })??;
        Ok(found)
    }

    /// Files, insertions and deletions from the base to `head`.
    pub async fn stats(&self, head: &str) -> Result<CommitStats, EnvError> {
        let numstat = git(&self.root, ["diff", "--numstat", &self.base_commit, head]).await?;
        let mut stats = CommitStats::default();
        for line in numstat.lines() {
            let mut fields = line.split('\t');
            // Binary files show `-` for both counts.
            let added = fields
                .next()
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(0);
            let removed = fields
                .next()
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(0);
            stats.files_changed += 1;
            stats.insertions += added;
            stats.deletions += removed;
        }
        Ok(stats)
    }

    /// Creates `branch` in the source repository at `head` (a commit of this working copy).
    /// Only a ref is written there: its work tree, index and current branch are untouched.
    /// With `update`, an existing branch is moved to `head`, but only forward: if someone
    /// committed to it meanwhile, the update is refused rather than losing their commits.
    pub async fn hand_off(
        &self,
        source: &SourceRepo,
        branch: &str,
        head: &str,
        update: bool,
    ) -> Result<(), EnvError> {
        if !update && source.has_branch(branch).await? {
            return Err(EnvError::BranchExists {
                repo: source.root.clone(),
                branch: branch.into(),
            });
        }
        git(&self.root, ["update-ref", RESULT_REF, head]).await?;
        let refspec = format!("{RESULT_REF}:refs/heads/{branch}");
        git(
            &source.root,
            [
                "fetch".as_ref(),
                "--quiet".as_ref(),
                "--no-tags".as_ref(),
                "--no-write-fetch-head".as_ref(),
                self.root.as_os_str(),
                refspec.as_ref(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Deletes the working copy.
    pub async fn remove(self) -> Result<(), EnvError> {
        tokio::fs::remove_dir_all(&self.root)
            .await
            .map_err(|source| EnvError::Io {
                what: format!("removing {}", self.root.display()),
                source,
            })
    }
}
