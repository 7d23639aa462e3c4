//! Best-of-N tasks. Such a task runs no agent itself: it queues one attempt per model it lists,
//! each an ordinary task with the same request that is verified by the checks as any task is,
//! runs the attempts (a worker elsewhere may take some first), reviews the ones that succeeded
//! when there is more than one to choose from, ranks them (see
//! [`nightshift_protocol::AttemptRank`]) and takes the best one's branch as its own. The other
//! attempts keep their branches.
//!
//! Every step is in the task's log (`attempt_queued`, `attempt_review_queued`,
//! `attempts_ranked`), so a worker that takes the task over after another died queues nothing
//! twice.

use std::time::Duration;

use nightshift_agent::SinkError;
use nightshift_protocol::{
    AttemptOf, AttemptRank, ErrorKind, Event, EventRecord, REVIEW_PROMPT, Task, TaskId, TaskState,
    Usage, choice_reason, rank_attempts,
};
use tokio_util::sync::CancellationToken;

use crate::ending::{Ending, fail, set_state};
use crate::lifecycle::Stops;
use crate::sink::TaskLog;
use crate::submit::{ReviewOf, TaskRequest};
use crate::{DIFF_BLOB, Runner};

/// How long a cancelled best-of-N task waits for its attempts to notice before it ends.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

/// Every event of the task `id`, page by page.
pub(crate) async fn whole_log(
    store: &dyn nightshift_store::Store,
    id: TaskId,
) -> Result<Vec<EventRecord>, nightshift_store::StoreError> {
    let mut all: Vec<EventRecord> = Vec::new();
    loop {
        let after = all.last().map_or(0, |record| record.seq);
        let page = store.events(id, after, 5_000).await?;
        if page.is_empty() {
            return Ok(all);
        }
        all.extend(page);
    }
}

impl Runner {
    /// Runs the best-of-N task in `log` to its ending.
    pub(crate) async fn run_attempts(
        &self,
        log: &TaskLog,
        stop: &CancellationToken,
        stops: &Stops,
    ) -> Result<Ending, SinkError> {
        let task = log.snapshot().await;
        let n = task.spec.attempts.len();
        set_state(
            log,
            TaskState::Running,
            Some(&format!("running {n} attempts")),
        )
        .await?;
        let attempts = match self.queue_attempts(log, &task).await? {
            Ok(attempts) => attempts,
            Err(ending) => return Ok(ending),
        };
        let ids: Vec<TaskId> = attempts.iter().map(|(id, _)| *id).collect();
        if let Some(ending) = self.run_tasks(log, &ids, stop, stops).await? {
            return Ok(ending);
        }
        let mut ranking = Vec::new();
        for (id, index) in &attempts {
            let (child, events) = self.read_task(*id).await?;
            ranking.push(AttemptRank::read(&child, *index, &events));
        }
        // Reviews only pay when there is a choice to make among attempts that succeeded.
        let candidates: Vec<TaskId> = ranking
            .iter()
            .filter(|rank| rank.succeeded())
            .map(|rank| rank.task_id)
            .collect();
        if candidates.len() > 1 {
            set_state(
                log,
                TaskState::Verifying,
                Some(&format!(
                    "reviewing the {} attempts that succeeded",
                    candidates.len()
                )),
            )
            .await?;
            let reviews = self.queue_reviews(log, &task, &candidates).await?;
            let review_ids: Vec<TaskId> = reviews.iter().map(|(_, review)| *review).collect();
            if let Some(ending) = self.run_tasks(log, &review_ids, stop, stops).await? {
                return Ok(ending);
            }
            for (attempt, review) in reviews {
                let (_, events) = self.read_task(review).await?;
                if let Some(rank) = ranking.iter_mut().find(|rank| rank.task_id == attempt) {
                    rank.reviewed(review, &events);
                }
            }
        }
        rank_attempts(&mut ranking);
        self.choose(log, &task, ranking).await
    }

    /// The attempts of `task`, queued now where its log has none yet, as (id, index).
    async fn queue_attempts(
        &self,
        log: &TaskLog,
        task: &Task,
    ) -> Result<Result<Vec<(TaskId, u32)>, Ending>, SinkError> {
        let events = self.own_log(task.id).await?;
        let mut queued: Vec<(TaskId, u32)> = events
            .iter()
            .filter_map(|record| match &record.event {
                Event::AttemptQueued { task_id, index, .. } => Some((*task_id, *index)),
                _ => None,
            })
            .collect();
        for (index, model) in task.spec.attempts.iter().enumerate() {
            let index = index as u32;
            if queued.iter().any(|(_, queued)| *queued == index) {
                continue;
            }
            let request = TaskRequest {
                base: task.spec.base.clone(),
                max_turns: task.spec.max_turns,
                max_tokens: task.spec.max_tokens,
                max_cost_usd: task.spec.max_cost_usd,
                max_duration_secs: task.spec.max_duration_secs,
                image: task.spec.image.clone(),
                attempt_of: Some(AttemptOf {
                    task: task.id,
                    index,
                }),
                ..TaskRequest::new(
                    task.spec.repo.clone(),
                    task.spec.prompt.clone(),
                    model.clone(),
                )
            };
            match self.submit(request).await {
                Ok(attempt) => {
                    log.append(Event::AttemptQueued {
                        task_id: attempt.id,
                        index,
                        model: model.clone(),
                    })
                    .await?;
                    queued.push((attempt.id, index));
                }
                Err(err) => {
                    // The attempts queued so far are not wanted without the rest.
                    for (id, _) in &queued {
                        let _ = self.store.request_cancel(*id).await;
                    }
                    let hint = err.hint();
                    let message = format!("attempt {} could not be queued: {err}", index + 1);
                    return fail(log, ErrorKind::InvalidInput, message, hint)
                        .await
                        .map(Err);
                }
            }
        }
        queued.sort_by_key(|(_, index)| *index);
        Ok(Ok(queued))
    }

