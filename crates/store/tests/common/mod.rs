//! What the store's tests share: a store in a fresh temporary home, and tasks to put in it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use jiff::Timestamp;
use nightshift_protocol::{Task, TaskId, TaskSpec};
use nightshift_store::{SqliteStore, Store};
use tempfile::TempDir;

/// A store in its own temporary home, removed when dropped.
pub struct TestStore {
    pub store: SqliteStore,
    pub home: TempDir,
}

pub async fn open() -> TestStore {
    let home = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(home.path()).await.unwrap();
    TestStore { store, home }
}

pub fn spec(prompt: &str) -> TaskSpec {
    TaskSpec {
        repo: "/src/demo".into(),
        base: Some("main".into()),
        prompt: prompt.into(),
        model: "openai:gpt-4.1".into(),
        max_turns: TaskSpec::DEFAULT_MAX_TURNS,
    }
}

/// Now, at the millisecond precision the store keeps, so that tasks compare equal after a
/// round trip.
pub fn now() -> Timestamp {
    Timestamp::from_millisecond(Timestamp::now().as_millisecond()).unwrap()
}

/// A queued task with a fresh id (later than every id made before it).
pub fn queued(prompt: &str) -> Task {
    Task::queued(TaskId::new(), spec(prompt), now())
}

/// Stores a new queued task and returns it.
pub async fn create(store: &impl Store, prompt: &str) -> Task {
    let task = queued(prompt);
    store.create_task(&task).await.unwrap();
    task
}
