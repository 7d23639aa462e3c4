//! Persistence for nightshift: tasks, their append-only event logs, and blobs (diffs, logs,
//! artifacts), behind one [`Store`] trait.
//!
//! Callers see only the trait, so a PostgreSQL store can stand beside the SQLite one without
//! touching them. SQLite is the default: one file under `NIGHTSHIFT_HOME`, WAL mode, and write
//! statements that take the write lock up front so that several processes (the CLI, detached
//! workers) share it without "database is locked".

mod blobs;
mod error;
mod sqlite;

use async_trait::async_trait;
use bytes::Bytes;
use nightshift_protocol::{Event, EventRecord, Task, TaskId, TaskState};

pub use blobs::LocalBlobs;
pub use error::StoreError;
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

    /// Writes every field of the task row except `cancel_requested`, which only
    /// [`Store::request_cancel`] sets. Only the worker holding the task calls this.
    async fn update_task(&self, task: &Task) -> Result<(), StoreError>;

    /// Moves a queued task to `preparing` for `worker`. Returns false (and changes nothing) if
    /// the task is not queued, e.g. because it was cancelled or another worker took it.
    async fn claim_task(&self, id: TaskId, worker: &str) -> Result<bool, StoreError>;

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
}
