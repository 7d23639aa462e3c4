//! Applying a task's change to a person's working tree (`nightshift apply`): a three-way merge
//! of the task's patch onto the working tree as it is, uncommitted changes included, that
//! changes nothing at all when any file conflicts, and then names those files.
//!
//! The merge is tried first in a scratch index that starts from the working tree's tracked
//! files: the person's index, working tree and branches are not touched by the attempt. Only a
//! clean result is written, as a second patch from the working tree's state to the merged
//! tree, which `git apply` writes all at once or not at all.

use std::path::Path;

use crate::git::{GitError, git, git_with_index};
use crate::repo::SourceRepo;

/// What was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The files the change touched in the working tree (none when it was there already).
    pub files: Vec<String>,
}

/// Why nothing was applied. The working tree, the index and the branches are as they were.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "the change conflicts with the working tree in {}: {}; nothing was changed",
        plural(files.len()),
        files.join(", ")
    )]
    Conflicts { files: Vec<String> },
    #[error("the change does not apply to the working tree: {reason}; nothing was changed")]
    DoesNotApply { reason: String },
    #[error("the repository has no commit to apply the change over")]
    NoCommit,
    #[error("{0}")]
    Git(#[from] GitError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn plural(n: usize) -> String {
    match n {
        1 => "1 file".to_string(),
        n => format!("{n} files"),
    }
}

/// Applies `patch` (as `git diff --binary` writes it, from the task's base to its result) to
/// the working tree of `repo` with a three-way merge against the blobs the patch names.
pub async fn apply_change(repo: &SourceRepo, patch: &[u8]) -> Result<Applied, ApplyError> {
    let root = repo.root();
    let io = |what: &str| {
        let what = what.to_string();
        move |source| ApplyError::Io { what, source }
    };
    let scratch = tempfile::Builder::new()
        .prefix("nightshift-apply")
        .tempdir()
        .map_err(io("making a scratch directory"))?;
    let change = scratch.path().join("change.patch");
    // Stored diffs may lack the final newline, without which git reads the last hunk as
    // corrupt.
    let mut patch = patch.to_vec();
    if !patch.is_empty() && !patch.ends_with(b"\n") {
        patch.push(b'\n');
    }
    std::fs::write(&change, &patch).map_err(io("writing the change to a scratch file"))?;
    let index = scratch.path().join("index");
    let index = Some(index.as_path());

    // The working tree's tracked files, as a tree.
    if git(root, ["rev-parse", "--verify", "--quiet", "HEAD^{commit}"])
        .await
        .is_err()
    {
        return Err(ApplyError::NoCommit);
    }
    git_with_index(root, index, ["read-tree", "HEAD"]).await?;
    git_with_index(root, index, ["add", "--update", "--", "."]).await?;
    let worktree = git_with_index(root, index, ["write-tree"]).await?;

    // The merge, in the scratch index only.
    let merged = git_with_index(
        root,
        index,
        [
            "apply".as_ref(),
            "--cached".as_ref(),
            "--3way".as_ref(),
            change.as_os_str(),
        ],
    )
    .await;
    if let Err(err) = merged {
        let GitError::Failed { stderr, .. } = &err else {
            return Err(err.into());
        };
        let files = unmerged(root, index).await?;
        return Err(match files.is_empty() {
            true => ApplyError::DoesNotApply {
                reason: stderr.clone(),
            },
            false => ApplyError::Conflicts { files },
        });
    }
    let merged = git_with_index(root, index, ["write-tree"]).await?;
    let files: Vec<String> = git(root, ["diff", "--name-only", "-z", &worktree, &merged])
        .await?
        .split('\0')
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect();
    if files.is_empty() {
        return Ok(Applied { files });
    }

    // The clean result, written at once: from the working tree's state to the merged tree.
    let result = scratch.path().join("result.patch");
    git(
        root,
        [
            "diff".as_ref(),
            "--binary".as_ref(),
            "--full-index".as_ref(),
            "--no-renames".as_ref(),
            "--output".as_ref(),
            result.as_os_str(),
            worktree.as_ref(),
            merged.as_ref(),
        ],
    )
    .await?;
    match git(root, ["apply".as_ref(), result.as_os_str()]).await {
        Ok(_) => Ok(Applied { files }),
        Err(GitError::Failed { stderr, .. }) => Err(ApplyError::DoesNotApply { reason: stderr }),
        Err(err) => Err(err.into()),
    }
}

/// The paths with unmerged entries in the scratch index, once each.
async fn unmerged(root: &Path, index: Option<&Path>) -> Result<Vec<String>, GitError> {
    let listed = git_with_index(root, index, ["ls-files", "--unmerged", "-z"]).await?;
    let mut files: Vec<String> = listed
        .split('\0')
        .filter_map(|entry| entry.split_once('\t').map(|(_, path)| path.to_string()))
        .collect();
    files.dedup();
    Ok(files)
}