    /// A review of each of `attempts`, queued now where the log has none yet, as
    /// (attempt, review).
    async fn queue_reviews(
        &self,
        log: &TaskLog,
        task: &Task,
        attempts: &[TaskId],
    ) -> Result<Vec<(TaskId, TaskId)>, SinkError> {
        let events = self.own_log(task.id).await?;
        let mut reviews: Vec<(TaskId, TaskId)> = events
            .iter()
            .filter_map(|record| match &record.event {
                Event::AttemptReviewQueued { attempt, review } => Some((*attempt, *review)),
                _ => None,
            })
            .collect();
        for attempt in attempts {
            if reviews.iter().any(|(reviewed, _)| reviewed == attempt) {
                continue;
            }
            let Some(model) = self.store.get_task(*attempt).await.ok().flatten() else {
                continue;
            };
            let request = TaskRequest {
                max_tokens: task.spec.max_tokens,
                max_cost_usd: task.spec.max_cost_usd,
                max_duration_secs: task.spec.max_duration_secs,
                review: Some(ReviewOf::Task(*attempt)),
                ..TaskRequest::new(task.spec.repo.clone(), REVIEW_PROMPT, model.spec.model)
            };
            match self.submit(request).await {
                Ok(review) => {
                    log.append(Event::AttemptReviewQueued {
                        attempt: *attempt,
                        review: review.id,
                    })
                    .await?;
                    reviews.push((*attempt, review.id));
                }
                // Ranked without its review: it comes after the attempts that were read.
                Err(err) => {
                    log.append(Event::Warning {
                        message: format!(
                            "the review of attempt {} was not queued: {err}",
                            attempt.short()
                        ),
                    })
                    .await?
                }
            }
        }
        Ok(reviews)
    }

