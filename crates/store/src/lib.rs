//! Persistence for nightshift: tasks, their append-only event logs, the queue with its leases,
//! API tokens, and blobs (diffs, logs, artifacts), behind one [`Store`] trait.
//!
//! Callers see only the trait, and pick a backend with [`open_store`]. SQLite is the default:
//! one file under `NIGHTSHIFT_HOME`, WAL mode, and write statements that take the write lock up
//! front so that several processes (the CLI, detached workers) share it without "database is
//! locked". PostgreSQL serves many machines: the same statements where the two agree, `FOR
//! UPDATE SKIP LOCKED` for the queue and LISTEN/NOTIFY to wake waiting workers. Blobs go to a
//! directory in the nightshift home or, for many machines, to an S3-compatible bucket
//! ([`Blobs`], chosen with [`open_blobs`]).

mod blobs;
mod error;
mod open;
mod postgres;
mod queries;
mod rows;
mod semantics;
mod sqlite;

use async_trait::async_trait;
use bytes::Bytes;
use std::time::Duration;

use nightshift_protocol::{ApiToken, Event, EventRecord, Repository, Task, TaskId, TaskState};

pub use blobs::Blobs;
pub use error::StoreError;
pub use open::{open_blobs, open_store};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Which tasks a listing returns, newest first.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    /// Only tasks in one of these states; empty means all.
    pub states: Vec<TaskState>,
    /// Only tasks created before this id (for paging); `None` starts at the newest.
    pub before: Option<TaskId>,
    /// At most this many; 0 means the default of 100.
    pub limit: u32,
    /// Only tasks on exactly this repository (`TaskSpec::repo`).
    pub repo: Option<String>,
    /// Only tasks whose prompt contains this text, ignoring ASCII case.
    pub prompt_contains: Option<String>,
    /// Only tasks on one of these repositories (`TaskSpec::repo`); `None` means any. (A token
    /// limited to some repositories sees only theirs.)
    pub repos: Option<Vec<String>>,
    /// Only tasks whose branch is exactly this.
    pub branch: Option<String>,
}

/// A secret as stored: its name, its encrypted value, and the repositories it is granted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecret {
    pub name: String,
    pub sealed: Vec<u8>,
    pub updated_at: jiff::Timestamp,
    /// The repositories whose tasks may use it, as the caller identified them (`*` for every
    /// repository); none for a secret stored before grants existed.
    pub repos: Vec<String>,
}

/// A task's push or pull request that a forge outage held up, due to be tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgeRetry {
    pub task_id: TaskId,
    /// How many attempts have failed so far.
    pub attempts: u32,
    /// Why the last one failed.
    pub reason: String,
}

/// What happened when cancellation was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The task was still queued: it is now cancelled and no worker will pick it up.
    CancelledWhileQueued,
    /// A worker has it: the flag is set and the worker stops at its next check.
    Requested,
    /// The task had already ended; nothing changed.
    AlreadyEnded(TaskState),
}

/// What a task's log says of its result, for listings: read from its `ended` and
/// `command_finished` events only.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskOutcome {
    pub id: TaskId,
    /// Model dollars from the `ended` event, when the price was known.
    pub cost_usd: Option<f64>,
    /// Check runs that passed and that failed (`command_finished` with phase `check`).
    pub checks_passed: u32,
    pub checks_failed: u32,
}

/// Totals over every task in the store, for metrics. Every process sharing the store sees the
/// same numbers, whichever worker ran the tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TaskTotals {
    /// Tokens of every task so far (running ones included), as the tasks' rows count them.
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    /// Model turns of every task so far.
    pub turns: u64,
    /// Tasks that ran and ended: claimed (`started_at` set) and finished (`finished_at` set).
    pub finished: u64,
    /// The sum over those tasks of `finished_at - started_at`, in seconds.
    pub run_seconds_sum: f64,
    /// Dollars spent on models: the sum of the `cost_usd` of every `ended` event that has one.
    pub model_usd: f64,
    /// `error` events of kind `sandbox`.
    pub sandbox_failures: u64,
}

/// The one persistence interface of nightshift.
#[async_trait]
pub trait Store: Send + Sync {
    /// Stores a new task (which must be `queued`) and its first event, `Event::Queued`, in one
    /// transaction. Returns that event. Times are kept to the millisecond.
    async fn create_task(&self, task: &Task) -> Result<EventRecord, StoreError>;

