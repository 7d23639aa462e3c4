//! What can go wrong in the store, phrased for the person who has to act on it.
//!
//! Every message says what failed and what to do next. The underlying error (`cause`) is part
//! of the message rather than exposed through `Error::source`, so that printing the error once
//! shows everything without repeating it; callers that need to branch use
//! [`StoreError::is_retryable`] or match on the variants.

use std::io;
use std::sync::Arc;

use sqlx::error::DatabaseError;
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
    /// `database` is a SQLite file's path or a PostgreSQL URL without its password.
    #[error(
        "could not bring the database {database} up to date: {cause}; nothing was changed. If a \
         newer nightshift has used this database, upgrade nightshift; if it is a SQLite file, \
         you can also move it aside and start over"
    )]
    Migrate {
        database: String,
        cause: sqlx::migrate::MigrateError,
    },

    /// A blob could not be read, written, listed or deleted. `action` says what was done to
    /// `key` (if any); `place` is where the blobs are (a directory, or
    /// `s3://bucket/prefix at endpoint`), never with credentials.
    #[error(
        "could not {action}{} in {place}: {cause}; {}",
        quoted(key),
        blob_hint(place, cause)
    )]
    Blob {
        action: &'static str,
        place: Arc<str>,
        key: String,
        /// Boxed: object_store's errors are large, and every result of the store carries room
        /// for one.
        cause: Box<object_store::Error>,
    },

    /// `NIGHTSHIFT_BLOB_URL`, or the `AWS_*` settings that go with it, cannot be used. `url`
    /// is shown without credentials.
    #[error(
        "cannot use the blob store `{url}`: {reason}; {}",
        crate::blobs::ACCEPTED_BLOB_URLS
    )]
    BlobUrl { url: String, reason: String },

    /// A blob name that could escape its task's directory or is otherwise unusable as a file name.
    #[error(
        "`{name}` is not a valid blob name: use 1 to 200 letters, digits, `.`, `_` or `-`, not \
         starting with `.`"
    )]
    InvalidBlobName { name: String },

    /// A secret name outside the alphabet of environment variable names.
    #[error(
        "`{name}` is not a valid secret name: use 1 to 128 ASCII letters, digits or `_`, \
         starting with a letter or `_` (like an environment variable)"
    )]
    InvalidSecretName { name: String },

    /// A repository name outside what [`nightshift_protocol::check_repo_name`] allows.
    #[error("{0}")]
    InvalidRepoName(#[from] nightshift_protocol::InvalidRepoName),

    /// A row with the same key exists: nothing was stored.
    #[error("{what} already exists; nothing was changed")]
    AlreadyExists { what: String },

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
    /// longer than the busy timeout, could not be reached (PostgreSQL down, restarting, or out of
    /// connections), a transaction lost a serialization conflict, a pooled connection was not
    /// available in time, or an I/O error was transient. Everything else fails the same way
    /// again. The API server answers 503 to these.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Database { cause, .. } => is_transient(cause),
            StoreError::Migrate { cause, .. } => match cause {
                sqlx::migrate::MigrateError::Execute(cause)
                | sqlx::migrate::MigrateError::ExecuteMigration(cause, _) => is_transient(cause),
                _ => false,
            },
            StoreError::Io { cause, .. } => is_transient_io(cause),
            StoreError::Blob { cause, .. } => is_unreachable(cause) || is_server_busy(cause),
            StoreError::NotFound { .. }
            | StoreError::Ambiguous { .. }
            | StoreError::NotQueued { .. }
            | StoreError::BlobUrl { .. }
            | StoreError::InvalidBlobName { .. }
            | StoreError::InvalidSecretName { .. }
            | StoreError::InvalidRepoName(_)
            | StoreError::AlreadyExists { .. }
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

/// ` `key`` for messages, or nothing for no key.
fn quoted(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!(" `{key}`")
    }
}

/// What to do about a blob error, by what went wrong and where the blobs are.
fn blob_hint(place: &str, cause: &object_store::Error) -> &'static str {
    let remote = place.starts_with("s3://");
    if !remote {
        return "check the permissions and free space of that directory";
    }
    if crate::blobs::is_missing_bucket(cause) {
        return "the bucket does not exist: create it, or correct the bucket in \
                NIGHTSHIFT_BLOB_URL (and AWS_ENDPOINT_URL for an S3-compatible server)";
    }
    if is_refused(cause) {
        return "the object store refused the credentials: check AWS_ACCESS_KEY_ID and \
                AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), and that they may read, write, \
                list and delete in the bucket";
    }
    if is_untrusted_certificate(cause) {
        return "the object store's TLS certificate is not trusted here: for a server with a \
                CA of its own, add that CA to the system's trust store (or name a bundle with \
                it in SSL_CERT_FILE)";
    }
    if is_unreachable(cause) {
        return "the object store could not be reached: check AWS_ENDPOINT_URL and that the \
                server is up, then try again";
    }
    if is_server_busy(cause) {
        return "the object store answered that it is overloaded or failing: try again later";
    }
    "check NIGHTSHIFT_BLOB_URL and the AWS_* settings that go with it"
}

