//! Between nightshift's types and SQLite's columns: times as unix milliseconds, counts as
//! INTEGER, specs and events as their JSON. Decoding checks everything, so that a row written by
//! a newer nightshift or damaged by hand shows up as [`StoreError::Corrupt`], not as a panic or
//! a silently wrong value.

use jiff::Timestamp;
use nightshift_protocol::{Event, EventRecord, Task, TaskId, TaskSpec, TaskState, Usage};

use crate::StoreError;

/// `SELECT <every column a Task is made of> FROM tasks <rest>`, as one string literal (sqlx
/// takes only `&'static str` queries).
macro_rules! select_tasks {
    ($rest:literal) => {
        concat!(
            "SELECT id, state, spec, created_at, updated_at, started_at, finished_at, \
             base_commit, branch, head_commit, summary, error, turns, input_tokens, \
             cached_input_tokens, output_tokens, cancel_requested FROM tasks ",
            $rest
        )
    };
}
pub(super) use select_tasks;

/// A `tasks` row as SQLite returns it, before any checking.
#[derive(sqlx::FromRow)]
pub(super) struct TaskRow {
    id: String,
    state: String,
    spec: String,
    created_at: i64,
    updated_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    base_commit: Option<String>,
    branch: Option<String>,
    head_commit: Option<String>,
    summary: Option<String>,
    error: Option<String>,
    turns: i64,
    input_tokens: i64,
    cached_input_tokens: i64,
    output_tokens: i64,
    cancel_requested: bool,
}

impl TaskRow {
    pub(super) fn id(&self) -> &str {
        &self.id
    }

    pub(super) fn into_task(self) -> Result<Task, StoreError> {
        let id: TaskId = self
            .id
            .parse()
            .map_err(|error| StoreError::corrupt(format!("a task row's id: {error}")))?;
        let field = |name: &str| format!("task {id}'s {name}");
        let spec: TaskSpec = serde_json::from_str(&self.spec)
            .map_err(|error| StoreError::corrupt(format!("{}: {error}", field("spec"))))?;
        Ok(Task {
            id,
            spec,
            state: parse_state(&self.state, || field("state"))?,
            created_at: from_millis(self.created_at, || field("created_at"))?,
            updated_at: from_millis(self.updated_at, || field("updated_at"))?,
            started_at: self
                .started_at
                .map(|ms| from_millis(ms, || field("started_at")))
                .transpose()?,
            finished_at: self
                .finished_at
                .map(|ms| from_millis(ms, || field("finished_at")))
                .transpose()?,
            base_commit: self.base_commit,
            branch: self.branch,
            head_commit: self.head_commit,
            summary: self.summary,
            error: self.error,
            turns: u32::try_from(self.turns)
                .map_err(|_| StoreError::corrupt(format!("{} = {}", field("turns"), self.turns)))?,
            usage: Usage {
                input_tokens: count(self.input_tokens, || field("input_tokens"))?,
                cached_input_tokens: count(self.cached_input_tokens, || {
                    field("cached_input_tokens")
                })?,
                output_tokens: count(self.output_tokens, || field("output_tokens"))?,
            },
            cancel_requested: self.cancel_requested,
        })
    }
}

/// A task's columns, ready to bind.
pub(super) struct TaskColumns {
    pub id: String,
    pub state: &'static str,
    pub spec: String,
    pub repo: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub turns: i64,
    pub input_tokens: i64,
    pub cached_input_tokens: i64,
    pub output_tokens: i64,
}

impl TaskColumns {
    pub(super) fn of(task: &Task) -> Result<TaskColumns, StoreError> {
        let spec = serde_json::to_string(&task.spec).map_err(|cause| StoreError::Serialize {
            what: format!("the spec of task {}", task.id),
            cause,
        })?;
        Ok(TaskColumns {
            id: task.id.to_string(),
            state: task.state.as_str(),
            spec,
            repo: task.spec.repo.clone(),
            created_at: millis(task.created_at),
            updated_at: millis(task.updated_at),
            started_at: task.started_at.map(millis),
            finished_at: task.finished_at.map(millis),
            turns: i64::from(task.turns),
            input_tokens: integer(task.usage.input_tokens),
            cached_input_tokens: integer(task.usage.cached_input_tokens),
            output_tokens: integer(task.usage.output_tokens),
        })
    }
}

/// An `events` row as SQLite returns it.
#[derive(sqlx::FromRow)]
pub(super) struct EventRow {
    seq: i64,
    at: i64,
    body: String,
}

impl EventRow {
    pub(super) fn into_record(self, task_id: TaskId) -> Result<EventRecord, StoreError> {
        let what = || format!("event {} of task {task_id}", self.seq);
        let event: Event = serde_json::from_str(&self.body)
            .map_err(|error| StoreError::corrupt(format!("{}: {error}", what())))?;
        Ok(EventRecord {
            task_id,
            seq: count(self.seq, || format!("{}'s seq", what()))?,
            at: from_millis(self.at, || format!("{}'s time", what()))?,
            event,
        })
    }
}

/// An event's `body` column: its own tagged JSON.
pub(super) fn event_body(task_id: TaskId, event: &Event) -> Result<String, StoreError> {
    serde_json::to_string(event).map_err(|cause| StoreError::Serialize {
        what: format!("a `{}` event of task {task_id}", event.kind()),
        cause,
    })
}

pub(super) fn parse_state(
    text: &str,
    what: impl FnOnce() -> String,
) -> Result<TaskState, StoreError> {
    text.parse()
        .map_err(|error| StoreError::corrupt(format!("{}: {error}", what())))
}

/// Now, at the precision the store keeps, so that what a call returns equals what a later read
/// gives back.
pub(super) fn now() -> Timestamp {
    truncate(Timestamp::now())
}

/// `at` at the precision the store keeps (milliseconds).
pub(super) fn truncate(at: Timestamp) -> Timestamp {
    Timestamp::from_millisecond(at.as_millisecond()).unwrap_or(at)
}

pub(super) fn millis(at: Timestamp) -> i64 {
    at.as_millisecond()
}

fn from_millis(ms: i64, what: impl FnOnce() -> String) -> Result<Timestamp, StoreError> {
    Timestamp::from_millisecond(ms)
        .map_err(|error| StoreError::corrupt(format!("{} = {ms}: {error}", what())))
}

/// SQLite integers are signed; token counts beyond `i64::MAX` are stored as `i64::MAX`.
pub(super) fn integer(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn count(value: i64, what: impl FnOnce() -> String) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::corrupt(format!("{} = {value}", what())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn times_keep_milliseconds() {
        let at: Timestamp = "2025-06-01T12:34:56.789123456Z".parse().unwrap();
        let kept = truncate(at);
        assert_eq!(kept.to_string(), "2025-06-01T12:34:56.789Z");
        assert_eq!(from_millis(millis(kept), String::new).unwrap(), kept);
    }

    #[test]
    fn huge_counts_saturate_and_negative_ones_are_corrupt() {
        assert_eq!(integer(u64::MAX), i64::MAX);
        assert!(matches!(
            count(-1, || "x".into()),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
