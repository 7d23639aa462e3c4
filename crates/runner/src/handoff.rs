//! Handing the agent's work back: commit it inside the sandbox, bring the commits out as a git
//! bundle into the task's host working copy, and fetch them from there into the source
//! repository as the task's branch.
//!
//! Only git objects cross from the sandbox to the host. Host git never runs in a repository
//! whose configuration the agent could change (hooks, fsmonitor and the like would be code
//! execution on the host), and a sandbox's live workspace may not even be a directory host git
//! can work in.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use nightshift_agent::SinkError;
use nightshift_env::config::Loaded;
use nightshift_env::tree_files::{Links, open_regular};
use nightshift_env::{EnvError, SourceRepo, WorkingCopy, branch_name};
use nightshift_protocol::{Event, Task};
use nightshift_sandbox::{ExecRequest, SandboxSession};
use tokio_util::sync::CancellationToken;

use crate::Runner;
use crate::forge_retry::{PushFailure, push_with_retries};
use crate::sink::TaskLog;

/// What a run works with, once its working copy exists.
#[derive(Clone, Copy)]
pub(crate) struct Run<'a> {
    pub(crate) log: &'a TaskLog,
    pub(crate) task: &'a Task,
    pub(crate) source: &'a SourceRepo,
    pub(crate) copy: &'a WorkingCopy,
    pub(crate) env: &'a Loaded,
    /// The secrets setup gets as environment variables.
    pub(crate) setup_env: &'a [(String, String)],
    /// The secrets the egress proxy adds to requests of every session of the task.
    pub(crate) credentials: &'a [nightshift_sandbox::Credential],
    /// For a follow-up: the earlier task, whose branch this run continues.
    pub(crate) parent: Option<&'a Task>,
    /// For a review of a task: that task, whose request the changes answer.
    pub(crate) reviewed: Option<&'a Task>,
    /// Whether the working copy is a tree a person chose (see `follow_up::Provenance`): only
    /// then does setup get setup secrets and share its layer through the cache.
    pub(crate) chosen_tree: bool,
    /// The cached setup layer(s) every session of the task stacks over its working copy.
    pub(crate) layers: &'a [std::path::PathBuf],
    /// The image every session of the task stands on; `None`: the host's system.
    pub(crate) image: Option<&'a crate::image::TaskImage>,
    /// The image's user the sessions that are not root's run as; `None`: the sandbox's own.
    pub(crate) user: Option<&'a nightshift_sandbox::SessionUser>,
}

/// Where, inside the workspace, the sandbox leaves the bundle of the task's commits.
const BUNDLE: &str = ".git/nightshift-handoff.bundle";

/// The largest bundle handed back; larger results are refused rather than read into memory.
const MAX_BUNDLE_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// The blob holding the task's change as a patch (`nightshift diff`).
pub const DIFF_BLOB: &str = "diff.patch";

#[derive(Debug, thiserror::Error)]
pub(crate) enum HandoffError {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("committing in the sandbox failed: {0}")]
    Commit(String),
    #[error("the result contains the value of secret {} (in the clear or encoded, in a file, a file name or a commit message); it was not committed to a branch", .0.join(", "))]
    SecretInResult(Vec<String>),
    #[error("the result could not be checked for secrets ({0}); it was not committed to a branch")]
    SecretCheck(EnvError),
}

impl Runner {
    /// Commits the work in the sandbox and creates the task's branch in the source repository.
    /// Returns false when there was nothing to commit.
    pub(crate) async fn hand_back(
        &self,
        run: &Run<'_>,
        session: &dyn SandboxSession,
        message: &str,
        incomplete: bool,
    ) -> Result<bool, HandoffError> {
        let Some(head) = commit_in_sandbox(session, run.copy, message).await? else {
            return Ok(false);
        };
        self.publish(run, &head, incomplete).await?;
        Ok(true)
    }

