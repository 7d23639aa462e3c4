//! The run of an approved plan. It runs no agent itself: it queues each subtask as a task of
//! its own once the subtasks it depends on are merged (independent ones side by side, up to
//! all at once in this worker; two whose declared paths overlap, or one that declares none,
//! never beside another), and merges each subtask's branch into one plan branch as it
//! succeeds, in the order they finish, which respects their dependencies. After each merge the
//! plan's acceptance checks and the repository's checks run on the merged tree in a fresh
//! sandbox; a repository check must pass after every merge, the acceptance checks after the
//! last. A merge that conflicts starts a resolution task, which starts from the plan branch
//! with the merge under way and its conflicts in the files; its result is merged instead. A
//! check that fails, a subtask that fails, or a resolution that conflicts again stops the run
//! with a report; the plan branch keeps what was merged.
//!
//! Every step is in the run's log (`subtask_queued`, `merge_conflict`, `subtask_merged`), so a
//! worker that takes the run over queues nothing twice.

use std::collections::BTreeMap;

use nightshift_agent::SinkError;
use nightshift_env::branch_name;
use nightshift_protocol::{ErrorKind, Event, Plan, Subtask, SubtaskOf, Task, TaskId, TaskState};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

mod branch;
mod merge;

use crate::Runner;
use crate::attempts::whole_log;
use crate::ending::{Ending, fail, set_state};
use crate::handoff::Run;
use crate::lifecycle::Stops;
use crate::submit::TaskRequest;

/// Where each subtask stands.
#[derive(Default)]
struct Progress {
    /// The task doing each subtask now: the subtask's own, or its resolution.
    tasks: BTreeMap<String, TaskId>,
    /// Subtasks whose merge conflicted: their task is a resolution.
    resolving: BTreeMap<String, TaskId>,
    /// Merged, in order.
    merged: Vec<String>,
    /// Subtasks that will not be merged, and why.
    failed: Vec<(String, String)>,
    /// The plan branch's commit on which the acceptance checks last passed.
    accepted: Option<String>,
}

impl Progress {
    fn read(events: &[nightshift_protocol::EventRecord]) -> Progress {
        let mut progress = Progress::default();
        for record in events {
            match &record.event {
                Event::SubtaskQueued { name, task_id } => {
                    progress.tasks.insert(name.clone(), *task_id);
                }
                Event::MergeConflict {
                    name,
                    resolution: Some(resolution),
                    ..
                } => {
                    progress.tasks.insert(name.clone(), *resolution);
                    progress.resolving.insert(name.clone(), *resolution);
                }
                Event::SubtaskMerged { name, .. } => progress.merged.push(name.clone()),
                _ => {}
            }
        }
        progress
    }

    fn done(&self, name: &str) -> bool {
        self.merged.iter().any(|merged| merged == name)
            || self.failed.iter().any(|(failed, _)| failed == name)
    }

    /// Queued and not yet merged or failed.
    fn in_flight(&self) -> Vec<(String, TaskId)> {
        self.tasks
            .iter()
            .filter(|(name, _)| !self.done(name))
            .map(|(name, id)| (name.clone(), *id))
            .collect()
    }
}

/// Whether two subtasks may touch the same files: declared paths that contain one another,
/// or no declared paths at all (which could be anything).
fn overlaps(a: &Subtask, b: &Subtask) -> bool {
    if a.paths.is_empty() || b.paths.is_empty() {
        return true;
    }
    let within = |inner: &str, outer: &str| {
        let (inner, outer) = (inner.trim_end_matches('/'), outer.trim_end_matches('/'));
        inner == outer || inner.starts_with(&format!("{outer}/"))
    };
    a.paths
        .iter()
        .any(|x| b.paths.iter().any(|y| within(x, y) || within(y, x)))
}

/// What a subtask's agent is told: the plan it is part of, then its own part.
fn subtask_prompt(plan: &Plan, subtask: &Subtask) -> String {
    let mut prompt = format!(
        "# The plan this task is part of\n\nGoal: {}\n",
        plan.goal.trim()
    );
    for constraint in &plan.constraints {
        prompt.push_str(&format!("- Constraint: {}\n", constraint.trim()));
    }
    let others: Vec<&str> = plan
        .subtasks
        .iter()
        .filter(|other| other.name != subtask.name)
        .map(|other| other.name.as_str())
        .collect();
    if !others.is_empty() {
        prompt.push_str(&format!(
            "Other tasks do the other subtasks ({}); leave their work to them.\n",
            others.join(", ")
        ));
    }
    prompt.push_str(&format!(
        "\n# Your subtask: {}\n\n{}\n",
        subtask.name,
        subtask.prompt.trim()
    ));
    if !subtask.paths.is_empty() {
        prompt.push_str(&format!(
            "\nIt is expected to change: {}.\n",
            subtask.paths.join(", ")
        ));
    }
    prompt
}