    /// The task with this id, if any.
    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError>;

    /// Resolves what a person typed: a full id, a unique prefix of one (at least 4 characters),
    /// or a short id (the last 8 characters). Case-insensitive.
    async fn find_task(&self, reference: &str) -> Result<Task, StoreError>;

    /// Tasks matching the filter, newest first.
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>, StoreError>;

    /// How many tasks are in each state (states with none are left out).
    async fn count_tasks(&self) -> Result<Vec<(TaskState, u64)>, StoreError>;

    /// Totals of tokens, turns, run time, model dollars and sandbox failures over every task.
    /// Reads every task row, and the `ended` and `error` events through a partial index (not the
    /// rest of the log): meant for scrapes, not for hot paths.
    async fn task_totals(&self) -> Result<TaskTotals, StoreError>;

    /// The outcomes of the tasks `ids` (one page of a listing, say). Tasks without an `ended`
    /// or check event are left out.
    async fn task_outcomes(&self, ids: &[TaskId]) -> Result<Vec<TaskOutcome>, StoreError>;

    /// Writes every field of the task row except `cancel_requested`, which only
    /// [`Store::request_cancel`] sets, and `worker` and `lease_expires_at`, which only the
    /// queue's methods (claim, renew, release) set: the values of those in `task` are ignored.
    /// Only the worker holding the task calls this. A task that ends keeps the worker that last
    /// held it (a record of who ran it) and its last lease, which [`Store::expired_tasks`]
    /// ignores for ended tasks.
    async fn update_task(&self, task: &Task) -> Result<(), StoreError>;

    /// Moves a queued task to `preparing` for `worker`, holding it for `lease` (sets `worker`
    /// and `lease_expires_at`, and `started_at` to now). Returns false (and changes nothing) if
    /// the task is not queued, e.g. because it was cancelled or another worker took it. Appends
    /// no event: `Event::Claimed` is the caller's to log.
    async fn claim_task(
        &self,
        id: TaskId,
        worker: &str,
        lease: Duration,
    ) -> Result<bool, StoreError>;

    /// Claims the oldest queued task for `worker` as [`Store::claim_task`] does, or returns
    /// `None` when nothing is queued. Safe when many workers (processes, machines) call it at
    /// once: each task goes to exactly one of them.
    async fn claim_next(&self, worker: &str, lease: Duration) -> Result<Option<Task>, StoreError>;

    /// Extends `worker`'s hold on a task to now + `lease`. Returns false when the worker no
    /// longer holds it (it ended, was released, or its lease lapsed and it was taken over):
    /// the worker must then stop working on it. A lease that lapsed but that nobody took over
    /// is renewed. Touches nothing else (not even `updated_at`).
    async fn renew_lease(
        &self,
        id: TaskId,
        worker: &str,
        lease: Duration,
    ) -> Result<bool, StoreError>;

    /// Puts a task `worker` holds back in the queue (state `queued`, no worker, no lease) for
    /// another worker to start over, and wakes waiting workers. Returns false when the worker
    /// does not hold it. Appends no event: `Event::Released` is the caller's to log, before
    /// releasing (afterwards another worker may already be logging).
    async fn release_task(&self, id: TaskId, worker: &str) -> Result<bool, StoreError>;

    /// Claimed, unfinished tasks whose lease has lapsed (their worker died or hung), oldest
    /// first. A claimed task without a lease (claimed before leases existed) counts as lapsed.
    /// Leases are compared with this machine's clock: workers' clocks must agree to well
    /// within a lease.
    async fn expired_tasks(&self) -> Result<Vec<Task>, StoreError>;

    /// Waits up to `timeout` for a task to be queued (or returns at once if one may be
    /// waiting). Wake-ups may be spurious; callers then try [`Store::claim_next`]. SQLite looks
    /// every 100 ms; PostgreSQL is woken by NOTIFY.
    async fn wait_for_work(&self, timeout: Duration) -> Result<(), StoreError>;

    /// Asks for the task to stop. Appends `Event::CancelRequested` unless it already ended; a
    /// queued task is moved to `cancelled` (with its `Event::Ended`) directly.
    async fn request_cancel(&self, id: TaskId) -> Result<CancelOutcome, StoreError>;