    /// Stores the diff of `head` (a commit in the host working copy) and creates the task's
    /// branch at it in the source repository.
    pub(crate) async fn publish(
        &self,
        run: &Run<'_>,
        head: &str,
        incomplete: bool,
    ) -> Result<(), HandoffError> {
        let Run {
            log,
            task,
            source,
            copy,
            ..
        } = *run;
        let stats = copy.stats(head).await?;
        let diff = copy.diff(head).await?;
        // The patch, and each new object's bytes: the patch compresses binary files and shows
        // neither the commits on the way nor their messages. A check that cannot run fails
        // the hand-off.
        let mut leaked = log.secrets_in(&diff);
        leaked.extend(
            copy.secrets_in_commits(head, &log.current_redactor())
                .await
                .map_err(HandoffError::SecretCheck)?,
        );
        leaked.sort();
        leaked.dedup();
        if !leaked.is_empty() {
            return Err(HandoffError::SecretInResult(leaked));
        }
        // A safeguard: nothing was found, but the stored copy goes through the redactor like
        // every other text a task stores.
        let diff = log.redact(&diff);
        let (branch, update) = match run.parent.and_then(|parent| parent.branch.clone()) {
            Some(branch) => (branch, true),
            None => (branch_name(&task.id.short(), &task.spec.prompt), false),
        };
        // The branch first: it is the work. The stored diff is a copy of what the branch shows,
        // and a blob store that is down must not cost the work. A remote repository's mirror
        // is held meanwhile, so that other tasks' fetches and pushes wait.
        let remote = match (
            &self.config.mirrors,
            nightshift_env::is_remote(&task.spec.repo),
        ) {
            (Some(mirrors), true) => Some((mirrors, mirrors.lock(&task.spec.repo).await?)),
            _ => None,
        };
        copy.hand_off(source, &branch, head, update).await?;
        let pushed = match &remote {
            Some((mirrors, _lock)) => Some(match self.remote_credential(&task.spec.repo).await {
                Ok(credential) => {
                    push_with_retries(mirrors, &task.spec.repo, &branch, credential.as_ref(), 3)
                        .await
                }
                Err(err) => Err(PushFailure {
                    reason: err,
                    outage: false,
                }),
            }),
            None => None,
        };
        drop(remote);
        if let Err(err) = self
            .store
            .put_blob(task.id, DIFF_BLOB, diff.into_bytes().into())
            .await
        {
            log.append(Event::Warning {
                message: format!(
                    "the diff could not be stored ({err}); the branch {branch} has the work (`git diff {}..{branch}`)",
                    copy.base_commit()
                ),
            })
            .await?;
        }
        log.update(|task| {
            task.branch = Some(branch.clone());
            task.head_commit = Some(head.to_string());
        })
        .await?;
        log.append(Event::Committed {
            branch: branch.clone(),
            commit: head.to_string(),
            files_changed: stats.files_changed,
            insertions: stats.insertions,
            deletions: stats.deletions,
            incomplete,
        })
        .await?;
        match pushed {
            Some(Ok(())) => {
                log.append(Event::BranchPushed {
                    remote: task.spec.repo.clone(),
                    branch,
                    commit: head.to_string(),
                })
                .await?;
            }
            // The work is on the branch in the mirror: a push the remote refuses (a protected
            // branch, one that moved elsewhere, no permission) does not lose it, and one an
            // outage held up is tried again later.
            Some(Err(failure)) => {
                log.append(Event::Warning {
                    message: format!(
                        "pushing {branch} to {} failed, and the work stays on that branch of the mirror: {}",
                        task.spec.repo, failure.reason
                    ),
                })
                .await?;
                if failure.outage {
                    let retry = self.defer(task.id, "push", 0, &failure.reason).await;
                    log.append(retry).await?;
                }
            }
            None => {}
        }
        Ok(())
    }

    /// Commits and hands back whatever the agent changed, marked incomplete; a failure here is
    /// logged but does not hide the reason the task stopped.
    pub(crate) async fn save_incomplete(
        &self,
        run: &Run<'_>,
        session: &dyn SandboxSession,
        summary: Option<&str>,
        reason: &str,
    ) -> Result<(), SinkError> {
        let message = commit_message(summary.unwrap_or("Incomplete work"), run.task, Some(reason));
        match self.hand_back(run, session, &message, true).await {
            Ok(_) => Ok(()),
            Err(HandoffError::Sink(err)) => Err(err),
            Err(err) => {
                run.log
                    .append(Event::Warning {
                        message: format!("could not save the incomplete work: {err}"),
                    })
                    .await
            }
        }
    }
}

