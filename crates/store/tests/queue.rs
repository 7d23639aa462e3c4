//! The queue on both backends: claiming with a lease, renewing it, letting it lapse, releasing,
//! claiming the next task from many workers at once, and waiting for work.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nightshift_protocol::{TaskId, TaskState};
use nightshift_store::Store;

use common::{TestStore, create, now};

const LEASE: Duration = Duration::from_secs(60);

async fn claiming_takes_a_lease_that_only_the_holder_renews(t: TestStore) {
    let task = create(&*t.store, "p").await;
    assert!(
        !t.store
            .renew_lease(task.id, "worker-1", LEASE)
            .await
            .unwrap(),
        "a queued task has no holder"
    );
    let before = now();
    assert!(
        t.store
            .claim_task(task.id, "worker-1", LEASE)
            .await
            .unwrap()
    );
    let claimed = t.store.get_task(task.id).await.unwrap().unwrap();
    let first_expiry = claimed.lease_expires_at.unwrap();
    assert!(first_expiry >= before + LEASE, "{first_expiry} {before}");

    let longer = Duration::from_secs(600);
    assert!(
        t.store
            .renew_lease(task.id, "worker-1", longer)
            .await
            .unwrap()
    );
    let renewed = t.store.get_task(task.id).await.unwrap().unwrap();
    assert!(renewed.lease_expires_at.unwrap() >= before + longer);
    assert_eq!(renewed.worker.as_deref(), Some("worker-1"));
    // Renewing is bookkeeping: the rest of the row is untouched.
    assert_eq!(
        renewed,
        nightshift_protocol::Task {
            lease_expires_at: renewed.lease_expires_at,
            ..claimed.clone()
        }
    );

    assert!(
        !t.store
            .renew_lease(task.id, "worker-2", longer)
            .await
            .unwrap()
    );
    assert!(
        !t.store
            .renew_lease(TaskId::new(), "worker-1", longer)
            .await
            .unwrap()
    );
    assert_eq!(
        t.store.get_task(task.id).await.unwrap().unwrap(),
        renewed,
        "a refused renewal changes nothing"
    );

    // Once the task has ended there is nothing to hold.
    let mut done = renewed.clone();
    done.state = TaskState::Succeeded;
    done.finished_at = Some(now());
    t.store.update_task(&done).await.unwrap();
    assert!(
        !t.store
            .renew_lease(task.id, "worker-1", LEASE)
            .await
            .unwrap()
    );
}

async fn a_lapsed_lease_shows_in_expired_tasks(t: TestStore) {
    let healthy = create(&*t.store, "healthy").await;
    let hung = create(&*t.store, "hung").await;
    let finished = create(&*t.store, "finished").await;
    let _queued = create(&*t.store, "queued").await;
    assert!(
        t.store
            .claim_task(healthy.id, "worker-1", LEASE)
            .await
            .unwrap()
    );
    let short = Duration::from_millis(100);
    assert!(
        t.store
            .claim_task(hung.id, "worker-2", short)
            .await
            .unwrap()
    );
    assert!(
        t.store
            .claim_task(finished.id, "worker-3", short)
            .await
            .unwrap()
    );
    let mut done = t.store.get_task(finished.id).await.unwrap().unwrap();
    done.state = TaskState::Failed;
    done.finished_at = Some(now());
    t.store.update_task(&done).await.unwrap();

    tokio::time::sleep(Duration::from_millis(250)).await;

    let expired = t.store.expired_tasks().await.unwrap();
    assert_eq!(
        expired.iter().map(|task| task.id).collect::<Vec<_>>(),
        [hung.id]
    );
    assert_eq!(expired[0].worker.as_deref(), Some("worker-2"));
    assert_eq!(expired[0].state, TaskState::Preparing);

    // Lapsed but not taken over: the holder may still renew, and then it is healthy again.
    assert!(
        t.store
            .renew_lease(hung.id, "worker-2", LEASE)
            .await
            .unwrap()
    );
    assert!(t.store.expired_tasks().await.unwrap().is_empty());
}

