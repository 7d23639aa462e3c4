//! Merging a finished subtask into the plan branch: the merge, the checks after it, and the
//! resolution task when it conflicts.

use nightshift_agent::SinkError;
use nightshift_env::Merge;
use nightshift_env::config::Check;
use nightshift_protocol::{ErrorKind, Event, Plan, Subtask, SubtaskOf, Task, TaskId, TaskState};

use super::branch::copy_head;
use super::{Progress, subtask_prompt};
use crate::Runner;
use crate::ending::{Ending, fail};
use crate::follow_up::Provenance;
use crate::handoff::Run;
use crate::submit::TaskRequest;

impl Runner {
    /// Merges every subtask whose task has ended since the last look; `Some` ending when the
    /// run must stop. The tasks that are queued (not yet run, or let go of) go to `waiting`.
    pub(super) async fn settle_ended(
        &self,
        run: &Run<'_>,
        plan: &Plan,
        branch: &str,
        progress: &mut Progress,
        published: &mut bool,
        waiting: &mut Vec<TaskId>,
    ) -> Result<Option<Ending>, SinkError> {
        let Run {
            log,
            task,
            source,
            copy,
            ..
        } = *run;
        for (name, id) in progress.in_flight() {
            let Ok(Some(child)) = self.store.get_task(id).await else {
                continue;
            };
            if !child.state.is_terminal() {
                if child.state == TaskState::Queued {
                    waiting.push(id);
                }
                continue;
            }
            let resolution = progress.resolving.get(&name) == Some(&id);
            let Some(child_branch) = child.branch.clone().filter(|_| !child.no_changes()) else {
                match child.state {
                    // Its result is the merge: one that changed nothing left it undone.
                    TaskState::Succeeded if resolution => progress.failed.push((
                        name,
                        format!(
                            "its resolution {} changed nothing: the merge was not made",
                            id.short()
                        ),
                    )),
                    TaskState::Succeeded => {
                        progress.merged.push(name.clone());
                        log.append(Event::SubtaskMerged {
                            name,
                            task_id: id,
                            commit: None,
                        })
                        .await?;
                    }
                    state => progress.failed.push((
                        name,
                        format!(
                            "task {} {state}: {}",
                            id.short(),
                            child.error.as_deref().unwrap_or("no result")
                        ),
                    )),
                }
                continue;
            };
            if child.state != TaskState::Succeeded {
                progress.failed.push((
                    name,
                    format!(
                        "task {} {}: {} (its work is on {child_branch})",
                        id.short(),
                        child.state,
                        child.error.as_deref().unwrap_or("no result")
                    ),
                ));
                continue;
            }
            if nightshift_env::is_remote(&task.spec.repo) {
                // A subtask another machine ran pushed its branch: the mirror gets it first.
                let _ = self.open_source(&task.spec.repo).await;
            }
            let message = format!("Merge subtask {name} (task {})", id.short());
            let merged = match copy.merge(source, &child_branch, &message).await {
                Ok(merged) => merged,
                Err(err) => {
                    progress
                        .failed
                        .push((name, format!("merging {child_branch}: {err}")));
                    continue;
                }
            };
            let head = match merged {
                Merge::Merged(head) => head,
                Merge::UpToDate => copy_head(copy).await,
                Merge::Conflict(files) if resolution => {
                    log.append(Event::MergeConflict {
                        name: name.clone(),
                        files: files.clone(),
                        resolution: None,
                    })
                    .await?;
                    progress.failed.push((
                        name,
                        format!(
                            "its resolution {child_branch} conflicts again, in {}",
                            files.join(", ")
                        ),
                    ));
                    continue;
                }
                Merge::Conflict(files) => {
                    let resolution = self
                        .resolve(run, plan, branch, &name, &child_branch, &files, published)
                        .await?;
                    if let Some(resolution) = resolution {
                        waiting.push(resolution);
                        progress.tasks.insert(name.clone(), resolution);
                        progress.resolving.insert(name, resolution);
                    } else {
                        progress
                            .failed
                            .push((name, format!("its merge conflicts in {}", files.join(", "))));
                    }
                    continue;
                }
            };
            let checking = with_acceptance(run.env, plan);
            let mut failed = self
                .verify(
                    &Run {
                        env: &checking,
                        ..*run
                    },
                    &head,
                )
                .await?;
            // The acceptance checks say when the whole is done: until the last merge they
            // are evidence of progress, and only the repository's own checks must pass.
            let last = plan
                .subtasks
                .iter()
                .all(|subtask| subtask.name == name || progress.done(&subtask.name));
            if !last {
                failed.retain(|(check, _)| !check.starts_with(ACCEPTANCE));
            } else if failed.is_empty() {
                progress.accepted = Some(head.clone());
            }
            if let Err(err) = self.move_plan_branch(run, branch, &head, *published).await {
                // Someone else moved the plan branch, or git failed: the merge is not kept.
                let message = format!("{branch} could not be moved to the merge of {name}: {err}");
                return fail(log, ErrorKind::Repository, message, None)
                    .await
                    .map(Some);
            }
            *published = true;
            progress.merged.push(name.clone());
            log.append(Event::SubtaskMerged {
                name: name.clone(),
                task_id: id,
                commit: Some(head),
            })
            .await?;
            if !failed.is_empty() {
                let names: Vec<&str> = failed.iter().map(|(check, _)| check.as_str()).collect();
                let ending = fail(
                    log,
                    ErrorKind::Checks,
                    format!(
                        "after merging subtask {name}, check {} failed on {branch}",
                        names.join(", ")
                    ),
                    Some(format!(
                        "{branch} holds the merges so far; each check's log is in `nightshift logs {}`",
                        task.id.short()
                    )),
                )
                .await?;
                return Ok(Some(self.finish_plan_branch(run, branch, ending).await?));
            }
        }
        Ok(None)
    }

