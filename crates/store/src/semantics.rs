//! What every backend decides the same way without asking the database: page sizes, how a
//! typed reference is read, what a task cancelled in the queue says, how often a token's use is
//! recorded. Kept apart so that SQLite and PostgreSQL cannot drift.

use std::time::Duration;

use jiff::Timestamp;
use nightshift_protocol::{ApiToken, Event, Task, TaskId, TaskState, Usage};

use crate::rows::TaskRow;
use crate::{CancelOutcome, StoreError, TaskFilter};

const DEFAULT_TASK_LIMIT: u32 = 100;
const MAX_TASK_LIMIT: u32 = 1000;
const DEFAULT_EVENT_LIMIT: u32 = 1000;
const MAX_EVENT_LIMIT: u32 = 10_000;
/// How many of the matching ids an ambiguous reference lists.
const AMBIGUOUS_SHOWN: usize = 5;
/// How many matches a lookup reads: one more than it lists, to know when to list.
pub(crate) const AMBIGUOUS_READ: i64 = AMBIGUOUS_SHOWN as i64 + 1;

/// What [`crate::Store::request_cancel`] puts on a task that never started.
pub(crate) const CANCELLED_WHILE_QUEUED: &str = "cancelled before it started";

/// A token's `last_used_at` is rewritten only when older than this, so that authenticating a
/// request is a read, not a write, almost always.
pub(crate) const TOKEN_USE_PRECISION: Duration = Duration::from_secs(60);

/// How often SQLite's [`crate::Store::wait_for_work`] looks for queued tasks.
pub(crate) const QUEUE_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The longest secret name accepted.
const MAX_SECRET_NAME_LEN: usize = 128;

/// Checks that `name` can name a secret: 1 to 128 characters of `[A-Za-z0-9_]`, starting with a
/// letter or `_`, so that it can also be an environment variable's name.
pub(crate) fn check_secret_name(name: &str) -> Result<(), StoreError> {
    let valid = name.len() <= MAX_SECRET_NAME_LEN
        && name
            .bytes()
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic() || first == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidSecretName {
            name: name.to_string(),
        })
    }
}

/// The row limit of a task listing.
pub(crate) fn task_limit(filter: &TaskFilter) -> i64 {
    i64::from(match filter.limit {
        0 => DEFAULT_TASK_LIMIT,
        limit => limit.min(MAX_TASK_LIMIT),
    })
}

/// The row limit of an event page.
pub(crate) fn event_limit(limit: u32) -> i64 {
    i64::from(match limit {
        0 => DEFAULT_EVENT_LIMIT,
        limit => limit.min(MAX_EVENT_LIMIT),
    })
}

/// The filter's states as a JSON array of names (both databases can expand one in SQL), or
/// `None` for all states.
pub(crate) fn states_json(filter: &TaskFilter) -> Option<String> {
    if filter.states.is_empty() {
        return None;
    }
    let names: Vec<&str> = filter.states.iter().map(|state| state.as_str()).collect();
    Some(serde_json::Value::from(names).to_string())
}

/// The repositories a listing is limited to, as a JSON array; `None` for any.
pub(crate) fn repos_json(filter: &TaskFilter) -> Option<String> {
    filter
        .repos
        .as_ref()
        .map(|repos| serde_json::Value::from(repos.clone()).to_string())
}

/// What a person typed to name a task, read.
pub(crate) enum Reference {
    /// A whole id.
    Id(TaskId),
    /// A prefix (4 characters or more) and/or a short id (exactly 8): look for ids that start
    /// (`by_prefix`) or end (`by_short_id`) with `pattern`, which is escaped for `LIKE ...
    /// ESCAPE '\'`.
    Pattern {
        pattern: String,
        by_prefix: bool,
        by_short_id: bool,
    },
    /// Too short to mean anything.
    Nothing,
}

impl Reference {
    pub(crate) fn parse(reference: &str) -> Reference {
        let wanted = reference.trim().to_ascii_lowercase();
        if let Ok(id) = wanted.parse::<TaskId>() {
            return Reference::Id(id);
        }
        let by_prefix = wanted.len() >= 4;
        let by_short_id = wanted.len() == 8;
        if !by_prefix && !by_short_id {
            return Reference::Nothing;
        }
        Reference::Pattern {
            pattern: escape_like(&wanted),
            by_prefix,
            by_short_id,
        }
    }
}

pub(crate) fn not_found(reference: &str) -> StoreError {
    StoreError::NotFound {
        reference: reference.trim().to_string(),
    }
}

