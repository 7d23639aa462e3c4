//! Planning tasks: an agent with read-only access reads the repository, may ask the person
//! questions (the task waits in `waiting` for the answer), and hands back a plan instead of a
//! branch. The plan is versioned in the task's log: version 1 is the planner's, each edit adds
//! one, and a person approves one version.

use nightshift_agent::{AgentOutcome, SinkError};
use nightshift_protocol::{ErrorKind, Event, Plan, PlanHistory, PlanRun, Task, TaskId, TaskState};

use crate::Runner;
use crate::attempts::whole_log;
use crate::ending::{Ending, fail, fail_model};
use crate::handoff::Run;
use crate::sink::TaskLog;
use crate::submit::TaskRequest;

/// What a planning task's agent is told: the repository's rules and checks, then the request.
pub(crate) fn plan_prompt(run: &Run<'_>) -> String {
    let context = crate::environment::agent_context(run.env, run.copy.root());
    format!(
        "{}\n\n# The request to plan\n\n{}",
        context.trim_end(),
        run.task.spec.prompt.trim()
    )
}

/// A planning task's ending: succeeded once the plan is submitted. Its sessions could change
/// nothing, so nothing is saved whatever the outcome.
pub(crate) async fn conclude_plan(
    log: &TaskLog,
    outcome: AgentOutcome,
) -> Result<Ending, SinkError> {
    match outcome {
        AgentOutcome::Planned { plan } => Ok(Ending::new(
            TaskState::Succeeded,
            Some(format!(
                "Plan version 1: {} ({} subtask(s)). Read it with `nightshift plan show`, change it with `plan edit`, approve it with `plan approve`.",
                plan.goal.trim(),
                plan.subtasks.len()
            )),
            None,
        )),
        AgentOutcome::Finished { summary } | AgentOutcome::Reviewed { summary, .. } => {
            fail(
                log,
                ErrorKind::Internal,
                format!("the planner ended without submitting a plan: {summary}"),
                None,
            )
            .await
        }
        AgentOutcome::BudgetExceeded { reason, .. } => {
            fail(
                log,
                ErrorKind::Budget,
                format!("the planner stopped before it submitted a plan: {reason}"),
                Some("plan again with a larger budget (--max-turns, --max-tokens, --max-cost, --max-time)".into()),
            )
            .await
        }
        AgentOutcome::Cancelled => Ok(Ending::cancelled()),
        AgentOutcome::ModelFailed(err) => fail_model(log, err).await,
    }
}