impl Runner {
    /// Runs the approved plan of `run.task` to its ending; see the module's documentation.
    pub(crate) async fn run_plan(
        &self,
        run: &Run<'_>,
        stop: &CancellationToken,
        stops: &Stops,
    ) -> Result<Ending, SinkError> {
        let Run {
            log, task, source, ..
        } = *run;
        let Some(spec) = task.spec.plan_run else {
            return fail(log, ErrorKind::Internal, "not a plan's run".into(), None).await;
        };
        let plan = match self.plan_history(spec.plan).await {
            Ok(history) => match history.version(spec.version) {
                Some(entry) => entry.plan.clone(),
                None => {
                    let message = format!("the plan has no version {}", spec.version);
                    return fail(log, ErrorKind::InvalidInput, message, None).await;
                }
            },
            Err(err) => return fail(log, ErrorKind::InvalidInput, err.to_string(), None).await,
        };
        let branch = branch_name(&task.id.short(), &format!("plan {}", plan.goal));
        set_state(
            log,
            TaskState::Running,
            Some(&format!("running {} subtasks", plan.subtasks.len())),
        )
        .await?;
        let events = whole_log(self.store.as_ref(), task.id)
            .await
            .map_err(|err| SinkError(err.to_string()))?;
        let mut progress = Progress::read(&events);
        // A run taken over goes on from the plan branch the earlier one left.
        let mut published = false;
        if source.has_branch(&branch).await.unwrap_or(false) {
            if let Err(err) = run.copy.reset_to(source, &branch).await {
                let message = format!("could not go on from {branch}: {err}");
                return fail(log, ErrorKind::Repository, message, None).await;
            }
            published = true;
        }
        let (cancel, relay) = cancel_relay(stop, stops);
        // Each subtask this worker runs is a task of the runtime's own, so that it goes on
        // while the run merges and checks (and never waits on a connection the run needs).
        let mut running: JoinSet<TaskId> = JoinSet::new();
        let mut active = std::collections::BTreeSet::new();
        let mut queued = Vec::new();
        // An error ends the loop, but not before the subtasks are stopped and waited for.
        let outcome: Result<Option<Ending>, SinkError> = async {
            loop {
                if stop.is_cancelled() {
                    return Ok(None);
                }
                let mut waiting = Vec::new();
                let settled = self
                    .settle_ended(
                        run,
                        &plan,
                        &branch,
                        &mut progress,
                        &mut published,
                        &mut waiting,
                    )
                    .await?;
                if let Some(ending) = settled {
                    return Ok(Some(ending));
                }
                // Subtasks and resolutions still queued (a worker elsewhere may have let go of
                // one): this worker runs them.
                for id in waiting {
                    if active.insert(id) {
                        running.spawn(self.clone().claim_and_run(id, &cancel, stops));
                    }
                }
                queued.clear();
                self.queue_ready(run, &plan, &branch, &mut progress, published, &mut queued)
                    .await?;
                for id in queued.drain(..) {
                    active.insert(id);
                    running.spawn(self.clone().claim_and_run(id, &cancel, stops));
                }
                if plan
                    .subtasks
                    .iter()
                    .all(|subtask| progress.done(&subtask.name))
                {
                    return self
                        .conclude_plan_run(run, &plan, &branch, &progress, published)
                        .await
                        .map(Some);
                }
                tokio::select! {
                    done = running.join_next(), if !running.is_empty() => {
                        if let Some(Ok(id)) = done {
                            active.remove(&id);
                        }
                    }
                    _ = tokio::time::sleep(self.config.cancel_poll) => {}
                    _ = stop.cancelled() => {}
                }
            }
        }
        .await;
        let succeeded =
            matches!(&outcome, Ok(Some(ending)) if ending.state == TaskState::Succeeded);
        if !succeeded && !stops.shutdown.is_cancelled() {
            // What is still running is not wanted any more; subtasks that other workers run
            // hear of it through the store.
            cancel.cancel();
            for (_, id) in progress.in_flight() {
                let _ = self.store.request_cancel(id).await;
            }
        }
        while running.join_next().await.is_some() {}
        relay.abort();
        let ending = match outcome? {
            Some(ending) => ending,
            None if stops.shutdown.is_cancelled() => return Ok(Ending::released()),
            None => Ending::cancelled(),
        };
        // What the run cost is what its subtasks and resolutions cost.
        let mut ids: Vec<TaskId> = progress.tasks.values().copied().collect();
        ids.extend(progress.resolving.values().copied());
        ids.extend(active);
        ids.sort();
        ids.dedup();
        let (mut usage, mut turns, mut cost) = (nightshift_protocol::Usage::default(), 0, None);
        for id in ids {
            if let Ok(Some(child)) = self.store.get_task(id).await {
                usage += child.usage;
                turns += child.turns;
            }
            let spent = whole_log(self.store.as_ref(), id)
                .await
                .unwrap_or_default()
                .iter()
                .rev()
                .find_map(|record| match record.event {
                    Event::Ended { cost_usd, .. } => cost_usd,
                    _ => None,
                });
            if let Some(spent) = spent {
                cost = Some(cost.unwrap_or(0.0) + spent);
            }
        }
        log.update(|row| {
            row.usage = usage;
            row.turns = turns;
        })
        .await?;
        Ok(Ending {
            cost_usd: cost,
            ..ending
        })
    }