/// The commit message: the summary's first line as the subject, the rest as the body, and the
/// task's id and prompt as trailers a reviewer can trace back.
pub(crate) fn commit_message(summary: &str, task: &Task, incomplete: Option<&str>) -> String {
    let summary = summary.trim();
    let (subject, body) = summary.split_once('\n').unwrap_or((summary, ""));
    let mut subject: String = subject.trim().chars().take(72).collect();
    if subject.is_empty() {
        subject = "nightshift task result".into();
    }
    let mut message = subject;
    let body = body.trim();
    if !body.is_empty() {
        message.push_str("\n\n");
        message.push_str(body);
    }
    if let Some(reason) = incomplete {
        message.push_str(&format!("\n\nThis work is incomplete: {reason}."));
    }
    let prompt: String = task
        .spec
        .prompt
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect();
    message.push_str(&format!(
        "\n\nNightshift-Task: {}\nNightshift-Prompt: {prompt}\n",
        task.id
    ));
    message
}

/// Where, inside the workspace, the tree of the working copy as the agent found it is recorded
/// when setup or maintenance changed it (see [`record_baseline`]).
const BASELINE: &str = ".git/nightshift-baseline";

/// The git settings every command of ours inside the sandbox runs with: none of the host's or
/// the repository's hooks, no prompts, no signing.
const GIT_PRELUDE: &str = "set -e\n\
     export LC_ALL=C GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null GIT_TERMINAL_PROMPT=0\n\
     g() { git -c user.name=nightshift -c user.email=nightshift@localhost -c commit.gpgsign=false -c core.hooksPath=/dev/null -c core.fsmonitor=false \"$@\"; }\n";

/// Records the tree of the working copy as it stands before the agent starts, after setup and
/// maintenance changed it: what they left is the agent's starting point, and the hand-back
/// commits only what changed since (see [`commit_in_sandbox`]). The tree's objects go into the
/// task's own `.git`; a temporary index keeps the real one as it was.
pub(crate) async fn record_baseline(session: &dyn SandboxSession) -> Result<(), String> {
    let script = format!(
        "{GIT_PRELUDE}\
         export GIT_INDEX_FILE=\"$(mktemp \"$PWD/.git/nightshift-index.XXXXXX\")\"\n\
         trap 'rm -f \"$GIT_INDEX_FILE\" \"$GIT_INDEX_FILE.lock\" \"$GIT_INDEX_FILE.paths\"' EXIT\n\
         cp .git/index \"$GIT_INDEX_FILE\" 2>/dev/null || true\n\
         g -c core.checkStat=minimal add --all\n\
         g write-tree > {BASELINE}\n"
    );
    let mut request = ExecRequest::new(script);
    request.timeout = Duration::from_secs(600);
    let output = session
        .exec(request, &CancellationToken::new())
        .await
        .map_err(|err| err.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "git in the sandbox said (exit {}): {}",
            output.status.code(),
            output.output.trim()
        ))
    }
}

