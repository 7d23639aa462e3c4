//! Between nightshift's types and the database's columns, for both backends: times as unix
//! milliseconds (SQLite INTEGER, PostgreSQL BIGINT), counts as 64-bit integers, specs and events
//! as their JSON text. The two schemas are kept column-for-column alike so that one set of row
//! types decodes both. Decoding checks everything, so that a row written by a newer nightshift or
//! damaged by hand shows up as [`StoreError::Corrupt`], not as a panic or a silently wrong value.

use jiff::Timestamp;
use nightshift_protocol::{
    ApiToken, Event, EventRecord, Repository, Task, TaskId, TaskSpec, TaskState, TokenScope, Usage,
};

use sqlx::query::Query;
use sqlx::{Database, Encode, Type};

use crate::{SealedSecret, StoreError};

/// Every column a `Task` is made of, as one string literal (sqlx takes only `&'static str`
/// queries), for `SELECT` and `RETURNING`.
macro_rules! task_columns {
    () => {
        "id, state, spec, created_at, updated_at, started_at, finished_at, base_commit, branch, \
         head_commit, summary, error, turns, input_tokens, cached_input_tokens, output_tokens, \
         cancel_requested, worker, lease_expires_at"
    };
}
pub(crate) use task_columns;

/// `SELECT <every column a Task is made of> FROM tasks <rest>`.
macro_rules! select_tasks {
    ($rest:literal) => {
        concat!("SELECT ", task_columns!(), " FROM tasks ", $rest)
    };
}
pub(crate) use select_tasks;

/// A `tasks` row as the database returns it, before any checking.
#[derive(sqlx::FromRow)]
pub(crate) struct TaskRow {
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
    worker: Option<String>,
    lease_expires_at: Option<i64>,
}

impl TaskRow {
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn into_task(self) -> Result<Task, StoreError> {
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
            worker: self.worker,
            lease_expires_at: self
                .lease_expires_at
                .map(|ms| from_millis(ms, || field("lease_expires_at")))
                .transpose()?,
        })
    }
}

/// A task's columns as both backends store them, in the order of the parameters `$1`..`$17` of
/// [`crate::queries::INSERT_TASK`] and [`crate::queries::UPDATE_TASK`].
pub(crate) struct TaskColumns {
    id: String,
    state: &'static str,
    spec: String,
    repo: String,
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
}

impl TaskColumns {
    pub(crate) fn of(task: &Task) -> Result<TaskColumns, StoreError> {
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
            base_commit: task.base_commit.clone(),
            branch: task.branch.clone(),
            head_commit: task.head_commit.clone(),
            summary: task.summary.clone(),
            error: task.error.clone(),
            turns: i64::from(task.turns),
            input_tokens: integer(task.usage.input_tokens),
            cached_input_tokens: integer(task.usage.cached_input_tokens),
            output_tokens: integer(task.usage.output_tokens),
        })
    }

    /// Binds the columns as `$1`..`$17`, on either backend.
    pub(crate) fn bind<'q, DB>(
        self,
        query: Query<'q, DB, <DB as Database>::Arguments>,
    ) -> Query<'q, DB, <DB as Database>::Arguments>
    where
        DB: Database,
        for<'a> String: Encode<'a, DB> + Type<DB>,
        for<'a> Option<String>: Encode<'a, DB> + Type<DB>,
        for<'a> i64: Encode<'a, DB> + Type<DB>,
        for<'a> Option<i64>: Encode<'a, DB> + Type<DB>,
    {
        query
            .bind(self.id)
            .bind(self.state.to_string())
            .bind(self.spec)
            .bind(self.repo)
            .bind(self.created_at)
            .bind(self.updated_at)
            .bind(self.started_at)
            .bind(self.finished_at)
            .bind(self.base_commit)
            .bind(self.branch)
            .bind(self.head_commit)
            .bind(self.summary)
            .bind(self.error)
            .bind(self.turns)
            .bind(self.input_tokens)
            .bind(self.cached_input_tokens)
            .bind(self.output_tokens)
    }
}

/// An `events` row as the database returns it.
#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    seq: i64,
    at: i64,
    body: String,
}