    /// Queues every subtask that may start now: its dependencies merged, none of them failed,
    /// and nothing running that may touch its files. Their ids go to `queued`.
    async fn queue_ready(
        &self,
        run: &Run<'_>,
        plan: &Plan,
        branch: &str,
        progress: &mut Progress,
        published: bool,
        queued: &mut Vec<TaskId>,
    ) -> Result<(), SinkError> {
        let Run { log, task, .. } = *run;
        for subtask in &plan.subtasks {
            if progress.tasks.contains_key(&subtask.name) || progress.done(&subtask.name) {
                continue;
            }
            let failed_dependency = subtask.depends_on.iter().find(|dependency| {
                progress
                    .failed
                    .iter()
                    .any(|(failed, _)| failed == *dependency)
            });
            if let Some(dependency) = failed_dependency {
                progress.failed.push((
                    subtask.name.clone(),
                    format!("not run: `{dependency}`, which it depends on, failed"),
                ));
                continue;
            }
            let ready = subtask
                .depends_on
                .iter()
                .all(|dependency| progress.merged.contains(dependency));
            let crowded = progress.in_flight().iter().any(|(name, _)| {
                plan.subtasks
                    .iter()
                    .find(|other| &other.name == name)
                    .is_some_and(|other| overlaps(subtask, other))
            });
            if !ready || crowded {
                continue;
            }
            let base = match subtask.depends_on.is_empty() || !published {
                true => task.spec.base.clone(),
                false => Some(branch.to_string()),
            };
            let request = TaskRequest {
                base,
                subtask_of: Some(SubtaskOf {
                    run: task.id,
                    name: subtask.name.clone(),
                }),
                ..self.child_request(task, subtask_prompt(plan, subtask))
            };
            match self.submit(request).await {
                Ok(child) => {
                    log.append(Event::SubtaskQueued {
                        name: subtask.name.clone(),
                        task_id: child.id,
                    })
                    .await?;
                    progress.tasks.insert(subtask.name.clone(), child.id);
                    queued.push(child.id);
                }
                Err(err) => progress
                    .failed
                    .push((subtask.name.clone(), format!("could not be queued: {err}"))),
            }
        }
        Ok(())
    }

    /// The request of a task the run queues for `task`: its repository, model and budgets.
    fn child_request(&self, task: &Task, prompt: String) -> TaskRequest {
        TaskRequest {
            max_turns: task.spec.max_turns,
            max_tokens: task.spec.max_tokens,
            max_cost_usd: task.spec.max_cost_usd,
            max_duration_secs: task.spec.max_duration_secs,
            image: task.spec.image.clone(),
            ..TaskRequest::new(task.spec.repo.clone(), prompt, task.spec.model.clone())
        }
    }

    /// Claims the queued task `id` and runs it here, unless another worker has it.
    pub(crate) fn claim_and_run(
        self,
        id: TaskId,
        cancel: &CancellationToken,
        stops: &Stops,
    ) -> impl Future<Output = TaskId> + Send + 'static {
        let own = Stops {
            cancel: cancel.child_token(),
            shutdown: stops.shutdown.clone(),
        };
        async move {
            match self
                .store
                .claim_task(id, &self.config.worker, self.config.lease)
                .await
            {
                Ok(true) => {}
                // Another worker has it, or it has ended.
                Ok(false) => return id,
                Err(err) => {
                    tracing::warn!(task = %id, "could not claim it: {err}");
                    return id;
                }
            }
            let Ok(Some(task)) = self.store.get_task(id).await else {
                return id;
            };
            if let Err(err) = Box::pin(self.run_claimed(task, own)).await {
                tracing::error!(task = %id, "running it failed: {err}");
            }
            id
        }
    }
}

/// A token that stops the subtasks with the run, except when the worker shuts down: then
/// each is handed back to the queue on its own.
pub(crate) fn cancel_relay(
    stop: &CancellationToken,
    stops: &Stops,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let cancel = CancellationToken::new();
    let relay = {
        let (stop, shutdown, cancel) = (stop.clone(), stops.shutdown.clone(), cancel.clone());
        tokio::spawn(async move {
            stop.cancelled().await;
            if !shutdown.is_cancelled() {
                cancel.cancel();
            }
        })
    };
    (cancel, relay)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subtask(paths: &[&str]) -> Subtask {
        Subtask {
            name: "s".into(),
            prompt: "p".into(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            depends_on: vec![],
        }
    }

    #[test]
    fn paths_overlap_when_one_contains_the_other_or_none_are_declared() {
        assert!(overlaps(&subtask(&["src"]), &subtask(&["src/a.rs"])));
        assert!(overlaps(&subtask(&["NOTES.md"]), &subtask(&["NOTES.md"])));
        assert!(!overlaps(&subtask(&["src/a.rs"]), &subtask(&["src/ab.rs"])));
        assert!(!overlaps(&subtask(&["a"]), &subtask(&["b/"])));
        assert!(overlaps(&subtask(&[]), &subtask(&["b"])));
    }
}
