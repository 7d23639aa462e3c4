//! How a task's run ends before it is written down, and the small steps every stage uses to
//! record a state or a failure.

use std::time::Duration;

use nightshift_agent::{Budget, SinkError};
use nightshift_env::EnvError;
use nightshift_model::ModelError;
use nightshift_protocol::{ErrorKind, Event, Task, TaskState};

use crate::sink::TaskLog;

/// How a run ended, before it is written down.
pub(crate) struct Ending {
    pub(crate) state: TaskState,
    pub(crate) summary: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) cost_usd: Option<f64>,
    /// Keep the working copy: it holds work that could not be handed back.
    pub(crate) keep_copy: bool,
    /// The worker is shutting down: the task goes back to the queue instead of ending.
    pub(crate) released: bool,
    /// The repository's `[review] auto` asks for a review of the result.
    pub(crate) review_after: bool,
}

impl Ending {
    pub(crate) fn new(state: TaskState, summary: Option<String>, error: Option<String>) -> Self {
        Ending {
            state,
            summary,
            error,
            cost_usd: None,
            keep_copy: false,
            released: false,
            review_after: false,
        }
    }

    pub(crate) fn released() -> Self {
        Ending {
            released: true,
            ..Ending::new(TaskState::Queued, None, None)
        }
    }

    pub(crate) fn cancelled() -> Self {
        Ending::new(
            TaskState::Cancelled,
            Some("cancelled on request".into()),
            None,
        )
    }
}

/// The task's budget: its own limits, and the runner's wall-clock limit unless the task has a
/// shorter one.
pub(crate) fn budget(task: &Task, max_duration: Option<Duration>) -> Budget {
    let own = task.spec.max_duration_secs.map(Duration::from_secs);
    Budget {
        max_turns: task.spec.max_turns,
        max_tokens: task.spec.max_tokens,
        max_cost_usd: task.spec.max_cost_usd,
        max_duration: match (own, max_duration) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        },
    }
}

pub(crate) async fn set_state(
    log: &TaskLog,
    state: TaskState,
    detail: Option<&str>,
) -> Result<(), SinkError> {
    log.update(|task| task.state = state).await?;
    log.append(Event::StateChanged {
        state,
        detail: detail.map(str::to_string),
    })
    .await
}

pub(crate) async fn fail(
    log: &TaskLog,
    kind: ErrorKind,
    message: String,
    hint: Option<String>,
) -> Result<Ending, SinkError> {
    log.append(Event::Error {
        kind,
        message: message.clone(),
        hint,
    })
    .await?;
    Ok(Ending::new(TaskState::Failed, None, Some(message)))
}

pub(crate) async fn fail_env(log: &TaskLog, err: EnvError) -> Result<Ending, SinkError> {
    let kind = if err.is_invalid_input() {
        ErrorKind::InvalidInput
    } else {
        ErrorKind::Repository
    };
    let hint = err.hint();
    fail(log, kind, err.to_string(), hint).await
}

pub(crate) async fn fail_model(log: &TaskLog, err: ModelError) -> Result<Ending, SinkError> {
    let kind = match &err {
        ModelError::Unreachable { .. } | ModelError::IdleTimeout(_) => ErrorKind::ModelUnreachable,
        ModelError::Unauthorized { .. } => ErrorKind::ModelAuth,
        ModelError::Malformed { .. } => ErrorKind::ModelProtocol,
        ModelError::Config(_) | ModelError::ReplayDiverged { .. } => ErrorKind::InvalidInput,
        ModelError::Cancelled => return Ok(Ending::cancelled()),
        ModelError::RateLimited { .. }
        | ModelError::Server { .. }
        | ModelError::Rejected { .. } => ErrorKind::Model,
    };
    let hint = err.hint().map(str::to_string);
    fail(log, kind, err.to_string(), hint).await
}
