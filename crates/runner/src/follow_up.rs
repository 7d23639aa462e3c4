//! Messages to tasks, and follow-ups: a message to a running task steers it (the agent reads
//! it at its next turn); a message to a task that ended with a result starts a follow-up task
//! that continues on the same branch, with the earlier request and result as context.

use nightshift_env::SourceRepo;
use nightshift_protocol::{Event, EventRecord, Task, TaskId, TaskState};

use crate::{Runner, RunnerError, TaskRequest};

/// Why a message was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageRefusal {
    /// The task ended (cancelled, or failed to start) before it ever ran: there is no run to
    /// steer or follow up on.
    #[error("task {} was {state} before it ever ran, so there is no run to follow up on; nothing was sent", id.short())]
    NeverRan { id: TaskId, state: TaskState },
    /// Cancellation was requested and the task has not ended yet.
    #[error("task {} is being cancelled; nothing was sent", id.short())]
    BeingCancelled { id: TaskId },
}

/// What a message did.
#[derive(Debug)]
pub struct MessageOutcome {
    /// The `message_received` event in the task's log.
    pub record: EventRecord,
    /// The follow-up task the message started, when the task had ended.
    pub follow_up: Option<Task>,
    /// Why a follow-up could not start (the message is kept, and the reason logged).
    pub follow_up_error: Option<String>,
}

impl Runner {
    /// Sends `text` to task `id`. A running task reads it at its next turn; a task that
    /// succeeded or failed after running gets a follow-up task (queued, to be claimed like any
    /// other), recorded in its log as `follow_up_started`.
    pub async fn message(
        &self,
        id: TaskId,
        text: &str,
        from: Option<String>,
    ) -> Result<MessageOutcome, RunnerError> {
        let task = self
            .store
            .get_task(id)
            .await?
            .ok_or(RunnerError::NoSuchTask(id))?;
        // Nobody would ever read these: refused rather than silently kept.
        if task.state.is_terminal() && task.started_at.is_none() {
            return Err(RunnerError::MessageRefused(MessageRefusal::NeverRan {
                id,
                state: task.state,
            }));
        }
        if task.cancel_requested && !task.state.is_terminal() {
            return Err(RunnerError::MessageRefused(
                MessageRefusal::BeingCancelled { id },
            ));
        }
        let message = Event::MessageReceived {
            text: text.to_string(),
            from,
        };
        let record = self.store.append_event(id, &message).await?;
        let continues = matches!(task.state, TaskState::Succeeded | TaskState::Failed)
            && task.started_at.is_some();
        let mut outcome = MessageOutcome {
            record,
            follow_up: None,
            follow_up_error: None,
        };
        if !continues {
            return Ok(outcome);
        }
        let spec = &task.spec;
        let request = TaskRequest {
            base: spec.base.clone(),
            max_turns: spec.max_turns,
            max_tokens: spec.max_tokens,
            max_cost_usd: spec.max_cost_usd,
            max_duration_secs: spec.max_duration_secs,
            follows: Some(task.id),
            image: spec.image.clone(),
            ..TaskRequest::new(&spec.repo, text, &spec.model)
        };
        match self.submit(request).await {
            Ok(follow_up) => {
                let started = Event::FollowUpStarted {
                    task_id: follow_up.id,
                };
                self.store.append_event(id, &started).await?;
                outcome.follow_up = Some(follow_up);
            }
            Err(err) => {
                let reason = format!("the message is kept, but no follow-up could start: {err}");
                self.store
                    .append_event(
                        id,
                        &Event::Warning {
                            message: reason.clone(),
                        },
                    )
                    .await?;
                outcome.follow_up_error = Some(reason);
            }
        }
        Ok(outcome)
    }

    /// For a follow-up: the earlier task, whose branch it continues.
    pub(crate) async fn followed(&self, task: &Task) -> Result<Option<Task>, RunnerError> {
        match task.spec.follows {
            Some(parent) => Ok(self.store.get_task(parent).await?),
            None => Ok(None),
        }
    }
}

/// Where a follow-up starts: the current tip of the earlier task's branch (which may have
/// moved since: a person's own commits are kept), as a base name `resolve_base` understands.
pub(crate) async fn follow_up_base(source: &SourceRepo, parent: &Task) -> Option<String> {
    let branch = parent.branch.as_ref()?;
    source
        .has_branch(branch)
        .await
        .ok()
        .filter(|exists| *exists)
        .map(|_| branch.clone())
}

/// The context a follow-up's agent starts with.
pub(crate) fn follow_up_context(parent: &Task) -> String {
    let mut context = String::from(
        "This task follows up on earlier work in this repository. The working copy already contains that work",
    );
    match &parent.branch {
        Some(branch) => context.push_str(&format!(" (branch `{branch}`).\n\n")),
        None => context.push_str(" (it changed no files).\n\n"),
    }
    context.push_str(&format!(
        "The earlier request was:\n{}\n\n",
        parent.spec.prompt.trim()
    ));
    match (&parent.summary, &parent.error) {
        (Some(summary), _) => context.push_str(&format!(
            "The earlier result, as summarized then:\n{}\n\n",
            summary.trim()
        )),
        (None, Some(error)) => context.push_str(&format!(
            "The earlier run ended without finishing: {}\n\n",
            error.trim()
        )),
        (None, None) => {}
    }
    context.push_str("Now the person asks:");
    context
}