impl EventRow {
    pub(crate) fn into_record(self, task_id: TaskId) -> Result<EventRecord, StoreError> {
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
pub(crate) fn event_body(task_id: TaskId, event: &Event) -> Result<String, StoreError> {
    serde_json::to_string(event).map_err(|cause| StoreError::Serialize {
        what: format!("a `{}` event of task {task_id}", event.kind()),
        cause,
    })
}

/// `SELECT <every column an ApiToken is made of> FROM tokens <rest>`.
macro_rules! select_tokens {
    ($rest:literal) => {
        concat!("SELECT ", token_columns!(), " FROM tokens ", $rest)
    };
}
pub(crate) use select_tokens;

/// Every column an `ApiToken` is made of (the secret's hash is not one).
macro_rules! token_columns {
    () => {
        "id, name, scope, created_at, last_used_at, revoked_at, repos"
    };
}
pub(crate) use token_columns;

/// A `tokens` row (without its secret hash, which is only ever compared in SQL).
#[derive(sqlx::FromRow)]
pub(crate) struct TokenRow {
    id: String,
    name: String,
    scope: String,
    created_at: i64,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
    repos: String,
}

impl TokenRow {
    pub(crate) fn into_token(self) -> Result<ApiToken, StoreError> {
        let field = |name: &str| format!("token {}'s {name}", self.id);
        let scope: TokenScope = self
            .scope
            .parse()
            .map_err(|error| StoreError::corrupt(format!("{}: {error}", field("scope"))))?;
        let repos = serde_json::from_str(&self.repos)
            .map_err(|error| StoreError::corrupt(format!("{}: {error}", field("repos"))))?;
        Ok(ApiToken {
            repos,
            scope,
            created_at: from_millis(self.created_at, || field("created_at"))?,
            last_used_at: self
                .last_used_at
                .map(|ms| from_millis(ms, || field("last_used_at")))
                .transpose()?,
            revoked_at: self
                .revoked_at
                .map(|ms| from_millis(ms, || field("revoked_at")))
                .transpose()?,
            id: self.id,
            name: self.name,
        })
    }
}

/// A token's repositories, as its `repos` column holds them.
pub(crate) fn token_repos(token: &ApiToken) -> Result<String, StoreError> {
    serde_json::to_string(&token.repos).map_err(|cause| StoreError::Serialize {
        what: format!("token {}'s repositories", token.id),
        cause,
    })
}

/// A `repos` row.
#[derive(sqlx::FromRow)]
pub(crate) struct RepoRow {
    name: String,
    location: String,
    created_at: i64,
    credential: Option<String>,
    github_api: Option<String>,
    github_app: Option<String>,
}

impl RepoRow {
    pub(crate) fn into_repo(self) -> Result<Repository, StoreError> {
        Ok(Repository {
            created_at: from_millis(self.created_at, || {
                format!("repository {}'s created_at", self.name)
            })?,
            name: self.name,
            location: self.location,
            credential: self.credential,
            github_api: self.github_api,
            github_app: self.github_app,
        })
    }
}

/// A `secrets` row.
#[derive(sqlx::FromRow)]
pub(crate) struct SecretRow {
    name: String,
    sealed: Vec<u8>,
    updated_at: i64,
    repos: String,
}

impl SecretRow {
    pub(crate) fn into_secret(self) -> Result<SealedSecret, StoreError> {
        let repos = serde_json::from_str(&self.repos).map_err(|err| {
            StoreError::corrupt(format!("secret {}'s repositories ({err})", self.name))
        })?;
        Ok(SealedSecret {
            updated_at: from_millis(self.updated_at, || {
                format!("secret {}'s updated_at", self.name)
            })?,
            name: self.name,
            sealed: self.sealed,
            repos,
        })
    }
}

/// `(state, count)` rows of `GROUP BY state`, checked and in lifecycle order.
pub(crate) fn state_counts(rows: Vec<(String, i64)>) -> Result<Vec<(TaskState, u64)>, StoreError> {
    let mut counts = rows
        .into_iter()
        .map(|(state, n)| {
            let state = parse_state(&state, || "a task's state".to_string())?;
            Ok((state, count(n, || format!("the number of {state} tasks"))?))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    counts.sort_by_key(|(state, _)| TaskState::ALL.iter().position(|s| s == state));
    Ok(counts)
}

/// The row of [`crate::queries::TASK_TOTALS`]: the four sums, the count of ended runs and their
/// milliseconds.
pub(crate) type TaskTotalsRow = (i64, i64, i64, i64, i64, i64);

/// The totals from the rows of [`crate::queries::TASK_TOTALS`] and of the backend's event
/// totals (dollars, sandbox failures).
pub(crate) fn task_totals(
    tasks: TaskTotalsRow,
    (model_usd, sandbox_failures): (f64, i64),
) -> Result<crate::TaskTotals, StoreError> {
    let (input, cached, output, turns, finished, run_ms) = tasks;
    Ok(crate::TaskTotals {
        input_tokens: count(input, || "the total of input tokens".to_string())?,
        cached_input_tokens: count(cached, || "the total of cached input tokens".to_string())?,
        output_tokens: count(output, || "the total of output tokens".to_string())?,
        turns: count(turns, || "the total of turns".to_string())?,
        finished: count(finished, || "the number of ended runs".to_string())?,
        run_seconds_sum: count(run_ms, || "the total run time".to_string())? as f64 / 1000.0,
        model_usd,
        sandbox_failures: count(sandbox_failures, || {
            "the number of sandbox failures".to_string()
        })?,
    })
}

pub(crate) fn parse_state(
    text: &str,
    what: impl FnOnce() -> String,
) -> Result<TaskState, StoreError> {
    text.parse()
        .map_err(|error| StoreError::corrupt(format!("{}: {error}", what())))
}

/// A claimed `forge_retries` row: task id, attempts, reason.
pub(crate) fn forge_retry(
    (task_id, attempts, reason): (String, i64, String),
) -> Result<crate::ForgeRetry, StoreError> {
    Ok(crate::ForgeRetry {
        task_id: task_id
            .parse()
            .map_err(|err| StoreError::corrupt(format!("forge retry of task {task_id}: {err}")))?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        reason,
    })
}

/// Now, at the precision the store keeps, so that what a call returns equals what a later read
/// gives back.
pub(crate) fn now() -> Timestamp {
    truncate(Timestamp::now())
}

/// `at` at the precision the store keeps (milliseconds).
pub(crate) fn truncate(at: Timestamp) -> Timestamp {
    Timestamp::from_millisecond(at.as_millisecond()).unwrap_or(at)
}

pub(crate) fn millis(at: Timestamp) -> i64 {
    at.as_millisecond()
}

/// The `lease_expires_at` of a hold taken at `now` for `lease`.
pub(crate) fn lease_until(now: Timestamp, lease: std::time::Duration) -> i64 {
    millis(now).saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
}

fn from_millis(ms: i64, what: impl FnOnce() -> String) -> Result<Timestamp, StoreError> {
    Timestamp::from_millisecond(ms)
        .map_err(|error| StoreError::corrupt(format!("{} = {ms}: {error}", what())))
}

/// Database integers are signed; token counts beyond `i64::MAX` are stored as `i64::MAX`.
pub(crate) fn integer(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn count(value: i64, what: impl FnOnce() -> String) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::corrupt(format!("{} = {value}", what())))
}

/// One row of the task-outcomes queries: id, dollars, checks passed, checks failed.
pub(crate) type OutcomeRow = (String, Option<f64>, i64, i64);

pub(crate) fn task_outcomes(rows: Vec<OutcomeRow>) -> Result<Vec<crate::TaskOutcome>, StoreError> {
    rows.into_iter()
        .map(|(id, cost_usd, passed, failed)| {
            let id = id
                .parse()
                .map_err(|_| StoreError::corrupt(format!("task id `{id}` in the events table")))?;
            Ok(crate::TaskOutcome {
                id,
                cost_usd,
                checks_passed: u32::try_from(passed).unwrap_or(u32::MAX),
                checks_failed: u32::try_from(failed).unwrap_or(u32::MAX),
            })
        })
        .collect()
}

/// Task ids as the JSON array the task-outcomes queries take.
pub(crate) fn ids_json(ids: &[nightshift_protocol::TaskId]) -> String {
    serde_json::Value::from(ids.iter().map(|id| id.to_string()).collect::<Vec<_>>()).to_string()
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