/// Whether the object store refused the request's credentials or signature. Listings come back
/// as `Generic` errors whatever the status, so S3's error codes and the status are looked for in
/// the message too.
fn is_refused(cause: &object_store::Error) -> bool {
    match cause {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => true,
        _ => {
            let text = cause.to_string();
            [
                "SignatureDoesNotMatch",
                "InvalidAccessKeyId",
                "AccessDenied",
                "403 Forbidden",
                "401 Unauthorized",
            ]
            .iter()
            .any(|code| text.contains(code))
        }
    }
}

/// Whether the object store answered that it is overloaded or failing (a 5xx or 429 status, or
/// S3's `SlowDown`) after the client's own retries: later may work.
fn is_server_busy(cause: &object_store::Error) -> bool {
    let text = cause.to_string();
    let status = text
        .split_once("status code: ")
        .and_then(|(_, rest)| rest.get(..3)?.parse::<u16>().ok());
    text.contains("SlowDown") || status.is_some_and(|code| code == 429 || code >= 500)
}

/// Whether the server's TLS certificate could not be verified: waiting does not fix that.
fn is_untrusted_certificate(cause: &object_store::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(cause);
    while let Some(error) = source {
        if error.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        let text = error.to_string();
        if text.contains("invalid peer certificate") || text.contains("certificate verify") {
            return true;
        }
        source = error.source();
    }
    false
}

/// Whether a blob request failed in transit (no connection, timed out, cut off) rather than
/// being answered: trying again later may work. An untrusted certificate is no such failure.
fn is_unreachable(cause: &object_store::Error) -> bool {
    use object_store::client::{HttpError, HttpErrorKind};
    if is_untrusted_certificate(cause) {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(cause);
    while let Some(error) = source {
        if let Some(http) = error.downcast_ref::<HttpError>() {
            return match http.kind() {
                HttpErrorKind::Connect
                | HttpErrorKind::Request
                | HttpErrorKind::Timeout
                | HttpErrorKind::Interrupted => true,
                // Decode, Unknown and kinds added later: not something waiting fixes.
                _ => false,
            };
        }
        source = error.source();
    }
    false
}

/// SQLite's primary result codes for "another connection holds the lock".
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;

fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            if let Some(sqlite) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
                // sqlx reports the extended code; its low byte is the primary one.
                sqlite
                    .code()
                    .and_then(|code| code.parse::<i64>().ok())
                    .is_some_and(|code| matches!(code & 0xff, SQLITE_BUSY | SQLITE_LOCKED))
            } else if let Some(postgres) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            {
                is_transient_sqlstate(postgres.code())
            } else {
                false
            }
        }
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Io(cause) => is_transient_io(cause) || is_lost_connection(cause),
        _ => false,
    }
}

/// PostgreSQL's SQLSTATEs for "not now": connection trouble (class 08), serialization failures
/// and deadlocks (class 40), too many connections (53300), and a server shutting down or
/// starting up (57P01..57P03).
fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("40")
        || matches!(code, "53300" | "57P01" | "57P02" | "57P03")
}

/// Network errors: the database server is down, restarting or unreachable.
fn is_lost_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::AddrNotAvailable
    )
}

fn is_transient_io(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn database_hint(error: &sqlx::Error) -> &'static str {
    match error {
        sqlx::Error::Io(cause) if is_lost_connection(cause) => {
            "the database could not be reached; nothing was changed, try again once it is back"
        }
        sqlx::Error::Configuration(_) => {
            "check the database URL (NIGHTSHIFT_DATABASE_URL); nothing was changed"
        }
        _ if is_transient(error) => {
            "the database was busy or unavailable; nothing was changed, try again"
        }
        _ => "if this keeps happening, check the database's free space and permissions",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_object_store_is_retryable() {
        let blob = |message: &str| StoreError::Blob {
            action: "put",
            place: "s3://b".into(),
            key: "tasks/x/diff.patch".into(),
            cause: Box::new(object_store::Error::Generic {
                store: "S3",
                source: message.to_string().into(),
            }),
        };
        let busy = "Error performing PUT in 20s, after 3 retries: Server returned non-2xx status code: 503 Service Unavailable: <Code>SlowDown</Code>";
        assert!(blob(busy).is_retryable());
        assert!(
            blob("Server returned non-2xx status code: 429 Too Many Requests: ").is_retryable()
        );
        assert!(
            !blob("Server returned non-2xx status code: 403 Forbidden: AccessDenied")
                .is_retryable()
        );
    }

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

    #[test]
    fn an_unreachable_database_is_retryable() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        let error = StoreError::database("claiming a task", sqlx::Error::Io(refused));
        assert!(error.is_retryable());
        assert!(
            error.to_string().contains("could not be reached"),
            "{error}"
        );
    }

    #[test]
    fn postgres_conflicts_and_shutdowns_are_retryable() {
        for code in ["08006", "40001", "40P01", "53300", "57P01", "57P03"] {
            assert!(is_transient_sqlstate(code), "{code}");
        }
        for code in ["23505", "42P01", "22P02"] {
            assert!(!is_transient_sqlstate(code), "{code}");
        }
    }
}
