//! The SQLite store: one database file under the nightshift home, shared by every nightshift
//! process on the machine (the CLI, the API server, detached workers).
//!
//! How it avoids "database is locked":
//! - Each process has one writer connection, so its own writes queue in the pool instead of
//!   fighting over SQLite's lock; between processes, `busy_timeout` makes a writer wait its turn.
//! - Every write is a single statement or a `BEGIN IMMEDIATE` transaction. Both take the write
//!   lock before they read anything, so no connection ever holds a read snapshot that it must
//!   then upgrade: the upgrade is where SQLite returns SQLITE_BUSY at once, without waiting.
//! - Readers have their own pool. In WAL mode they neither block the writer nor wait for it.
//! - Creating the database and running migrations happen under an exclusive file lock, because
//!   switching to WAL cannot wait on `busy_timeout` and sqlx does not lock migrations on SQLite.

mod rows;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use jiff::Timestamp;
use nightshift_protocol::{Event, EventRecord, SCHEMA_VERSION, Task, TaskId, TaskState, Usage};
use sqlx::error::ErrorKind;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use crate::sqlite::rows::{EventRow, TaskColumns, TaskRow, select_tasks};
use crate::{CancelOutcome, LocalBlobs, Store, StoreError, TaskFilter};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The database's file name inside the nightshift home.
const DATABASE_FILE: &str = "nightshift.db";
/// Held (with `flock`) while a process creates or migrates the database.
const SETUP_LOCK_FILE: &str = "nightshift.db.setup-lock";
/// The blobs directory inside the nightshift home.
const BLOBS_DIR: &str = "blobs";

/// How long a statement waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections of the read pool.
const READERS: u32 = 4;

const DEFAULT_TASK_LIMIT: u32 = 100;
const MAX_TASK_LIMIT: u32 = 1000;
const DEFAULT_EVENT_LIMIT: u32 = 1000;
const MAX_EVENT_LIMIT: u32 = 10_000;
/// How many of the matching ids an ambiguous reference lists.
const AMBIGUOUS_SHOWN: usize = 5;
/// How many matches a lookup reads: one more than it lists, to know when to list.
const AMBIGUOUS_READ: i64 = AMBIGUOUS_SHOWN as i64 + 1;

/// What [`Store::request_cancel`] puts on a task that never started.
const CANCELLED_WHILE_QUEUED: &str = "cancelled before it started";

/// The [`Store`] on a SQLite file. Cheap to clone: clones share the connection pools.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// At most one connection: the one writer of this process.
    writer: SqlitePool,
    /// Several connections that only read.
    reader: SqlitePool,
    blobs: LocalBlobs,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `home`: the database `home/nightshift.db`, brought
    /// up to date by the embedded migrations, and the blobs under `home/blobs`.
    pub async fn open(home: &Path) -> Result<SqliteStore, StoreError> {
        tokio::fs::create_dir_all(home)
            .await
            .map_err(|cause| StoreError::Io {
                action: "create the nightshift home",
                path: home.to_path_buf(),
                cause,
            })?;
        let path = home.join(DATABASE_FILE);
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .foreign_keys(true)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT);

        set_up(&home.join(SETUP_LOCK_FILE), &path, options.clone()).await?;

        // The database exists and is in WAL mode (which is persistent) by now, so the pools need
        // not, and must not, ask for the journal mode again.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(|cause| {
                StoreError::database(format!("opening the database {}", path.display()), cause)
            })?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options.pragma("query_only", "ON"))
            .await
            .map_err(|cause| {
                StoreError::database(format!("opening the database {}", path.display()), cause)
            })?;
        let blobs = LocalBlobs::open(&home.join(BLOBS_DIR))?;
        tracing::debug!(path = %path.display(), "store opened");
        Ok(SqliteStore {
            writer,
            reader,
            blobs,
        })
    }

    /// Closes every connection, after the writes under way. Calls after this fail.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    /// A transaction that holds the write lock from its first statement on.
    async fn begin_immediate(
        &self,
        doing: impl FnOnce() -> String,
    ) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|cause| StoreError::database(doing(), cause))
    }
}

