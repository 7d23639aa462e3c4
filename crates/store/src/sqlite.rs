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

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use jiff::Timestamp;
use nightshift_protocol::{
    ApiToken, Event, EventRecord, Repository, SCHEMA_VERSION, Task, TaskId, TaskState,
};
use sqlx::error::ErrorKind;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

mod setup;

use crate::open::BLOBS_DIR;
use crate::rows::{
    self, EventRow, RepoRow, SecretRow, TaskColumns, TaskRow, TokenRow, select_tasks, task_columns,
};
use crate::semantics::{self, CancelWrite, Reference};
use crate::{
    Blobs, CancelOutcome, ForgeRetry, SealedSecret, Store, StoreError, TaskFilter, TaskOutcome,
    TaskTotals, queries,
};
use setup::set_up;

/// The database's file name inside the nightshift home.
const DATABASE_FILE: &str = "nightshift.db";
/// Held (with `flock`) while a process creates or migrates the database.
const SETUP_LOCK_FILE: &str = "nightshift.db.setup-lock";

/// How long a statement waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections of the read pool.
const READERS: u32 = 4;

/// The [`Store`] on a SQLite file. Cheap to clone: clones share the connection pools.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// At most one connection: the one writer of this process.
    writer: SqlitePool,
    /// Several connections that only read.
    reader: SqlitePool,
    blobs: Blobs,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `home`: the database `home/nightshift.db`, brought
    /// up to date by the embedded migrations, and the blobs under `home/blobs`.
    pub async fn open(home: &Path) -> Result<SqliteStore, StoreError> {
        let blobs = Blobs::local(&home.join(BLOBS_DIR))?;
        SqliteStore::open_with_blobs(home, blobs).await
    }

    /// [`SqliteStore::open`] with the blobs somewhere else, e.g. in an object store bucket.
    pub async fn open_with_blobs(home: &Path, blobs: Blobs) -> Result<SqliteStore, StoreError> {
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
        tracing::debug!(path = %path.display(), blobs = blobs.place(), "store opened");
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
        columns
            .bind(sqlx::query::<Sqlite>(queries::INSERT_TASK))
            .bind(task.cancel_requested)
            .execute(&mut *tx)
            .await
            .map_err(|cause| StoreError::database(doing(), cause))?;
        let queued = Event::Queued {
            spec: Box::new(task.spec.clone()),
        };
        let record =
            insert_event(&mut tx, task.id, &queued, rows::truncate(task.created_at)).await?;
        tx.commit()
            .await
            .map_err(|cause| StoreError::database(doing(), cause))?;
        Ok(record)
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        let row: Option<TaskRow> = sqlx::query_as(queries::GET_TASK)
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(|cause| StoreError::database(format!("reading task {id}"), cause))?;
        row.map(TaskRow::into_task).transpose()
    }

    async fn find_task(&self, reference: &str) -> Result<Task, StoreError> {
        let (pattern, by_prefix, by_short_id) = match Reference::parse(reference) {
            Reference::Id(id) => {
                return self
                    .get_task(id)
                    .await?
                    .ok_or_else(|| semantics::not_found(reference));
            }
            Reference::Nothing => return Err(semantics::not_found(reference)),
            Reference::Pattern {
                pattern,
                by_prefix,
                by_short_id,
            } => (pattern, by_prefix, by_short_id),
        };
        let rows: Vec<TaskRow> = sqlx::query_as(queries::FIND_TASKS)
            .bind(pattern)
            .bind(by_prefix)
            .bind(by_short_id)
            .bind(semantics::AMBIGUOUS_READ)
            .fetch_all(&self.reader)
            .await
            .map_err(|cause| StoreError::database(format!("looking up `{reference}`"), cause))?;
        semantics::the_match(reference, rows)
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>, StoreError> {
        let rows: Vec<TaskRow> = sqlx::query_as(select_tasks!(
            "WHERE ($1 IS NULL OR id < $1) \
               AND ($2 IS NULL OR state IN (SELECT value FROM json_each($2))) \
               AND ($4 IS NULL OR json_extract(spec, '$.repo') = $4) \
               AND ($5 IS NULL OR instr(lower(json_extract(spec, '$.prompt')), lower($5)) > 0) \
               AND ($6 IS NULL OR repo IN (SELECT value FROM json_each($6))) \
               AND ($7 IS NULL OR branch = $7) \
             ORDER BY id DESC LIMIT $3"
        ))
        .bind(filter.before.map(|id| id.to_string()))
        .bind(semantics::states_json(filter))
        .bind(semantics::task_limit(filter))
        .bind(filter.repo.as_deref())
        .bind(filter.prompt_contains.as_deref())
        .bind(semantics::repos_json(filter))
        .bind(filter.branch.as_deref())
        .fetch_all(&self.reader)
        .await
        .map_err(|cause| StoreError::database("listing tasks", cause))?;
        rows.into_iter().map(TaskRow::into_task).collect()
    }

    async fn count_tasks(&self) -> Result<Vec<(TaskState, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(queries::COUNT_TASKS)
            .fetch_all(&self.reader)
            .await
            .map_err(|cause| StoreError::database("counting tasks", cause))?;
        rows::state_counts(rows)
    }

    async fn task_totals(&self) -> Result<TaskTotals, StoreError> {
        let tasks: rows::TaskTotalsRow = sqlx::query_as(queries::TASK_TOTALS)
            .fetch_one(&self.reader)
            .await
            .map_err(|cause| StoreError::database("totalling tasks", cause))?;
        let events: (f64, i64) = sqlx::query_as(queries::SQLITE_EVENT_TOTALS)
            .fetch_one(&self.reader)
            .await
            .map_err(|cause| StoreError::database("totalling events", cause))?;
        rows::task_totals(tasks, events)
    }

    async fn task_outcomes(&self, ids: &[TaskId]) -> Result<Vec<TaskOutcome>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<rows::OutcomeRow> = sqlx::query_as(queries::SQLITE_TASK_OUTCOMES)
            .bind(rows::ids_json(ids))
            .fetch_all(&self.reader)
            .await
            .map_err(|cause| StoreError::database("reading task outcomes", cause))?;
        rows::task_outcomes(rows)
    }

    async fn update_task(&self, task: &Task) -> Result<(), StoreError> {
        let updated = TaskColumns::of(task)?
            .bind(sqlx::query::<Sqlite>(queries::UPDATE_TASK))
            .execute(&self.writer)
            .await
            .map_err(|cause| StoreError::database(format!("updating task {}", task.id), cause))?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                reference: task.id.to_string(),
            });
        }
        Ok(())
    }

    async fn claim_task(
        &self,
        id: TaskId,
        worker: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let now = rows::now();
        let claimed = sqlx::query(queries::CLAIM_TASK)
            .bind(id.to_string())
            .bind(worker)
            .bind(rows::millis(now))
            .bind(rows::lease_until(now, lease))
            .execute(&self.writer)
            .await
            .map_err(|cause| StoreError::database(format!("claiming task {id}"), cause))?;
        Ok(claimed.rows_affected() == 1)
    }

    async fn claim_next(&self, worker: &str, lease: Duration) -> Result<Option<Task>, StoreError> {
        let now = rows::now();
        // One write statement: SQLite takes the write lock before the subquery reads, so no other
        // process can pick the same row in between.
        let row: Option<TaskRow> = sqlx::query_as(concat!(
            "UPDATE tasks SET state = 'preparing', worker = $1, lease_expires_at = $3, \
             started_at = $2, updated_at = $2 \
             WHERE id = (SELECT id FROM tasks WHERE state = 'queued' ORDER BY id LIMIT 1) \
               AND state = 'queued' \
             RETURNING ",
            task_columns!()
        ))
        .bind(worker)
        .bind(rows::millis(now))
        .bind(rows::lease_until(now, lease))
        .fetch_optional(&self.writer)
        .await
        .map_err(|cause| StoreError::database("claiming the next queued task", cause))?;
        row.map(TaskRow::into_task).transpose()
    }

    async fn renew_lease(
        &self,
        id: TaskId,
        worker: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let renewed = sqlx::query(queries::RENEW_LEASE)
            .bind(id.to_string())
            .bind(worker)
            .bind(rows::lease_until(rows::now(), lease))
            .execute(&self.writer)
            .await
            .map_err(|cause| {
                StoreError::database(format!("renewing the lease on task {id}"), cause)
            })?;
        Ok(renewed.rows_affected() == 1)
    }

    async fn release_task(&self, id: TaskId, worker: &str) -> Result<bool, StoreError> {
        let released = sqlx::query(queries::RELEASE_TASK)
            .bind(id.to_string())
            .bind(worker)
            .bind(rows::millis(rows::now()))
            .execute(&self.writer)
            .await
            .map_err(|cause| StoreError::database(format!("releasing task {id}"), cause))?;
        Ok(released.rows_affected() == 1)
    }

    async fn expired_tasks(&self) -> Result<Vec<Task>, StoreError> {
        let rows: Vec<TaskRow> = sqlx::query_as(queries::EXPIRED_TASKS)
            .bind(rows::millis(rows::now()))
            .fetch_all(&self.reader)
            .await
            .map_err(|cause| StoreError::database("looking for lapsed leases", cause))?;
        rows.into_iter().map(TaskRow::into_task).collect()
    }

    async fn wait_for_work(&self, timeout: Duration) -> Result<(), StoreError> {
        // Other processes write the queue too, and SQLite cannot tell us when: look every so
        // often. A read in WAL mode costs microseconds and never blocks a writer.
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let queued: bool = sqlx::query_scalar(queries::ANY_QUEUED)
                .fetch_one(&self.reader)
                .await
                .map_err(|cause| StoreError::database("looking for queued tasks", cause))?;
            let now = tokio::time::Instant::now();
            if queued || now >= deadline {
                return Ok(());
            }
            tokio::time::sleep_until(deadline.min(now + semantics::QUEUE_POLL_INTERVAL)).await;
        }
    }

    async fn request_cancel(&self, id: TaskId) -> Result<CancelOutcome, StoreError> {
        let doing = || format!("cancelling task {id}");
        let mut tx = self.begin_immediate(doing).await?;
        let row: Option<(String, bool)> = sqlx::query_as(queries::CANCEL_STATE)
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
        let (outcome, write) = semantics::plan_cancel(state, already_requested);
        match write {
            CancelWrite::EndQueued => {
                sqlx::query(queries::CANCEL_QUEUED)
                    .bind(id.to_string())
                    .bind(semantics::CANCELLED_WHILE_QUEUED)
                    .bind(rows::millis(now))
                    .execute(&mut *tx)
                    .await
                    .map_err(|cause| StoreError::database(doing(), cause))?;
                insert_event(&mut tx, id, &Event::CancelRequested, now).await?;
                insert_event(&mut tx, id, &semantics::ended_while_queued(), now).await?;
            }
            CancelWrite::Flag => {
                sqlx::query(queries::FLAG_CANCEL)
                    .bind(id.to_string())
                    .bind(rows::millis(now))
                    .execute(&mut *tx)
                    .await
                    .map_err(|cause| StoreError::database(doing(), cause))?;
                insert_event(&mut tx, id, &Event::CancelRequested, now).await?;
            }
            CancelWrite::Nothing => {}
        }
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
        let rows: Vec<EventRow> = sqlx::query_as(queries::EVENTS)
            .bind(id.to_string())
            .bind(rows::integer(after))
            .bind(semantics::event_limit(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(|cause| {
                StoreError::database(format!("reading the events of task {id}"), cause)
            })?;
        rows.into_iter().map(|row| row.into_record(id)).collect()
    }

    async fn put_blob(&self, id: TaskId, name: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.blobs.put(id, name, bytes).await
    }

    async fn get_blob(&self, id: TaskId, name: &str) -> Result<Option<Bytes>, StoreError> {
        self.blobs.get(id, name).await
    }

    async fn check_blobs(&self) -> Result<(), StoreError> {
        self.blobs.check().await
    }

    async fn create_token(&self, token: &ApiToken, secret_hash: &str) -> Result<(), StoreError> {
        sqlx::query(queries::INSERT_TOKEN)
            .bind(&token.id)
            .bind(&token.name)
            .bind(token.scope.as_str())
            .bind(secret_hash)
            .bind(rows::millis(token.created_at))
            .bind(rows::token_repos(token)?)
            .execute(&self.writer)
            .await
            .map_err(|cause| StoreError::database(format!("storing token {}", token.id), cause))?;
        Ok(())
    }

    async fn token_by_hash(&self, secret_hash: &str) -> Result<Option<ApiToken>, StoreError> {
        let doing = "looking up an API token";
        let row: Option<TokenRow> = sqlx::query_as(queries::TOKEN_BY_HASH)
            .bind(secret_hash)
            .fetch_optional(&self.reader)
            .await
            .map_err(|cause| StoreError::database(doing, cause))?;
        let Some(token) = row.map(TokenRow::into_token).transpose()? else {
            return Ok(None);
        };
        let now = rows::now();
        if !semantics::use_worth_recording(&token, now) {
            return Ok(Some(token));
        }
        let row: Option<TokenRow> = sqlx::query_as(queries::TOUCH_TOKEN)
            .bind(&token.id)
            .bind(rows::millis(now))
            .fetch_optional(&self.writer)
            .await
            .map_err(|cause| StoreError::database(doing, cause))?;
        row.map(TokenRow::into_token).transpose()
    }

    async fn list_tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        let rows: Vec<TokenRow> = sqlx::query_as(queries::LIST_TOKENS)
            .fetch_all(&self.reader)
            .await
            .map_err(|cause| StoreError::database("listing API tokens", cause))?;
        rows.into_iter().map(TokenRow::into_token).collect()
    }

    async fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let revoked = sqlx::query(queries::REVOKE_TOKEN)
            .bind(id)
            .bind(rows::millis(rows::now()))
            .execute(&self.writer)
            .await
            .map_err(|cause| StoreError::database(format!("revoking token {id}"), cause))?;
        Ok(revoked.rows_affected() == 1)
    }

    async fn put_secret(&self, name: &str, sealed: &[u8]) -> Result<(), StoreError> {
        semantics::check_secret_name(name)?;
        sqlx::query(queries::PUT_SECRET)
            .bind(name)
            .bind(sealed)
            .bind(rows::millis(rows::now()))
            .execute(&self.writer)
            .await
            .map_err(|cause| StoreError::database(format!("storing the secret `{name}`"), cause))?;
        Ok(())
    }

    async fn secrets(&self) -> Result<Vec<SealedSecret>, StoreError> {
        let rows: Vec<SecretRow> = sqlx::query_as(queries::SECRETS)
            .fetch_all(&self.reader)
            .await
            .map_err(|cause| StoreError::database("listing secrets", cause))?;
        rows.into_iter().map(SecretRow::into_secret).collect()
    }

    async fn delete_secret(&self, name: &str) -> Result<bool, StoreError> {
        semantics::check_secret_name(name)?;
        let deleted = sqlx::query(queries::DELETE_SECRET)
            .bind(name)
            .execute(&self.writer)
            .await
            .map_err(|cause| {
                StoreError::database(format!("deleting the secret `{name}`"), cause)
            })?;
        Ok(deleted.rows_affected() == 1)
    }

    async fn add_repo(&self, repo: &Repository) -> Result<(), StoreError> {
        nightshift_protocol::check_repo_name(&repo.name)?;
        sqlx::query(queries::INSERT_REPO)
            .bind(&repo.name)
            .bind(&repo.location)
            .bind(rows::millis(repo.created_at))
            .bind(&repo.credential)
            .bind(&repo.github_api)
            .bind(&repo.github_app)
            .execute(&self.writer)
            .await
            .map_err(|cause| {
                semantics::insert_error(
                    format!("a repository named `{}` or at {}", repo.name, repo.location),
                    format!("registering the repository `{}`", repo.name),
                    cause,
                )
            })?;
        Ok(())
    }

    async fn repos(&self) -> Result<Vec<Repository>, StoreError> {
        let rows: Vec<RepoRow> = sqlx::query_as(queries::REPOS)
            .fetch_all(&self.reader)
            .await
            .map_err(|cause| StoreError::database("listing the repositories", cause))?;
        rows.into_iter().map(RepoRow::into_repo).collect()
    }

    async fn remove_repo(&self, name: &str) -> Result<bool, StoreError> {
        let removed = sqlx::query(queries::DELETE_REPO)
            .bind(name)
            .execute(&self.writer)
            .await
            .map_err(|cause| {
                StoreError::database(format!("removing the repository `{name}`"), cause)
            })?;
        Ok(removed.rows_affected() == 1)
    }

    async fn record_delivery(&self, id: &str) -> Result<bool, StoreError> {
        let inserted = sqlx::query(queries::RECORD_DELIVERY)
            .bind(id)
            .bind(rows::millis(rows::now()))
            .execute(&self.writer)
            .await
            .map_err(|cause| {
                StoreError::database(format!("recording the webhook delivery {id}"), cause)
            })?;
        Ok(inserted.rows_affected() == 1)
    }

    async fn schedule_forge_retry(
        &self,
        id: TaskId,
        at: Timestamp,
        reason: &str,
    ) -> Result<u32, StoreError> {
        let attempts: i64 = sqlx::query_scalar(queries::SCHEDULE_FORGE_RETRY)
            .bind(id.to_string())
            .bind(rows::millis(at))
            .bind(reason)
            .fetch_one(&self.writer)
            .await
            .map_err(|cause| {
                StoreError::database(format!("scheduling task {id}'s forge retry"), cause)
            })?;
        Ok(u32::try_from(attempts).unwrap_or(u32::MAX))
    }

    async fn claim_forge_retries(
        &self,
        hold: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<ForgeRetry>, StoreError> {
        let now = rows::now();
        let claimed: Vec<(String, i64, String)> = sqlx::query_as(queries::CLAIM_FORGE_RETRIES)
            .bind(rows::millis(now))
            .bind(rows::lease_until(now, hold))
            .bind(i64::from(limit))
            .fetch_all(&self.writer)
            .await
            .map_err(|cause| StoreError::database("claiming forge retries", cause))?;
        claimed.into_iter().map(rows::forge_retry).collect()
    }

    async fn finish_forge_retry(&self, id: TaskId) -> Result<(), StoreError> {
        sqlx::query(queries::FINISH_FORGE_RETRY)
            .bind(id.to_string())
            .execute(&self.writer)
            .await
            .map_err(|cause| {
                StoreError::database(format!("forgetting task {id}'s forge retry"), cause)
            })?;
        Ok(())
    }

    async fn set_secret_repos(&self, name: &str, repos: &[String]) -> Result<bool, StoreError> {
        semantics::check_secret_name(name)?;
        let json = serde_json::to_string(repos)
            .map_err(|err| StoreError::corrupt(format!("secret {name}'s repositories ({err})")))?;
        let updated = sqlx::query(queries::SET_SECRET_REPOS)
            .bind(name)
            .bind(json)
            .execute(&self.writer)
            .await
            .map_err(|cause| {
                StoreError::database(format!("granting the secret `{name}`"), cause)
            })?;
        Ok(updated.rows_affected() == 1)
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
         SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5 FROM events WHERE task_id = $1 \
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