/// The one task among `rows` (newest first, at most [`AMBIGUOUS_READ`]) that `reference`
/// matched, or why there is not exactly one.
pub(crate) fn the_match(reference: &str, mut rows: Vec<TaskRow>) -> Result<Task, StoreError> {
    match rows.len() {
        0 => Err(not_found(reference)),
        1 => rows.remove(0).into_task(),
        _ => Err(StoreError::Ambiguous {
            reference: reference.trim().to_string(),
            matches: rows
                .iter()
                .take(AMBIGUOUS_SHOWN)
                .map(|row| row.id().to_string())
                .collect(),
        }),
    }
}

/// What cancelling a task writes, given where it stands.
pub(crate) enum CancelWrite {
    /// End the queued task at once: state `cancelled`, `CancelRequested` and `Ended` events.
    EndQueued,
    /// Set the flag and log `CancelRequested`, for the worker to act on.
    Flag,
    /// Nothing: it already ended, or the request was already made.
    Nothing,
}

/// How [`crate::Store::request_cancel`] answers for a task in `state`, and what it writes.
pub(crate) fn plan_cancel(
    state: TaskState,
    already_requested: bool,
) -> (CancelOutcome, CancelWrite) {
    match state {
        TaskState::Queued => (CancelOutcome::CancelledWhileQueued, CancelWrite::EndQueued),
        TaskState::Preparing
        | TaskState::Running
        | TaskState::Waiting
        | TaskState::Verifying
        | TaskState::HandingOff => {
            let write = if already_requested {
                CancelWrite::Nothing
            } else {
                CancelWrite::Flag
            };
            (CancelOutcome::Requested, write)
        }
        TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled => {
            (CancelOutcome::AlreadyEnded(state), CancelWrite::Nothing)
        }
    }
}

/// The `Ended` event of a task cancelled while it was queued.
pub(crate) fn ended_while_queued() -> Event {
    Event::Ended {
        state: TaskState::Cancelled,
        summary: Some(CANCELLED_WHILE_QUEUED.to_string()),
        usage: Usage::default(),
        cost_usd: None,
        cpu_seconds: None,
        turns: 0,
        duration_ms: 0,
        no_changes: false,
    }
}

/// Whether a use of `token` at `now` should be written down: it was never used, or not within
/// [`TOKEN_USE_PRECISION`].
pub(crate) fn use_worth_recording(token: &ApiToken, now: Timestamp) -> bool {
    token.last_used_at.is_none_or(|last| {
        now.duration_since(last)
            .unsigned_abs()
            .ge(&TOKEN_USE_PRECISION)
    })
}

/// `text` for use in `LIKE ... ESCAPE '\'`, matching itself literally.
fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The error of an insert that broke a unique constraint: `what` already exists.
pub(crate) fn insert_error(
    what: impl Into<String>,
    doing: impl Into<String>,
    cause: sqlx::Error,
) -> StoreError {
    let unique = cause
        .as_database_error()
        .is_some_and(|db| db.is_unique_violation());
    if unique {
        StoreError::AlreadyExists { what: what.into() }
    } else {
        StoreError::database(doing, cause)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_are_like_environment_variables() {
        let longest = "S".repeat(MAX_SECRET_NAME_LEN);
        for good in [
            "a",
            "_",
            "GITHUB_TOKEN",
            "_private2",
            "x9",
            longest.as_str(),
        ] {
            assert!(check_secret_name(good).is_ok(), "{good}");
        }
        let long = "S".repeat(MAX_SECRET_NAME_LEN + 1);
        for bad in [
            "",
            "9lives",
            "a-b",
            "a.b",
            "a b",
            "a/b",
            "é",
            "A=1",
            " A",
            long.as_str(),
        ] {
            assert!(
                matches!(
                    check_secret_name(bad),
                    Err(StoreError::InvalidSecretName { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(escape_like("ab%c_d\\"), "ab\\%c\\_d\\\\");
        assert_eq!(escape_like("01jz"), "01jz");
    }

    #[test]
    fn limits_default_and_cap() {
        let filter = |limit| TaskFilter {
            limit,
            ..TaskFilter::default()
        };
        assert_eq!(task_limit(&filter(0)), 100);
        assert_eq!(task_limit(&filter(7)), 7);
        assert_eq!(task_limit(&filter(u32::MAX)), 1000);
        assert_eq!(event_limit(0), 1000);
        assert_eq!(event_limit(u32::MAX), 10_000);
    }
}