/// Creates the database in WAL mode and runs the migrations, one process at a time.
async fn set_up(
    lock_path: &Path,
    path: &Path,
    options: SqliteConnectOptions,
) -> Result<(), StoreError> {
    let _lock = SetupLock::acquire(lock_path.to_path_buf()).await?;
    // A pool of one rather than a bare connection: the migrator's future over `&mut
    // SqliteConnection` is not `Send` for every lifetime, which would keep callers from spawning
    // `open`.
    let setup = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            options
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal),
        )
        .await
        .map_err(|cause| {
            StoreError::database(format!("opening the database {}", path.display()), cause)
        })?;
    let migrated = MIGRATOR
        .run(&setup)
        .await
        .map_err(|cause| StoreError::Migrate {
            path: path.to_path_buf(),
            cause,
        });
    setup.close().await;
    migrated
}

/// An exclusive advisory lock on a file, released when dropped (the file is closed).
struct SetupLock {
    _file: std::fs::File,
}

impl SetupLock {
    async fn acquire(path: PathBuf) -> Result<SetupLock, StoreError> {
        let locking = path.clone();
        let locked = tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&locking)?;
            file.lock()?;
            Ok::<_, std::io::Error>(file)
        })
        .await
        .unwrap_or_else(|join| Err(std::io::Error::other(join)));
        locked
            .map(|file| SetupLock { _file: file })
            .map_err(|cause| StoreError::Io {
                action: "lock",
                path,
                cause,
            })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_task(&self, task: &Task) -> Result<EventRecord, StoreError> {
        if task.state != TaskState::Queued {
            return Err(StoreError::NotQueued {
                id: task.id,
                state: task.state,
            });
        }
        let doing = || format!("storing the new task {}", task.id);
        let columns = TaskColumns::of(task)?;
        let mut tx = self.begin_immediate(doing).await?;
        sqlx::query(
            "INSERT INTO tasks (id, state, spec, repo, created_at, updated_at, started_at, \
             finished_at, base_commit, branch, head_commit, summary, error, turns, input_tokens, \
             cached_input_tokens, output_tokens, cancel_requested) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&columns.id)
        .bind(columns.state)
        .bind(&columns.spec)
        .bind(&columns.repo)
        .bind(columns.created_at)
        .bind(columns.updated_at)
        .bind(columns.started_at)
        .bind(columns.finished_at)
        .bind(&task.base_commit)
        .bind(&task.branch)
        .bind(&task.head_commit)
        .bind(&task.summary)
        .bind(&task.error)
        .bind(columns.turns)
        .bind(columns.input_tokens)
        .bind(columns.cached_input_tokens)
        .bind(columns.output_tokens)
        .bind(task.cancel_requested)
        .execute(&mut *tx)
        .await
        .map_err(|cause| StoreError::database(doing(), cause))?;
        let queued = Event::Queued {
            spec: task.spec.clone(),
        };
        let record =
            insert_event(&mut tx, task.id, &queued, rows::truncate(task.created_at)).await?;
        tx.commit()
            .await
            .map_err(|cause| StoreError::database(doing(), cause))?;
        Ok(record)
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        let row: Option<TaskRow> = sqlx::query_as(select_tasks!("WHERE id = ?"))
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(|cause| StoreError::database(format!("reading task {id}"), cause))?;
        row.map(TaskRow::into_task).transpose()
    }

    async fn find_task(&self, reference: &str) -> Result<Task, StoreError> {
        let wanted = reference.trim().to_ascii_lowercase();
        let not_found = || StoreError::NotFound {
            reference: reference.trim().to_string(),
        };
        if let Ok(id) = wanted.parse::<TaskId>() {
            return self.get_task(id).await?.ok_or_else(not_found);
        }
        let by_prefix = wanted.len() >= 4;
        let by_short_id = wanted.len() == 8;
        if !by_prefix && !by_short_id {
            return Err(not_found());
        }
        let mut rows: Vec<TaskRow> = sqlx::query_as(select_tasks!(
            "WHERE (?2 AND id LIKE ?1 || '%' ESCAPE '\\') \
                OR (?3 AND id LIKE '%' || ?1 ESCAPE '\\') \
             ORDER BY id DESC LIMIT ?4"
        ))
        .bind(escape_like(&wanted))
        .bind(by_prefix)
        .bind(by_short_id)
        .bind(AMBIGUOUS_READ)
        .fetch_all(&self.reader)
        .await
        .map_err(|cause| StoreError::database(format!("looking up `{reference}`"), cause))?;
        match rows.len() {
            0 => Err(not_found()),
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

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>, StoreError> {
        let limit = match filter.limit {
            0 => DEFAULT_TASK_LIMIT,
            limit => limit.min(MAX_TASK_LIMIT),
        };
        let states = if filter.states.is_empty() {
            None
        } else {
            let names: Vec<&str> = filter.states.iter().map(|state| state.as_str()).collect();
            Some(serde_json::Value::from(names).to_string())
        };
        let rows: Vec<TaskRow> = sqlx::query_as(select_tasks!(
            "WHERE (?1 IS NULL OR id < ?1) \
               AND (?2 IS NULL OR state IN (SELECT value FROM json_each(?2))) \
             ORDER BY id DESC LIMIT ?3"
        ))
        .bind(filter.before.map(|id| id.to_string()))
        .bind(states)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(|cause| StoreError::database("listing tasks", cause))?;
        rows.into_iter().map(TaskRow::into_task).collect()
    }

    async fn update_task(&self, task: &Task) -> Result<(), StoreError> {
        let columns = TaskColumns::of(task)?;
        let updated = sqlx::query(
            "UPDATE tasks SET state = ?, spec = ?, repo = ?, created_at = ?, updated_at = ?, \
             started_at = ?, finished_at = ?, base_commit = ?, branch = ?, head_commit = ?, \
             summary = ?, error = ?, turns = ?, input_tokens = ?, cached_input_tokens = ?, \
             output_tokens = ? \
             WHERE id = ?",
        )
        .bind(columns.state)
        .bind(&columns.spec)
        .bind(&columns.repo)
        .bind(columns.created_at)
        .bind(columns.updated_at)
        .bind(columns.started_at)
        .bind(columns.finished_at)
        .bind(&task.base_commit)
        .bind(&task.branch)
        .bind(&task.head_commit)
        .bind(&task.summary)
        .bind(&task.error)
        .bind(columns.turns)
        .bind(columns.input_tokens)
        .bind(columns.cached_input_tokens)
        .bind(columns.output_tokens)
        .bind(&columns.id)
        .execute(&self.writer)
        .await
        .map_err(|cause| StoreError::database(format!("updating task {}", task.id), cause))?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                reference: columns.id,
            });
        }
        Ok(())
    }

    async fn claim_task(&self, id: TaskId, worker: &str) -> Result<bool, StoreError> {
        let now = rows::millis(rows::now());
        let claimed = sqlx::query(
            "UPDATE tasks SET state = 'preparing', worker = ?, started_at = ?, updated_at = ? \
             WHERE id = ? AND state = 'queued'",
        )
        .bind(worker)
        .bind(now)
        .bind(now)
        .bind(id.to_string())
        .execute(&self.writer)
        .await
        .map_err(|cause| StoreError::database(format!("claiming task {id}"), cause))?;
        Ok(claimed.rows_affected() == 1)
    }

    async fn request_cancel(&self, id: TaskId) -> Result<CancelOutcome, StoreError> {
        let doing = || format!("cancelling task {id}");
        let mut tx = self.begin_immediate(doing).await?;
        let row: Option<(String, bool)> =
            sqlx::query_as("SELECT state, cancel_requested FROM tasks WHERE id = ?")
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|cause| StoreError::database(doing(), cause))?;
        let Some((state, already_requested)) = row else {
            return Err(StoreError::NotFound {
                reference: id.to_string(),
            });
        };
        let state = rows::parse_state(&state, || format!("task {id}'s state"))?;
        let now = rows::now();
        let outcome = match state {
            TaskState::Queued => {
                sqlx::query(
                    "UPDATE tasks SET state = 'cancelled', cancel_requested = 1, summary = ?, \
                     finished_at = ?, updated_at = ? WHERE id = ?",
                )
                .bind(CANCELLED_WHILE_QUEUED)
                .bind(rows::millis(now))
                .bind(rows::millis(now))
                .bind(id.to_string())
                .execute(&mut *tx)
                .await
                .map_err(|cause| StoreError::database(doing(), cause))?;
                insert_event(&mut tx, id, &Event::CancelRequested, now).await?;
                let ended = Event::Ended {
                    state: TaskState::Cancelled,
                    summary: Some(CANCELLED_WHILE_QUEUED.to_string()),
                    usage: Usage::default(),
                    turns: 0,
                    duration_ms: 0,
                };
                insert_event(&mut tx, id, &ended, now).await?;
                CancelOutcome::CancelledWhileQueued
            }
            TaskState::Preparing
            | TaskState::Running
            | TaskState::Verifying
            | TaskState::HandingOff => {
                if !already_requested {
                    sqlx::query(
                        "UPDATE tasks SET cancel_requested = 1, updated_at = ? WHERE id = ?",
                    )
                    .bind(rows::millis(now))
                    .bind(id.to_string())
                    .execute(&mut *tx)
                    .await
                    .map_err(|cause| StoreError::database(doing(), cause))?;
                    insert_event(&mut tx, id, &Event::CancelRequested, now).await?;
                }
                CancelOutcome::Requested
            }
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled => {
                CancelOutcome::AlreadyEnded(state)
            }
        };
        tx.commit()
            .await
            .map_err(|cause| StoreError::database(doing(), cause))?;
        Ok(outcome)
    }

    async fn append_event(&self, id: TaskId, event: &Event) -> Result<EventRecord, StoreError> {
        let mut connection = self.writer.acquire().await.map_err(|cause| {
            StoreError::database(
                format!("appending a `{}` event to task {id}", event.kind()),
                cause,
            )
        })?;
        insert_event(&mut connection, id, event, rows::now()).await
    }

    async fn events(
        &self,
        id: TaskId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let limit = match limit {
            0 => DEFAULT_EVENT_LIMIT,
            limit => limit.min(MAX_EVENT_LIMIT),
        };
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT seq, at, body FROM events WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(id.to_string())
        .bind(rows::integer(after))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(|cause| StoreError::database(format!("reading the events of task {id}"), cause))?;
        rows.into_iter().map(|row| row.into_record(id)).collect()
    }

    async fn put_blob(&self, id: TaskId, name: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.blobs.put(id, name, bytes).await
    }

    async fn get_blob(&self, id: TaskId, name: &str) -> Result<Option<Bytes>, StoreError> {
        self.blobs.get(id, name).await
    }
}

