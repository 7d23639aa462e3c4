//! The plan branch as the run's result: the report, the row, the diff and the commit.

use nightshift_agent::SinkError;
use nightshift_protocol::{ErrorKind, Event, Plan, TaskState};

use super::Progress;
use crate::ending::{Ending, fail};
use crate::forge_retry::push_with_retries;
use crate::handoff::Run;
use crate::{DIFF_BLOB, Runner};

impl Runner {
    /// The run's ending once every subtask is merged or failed.
    pub(super) async fn conclude_plan_run(
        &self,
        run: &Run<'_>,
        plan: &Plan,
        branch: &str,
        progress: &Progress,
        published: bool,
    ) -> Result<Ending, SinkError> {
        let log = run.log;
        if progress.failed.is_empty() {
            // The acceptance checks are required of the finished whole: when the last merge
            // did not run them (its subtask changed nothing), they run now.
            let head = copy_head(run.copy).await;
            if !plan.acceptance.is_empty() && progress.accepted.as_deref() != Some(head.as_str()) {
                let checking = super::merge::acceptance_only(run.env, plan);
                let failed = self
                    .verify(
                        &Run {
                            env: &checking,
                            ..*run
                        },
                        &head,
                    )
                    .await?;
                if !failed.is_empty() {
                    let names: Vec<&str> = failed.iter().map(|(check, _)| check.as_str()).collect();
                    let ending = fail(
                        log,
                        ErrorKind::Checks,
                        format!(
                            "every subtask is merged, but check {} failed on {branch}",
                            names.join(", ")
                        ),
                        None,
                    )
                    .await?;
                    return match published {
                        true => self.finish_plan_branch(run, branch, ending).await,
                        false => Ok(ending),
                    };
                }
            }
            let summary = format!(
                "{} subtask(s) merged into {branch}, in this order: {}; the checks passed after each merge.",
                plan.subtasks.len(),
                progress.merged.join(", ")
            );
            let ending = Ending::new(TaskState::Succeeded, Some(summary), None);
            return match published {
                true => self.finish_plan_branch(run, branch, ending).await,
                false => Ok(ending),
            };
        }
        let report: Vec<String> = progress
            .failed
            .iter()
            .map(|(name, why)| format!("{name}: {why}"))
            .collect();
        let ending = fail(
            log,
            ErrorKind::Checks,
            format!(
                "{} of {} subtask(s) were not merged: {}",
                progress.failed.len(),
                plan.subtasks.len(),
                report.join("; ")
            ),
            Some(format!(
                "`nightshift ls` lists the subtasks; {} holds what was merged",
                match published {
                    true => branch,
                    false => "no branch",
                }
            )),
        )
        .await?;
        match published {
            true => self.finish_plan_branch(run, branch, ending).await,
            false => Ok(ending),
        }
    }

    /// Points the plan branch at `head` in the source repository, creating it unless
    /// `update`; a remote repository's mirror is held meanwhile, as a task's hand-back holds it.
    pub(super) async fn move_plan_branch(
        &self,
        run: &Run<'_>,
        branch: &str,
        head: &str,
        update: bool,
    ) -> Result<(), String> {
        let repo = run.task.spec.repo.as_str();
        let _lock = match (&self.config.mirrors, nightshift_env::is_remote(repo)) {
            (Some(mirrors), true) => Some(mirrors.lock(repo).await.map_err(|err| err.to_string())?),
            _ => None,
        };
        run.copy
            .hand_off(run.source, branch, head, update)
            .await
            .map_err(|err| err.to_string())?;
        drop(_lock);
        // Pushed at once, so that subtasks other machines run can start from it.
        self.push_plan_branch(run, branch, head)
            .await
            .map_err(|err| err.to_string())
    }

    /// Pushes the plan branch of a remote repository, as a task's hand-back pushes its branch;
    /// the run's pull request follows from its `branch_pushed` event.
    async fn push_plan_branch(
        &self,
        run: &Run<'_>,
        branch: &str,
        head: &str,
    ) -> Result<(), SinkError> {
        let repo = run.task.spec.repo.trim();
        let (Some(mirrors), true) = (&self.config.mirrors, nightshift_env::is_remote(repo)) else {
            return Ok(());
        };
        let pushed = match mirrors.lock(repo).await {
            Ok(_lock) => match self.remote_credential(repo).await {
                Ok(credential) => push_with_retries(mirrors, repo, branch, credential.as_ref(), 3)
                    .await
                    .map_err(|failure| failure.reason),
                Err(reason) => Err(reason),
            },
            Err(err) => Err(err.to_string()),
        };
        let event = match pushed {
            Ok(()) => Event::BranchPushed {
                remote: repo.to_string(),
                branch: branch.to_string(),
                commit: head.to_string(),
            },
            Err(reason) => Event::Warning {
                message: format!(
                    "pushing {branch} to {repo} failed, and the plan branch stays on the mirror: {reason}"
                ),
            },
        };
        run.log.append(event).await
    }

    /// Records the plan branch as the run's result: its row, its diff and its commit event.
    pub(super) async fn finish_plan_branch(
        &self,
        run: &Run<'_>,
        branch: &str,
        ending: Ending,
    ) -> Result<Ending, SinkError> {
        let Run {
            log, task, copy, ..
        } = *run;
        let head = copy_head(copy).await;
        let stats = copy.stats(&head).await.unwrap_or_default();
        if let Ok(diff) = copy.diff(&head).await
            && let Err(err) = self
                .store
                .put_blob(task.id, DIFF_BLOB, log.redact(&diff).into_bytes().into())
                .await
        {
            log.append(Event::Warning {
                message: format!("the plan branch's diff could not be stored: {err}"),
            })
            .await?;
        }
        log.update(|row| {
            row.branch = Some(branch.to_string());
            row.head_commit = Some(head.clone());
        })
        .await?;
        log.append(Event::Committed {
            branch: branch.to_string(),
            commit: head.clone(),
            files_changed: stats.files_changed,
            insertions: stats.insertions,
            deletions: stats.deletions,
            incomplete: ending.state != TaskState::Succeeded,
        })
        .await?;
        Ok(Ending {
            keep_copy: false,
            ..ending
        })
    }
}

/// The commit the working copy stands on.
pub(super) async fn copy_head(copy: &nightshift_env::WorkingCopy) -> String {
    copy.head()
        .await
        .unwrap_or_else(|_| copy.base_commit().to_string())
}