    /// Starts a task that resolves the conflicting merge of `name`'s branch into the plan
    /// branch (published first, so that it can start from it).
    #[allow(clippy::too_many_arguments)]
    async fn resolve(
        &self,
        run: &Run<'_>,
        plan: &Plan,
        branch: &str,
        name: &str,
        merging: &str,
        files: &[String],
        published: &mut bool,
    ) -> Result<Option<TaskId>, SinkError> {
        let Run {
            log, task, copy, ..
        } = *run;
        let head = copy_head(copy).await;
        if let Err(err) = self.move_plan_branch(run, branch, &head, *published).await {
            log.append(Event::Warning {
                message: format!("could not publish {branch} for the resolution: {err}"),
            })
            .await?;
            return Ok(None);
        }
        *published = true;
        let prompt = format!(
            "{}\n\n# Your subtask: resolve a merge\n\nThe working copy is `{branch}`, in the middle of merging `{merging}` (subtask `{name}` of the plan) into it. git reports conflicts in: {}. Resolve each conflict so that the changes of both sides are kept as the plan intends, remove every conflict marker, and run the checks. Do not commit, abort or restart the merge: when you finish, nightshift commits it.",
            subtask_prompt(
                plan,
                &Subtask {
                    name: name.to_string(),
                    prompt: format!("Merge the work of subtask `{name}` into the plan branch."),
                    paths: files.to_vec(),
                    depends_on: Vec::new(),
                }
            )
            .trim_end(),
            files.join(", ")
        );
        let request = TaskRequest {
            base: Some(branch.to_string()),
            merge: Some(merging.to_string()),
            subtask_of: Some(SubtaskOf {
                run: task.id,
                name: format!("{name} (merge)"),
            }),
            ..self.child_request(task, prompt)
        };
        let resolution = match self.submit(request).await {
            Ok(resolution) => Some(resolution.id),
            Err(err) => {
                log.append(Event::Warning {
                    message: format!("the resolution of {name}'s merge was not queued: {err}"),
                })
                .await?;
                None
            }
        };
        log.append(Event::MergeConflict {
            name: name.to_string(),
            files: files.to_vec(),
            resolution,
        })
        .await?;
        Ok(resolution)
    }
}

impl Runner {
    /// Whose configuration a task stands on. A subtask that starts from the plan branch, and a
    /// resolution (which also merges a subtask's branch), stand on what agents merged: as for
    /// a follow-up, the configuration counts as a person's only where nothing merged changed
    /// it. Any other task's is [`Provenance::CHOSEN`].
    pub(crate) async fn subtask_provenance(
        &self,
        log: &crate::sink::TaskLog,
        source: &nightshift_env::SourceRepo,
        task: &Task,
        head: &str,
    ) -> Result<Provenance, SinkError> {
        const AGENTS: Provenance = Provenance {
            configuration: false,
            chosen_tree: false,
        };
        let Some(of) = &task.spec.subtask_of else {
            return Ok(Provenance::CHOSEN);
        };
        let Ok(Some(run)) = self.store.get_task(of.run).await else {
            return Ok(AGENTS);
        };
        let mut provenance = self.follow_up_provenance(log, source, &run, head).await?;
        if let Some(merging) = &task.spec.merge {
            let Ok(branch) = source.resolve_base(Some(merging)).await else {
                return Ok(AGENTS);
            };
            let merged = self
                .follow_up_provenance(log, source, &run, &branch.commit)
                .await?;
            provenance.configuration &= merged.configuration;
            provenance.chosen_tree = false;
        }
        Ok(provenance)
    }

    /// A resolution task starts with the merge it resolves under way in its working copy;
    /// one whose merge cannot be started fails (`Some` ending).
    pub(crate) async fn begin_merge(
        &self,
        log: &crate::sink::TaskLog,
        source: &nightshift_env::SourceRepo,
        copy: &nightshift_env::WorkingCopy,
        task: &Task,
    ) -> Result<Option<Ending>, SinkError> {
        let Some(merging) = &task.spec.merge else {
            return Ok(None);
        };
        let message = match copy.start_merge(source, merging).await {
            Ok(files) if files.is_empty() => format!(
                "merging {merging} into the working copy went through; it is not committed yet"
            ),
            Ok(files) => format!(
                "merging {merging} into the working copy conflicts in {}; the conflicts are in the files",
                files.join(", ")
            ),
            Err(err) => {
                let message = format!("could not start merging {merging}: {err}");
                return fail(log, ErrorKind::Repository, message, None)
                    .await
                    .map(Some);
            }
        };
        log.append(Event::Warning { message }).await?;
        Ok(None)
    }
}

/// How the plan's acceptance checks are named among the checks.
const ACCEPTANCE: &str = "acceptance: ";

/// The repository's configuration with the plan's acceptance checks in place of its own.
pub(super) fn acceptance_only(env: &nightshift_env::Loaded, plan: &Plan) -> nightshift_env::Loaded {
    let mut env = with_acceptance(env, plan);
    env.config
        .checks
        .retain(|check| check.name.starts_with(ACCEPTANCE));
    env
}

/// The repository's configuration with the plan's acceptance checks after its own checks.
fn with_acceptance(env: &nightshift_env::Loaded, plan: &Plan) -> nightshift_env::Loaded {
    let mut env = env.clone();
    env.config
        .checks
        .extend(plan.acceptance.iter().map(|check| Check {
            name: format!("{ACCEPTANCE}{}", check.name),
            run: check.run.clone(),
            timeout: None,
        }));
    env
}