/// Commits what the agent changed in the sandbox's workspace (respecting .gitignore) as
/// nightshift, bundles the commits since the base, and fetches the bundle into the host working
/// copy. Returns the new head, or `None` when nothing changed since the base (commits the agent
/// made itself count as changes).
///
/// When setup or maintenance changed the working copy (a [`record_baseline`] exists), the
/// commit is HEAD with every path the agent changed since that baseline taken from the
/// workspace: a file setup generated and the agent left alone stays out of the branch; one the
/// agent then edited, or deleted, is its change.
pub(crate) async fn commit_in_sandbox(
    session: &dyn SandboxSession,
    copy: &WorkingCopy,
    message: &str,
) -> Result<Option<String>, HandoffError> {
    let base = copy.base_commit();
    let script = format!(
        "{GIT_PRELUDE}\
         g add --all\n\
         baseline=$(cat {BASELINE} 2>/dev/null || true)\n\
         if [ -n \"$baseline\" ] && g rev-parse --quiet --verify \"$baseline^{{tree}}\" >/dev/null; then\n\
           final=$(g write-tree)\n\
           export GIT_INDEX_FILE=\"$(mktemp \"$PWD/.git/nightshift-index.XXXXXX\")\"\n\
           trap 'rm -f \"$GIT_INDEX_FILE\" \"$GIT_INDEX_FILE.lock\" \"$GIT_INDEX_FILE.paths\"' EXIT\n\
           g read-tree HEAD\n\
           g diff --no-renames --name-only -z \"$baseline\" \"$final\" > \"$GIT_INDEX_FILE.paths\"\n\
           if [ -s \"$GIT_INDEX_FILE.paths\" ]; then\n\
             GIT_LITERAL_PATHSPECS=1 g reset --quiet --pathspec-from-file=\"$GIT_INDEX_FILE.paths\" --pathspec-file-nul \"$final\"\n\
           fi\n\
           rm -f \"$GIT_INDEX_FILE.paths\"\n\
         fi\n\
         if ! g diff --cached --quiet; then g commit --quiet --no-verify --file=-; fi\n\
         head=$(g rev-parse HEAD)\n\
         rm -f {BUNDLE}\n\
         if [ \"$head\" != {base} ]; then g bundle create --quiet {BUNDLE} {base}..HEAD; fi\n\
         echo \"nightshift-head: $head\"\n"
    );
    let mut request = ExecRequest::new(script);
    request.stdin = Some(message.as_bytes().to_vec());
    request.timeout = Duration::from_secs(600);
    // The commit must happen even when the task itself was cancelled.
    let output = session
        .exec(request, &CancellationToken::new())
        .await
        .map_err(|err| HandoffError::Commit(err.to_string()))?;
    let head = output
        .output
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("nightshift-head: "))
        .map(str::trim)
        .filter(|head| head.len() >= 40 && head.chars().all(|c| c.is_ascii_hexdigit()));
    let (true, Some(head)) = (output.status.success(), head) else {
        return Err(HandoffError::Commit(format!(
            "git in the sandbox said (exit {}): {}",
            output.status.code(),
            output.output.trim()
        )));
    };
    if head == base {
        return Ok(None);
    }
    let bundle = copy_bundle_out(session.workspace(), copy.root()).await?;
    let imported = copy.import_bundle(&bundle).await;
    let _ = tokio::fs::remove_file(&bundle).await;
    let imported = imported?;
    if imported != head {
        return Err(HandoffError::Commit(format!(
            "the bundle holds {imported}, but the sandbox's HEAD is {head}"
        )));
    }
    Ok(Some(head.to_string()))
}

/// Copies the bundle out of the live workspace into the host working copy's directory. The
/// agent may have put anything at the bundle's path, so it is opened inside the workspace
/// only, never through a symbolic link, and only if it is a regular file (a FIFO is refused,
/// not waited on); it must start as a git bundle does, and no more than
/// [`MAX_BUNDLE_BYTES`] are copied.
async fn copy_bundle_out(
    workspace: &Path,
    host_copy: &Path,
) -> Result<std::path::PathBuf, HandoffError> {
    let workspace = workspace.to_path_buf();
    let target = host_copy.with_extension("handoff.bundle");
    let destination = target.clone();
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        let opened = open_regular(&workspace, Path::new(BUNDLE), Links::Refuse)
            .map_err(|err| format!("the bundle of the result was refused: {err}"))?;
        let too_large = || format!("the result is larger than {} GiB", MAX_BUNDLE_BYTES >> 30);
        if opened.len > MAX_BUNDLE_BYTES {
            return Err(too_large());
        }
        let mut limited = opened.file.take(MAX_BUNDLE_BYTES + 1);
        let mut head = Vec::with_capacity(BUNDLE_SIGNATURE_LEN);
        (&mut limited)
            .take(BUNDLE_SIGNATURE_LEN as u64)
            .read_to_end(&mut head)
            .map_err(|err| format!("reading the bundle: {err}"))?;
        if !is_bundle_signature(&head) {
            return Err(format!(
                "`{BUNDLE}` in the sandbox is not a git bundle (it does not start with \
                 `# v2 git bundle` or `# v3 git bundle`); it was not handed to git"
            ));
        }
        let mut out = std::fs::File::create(&destination)
            .map_err(|err| format!("creating {}: {err}", destination.display()))?;
        out.write_all(&head)
            .map_err(|err| format!("copying the bundle: {err}"))?;
        let copied = std::io::copy(&mut limited, &mut out)
            .map_err(|err| format!("copying the bundle: {err}"))?;
        if copied + head.len() as u64 > MAX_BUNDLE_BYTES {
            return Err(too_large());
        }
        Ok(())
    })
    .await
    .map_err(|err| HandoffError::Commit(err.to_string()))?
    .map_err(|err| {
        let _ = std::fs::remove_file(&target);
        HandoffError::Commit(err)
    })?;
    Ok(target)
}