/// Why a plan could not be changed or approved; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("there is no task {0}")]
    NoSuchTask(TaskId),
    #[error("task {0} is not a planning task (`nightshift plan` starts one)")]
    NotAPlan(String),
    #[error("task {0} has no plan yet: it is {1}")]
    NoPlanYet(String, TaskState),
    #[error("the plan of task {task} has no version {version} (the newest is {newest})")]
    NoSuchVersion {
        task: String,
        version: u32,
        newest: u32,
    },
    #[error(
        "the plan of task {task} was approved already (version {version}); it no longer changes"
    )]
    Approved { task: String, version: u32 },
    #[error("the plan is not valid: {0}; nothing was changed")]
    Invalid(String),
    #[error(
        "the plan of task {0} was changed or approved by someone else at the same moment; yours was not kept: read it again (`nightshift plan show`)"
    )]
    Concurrent(String),
    #[error("the plan's run could not be queued: {0}; the plan was not approved")]
    Submit(#[from] crate::SubmitError),
    #[error("{0}")]
    Store(#[from] nightshift_store::StoreError),
}

impl Runner {
    /// The plan history of the planning task `id`, once it has ended with a plan.
    pub async fn plan_history(&self, id: TaskId) -> Result<PlanHistory, PlanError> {
        let task = self
            .store
            .get_task(id)
            .await?
            .ok_or(PlanError::NoSuchTask(id))?;
        if !task.spec.plan {
            return Err(PlanError::NotAPlan(id.short()));
        }
        let history = PlanHistory::read(&whole_log(self.store.as_ref(), id).await?);
        if history.versions.is_empty() {
            return Err(PlanError::NoPlanYet(id.short(), task.state));
        }
        Ok(history)
    }

    /// Stores `plan` as the next version of task `id`'s plan, written by `author`, unless it
    /// is the newest version already. Returns the version that is now the newest.
    pub async fn edit_plan(&self, id: TaskId, plan: Plan, author: &str) -> Result<u32, PlanError> {
        let history = self.plan_history(id).await?;
        if let Some(version) = history.approved {
            return Err(PlanError::Approved {
                task: id.short(),
                version,
            });
        }
        plan.validate().map_err(PlanError::Invalid)?;
        let Some(newest) = history.latest() else {
            return Err(PlanError::NotAPlan(id.short()));
        };
        if newest.plan == plan {
            return Ok(newest.version);
        }
        let version = newest.version + 1;
        let appended = self
            .store
            .append_event(
                id,
                &Event::PlanSubmitted {
                    version,
                    plan,
                    author: author.to_string(),
                },
            )
            .await?;
        // The check above and the append are two steps: an edit or an approval written in
        // between wins, and this one is left without effect.
        let events = whole_log(self.store.as_ref(), id).await?;
        let first = events.iter().find(|record| {
            matches!(&record.event, Event::PlanSubmitted { version: v, .. } if *v == version)
        });
        let approved_before = events.iter().any(|record| {
            record.seq < appended.seq && matches!(record.event, Event::PlanApproved { .. })
        });
        if first.map(|record| record.seq) != Some(appended.seq) || approved_before {
            return Err(PlanError::Concurrent(id.short()));
        }
        Ok(version)
    }

    /// Approves `version` of task `id`'s plan (default: the newest), once, and queues the run
    /// that carries it out. Returns the version and the run.
    pub async fn approve_plan(
        &self,
        id: TaskId,
        version: Option<u32>,
        by: Option<&str>,
    ) -> Result<(u32, Task), PlanError> {
        let history = self.plan_history(id).await?;
        if let Some(approved) = history.approved {
            return Err(PlanError::Approved {
                task: id.short(),
                version: approved,
            });
        }
        let newest = history.latest().map_or(0, |entry| entry.version);
        let version = version.unwrap_or(newest);
        if history.version(version).is_none() {
            return Err(PlanError::NoSuchVersion {
                task: id.short(),
                version,
                newest,
            });
        }
        let planned = self
            .store
            .get_task(id)
            .await?
            .ok_or(PlanError::NoSuchTask(id))?;
        let goal = history
            .version(version)
            .map(|entry| entry.plan.goal.clone())
            .unwrap_or_default();
        let request = TaskRequest {
            base: planned.spec.base.clone(),
            max_turns: planned.spec.max_turns,
            max_tokens: planned.spec.max_tokens,
            max_cost_usd: planned.spec.max_cost_usd,
            max_duration_secs: planned.spec.max_duration_secs,
            plan_run: Some(PlanRun { plan: id, version }),
            ..TaskRequest::new(
                planned.spec.repo.clone(),
                format!("Carry out the plan: {goal}"),
                planned.spec.model.clone(),
            )
        };
        let run = self.submit(request).await?;
        let appended = self
            .store
            .append_event(
                id,
                &Event::PlanApproved {
                    version,
                    by: by.map(str::to_string),
                    run: Some(run.id),
                },
            )
            .await?;
        // Another approval written in between counts, and this one's run is called off
        // before it starts.
        let events = whole_log(self.store.as_ref(), id).await?;
        let first = events
            .iter()
            .find(|record| matches!(record.event, Event::PlanApproved { .. }));
        if first.map(|record| record.seq) != Some(appended.seq) {
            let _ = self.store.request_cancel(run.id).await;
            return Err(PlanError::Concurrent(id.short()));
        }
        Ok((version, run))
    }
}
