//! The PostgreSQL store: one database shared by servers and workers on many machines.
//!
//! Same schema shape and statements as SQLite wherever the two agree (see [`crate::queries`]);
//! what differs is how concurrency is made safe:
//! - `claim_next` picks the oldest queued row with `FOR UPDATE SKIP LOCKED`, so concurrent
//!   claimers never wait on, or get, the same task.
//! - Event numbers come from a per-task counter row (`event_seqs`) bumped with
//!   `UPDATE ... RETURNING` in the same statement that inserts the event: the row lock orders
//!   appenders, and a failed insert rolls the number back, so logs stay gapless.
//! - Waiting workers are woken by `NOTIFY nightshift_queue` (sent by `create_task` and
//!   `release_task`, delivered at commit) instead of polling.
//!
//! Blobs are not in the database: they go to the [`Blobs`] the store is opened with. For many
//! machines that is an object store bucket (`NIGHTSHIFT_BLOB_URL=s3://…`), which every server
//! and worker reaches on its own; the default, a directory in the nightshift home, has to be
//! shared between them (e.g. over NFS) for `serve` to find the diffs that workers wrote.

mod wakeups;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use jiff::Timestamp;
use nightshift_protocol::{
    ApiToken, Event, EventRecord, Repository, SCHEMA_VERSION, Task, TaskId, TaskState,
};
use sqlx::error::ErrorKind;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Transaction};

