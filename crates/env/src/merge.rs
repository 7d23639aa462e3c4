//! Merging one branch of the source repository into a working copy, as a plan's run does with
//! each subtask's branch: a merge commit, or the files that conflict (and nothing changed).

use crate::git::{GitError, git};
use crate::{EnvError, SourceRepo, WorkingCopy};

/// Where the branch being merged is fetched to in the working copy.
const MERGING_REF: &str = "refs/nightshift/merging";

/// nightshift commits its merges under its own name, whatever the machine's git says.
const IDENTITY: [&str; 4] = [
    "-c",
    "user.name=nightshift",
    "-c",
    "user.email=nightshift@localhost",
];

/// How a merge came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merge {
    /// The merge commit, now the copy's HEAD.
    Merged(String),
    /// The branch had nothing the copy lacks.
    UpToDate,
    /// These files conflict; the copy is as it was before.
    Conflict(Vec<String>),
}

impl WorkingCopy {
    /// The commit the copy's HEAD is at.
    pub async fn head(&self) -> Result<String, EnvError> {
        Ok(git(self.root(), ["rev-parse", "HEAD"]).await?)
    }

    /// Fetches `branch` from `source` and merges it into the copy's HEAD with a merge commit
    /// whose message is `message`. A conflict is aborted: the copy stays as it was, and the
    /// conflicting files are returned.
    pub async fn merge(
        &self,
        source: &SourceRepo,
        branch: &str,
        message: &str,
    ) -> Result<Merge, EnvError> {
        self.fetch_for_merge(source, branch).await?;
        let before = git(self.root(), ["rev-parse", "HEAD"]).await?;
        let mut args: Vec<&str> = IDENTITY.to_vec();
        args.extend(["merge", "--no-ff", "--no-edit", "-m", message, MERGING_REF]);
        match git(self.root(), &args).await {
            Ok(_) => {
                let head = git(self.root(), ["rev-parse", "HEAD"]).await?;
                Ok(match head == before {
                    true => Merge::UpToDate,
                    false => Merge::Merged(head),
                })
            }
            Err(GitError::Failed { .. }) => {
                let files = self.conflicted().await?;
                let _ = git(self.root(), ["merge", "--abort"]).await;
                git(self.root(), ["reset", "--quiet", "--hard", &before]).await?;
                Ok(Merge::Conflict(files))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Makes the copy stand on `branch` of `source` (a plan branch another run left), its work
    /// tree and index with it.
    pub async fn reset_to(&self, source: &SourceRepo, branch: &str) -> Result<String, EnvError> {
        self.fetch_for_merge(source, branch).await?;
        git(self.root(), ["reset", "--quiet", "--hard", MERGING_REF]).await?;
        self.head().await
    }

    /// Starts merging `branch` of `source` into the copy and leaves it there: conflict markers
    /// in the files and the merge in progress, for an agent to resolve; its commit is then the
    /// merge commit. Returns the conflicting files (none when the merge went through, which
    /// leaves the merge uncommitted all the same).
    pub async fn start_merge(
        &self,
        source: &SourceRepo,
        branch: &str,
    ) -> Result<Vec<String>, EnvError> {
        self.fetch_for_merge(source, branch).await?;
        let mut args: Vec<&str> = IDENTITY.to_vec();
        args.extend(["merge", "--no-ff", "--no-commit", MERGING_REF]);
        match git(self.root(), &args).await {
            Ok(_) => Ok(Vec::new()),
            Err(GitError::Failed { .. }) => self.conflicted().await,
            Err(err) => Err(err.into()),
        }
    }

    async fn fetch_for_merge(&self, source: &SourceRepo, branch: &str) -> Result<(), EnvError> {
        let refspec = format!("+refs/heads/{branch}:{MERGING_REF}");
        git(
            self.root(),
            [
                "fetch".as_ref(),
                "--quiet".as_ref(),
                "--no-tags".as_ref(),
                "--no-write-fetch-head".as_ref(),
                source.root().as_os_str(),
                refspec.as_ref(),
            ],
        )
        .await?;
        Ok(())
    }

    async fn conflicted(&self) -> Result<Vec<String>, EnvError> {
        let listed = git(self.root(), ["diff", "--name-only", "--diff-filter=U"]).await?;
        Ok(listed.lines().map(str::to_string).collect())
    }
}