async fn releasing_puts_a_task_back_for_another_worker(t: TestStore) {
    let task = create(&*t.store, "p").await;
    assert!(
        t.store
            .claim_task(task.id, "worker-1", LEASE)
            .await
            .unwrap()
    );

    assert!(!t.store.release_task(task.id, "worker-2").await.unwrap());
    assert!(t.store.release_task(task.id, "worker-1").await.unwrap());

    let released = t.store.get_task(task.id).await.unwrap().unwrap();
    assert_eq!(released.state, TaskState::Queued);
    assert_eq!(released.worker, None);
    assert_eq!(released.lease_expires_at, None);
    assert!(!t.store.release_task(task.id, "worker-1").await.unwrap());
    assert!(
        !t.store
            .renew_lease(task.id, "worker-1", LEASE)
            .await
            .unwrap()
    );

    let next = t
        .store
        .claim_next("worker-2", LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.id, task.id);
    assert_eq!(next.worker.as_deref(), Some("worker-2"));
    assert!(
        !t.store
            .renew_lease(task.id, "worker-1", LEASE)
            .await
            .unwrap()
    );
    assert!(
        !t.store
            .release_task(TaskId::new(), "worker-2")
            .await
            .unwrap()
    );
}

async fn claim_next_takes_the_oldest_queued_task(t: TestStore) {
    assert_eq!(t.store.claim_next("worker-1", LEASE).await.unwrap(), None);
    let cancelled = create(&*t.store, "cancelled").await;
    let oldest = create(&*t.store, "oldest").await;
    let newest = create(&*t.store, "newest").await;
    t.store.request_cancel(cancelled.id).await.unwrap();
    // Ids made in the same millisecond need not be in creation order; the queue goes by id.
    let (first, second) = if oldest.id < newest.id {
        (oldest, newest)
    } else {
        (newest, oldest)
    };

    let claimed = t
        .store
        .claim_next("worker-1", LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, first.id);
    assert_eq!(claimed.state, TaskState::Preparing);
    assert_eq!(claimed.worker.as_deref(), Some("worker-1"));
    assert!(claimed.lease_expires_at.is_some() && claimed.started_at.is_some());
    assert_eq!(t.store.get_task(first.id).await.unwrap(), Some(claimed));

    let claimed = t
        .store
        .claim_next("worker-2", LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, second.id);
    assert_eq!(t.store.claim_next("worker-1", LEASE).await.unwrap(), None);
}

/// Workers on two store instances (two processes or machines), several claiming at once on
/// each, drain a queue of 50 tasks.
async fn every_task_is_claimed_exactly_once_by_concurrent_workers(t: TestStore) {
    const TASKS: usize = 50;
    const CLAIMANTS_PER_STORE: usize = 4;
    let mut created = Vec::new();
    for i in 0..TASKS {
        created.push(create(&*t.store, &format!("task {i}")).await.id);
    }
    let stores = [t.store.clone(), t.another().await];

    let mut claimants = Vec::new();
    for (s, store) in stores.iter().enumerate() {
        for c in 0..CLAIMANTS_PER_STORE {
            let store = Arc::clone(store);
            let worker = format!("store-{s}-worker-{c}");
            claimants.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                while let Some(task) = store.claim_next(&worker, LEASE).await.unwrap() {
                    assert_eq!(task.worker.as_deref(), Some(worker.as_str()));
                    mine.push(task.id);
                }
                mine
            }));
        }
    }
    let mut claims: BTreeMap<TaskId, usize> = BTreeMap::new();
    for claimant in claimants {
        for id in claimant.await.unwrap() {
            *claims.entry(id).or_default() += 1;
        }
    }
    assert_eq!(claims.len(), TASKS, "every task is claimed");
    assert!(claims.values().all(|&n| n == 1), "none twice: {claims:?}");
    created.sort();
    assert_eq!(claims.into_keys().collect::<Vec<_>>(), created);
    assert_eq!(
        t.store.count_tasks().await.unwrap(),
        [(TaskState::Preparing, TASKS as u64)]
    );
}

