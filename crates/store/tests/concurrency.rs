//! Several writers on one database: tokio tasks sharing a store, separately opened stores (as
//! two processes or machines would have), and, for SQLite, real child processes. Sequence
//! numbers must stay gapless and nobody may see "database is locked".

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nightshift_protocol::{Event, TaskId};
use nightshift_store::{CancelOutcome, SqliteStore, Store};

use common::{TestStore, create};

const LEASE: Duration = Duration::from_secs(60);

/// Asserts that the task's log is numbered exactly 1..=expected.
async fn assert_gapless(store: &dyn Store, id: TaskId, expected: u64) {
    let records = store.events(id, 0, 0).await.unwrap();
    let seqs: Vec<u64> = records.iter().map(|record| record.seq).collect();
    assert_eq!(seqs, (1..=expected).collect::<Vec<_>>());
}

/// Appends `count` warnings, each from its own spawned tokio task, and returns their numbers.
async fn append_many(store: &Arc<dyn Store>, id: TaskId, writer: &str, count: usize) -> Vec<u64> {
    let mut handles = Vec::new();
    for i in 0..count {
        let store = store.clone();
        let message = format!("{writer} {i}");
        handles.push(tokio::spawn(async move {
            store.append_event(id, &Event::Warning { message }).await
        }));
    }
    let mut seqs = Vec::new();
    for handle in handles {
        seqs.push(handle.await.unwrap().unwrap().seq);
    }
    seqs
}

async fn many_tokio_tasks_append_without_gaps(t: TestStore) {
    let task = create(&*t.store, "p").await;

    let seqs = append_many(&t.store, task.id, "a", 200).await;

    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), 200, "duplicate sequence numbers");
    assert_gapless(&*t.store, task.id, 201).await;
}

async fn two_stores_on_one_database_append_and_cancel_without_gaps(t: TestStore) {
    let other = t.another().await;
    let task = create(&*t.store, "p").await;
    assert!(
        t.store
            .claim_task(task.id, "worker-1", LEASE)
            .await
            .unwrap()
    );

    let (from_first, from_second, cancelled) = tokio::join!(
        append_many(&t.store, task.id, "first", 150),
        append_many(&other, task.id, "second", 150),
        async {
            tokio::task::yield_now().await;
            other.request_cancel(task.id).await
        },
    );

    assert_eq!(cancelled.unwrap(), CancelOutcome::Requested);
    let all: BTreeSet<u64> = from_first.iter().chain(&from_second).copied().collect();
    assert_eq!(all.len(), 300, "duplicate sequence numbers");
    assert_gapless(&*t.store, task.id, 302).await;
    assert!(
        t.store
            .get_task(task.id)
            .await
            .unwrap()
            .unwrap()
            .cancel_requested
    );
}

async fn only_one_of_many_claimants_wins(t: TestStore) {
    let other = t.another().await;
    let task = create(&*t.store, "p").await;

    let mut handles = Vec::new();
    for i in 0..20 {
        let store = if i % 2 == 0 {
            t.store.clone()
        } else {
            other.clone()
        };
        handles.push(tokio::spawn(async move {
            store
                .claim_task(task.id, &format!("worker-{i}"), LEASE)
                .await
        }));
    }
    let mut wins = 0;
    for handle in handles {
        wins += usize::from(handle.await.unwrap().unwrap());
    }
    assert_eq!(wins, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stores_opened_at_once_on_a_fresh_home_all_work() {
    let home = tempfile::tempdir().unwrap();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let home = home.path().to_path_buf();
            tokio::spawn(async move { SqliteStore::open(&home).await })
        })
        .collect();
    let mut stores = Vec::new();
    for open in opens {
        stores.push(open.await.unwrap().unwrap());
    }
    let task = create(&stores[0], "p").await;
    for store in &stores {
        store
            .append_event(task.id, &Event::CancelRequested)
            .await
            .unwrap();
    }
    assert_gapless(&stores[3], task.id, 5).await;
}

/// Set (on the child's command, never in this process) to make `child_process_appender` run.
const CHILD_HOME: &str = "NIGHTSHIFT_STORE_TEST_CHILD_HOME";
const CHILD_TASK: &str = "NIGHTSHIFT_STORE_TEST_CHILD_TASK";
const CHILD_APPENDS: usize = 100;
const CHILDREN: usize = 2;
/// Created by the parent when the children may start appending.
const GO_FILE: &str = "go";
/// Each child creates `ready-<pid>` once its store is open.
const READY_PREFIX: &str = "ready-";

fn ready_children(home: &Path) -> usize {
    std::fs::read_dir(home)
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(READY_PREFIX)
        })
        .count()
}

/// Polls `condition` for up to 30 seconds.
async fn wait_for(condition: impl Fn() -> bool) {
    for _ in 0..3000 {
        if condition() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("gave up waiting for the other processes");
}

/// Starts this test binary again, running only `child_process_appender`.
fn spawn_child(home: &Path, id: TaskId) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process_appender",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_HOME, home)
        .env(CHILD_TASK, id.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn separate_processes_append_without_gaps() {
    let home = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(home.path()).await.unwrap());
    let task = create(&*store, "p").await;

    let children: Vec<_> = (0..CHILDREN)
        .map(|_| spawn_child(home.path(), task.id))
        .collect();
    // Start appending only once every child has opened the store and waits for the signal, so
    // that all three processes write at the same time.
    wait_for(|| ready_children(home.path()) == CHILDREN).await;
    std::fs::write(home.path().join(GO_FILE), b"").unwrap();
    let own = append_many(&store, task.id, "parent", CHILD_APPENDS).await;
    for child in children {
        let output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert!(
            output.status.success(),
            "a child process failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    assert_eq!(own.len(), CHILD_APPENDS);
    assert_gapless(
        &*store,
        task.id,
        1 + (CHILDREN as u64 + 1) * CHILD_APPENDS as u64,
    )
    .await;
}

/// The other process of `separate_processes_append_without_gaps`. Does nothing when run
/// directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by separate_processes_append_without_gaps"]
async fn child_process_appender() {
    let (Some(home), Some(id)) = (std::env::var_os(CHILD_HOME), std::env::var_os(CHILD_TASK))
    else {
        return;
    };
    let id: TaskId = id.to_str().unwrap().parse().unwrap();
    let home = Path::new(&home);
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(home).await.unwrap());
    let ready = home.join(format!("{READY_PREFIX}{}", std::process::id()));
    std::fs::write(ready, b"").unwrap();
    wait_for(|| home.join(GO_FILE).exists()).await;
    let seqs = append_many(
        &store,
        id,
        &format!("child {}", std::process::id()),
        CHILD_APPENDS,
    )
    .await;
    assert_eq!(seqs.len(), CHILD_APPENDS);
}

on_every_backend!(
    many_tokio_tasks_append_without_gaps,
    two_stores_on_one_database_append_and_cancel_without_gaps,
    only_one_of_many_claimants_wins,
);