    /// Runs the tasks `ids` that are still queued, all at once in this worker, and waits for
    /// every one of them to end, whoever runs it. `Some` ending when this task stopped first.
    async fn run_tasks(
        &self,
        log: &TaskLog,
        ids: &[TaskId],
        stop: &CancellationToken,
        stops: &Stops,
    ) -> Result<Option<Ending>, SinkError> {
        // The tasks stop with this one, except when the worker shuts down: then each is
        // handed back to the queue on its own.
        let (cancel, relay) = crate::fan_out::cancel_relay(stop, stops);
        // Whatever is queued runs here; what other workers run is waited for, and taken over
        // should one of them let go of it.
        let waited = loop {
            let runs = ids
                .iter()
                .map(|id| self.clone().claim_and_run(*id, &cancel, stops));
            futures::future::join_all(runs).await;
            if stop.is_cancelled() {
                break Ok(());
            }
            match self.all_ended(ids).await {
                Ok(true) => break Ok(()),
                Ok(false) => {}
                Err(err) => break Err(err),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.cancel_poll) => {}
                _ = stop.cancelled() => {}
            }
        };
        relay.abort();
        if stops.shutdown.is_cancelled() {
            return Ok(Some(Ending::released()));
        }
        if stop.is_cancelled() {
            // Attempts that other workers run hear of it through the store.
            for id in ids {
                let _ = self.store.request_cancel(*id).await;
            }
            let ended = async {
                while !self.all_ended(ids).await.unwrap_or(true) {
                    tokio::time::sleep(self.config.cancel_poll).await;
                }
            };
            let _ = tokio::time::timeout(CANCEL_WAIT, ended).await;
            return Ok(Some(Ending::cancelled()));
        }
        match waited {
            Ok(()) => Ok(None),
            Err(err) => fail(
                log,
                ErrorKind::Internal,
                format!("following the attempts: {err}"),
                None,
            )
            .await
            .map(Some),
        }
    }

    /// Whether every task of `ids` has ended.
    async fn all_ended(&self, ids: &[TaskId]) -> Result<bool, nightshift_store::StoreError> {
        for id in ids {
            let ended = self
                .store
                .get_task(*id)
                .await?
                .is_none_or(|task| task.state.is_terminal());
            if !ended {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Takes the best of `ranking` (best first) as the task's result and says why.
    async fn choose(
        &self,
        log: &TaskLog,
        task: &Task,
        ranking: Vec<AttemptRank>,
    ) -> Result<Ending, SinkError> {
        let n = ranking.len();
        let reason = choice_reason(&ranking);
        let chosen = ranking.iter().find(|rank| rank.branch.is_some()).cloned();
        let mut usage = Usage::default();
        let mut turns = 0;
        let mut cost: Option<f64> = None;
        for rank in &ranking {
            let mut ids = vec![rank.task_id];
            ids.extend(rank.review);
            for id in ids {
                if let Ok(Some(spent)) = self.store.get_task(id).await {
                    usage += spent.usage;
                    turns += spent.turns;
                }
            }
            if let Some(spent) = rank.cost_usd {
                cost = Some(cost.unwrap_or(0.0) + spent);
            }
        }
        log.append(Event::AttemptsRanked {
            ranking: ranking.clone(),
            chosen: chosen.as_ref().map(|rank| rank.task_id),
            reason: reason.clone(),
        })
        .await?;
        let best = match &chosen {
            Some(rank) => self.store.get_task(rank.task_id).await.ok().flatten(),
            None => None,
        };
        log.update(|row| {
            row.usage = usage;
            row.turns = turns;
            if let Some(best) = &best {
                row.base_commit = best.base_commit.clone();
                row.branch = best.branch.clone();
                row.head_commit = best.head_commit.clone();
            }
        })
        .await?;
        if let Some(best) = &best
            && let Ok(Some(diff)) = self.store.get_blob(best.id, DIFF_BLOB).await
            && let Err(err) = self.store.put_blob(task.id, DIFF_BLOB, diff).await
        {
            log.append(Event::Warning {
                message: format!("the chosen attempt's diff was not copied: {err}"),
            })
            .await?;
        }
        let ending = match (&chosen, &best) {
            (Some(rank), Some(best)) if rank.succeeded() => Ending::new(
                TaskState::Succeeded,
                Some(format!(
                    "{}\n\nBest of {n}: attempt {} ({}, task {}) was chosen, as {reason}.",
                    best.summary.as_deref().unwrap_or("").trim(),
                    rank.index + 1,
                    rank.model,
                    rank.task_id.short(),
                )),
                None,
            ),
            _ => {
                let kind = match &best {
                    Some(best) => self.error_kind(best.id).await,
                    None => ErrorKind::Internal,
                };
                let (message, hint) = match &chosen {
                    Some(rank) => (
                        format!(
                            "none of the {n} attempts succeeded; the branch is attempt {}'s ({reason})",
                            rank.index + 1
                        ),
                        format!(
                            "`nightshift compare {}` shows each attempt and why it failed",
                            task.id.short()
                        ),
                    ),
                    None => (
                        format!("none of the {n} attempts succeeded or left a branch"),
                        format!(
                            "`nightshift compare {}` shows each attempt and why it failed",
                            task.id.short()
                        ),
                    ),
                };
                fail(log, kind, message, Some(hint)).await?
            }
        };
        Ok(Ending {
            cost_usd: cost,
            ..ending
        })
    }

    /// The kind of the error that ended the task `id` (internal when its log has none).
    async fn error_kind(&self, id: TaskId) -> ErrorKind {
        let events = self.own_log(id).await.unwrap_or_default();
        events
            .iter()
            .rev()
            .find_map(|record| match &record.event {
                Event::Error { kind, .. } => Some(*kind),
                _ => None,
            })
            .unwrap_or(ErrorKind::Internal)
    }

    async fn own_log(&self, id: TaskId) -> Result<Vec<EventRecord>, SinkError> {
        whole_log(self.store.as_ref(), id)
            .await
            .map_err(|err| SinkError(format!("reading the log of {}: {err}", id.short())))
    }

    async fn read_task(&self, id: TaskId) -> Result<(Task, Vec<EventRecord>), SinkError> {
        let task = self
            .store
            .get_task(id)
            .await
            .map_err(|err| SinkError(format!("reading task {}: {err}", id.short())))?
            .ok_or_else(|| SinkError(format!("task {} is gone", id.short())))?;
        Ok((task, self.own_log(id).await?))
    }

    /// What a forge report of `task` reads: for a best-of-N task, the chosen attempt's log
    /// (its checks, its push) and then its own; any other task's own log.
    pub(crate) async fn forge_view(
        &self,
        task: &Task,
        events: Vec<EventRecord>,
    ) -> Vec<EventRecord> {
        if task.spec.attempts.is_empty() {
            return events;
        }
        let chosen = events.iter().rev().find_map(|record| match &record.event {
            Event::AttemptsRanked { chosen, .. } => *chosen,
            _ => None,
        });
        let Some(chosen) = chosen else {
            return events;
        };
        let mut view = whole_log(self.store.as_ref(), chosen)
            .await
            .unwrap_or_default();
        view.extend(events);
        view
    }
}