async fn waiting_for_work_returns_at_once_when_some_is_queued(t: TestStore) {
    create(&*t.store, "p").await;
    let started = Instant::now();
    t.store
        .wait_for_work(Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

async fn waiting_for_work_times_out_when_none_comes(t: TestStore) {
    let started = Instant::now();
    let timeout = Duration::from_millis(300);
    t.store.wait_for_work(timeout).await.unwrap();
    let waited = started.elapsed();
    assert!(waited >= timeout, "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
}

/// Starts waiting for work on `store` (up to 20 s), checks that it does not return while
/// nothing is queued, runs `queue`, and returns how long after it the waiter woke.
async fn wake_delay<F: std::future::Future<Output = ()>>(
    store: &Arc<dyn Store>,
    queue: impl FnOnce() -> F,
) -> Duration {
    let waiting = {
        let store = Arc::clone(store);
        tokio::spawn(async move {
            store.wait_for_work(Duration::from_secs(20)).await.unwrap();
            Instant::now()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "woke with nothing queued");
    let queued_at = Instant::now();
    queue().await;
    let woken_at = waiting.await.unwrap();
    woken_at.saturating_duration_since(queued_at)
}

/// A worker waiting on one store instance is woken promptly when a task is queued through
/// another (SQLite: its poll; PostgreSQL: LISTEN/NOTIFY).
async fn a_waiting_worker_wakes_when_another_store_queues_a_task(t: TestStore) {
    let submitter = t.another().await;
    let delay = wake_delay(&t.store, || async {
        create(&*submitter, "p").await;
    })
    .await;
    assert!(delay < Duration::from_secs(1), "woke after {delay:?}");
}

async fn a_waiting_worker_wakes_when_a_task_is_released(t: TestStore) {
    let other = t.another().await;
    let task = create(&*t.store, "p").await;
    assert!(other.claim_task(task.id, "leaving", LEASE).await.unwrap());
    let delay = wake_delay(&t.store, || async {
        assert!(other.release_task(task.id, "leaving").await.unwrap());
    })
    .await;
    assert!(delay < Duration::from_secs(1), "woke after {delay:?}");
}

async fn tasks_are_counted_by_state(t: TestStore) {
    assert_eq!(t.store.count_tasks().await.unwrap(), []);
    let claimed = create(&*t.store, "claimed").await;
    let cancelled = create(&*t.store, "cancelled").await;
    create(&*t.store, "queued").await;
    create(&*t.store, "queued too").await;
    assert!(t.store.claim_task(claimed.id, "w", LEASE).await.unwrap());
    t.store.request_cancel(cancelled.id).await.unwrap();

    assert_eq!(
        t.store.count_tasks().await.unwrap(),
        [
            (TaskState::Queued, 2),
            (TaskState::Preparing, 1),
            (TaskState::Cancelled, 1)
        ]
    );
}

async fn another_store_on_the_same_database_sees_everything(t: TestStore) {
    let task = create(&*t.store, "p").await;
    assert!(t.store.claim_task(task.id, "w", LEASE).await.unwrap());
    let other = t.another().await;
    assert_eq!(
        other.get_task(task.id).await.unwrap(),
        t.store.get_task(task.id).await.unwrap()
    );
    let next = other
        .append_event(task.id, &nightshift_protocol::Event::CancelRequested)
        .await
        .unwrap();
    assert_eq!(next.seq, 2);
    assert_eq!(t.store.events(task.id, 0, 0).await.unwrap().len(), 2);
}

on_every_backend!(
    claiming_takes_a_lease_that_only_the_holder_renews,
    a_lapsed_lease_shows_in_expired_tasks,
    releasing_puts_a_task_back_for_another_worker,
    claim_next_takes_the_oldest_queued_task,
    every_task_is_claimed_exactly_once_by_concurrent_workers,
    waiting_for_work_returns_at_once_when_some_is_queued,
    waiting_for_work_times_out_when_none_comes,
    a_waiting_worker_wakes_when_another_store_queues_a_task,
    a_waiting_worker_wakes_when_a_task_is_released,
    tasks_are_counted_by_state,
    another_store_on_the_same_database_sees_everything,
);
