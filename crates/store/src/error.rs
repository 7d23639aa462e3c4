//! What can go wrong in the store, phrased for the person who has to act on it.
//!
//! Every message says what failed and what to do next. The underlying error (`cause`) is part
//! of the message rather than exposed through `Error::source`, so that printing the error once
//! shows everything without repeating it; callers that need to branch use
//! [`StoreError::is_retryable`] or match on the variants.

use std::io;
use std::path::PathBuf;

use nightshift_protocol::{TaskId, TaskState};

/// An error from a [`crate::Store`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Nothing matches what was asked for.
    #[error("no task matches `{reference}`; `nightshift ls` lists tasks")]
    NotFound { reference: String },

    /// A prefix or short id matches several tasks. `matches` holds up to five of their ids.
    #[error(
        "`{reference}` matches more than one task ({}); give more characters of the id \
         (`nightshift ls` shows them)",
        matches.join(", ")
    )]
    Ambiguous {
        reference: String,
        matches: Vec<String>,
    },

    /// [`crate::Store::create_task`] was given a task that is not queued.
    #[error(
        "task {id} is {state}, but only queued tasks can be created; nothing was stored \
         (this is a bug in nightshift, please report it)"
    )]
    NotQueued { id: TaskId, state: TaskState },

    /// The database refused or failed a statement. `context` says what the store was doing.
    #[error("{context} failed: {cause}; {}", database_hint(cause))]
    Database { context: String, cause: sqlx::Error },

    /// The database's schema could not be brought up to date when opening it.
    #[error(
        "could not bring the database {path} up to date: {cause}; nothing was changed. If a \
         newer nightshift has used this home, upgrade nightshift; otherwise move the file aside \
         and start over"
    )]
    Migrate {
        path: PathBuf,
        cause: sqlx::migrate::MigrateError,
    },

    /// A blob could not be read or written.
    #[error(
        "could not {action} the blob `{key}`: {cause}; check the permissions and free space of \
         the blobs directory under the nightshift home"
    )]
    Blob {
        action: &'static str,
        key: String,
        cause: object_store::Error,
    },

    /// A blob name that could escape its task's directory or is otherwise unusable as a file name.
    #[error(
        "`{name}` is not a valid blob name: use 1 to 200 letters, digits, `.`, `_` or `-`, not \
         starting with `.`"
    )]
    InvalidBlobName { name: String },

    /// A value could not be turned into JSON for storing. Nothing was stored.
    #[error(
        "could not write {what} as JSON: {cause}; nothing was stored (this is a bug in \
         nightshift, please report it)"
    )]
    Serialize {
        what: String,
        cause: serde_json::Error,
    },

    /// A stored row does not decode into nightshift's types.
    #[error(
        "the store holds data that does not decode: {what}. It was left as it is; if a newer \
         nightshift wrote it, upgrade nightshift, otherwise please report a bug"
    )]
    Corrupt { what: String },

    /// A file or directory of the nightshift home could not be used.
    #[error(
        "could not {action} {path}: {cause}; check that it is writable, or point NIGHTSHIFT_HOME \
         somewhere that is"
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
}

impl StoreError {
    /// Whether trying the same call again may succeed: the database was busy or locked for
    /// longer than the busy timeout, a pooled connection was not available in time, or an I/O
    /// error was transient. Everything else fails the same way again.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Database { cause, .. } => is_transient(cause),
            StoreError::Migrate { cause, .. } => match cause {
                sqlx::migrate::MigrateError::Execute(cause)
                | sqlx::migrate::MigrateError::ExecuteMigration(cause, _) => is_transient(cause),
                _ => false,
            },
            StoreError::Io { cause, .. } => is_transient_io(cause),
            StoreError::NotFound { .. }
            | StoreError::Ambiguous { .. }
            | StoreError::NotQueued { .. }
            | StoreError::Blob { .. }
            | StoreError::InvalidBlobName { .. }
            | StoreError::Serialize { .. }
            | StoreError::Corrupt { .. } => false,
        }
    }

    /// A [`StoreError::Database`] saying what was being done.
    pub(crate) fn database(context: impl Into<String>, cause: sqlx::Error) -> Self {
        StoreError::Database {
            context: context.into(),
            cause,
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        StoreError::Corrupt { what: what.into() }
    }
}

/// SQLite's primary result codes for "another connection holds the lock".
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;

fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|code| code.parse::<i64>().ok())
            // sqlx reports the extended code; its low byte is the primary one.
            .is_some_and(|code| matches!(code & 0xff, SQLITE_BUSY | SQLITE_LOCKED)),
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Io(cause) => is_transient_io(cause),
        _ => false,
    }
}

fn is_transient_io(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn database_hint(error: &sqlx::Error) -> &'static str {
    if is_transient(error) {
        "another nightshift process held the database for too long; nothing was changed, try again"
    } else {
        "if this keeps happening, check the free space and permissions of the nightshift home"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn not_found_says_what_to_do() {
        let error = StoreError::NotFound {
            reference: "abcd".into(),
        };
        assert_eq!(
            error.to_string(),
            "no task matches `abcd`; `nightshift ls` lists tasks"
        );
        assert!(!error.is_retryable());
    }

    #[test]
    fn ambiguous_lists_the_matches() {
        let error = StoreError::Ambiguous {
            reference: "01jz".into(),
            matches: vec!["01jza".into(), "01jzb".into()],
        };
        let text = error.to_string();
        assert!(text.contains("01jza, 01jzb"), "{text}");
    }

    #[test]
    fn pool_timeouts_are_retryable() {
        let error = StoreError::database("appending an event", sqlx::Error::PoolTimedOut);
        assert!(error.is_retryable());
        assert!(error.to_string().starts_with("appending an event failed"));
        let error = StoreError::database("appending an event", sqlx::Error::RowNotFound);
        assert!(!error.is_retryable());
    }
}