    /// Appends an event to the task's log with the next sequence number (1-based, gapless,
    /// safe against concurrent appenders in other processes).
    async fn append_event(&self, id: TaskId, event: &Event) -> Result<EventRecord, StoreError>;

    /// Up to `limit` events of the task with `seq > after`, in order; none for an unknown task.
    /// A `limit` of 0 means the default of 1000; at most 10 000 are returned per call.
    async fn events(
        &self,
        id: TaskId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError>;

    /// Stores a blob under the task, replacing one of the same name.
    async fn put_blob(&self, id: TaskId, name: &str, bytes: Bytes) -> Result<(), StoreError>;

    /// A blob of the task, if stored.
    async fn get_blob(&self, id: TaskId, name: &str) -> Result<Option<Bytes>, StoreError>;

    /// Checks that the blobs can be reached and the credentials are accepted (one request that
    /// lists nothing, for an object store bucket). Workers and servers call it at start-up, so
    /// that a wrong bucket or key fails them at once rather than each task at its end.
    async fn check_blobs(&self) -> Result<(), StoreError>;

    /// Stores a new API token with the hash of its secret (the secret itself is never stored).
    async fn create_token(&self, token: &ApiToken, secret_hash: &str) -> Result<(), StoreError>;

    /// The unrevoked token whose secret hashes to `secret_hash`, if any; records the use (to
    /// the minute: a lookup within a minute of the last recorded use only reads).
    async fn token_by_hash(&self, secret_hash: &str) -> Result<Option<ApiToken>, StoreError>;

    /// Every token, revoked ones included, newest first.
    async fn list_tokens(&self) -> Result<Vec<ApiToken>, StoreError>;

    /// Revokes the token `id`. Returns false if there is no such unrevoked token.
    async fn revoke_token(&self, id: &str) -> Result<bool, StoreError>;

    /// Stores (or replaces) the secret `name` as `sealed`: its value encrypted by the caller,
    /// which keeps the key apart from the store. The store never sees a value in the clear.
    async fn put_secret(&self, name: &str, sealed: &[u8]) -> Result<(), StoreError>;

    /// Every secret, sealed, by name.
    async fn secrets(&self) -> Result<Vec<SealedSecret>, StoreError>;

    /// Deletes the secret `name`. Returns false if there was none.
    async fn delete_secret(&self, name: &str) -> Result<bool, StoreError>;

    /// Registers a repository. Fails with [`StoreError::AlreadyExists`] when its name or its
    /// location is registered already, and with [`StoreError::InvalidRepoName`] for a name
    /// [`nightshift_protocol::check_repo_name`] refuses.
    async fn add_repo(&self, repo: &Repository) -> Result<(), StoreError>;

    /// Every registered repository, by name.
    async fn repos(&self) -> Result<Vec<Repository>, StoreError>;

    /// Forgets the repository `name` (its tasks stay). Returns false if there was none.
    async fn remove_repo(&self, name: &str) -> Result<bool, StoreError>;

    /// Records a forge webhook delivery by its id. Returns true the first time, false for a
    /// redelivery (safe when several servers receive it at once: one of them gets true).
    async fn record_delivery(&self, id: &str) -> Result<bool, StoreError>;

    /// Schedules task `id`'s push and pull request to be tried again at `at`, after a forge
    /// outage held them up, with the reason. Returns how many attempts have failed, this one
    /// included.
    async fn schedule_forge_retry(
        &self,
        id: TaskId,
        at: jiff::Timestamp,
        reason: &str,
    ) -> Result<u32, StoreError>;

    /// Takes up to `limit` forge retries that are due, holding each for `hold` so that no other
    /// worker takes it meanwhile (a worker that dies holding one lets it come due again).
    async fn claim_forge_retries(
        &self,
        hold: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<ForgeRetry>, StoreError>;

    /// Forgets task `id`'s forge retry: it succeeded, or was given up.
    async fn finish_forge_retry(&self, id: TaskId) -> Result<(), StoreError>;

    /// Replaces the repositories the secret `name` is granted to. Returns false if there is no
    /// such secret. Storing a new value ([`Store::put_secret`]) keeps them.
    async fn set_secret_repos(&self, name: &str, repos: &[String]) -> Result<bool, StoreError>;
}