/// How long a git bundle's first line is, in both versions.
const BUNDLE_SIGNATURE_LEN: usize = 16;

fn is_bundle_signature(head: &[u8]) -> bool {
    head == b"# v2 git bundle\n" || head == b"# v3 git bundle\n"
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::path::PathBuf;
    use std::time::Duration;

    use super::{BUNDLE, copy_bundle_out};

    /// A workspace (`<dir>/ws`, with `.git/`) and where its host working copy would be.
    fn places() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let workspace = dir.path().join("ws");
        std::fs::create_dir_all(workspace.join(".git")).unwrap();
        let copy = dir.path().join("copy");
        (dir, workspace, copy)
    }

    async fn copied(
        workspace: &std::path::Path,
        copy: &std::path::Path,
    ) -> Result<Vec<u8>, String> {
        let result =
            tokio::time::timeout(Duration::from_secs(10), copy_bundle_out(workspace, copy))
                .await
                .expect("copying the bundle blocked");
        match result {
            Ok(path) => Ok(std::fs::read(path).unwrap()),
            Err(err) => Err(err.to_string()),
        }
    }

    #[tokio::test]
    async fn a_real_bundle_is_copied_whole() {
        let (_dir, workspace, copy) = places();
        let bundle = b"# v2 git bundle\nabc HEAD\n\nPACK...".to_vec();
        std::fs::write(workspace.join(BUNDLE), &bundle).unwrap();
        assert_eq!(copied(&workspace, &copy).await.unwrap(), bundle);
    }

    #[tokio::test]
    async fn a_fifo_a_link_or_a_non_bundle_is_refused_without_blocking() {
        let (dir, workspace, copy) = places();
        let target = workspace.join(BUNDLE);
        let status = std::process::Command::new("mkfifo")
            .arg(&target)
            .status()
            .unwrap();
        assert!(status.success());
        let err = copied(&workspace, &copy).await.unwrap_err();
        assert!(err.contains("is a FIFO, not a regular file"), "{err}");
        assert!(!copy.with_extension("handoff.bundle").exists());

        std::fs::remove_file(&target).unwrap();
        let host = dir.path().join("host.bundle");
        std::fs::write(&host, "# v2 git bundle\nhost\n").unwrap();
        std::os::unix::fs::symlink(&host, &target).unwrap();
        let err = copied(&workspace, &copy).await.unwrap_err();
        assert!(err.contains("is a symbolic link"), "{err}");

        std::fs::remove_file(&target).unwrap();
        std::fs::write(&target, "[core]\n\tfsmonitor = touch /tmp/x\n").unwrap();
        let err = copied(&workspace, &copy).await.unwrap_err();
        assert!(err.contains("is not a git bundle"), "{err}");
        assert!(!copy.with_extension("handoff.bundle").exists());

        // `.git` itself linked out of the workspace.
        std::fs::remove_dir_all(workspace.join(".git")).unwrap();
        std::fs::create_dir(dir.path().join("hostgit")).unwrap();
        std::fs::write(
            dir.path().join("hostgit/nightshift-handoff.bundle"),
            "# v2 git bundle\n",
        )
        .unwrap();
        std::os::unix::fs::symlink(dir.path().join("hostgit"), workspace.join(".git")).unwrap();
        let err = copied(&workspace, &copy).await.unwrap_err();
        assert!(err.contains("leads outside"), "{err}");
    }
}