/// Appends `event` with the task's next sequence number. One statement computes the number and
/// inserts the row; since it writes, SQLite takes the write lock before it reads `MAX(seq)`, so
/// concurrent appenders in any process get distinct, gapless numbers.
async fn insert_event(
    connection: &mut SqliteConnection,
    id: TaskId,
    event: &Event,
    at: Timestamp,
) -> Result<EventRecord, StoreError> {
    let doing = || format!("appending a `{}` event to task {id}", event.kind());
    let body = rows::event_body(id, event)?;
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO events (task_id, seq, at, type, body, schema) \
         SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2, ?3, ?4, ?5 FROM events WHERE task_id = ?1 \
         RETURNING seq",
    )
    .bind(id.to_string())
    .bind(rows::millis(at))
    .bind(event.kind())
    .bind(body)
    .bind(i64::from(SCHEMA_VERSION))
    .fetch_one(&mut *connection)
    .await
    .map_err(|cause| match &cause {
        sqlx::Error::Database(db) if db.kind() == ErrorKind::ForeignKeyViolation => {
            StoreError::NotFound {
                reference: id.to_string(),
            }
        }
        _ => StoreError::database(doing(), cause),
    })?;
    let seq = u64::try_from(seq)
        .map_err(|_| StoreError::corrupt(format!("task {id}'s next event number {seq}")))?;
    Ok(EventRecord {
        task_id: id,
        seq,
        at,
        event: event.clone(),
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(escape_like("ab%c_d\\"), "ab\\%c\\_d\\\\");
        assert_eq!(escape_like("01jz"), "01jz");
    }
}