use crate::postgres::wakeups::{QUEUE_CHANNEL, Wakeups};
use crate::rows::{
    self, EventRow, RepoRow, SecretRow, TaskColumns, TaskRow, TokenRow, select_tasks, task_columns,
};
use crate::semantics::{self, CancelWrite, Reference};
use crate::{
    Blobs, CancelOutcome, ForgeRetry, SealedSecret, Store, StoreError, TaskFilter, TaskOutcome,
    TaskTotals, queries,
};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections per store (per process). Workers hold none between statements.
const POOL_SIZE: u32 = 16;
/// How long a statement waits for a free connection, or for an unreachable server to come back,
/// before failing with a retryable error (which the API turns into a 503).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The [`Store`] on a PostgreSQL database. Cheap to clone: clones share the pool and the
/// listening connection.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    blobs: Blobs,
    wakeups: Wakeups,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`),
    /// brings its schema up to date, starts listening for queued tasks, and keeps blobs in
    /// `blobs`.
    pub async fn connect(url: &str, blobs: Blobs) -> Result<PostgresStore, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|cause| {
            StoreError::database("reading the PostgreSQL URL (password not shown)", cause)
        })?;
        PostgresStore::connect_with(options, blobs).await
    }

    /// [`PostgresStore::connect`] with options already parsed.
    pub async fn connect_with(
        options: PgConnectOptions,
        blobs: Blobs,
    ) -> Result<PostgresStore, StoreError> {
        let name = describe(&options);
        // One connection of its own first, for migrations: if the server cannot be reached,
        // this says so at once (a pool would retry until its timeout and only report that).
        let mut setup = PgConnection::connect_with(&options)
            .await
            .map_err(|cause| StoreError::database(format!("connecting to {name}"), cause))?;
        // sqlx holds an advisory lock while it migrates: stores starting at once take turns.
        let migrated = MIGRATOR
            .run(&mut setup)
            .await
            .map_err(|cause| StoreError::Migrate {
                database: name.clone(),
                cause,
            });
        let _ = setup.close().await;
        migrated?;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.clone());
        let wakeups = Wakeups::start(options).await;
        tracing::debug!(database = %name, "store opened");
        Ok(PostgresStore {
            pool,
            blobs,
            wakeups,
        })
    }

    /// Closes every connection, after the statements under way. Calls after this fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin(
        &self,
        doing: impl FnOnce() -> String,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool
            .begin()
            .await
            .map_err(|cause| StoreError::database(doing(), cause))
    }

    async fn any_queued(&self) -> Result<bool, StoreError> {
        sqlx::query_scalar(queries::ANY_QUEUED)
            .fetch_one(&self.pool)
            .await
            .map_err(|cause| StoreError::database("looking for queued tasks", cause))
    }
}

/// The database, for messages: user, host, port and name, never the password.
fn describe(options: &PgConnectOptions) -> String {
    format!(
        "the PostgreSQL database `{}` at {}@{}:{}",
        options.get_database().unwrap_or(options.get_username()),
        options.get_username(),
        options.get_host(),
        options.get_port()
    )
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_task(&self, task: &Task) -> Result<EventRecord, StoreError> {
        if task.state != TaskState::Queued {
            return Err(StoreError::NotQueued {
                id: task.id,
                state: task.state,
            });
        }
        let doing = || format!("storing the new task {}", task.id);
        let columns = TaskColumns::of(task)?;
        let mut tx = self.begin(doing).await?;
        columns
            .bind(sqlx::query::<Postgres>(queries::INSERT_TASK))
            .bind(task.cancel_requested)
            .execute(&mut *tx)
            .await
            .map_err(|cause| StoreError::database(doing(), cause))?;
        sqlx::query("INSERT INTO event_seqs (task_id, last_seq) VALUES ($1, 0)")
            .bind(task.id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(|cause| StoreError::database(doing(), cause))?;
        let queued = Event::Queued {
            spec: Box::new(task.spec.clone()),
        };
        let record =
            insert_event(&mut tx, task.id, &queued, rows::truncate(task.created_at)).await?;
        notify_queue(&mut tx, doing).await?;
        tx.commit()
            .await
            .map_err(|cause| StoreError::database(doing(), cause))?;
        Ok(record)
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        let row: Option<TaskRow> = sqlx::query_as(queries::GET_TASK)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
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
            .fetch_all(&self.pool)
            .await
            .map_err(|cause| StoreError::database(format!("looking up `{reference}`"), cause))?;
        semantics::the_match(reference, rows)
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>, StoreError> {
        let rows: Vec<TaskRow> = sqlx::query_as(select_tasks!(
            "WHERE ($1::text IS NULL OR id < $1) \
               AND ($2::text IS NULL OR state IN (SELECT json_array_elements_text($2::json))) \
               AND ($4::text IS NULL OR (spec::json ->> 'repo') = $4) \
               AND ($5::text IS NULL OR strpos(lower(spec::json ->> 'prompt'), lower($5)) > 0) \
               AND ($6::text IS NULL OR repo IN (SELECT json_array_elements_text($6::json))) \
               AND ($7::text IS NULL OR branch = $7) \
             ORDER BY id DESC LIMIT $3"
        ))
        .bind(filter.before.map(|id| id.to_string()))
        .bind(semantics::states_json(filter))
        .bind(semantics::task_limit(filter))
        .bind(filter.repo.as_deref())
        .bind(filter.prompt_contains.as_deref())
        .bind(semantics::repos_json(filter))
        .bind(filter.branch.as_deref())
        .fetch_all(&self.pool)
        .await
        .map_err(|cause| StoreError::database("listing tasks", cause))?;
        rows.into_iter().map(TaskRow::into_task).collect()
    }

    async fn count_tasks(&self) -> Result<Vec<(TaskState, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(queries::COUNT_TASKS)
            .fetch_all(&self.pool)
            .await
            .map_err(|cause| StoreError::database("counting tasks", cause))?;
        rows::state_counts(rows)
    }

    async fn task_totals(&self) -> Result<TaskTotals, StoreError> {
        let tasks: rows::TaskTotalsRow = sqlx::query_as(queries::TASK_TOTALS)
            .fetch_one(&self.pool)
            .await
            .map_err(|cause| StoreError::database("totalling tasks", cause))?;
        let events: (f64, i64) = sqlx::query_as(queries::POSTGRES_EVENT_TOTALS)
            .fetch_one(&self.pool)
            .await
            .map_err(|cause| StoreError::database("totalling events", cause))?;
        rows::task_totals(tasks, events)
    }

    async fn task_outcomes(&self, ids: &[TaskId]) -> Result<Vec<TaskOutcome>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<rows::OutcomeRow> = sqlx::query_as(queries::POSTGRES_TASK_OUTCOMES)
            .bind(rows::ids_json(ids))
            .fetch_all(&self.pool)
            .await
            .map_err(|cause| StoreError::database("reading task outcomes", cause))?;
        rows::task_outcomes(rows)
    }

    async fn update_task(&self, task: &Task) -> Result<(), StoreError> {
        let updated = TaskColumns::of(task)?
            .bind(sqlx::query::<Postgres>(queries::UPDATE_TASK))
            .execute(&self.pool)
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
            .execute(&self.pool)
            .await
            .map_err(|cause| StoreError::database(format!("claiming task {id}"), cause))?;
        Ok(claimed.rows_affected() == 1)
    }

    async fn claim_next(&self, worker: &str, lease: Duration) -> Result<Option<Task>, StoreError> {
        let now = rows::now();
        // One statement, so one transaction: the subquery locks the oldest queued row nobody
        // else has locked, and the update takes it. Concurrent claimers skip each other's rows
        // instead of queueing behind them.
        let row: Option<TaskRow> = sqlx::query_as(concat!(
            "UPDATE tasks SET state = 'preparing', worker = $1, lease_expires_at = $3, \
             started_at = $2, updated_at = $2 \
             WHERE id = (SELECT id FROM tasks WHERE state = 'queued' ORDER BY id LIMIT 1 \
                         FOR UPDATE SKIP LOCKED) \
               AND state = 'queued' \
             RETURNING ",
            task_columns!()
        ))
        .bind(worker)
        .bind(rows::millis(now))
        .bind(rows::lease_until(now, lease))
        .fetch_optional(&self.pool)
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
            .execute(&self.pool)
            .await
            .map_err(|cause| {
                StoreError::database(format!("renewing the lease on task {id}"), cause)
            })?;
        Ok(renewed.rows_affected() == 1)
    }

    async fn release_task(&self, id: TaskId, worker: &str) -> Result<bool, StoreError> {
        let doing = || format!("releasing task {id}");
        let mut tx = self.begin(doing).await?;
        let released = sqlx::query(queries::RELEASE_TASK)
            .bind(id.to_string())
            .bind(worker)
            .bind(rows::millis(rows::now()))
            .execute(&mut *tx)
            .await
            .map_err(|cause| StoreError::database(doing(), cause))?;
        let released = released.rows_affected() == 1;
        if released {
            notify_queue(&mut tx, doing).await?;
        }
        tx.commit()
            .await
            .map_err(|cause| StoreError::database(doing(), cause))?;
        Ok(released)
    }

    async fn expired_tasks(&self) -> Result<Vec<Task>, StoreError> {
        let rows: Vec<TaskRow> = sqlx::query_as(queries::EXPIRED_TASKS)
            .bind(rows::millis(rows::now()))
            .fetch_all(&self.pool)
            .await
            .map_err(|cause| StoreError::database("looking for lapsed leases", cause))?;
        rows.into_iter().map(TaskRow::into_task).collect()
    }

    async fn wait_for_work(&self, timeout: Duration) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribe before looking, so that a task queued between the look and the wait still
        // wakes us.
        let mut woken = self.wakeups.subscribe();
        if self.any_queued().await? {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline, woken.changed()).await {
            Ok(Ok(())) | Err(_) => {}
            // The listener is gone (the runtime is shutting down): just wait out the timeout.
            Ok(Err(_)) => tokio::time::sleep_until(deadline).await,
        }
        Ok(())
    }

    async fn request_cancel(&self, id: TaskId) -> Result<CancelOutcome, StoreError> {
        let doing = || format!("cancelling task {id}");
        let mut tx = self.begin(doing).await?;
        // The row lock keeps a claim (or another cancel) from slipping in between the read and
        // the writes. NO KEY UPDATE, not UPDATE: appenders hold the task's counter row and then
        // take a KEY SHARE lock on the task for the events' foreign key, which FOR UPDATE would
        // block while this transaction waits for the counter row: a deadlock.
        let row: Option<(String, bool)> = sqlx::query_as(
            "SELECT state, cancel_requested FROM tasks WHERE id = $1 FOR NO KEY UPDATE",
        )
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
        let mut connection = self.pool.acquire().await.map_err(|cause| {
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
            .fetch_all(&self.pool)
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
            .execute(&self.pool)
            .await
            .map_err(|cause| StoreError::database(format!("storing token {}", token.id), cause))?;
        Ok(())
    }

    async fn token_by_hash(&self, secret_hash: &str) -> Result<Option<ApiToken>, StoreError> {
        let doing = "looking up an API token";
        let row: Option<TokenRow> = sqlx::query_as(queries::TOKEN_BY_HASH)
            .bind(secret_hash)
            .fetch_optional(&self.pool)
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
            .fetch_optional(&self.pool)
            .await
            .map_err(|cause| StoreError::database(doing, cause))?;
        row.map(TokenRow::into_token).transpose()
    }

    async fn list_tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        let rows: Vec<TokenRow> = sqlx::query_as(queries::LIST_TOKENS)
            .fetch_all(&self.pool)
            .await
            .map_err(|cause| StoreError::database("listing API tokens", cause))?;
        rows.into_iter().map(TokenRow::into_token).collect()
    }

    async fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let revoked = sqlx::query(queries::REVOKE_TOKEN)
            .bind(id)
            .bind(rows::millis(rows::now()))
            .execute(&self.pool)
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
            .execute(&self.pool)
            .await
            .map_err(|cause| StoreError::database(format!("storing the secret `{name}`"), cause))?;
        Ok(())
    }

    async fn secrets(&self) -> Result<Vec<SealedSecret>, StoreError> {
        let rows: Vec<SecretRow> = sqlx::query_as(queries::SECRETS)
            .fetch_all(&self.pool)
            .await
            .map_err(|cause| StoreError::database("listing secrets", cause))?;
        rows.into_iter().map(SecretRow::into_secret).collect()
    }

    async fn delete_secret(&self, name: &str) -> Result<bool, StoreError> {
        semantics::check_secret_name(name)?;
        let deleted = sqlx::query(queries::DELETE_SECRET)
            .bind(name)
            .execute(&self.pool)
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
            .execute(&self.pool)
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
            .fetch_all(&self.pool)
            .await
            .map_err(|cause| StoreError::database("listing the repositories", cause))?;
        rows.into_iter().map(RepoRow::into_repo).collect()
    }

    async fn remove_repo(&self, name: &str) -> Result<bool, StoreError> {
        let removed = sqlx::query(queries::DELETE_REPO)
            .bind(name)
            .execute(&self.pool)
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
            .execute(&self.pool)
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
            .fetch_one(&self.pool)
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
            .fetch_all(&self.pool)
            .await
            .map_err(|cause| StoreError::database("claiming forge retries", cause))?;
        claimed.into_iter().map(rows::forge_retry).collect()
    }

    async fn finish_forge_retry(&self, id: TaskId) -> Result<(), StoreError> {
        sqlx::query(queries::FINISH_FORGE_RETRY)
            .bind(id.to_string())
            .execute(&self.pool)
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
            .execute(&self.pool)
            .await
            .map_err(|cause| {
                StoreError::database(format!("granting the secret `{name}`"), cause)
            })?;
        Ok(updated.rows_affected() == 1)
    }
}

/// Tells listening workers that a task was queued; delivered when the transaction commits.
async fn notify_queue(
    tx: &mut Transaction<'static, Postgres>,
    doing: impl FnOnce() -> String,
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(QUEUE_CHANNEL)
        .execute(&mut **tx)
        .await
        .map_err(|cause| StoreError::database(doing(), cause))?;
    Ok(())
}

/// Appends `event` with the task's next sequence number, taken from its counter row in the same
/// statement (see the module's comment).
async fn insert_event(
    connection: &mut PgConnection,
    id: TaskId,
    event: &Event,
    at: Timestamp,
) -> Result<EventRecord, StoreError> {
    let doing = || format!("appending a `{}` event to task {id}", event.kind());
    let body = rows::event_body(id, event)?;
    let seq: Option<i64> = sqlx::query_scalar(
        "WITH next AS ( \
             UPDATE event_seqs SET last_seq = last_seq + 1 WHERE task_id = $1 RETURNING last_seq \
         ) \
         INSERT INTO events (task_id, seq, at, type, body, schema) \
         SELECT $1, last_seq, $2, $3, $4, $5 FROM next \
         RETURNING seq",
    )
    .bind(id.to_string())
    .bind(rows::millis(at))
    .bind(event.kind())
    .bind(body)
    .bind(i64::from(SCHEMA_VERSION))
    .fetch_optional(&mut *connection)
    .await
    .map_err(|cause| match &cause {
        sqlx::Error::Database(db) if db.kind() == ErrorKind::ForeignKeyViolation => {
            StoreError::NotFound {
                reference: id.to_string(),
            }
        }
        _ => StoreError::database(doing(), cause),
    })?;
    // No counter row: no such task.
    let Some(seq) = seq else {
        return Err(StoreError::NotFound {
            reference: id.to_string(),
        });
    };
    let seq = u64::try_from(seq)
        .map_err(|_| StoreError::corrupt(format!("task {id}'s next event number {seq}")))?;
    Ok(EventRecord {
        task_id: id,
        seq,
        at,
        event: event.clone(),
    })
}
