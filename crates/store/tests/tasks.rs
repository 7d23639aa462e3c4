//! Tasks in a real SQLite file and a real PostgreSQL database: storing, reading, listing,
//! finding, claiming and cancelling.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::time::Duration;

use nightshift_protocol::{Event, TaskId, TaskState, Usage};
use nightshift_store::{CancelOutcome, SqliteStore, Store, StoreError, TaskFilter};

use common::{TestStore, create, now, queued};

const LEASE: Duration = Duration::from_secs(60);

async fn a_created_task_reads_back_exactly_with_its_queued_event(t: TestStore) {
    let task = queued("add a readme");

    let first = t.store.create_task(&task).await.unwrap();

    assert_eq!(first.seq, 1);
    assert_eq!(first.task_id, task.id);
    assert_eq!(first.at, task.created_at);
    assert_eq!(
        first.event,
        Event::Queued {
            spec: Box::new(task.spec.clone())
        }
    );
    assert_eq!(t.store.get_task(task.id).await.unwrap(), Some(task.clone()));
    assert_eq!(t.store.events(task.id, 0, 0).await.unwrap(), vec![first]);
}

async fn a_best_of_n_task_and_its_attempt_read_back_exactly(t: TestStore) {
    let mut parent = queued("fix it, three ways");
    parent.spec.attempts = vec!["openai:a".into(), "openai:b".into(), "openai:a".into()];
    t.store.create_task(&parent).await.unwrap();
    let mut attempt = queued("fix it, three ways");
    attempt.spec.attempt_of = Some(nightshift_protocol::AttemptOf {
        task: parent.id,
        index: 2,
    });
    t.store.create_task(&attempt).await.unwrap();
    assert_eq!(t.store.get_task(parent.id).await.unwrap(), Some(parent));
    assert_eq!(t.store.get_task(attempt.id).await.unwrap(), Some(attempt));
}

async fn times_are_kept_to_the_millisecond(t: TestStore) {
    let at: jiff::Timestamp = "2025-06-01T12:34:56.789123456Z".parse().unwrap();
    let task = nightshift_protocol::Task::queued(TaskId::new(), common::spec("p"), at);
    let first = t.store.create_task(&task).await.unwrap();
    let stored = t.store.get_task(task.id).await.unwrap().unwrap();
    assert_eq!(stored.created_at.to_string(), "2025-06-01T12:34:56.789Z");
    assert_eq!(first.at, stored.created_at);
}

async fn only_queued_tasks_can_be_created(t: TestStore) {
    let mut task = queued("p");
    task.state = TaskState::Running;
    let error = t.store.create_task(&task).await.unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::NotQueued {
                state: TaskState::Running,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(t.store.get_task(task.id).await.unwrap(), None);
}

async fn a_task_id_cannot_be_stored_twice(t: TestStore) {
    let task = create(&*t.store, "p").await;
    let error = t.store.create_task(&task).await.unwrap_err();
    assert!(matches!(error, StoreError::Database { .. }), "{error}");
    // The failed transaction left no second `Queued` event behind.
    assert_eq!(t.store.events(task.id, 0, 0).await.unwrap().len(), 1);
}

async fn unknown_tasks_are_none(t: TestStore) {
    assert_eq!(t.store.get_task(TaskId::new()).await.unwrap(), None);
    assert!(
        t.store
            .events(TaskId::new(), 0, 0)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Ids sort by creation time, but two made in the same millisecond may not be in creation
/// order; listings promise newest-id first, so that is what the tests expect.
fn newest_first(ids: &[TaskId]) -> Vec<TaskId> {
    let mut ids = ids.to_vec();
    ids.sort_by(|a, b| b.cmp(a));
    ids
}

fn ids(tasks: &[nightshift_protocol::Task]) -> Vec<TaskId> {
    tasks.iter().map(|task| task.id).collect()
}

async fn listings_are_newest_first_and_page_with_before(t: TestStore) {
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(create(&*t.store, &format!("task {i}")).await.id);
    }
    let expected = newest_first(&created);

    let all = t.store.list_tasks(&TaskFilter::default()).await.unwrap();
    assert_eq!(ids(&all), expected);

    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let filter = TaskFilter {
            before,
            limit: 2,
            ..TaskFilter::default()
        };
        let page = t.store.list_tasks(&filter).await.unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        paged.extend(ids(&page));
    }
    assert_eq!(paged, expected);
}

async fn the_default_limit_is_100_and_the_largest_1000(t: TestStore) {
    for i in 0..105 {
        create(&*t.store, &format!("task {i}")).await;
    }
    let default = t.store.list_tasks(&TaskFilter::default()).await.unwrap();
    assert_eq!(default.len(), 100);
    let huge = TaskFilter {
        limit: u32::MAX,
        ..TaskFilter::default()
    };
    assert_eq!(t.store.list_tasks(&huge).await.unwrap().len(), 105);
}

async fn listings_filter_by_state(t: TestStore) {
    let waiting = create(&*t.store, "waiting").await;
    let claimed = create(&*t.store, "claimed").await;
    let cancelled = create(&*t.store, "cancelled").await;
    assert!(
        t.store
            .claim_task(claimed.id, "worker-1", LEASE)
            .await
            .unwrap()
    );
    t.store.request_cancel(cancelled.id).await.unwrap();

    let only = |states: Vec<TaskState>| {
        let store = t.store.clone();
        async move {
            let filter = TaskFilter {
                states,
                ..TaskFilter::default()
            };
            ids(&store.list_tasks(&filter).await.unwrap())
        }
    };
    assert_eq!(only(vec![TaskState::Queued]).await, vec![waiting.id]);
    assert_eq!(only(vec![TaskState::Preparing]).await, vec![claimed.id]);
    assert_eq!(
        only(vec![TaskState::Queued, TaskState::Cancelled]).await,
        newest_first(&[waiting.id, cancelled.id])
    );
    assert!(only(vec![TaskState::Succeeded]).await.is_empty());
    assert_eq!(only(vec![]).await.len(), 3);
}

async fn listings_filter_by_repository_prompt_text_and_branch(t: TestStore) {
    let mut elsewhere = common::queued("Fix the Parser");
    elsewhere.spec.repo = "/src/other".into();
    t.store.create_task(&elsewhere).await.unwrap();
    let here = create(&*t.store, "fix the PARSER again").await;
    let unrelated = create(&*t.store, "write docs; 100% done_").await;

    let list = |repo: Option<&str>, text: Option<&str>| {
        let store = t.store.clone();
        let filter = TaskFilter {
            repo: repo.map(str::to_string),
            prompt_contains: text.map(str::to_string),
            ..TaskFilter::default()
        };
        async move { ids(&store.list_tasks(&filter).await.unwrap()) }
    };
    assert_eq!(list(Some("/src/other"), None).await, vec![elsewhere.id]);
    assert_eq!(
        list(Some("/src/demo"), None).await,
        newest_first(&[here.id, unrelated.id])
    );
    assert_eq!(
        list(None, Some("parser")).await,
        newest_first(&[elsewhere.id, here.id])
    );
    assert_eq!(list(Some("/src/demo"), Some("Parser")).await, vec![here.id]);
    // Text is matched literally: LIKE wildcards mean nothing.
    assert_eq!(list(None, Some("100% done_")).await, vec![unrelated.id]);
    assert!(list(None, Some("%")).await.len() == 1);
    assert!(list(Some("/src"), None).await.is_empty());

    // A token limited to some repositories lists only theirs; a branch finds its task.
    let mut branched = here.clone();
    branched.branch = Some("nightshift/fix-parser".into());
    t.store.update_task(&branched).await.unwrap();
    let among = |repos: Vec<&str>, branch: Option<&str>| {
        let store = t.store.clone();
        let filter = TaskFilter {
            repos: Some(repos.into_iter().map(str::to_string).collect()),
            branch: branch.map(str::to_string),
            ..TaskFilter::default()
        };
        async move { ids(&store.list_tasks(&filter).await.unwrap()) }
    };
    assert_eq!(among(vec!["/src/other"], None).await, vec![elsewhere.id]);
    assert_eq!(
        among(vec!["/src/other", "/src/demo"], None).await,
        newest_first(&[elsewhere.id, here.id, unrelated.id])
    );
    assert!(among(vec![], None).await.is_empty());
    assert_eq!(
        among(vec!["/src/demo"], Some("nightshift/fix-parser")).await,
        vec![here.id]
    );
    assert!(
        among(vec!["/src/other"], Some("nightshift/fix-parser"))
            .await
            .is_empty()
    );
}

async fn find_resolves_full_ids_prefixes_and_short_ids_in_any_case(t: TestStore) {
    let task = create(&*t.store, "find me").await;
    let _other = create(&*t.store, "not me").await;
    let id = task.id.to_string();

    for reference in [
        id.clone(),
        id.to_ascii_uppercase(),
        format!("  {id}\n"),
        id[..16].to_string(),
        id[..25].to_string(),
        task.id.short(),
        task.id.short().to_ascii_uppercase(),
    ] {
        let found = t.store.find_task(&reference).await;
        assert_eq!(found.unwrap().id, task.id, "`{reference}`");
    }
}

async fn find_reports_what_does_not_match(t: TestStore) {
    create(&*t.store, "p").await;
    let missing = TaskId::new();
    for reference in [
        missing.to_string(),
        missing.short(),
        "zzzz".to_string(),
        // Too short to be a prefix.
        "0".to_string(),
        String::new(),
        // LIKE wildcards match themselves only.
        "%%%%".to_string(),
        "________".to_string(),
    ] {
        let error = t.store.find_task(&reference).await.unwrap_err();
        assert!(
            matches!(error, StoreError::NotFound { .. }),
            "`{reference}`: {error}"
        );
        assert!(error.to_string().contains("nightshift ls"), "{error}");
    }
}

async fn find_lists_up_to_five_matches_of_an_ambiguous_prefix(t: TestStore) {
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(create(&*t.store, &format!("task {i}")).await.id);
    }
    // Tasks made within days of each other share their first 4 characters (the time).
    let prefix = created[0].to_string()[..4].to_string();
    let error = t.store.find_task(&prefix).await.unwrap_err();
    let StoreError::Ambiguous { reference, matches } = &error else {
        panic!("expected ambiguous, got {error}");
    };
    assert_eq!(reference, &prefix);
    assert_eq!(matches.len(), 5);
    let newest: Vec<String> = newest_first(&created)
        .iter()
        .take(5)
        .map(|id| id.to_string())
        .collect();
    assert_eq!(matches, &newest);
    assert!(error.to_string().contains(&matches[0]), "{error}");
}

async fn a_task_is_claimed_once(t: TestStore) {
    let task = create(&*t.store, "p").await;

    assert!(
        t.store
            .claim_task(task.id, "worker-1", LEASE)
            .await
            .unwrap()
    );
    assert!(
        !t.store
            .claim_task(task.id, "worker-2", LEASE)
            .await
            .unwrap()
    );
    assert!(
        !t.store
            .claim_task(TaskId::new(), "worker-2", LEASE)
            .await
            .unwrap()
    );

    let claimed = t.store.get_task(task.id).await.unwrap().unwrap();
    assert_eq!(claimed.state, TaskState::Preparing);
    assert!(claimed.started_at.is_some());
    assert!(claimed.updated_at >= task.updated_at);
    assert_eq!(claimed.worker.as_deref(), Some("worker-1"));
    let lease = claimed
        .lease_expires_at
        .unwrap()
        .duration_since(claimed.started_at.unwrap());
    assert_eq!(lease.as_secs(), 60, "{lease:?}");
}

async fn update_writes_every_field_but_keeps_a_cancel_request(t: TestStore) {
    let task = create(&*t.store, "p").await;
    assert!(
        t.store
            .claim_task(task.id, "worker-1", LEASE)
            .await
            .unwrap()
    );
    assert_eq!(
        t.store.request_cancel(task.id).await.unwrap(),
        CancelOutcome::Requested
    );

    // The worker's copy predates the request.
    let mut mine = task.clone();
    mine.state = TaskState::Running;
    mine.updated_at = now();
    mine.started_at = Some(now());
    mine.base_commit = Some("a".repeat(40));
    mine.branch = Some("nightshift/abcdefgh".into());
    mine.head_commit = Some("b".repeat(40));
    mine.summary = Some("did things".into());
    mine.error = Some("and one went wrong".into());
    mine.turns = 7;
    mine.usage = Usage {
        input_tokens: 1000,
        cached_input_tokens: 400,
        output_tokens: 250,
    };
    mine.cancel_requested = false;
    // The hold is the queue's to change (claim, renew, release), not update's.
    mine.worker = Some("someone else".into());
    mine.lease_expires_at = None;
    t.store.update_task(&mine).await.unwrap();

    let stored = t.store.get_task(task.id).await.unwrap().unwrap();
    assert!(stored.cancel_requested);
    assert_eq!(stored.worker.as_deref(), Some("worker-1"));
    assert!(stored.lease_expires_at.is_some());
    assert_eq!(
        stored,
        nightshift_protocol::Task {
            cancel_requested: true,
            worker: stored.worker.clone(),
            lease_expires_at: stored.lease_expires_at,
            ..mine
        }
    );
}

async fn updating_an_unknown_task_is_not_found(t: TestStore) {
    let error = t.store.update_task(&queued("p")).await.unwrap_err();
    assert!(matches!(error, StoreError::NotFound { .. }), "{error}");
}

async fn cancelling_a_queued_task_ends_it_at_once(t: TestStore) {
    let task = create(&*t.store, "p").await;

    let outcome = t.store.request_cancel(task.id).await.unwrap();

    assert_eq!(outcome, CancelOutcome::CancelledWhileQueued);
    let stored = t.store.get_task(task.id).await.unwrap().unwrap();
    assert_eq!(stored.state, TaskState::Cancelled);
    assert!(stored.cancel_requested);
    assert!(stored.finished_at.is_some());
    assert_eq!(
        stored.summary.as_deref(),
        Some("cancelled before it started")
    );
    let events: Vec<_> = t.store.events(task.id, 0, 0).await.unwrap();
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(events[1].event, Event::CancelRequested);
    assert_eq!(
        events[2].event,
        Event::Ended {
            state: TaskState::Cancelled,
            summary: Some("cancelled before it started".into()),
            usage: Usage::default(),
            cost_usd: None,
            cpu_seconds: None,
            turns: 0,
            duration_ms: 0,
            no_changes: false,
        }
    );
    // No worker can pick it up any more, and cancelling again changes nothing.
    assert!(
        !t.store
            .claim_task(task.id, "worker-1", LEASE)
            .await
            .unwrap()
    );
    assert_eq!(
        t.store.request_cancel(task.id).await.unwrap(),
        CancelOutcome::AlreadyEnded(TaskState::Cancelled)
    );
    assert_eq!(t.store.events(task.id, 0, 0).await.unwrap().len(), 3);
}

async fn cancelling_a_running_task_sets_the_flag_and_logs_it_once(t: TestStore) {
    let task = create(&*t.store, "p").await;
    assert!(
        t.store
            .claim_task(task.id, "worker-1", LEASE)
            .await
            .unwrap()
    );

    assert_eq!(
        t.store.request_cancel(task.id).await.unwrap(),
        CancelOutcome::Requested
    );
    assert_eq!(
        t.store.request_cancel(task.id).await.unwrap(),
        CancelOutcome::Requested
    );

    let stored = t.store.get_task(task.id).await.unwrap().unwrap();
    assert!(stored.cancel_requested);
    assert_eq!(stored.state, TaskState::Preparing);
    let requests = t
        .store
        .events(task.id, 0, 0)
        .await
        .unwrap()
        .into_iter()
        .filter(|record| record.event == Event::CancelRequested)
        .count();
    assert_eq!(requests, 1);
}

async fn cancelling_an_ended_task_changes_nothing(t: TestStore) {
    let task = create(&*t.store, "p").await;
    assert!(
        t.store
            .claim_task(task.id, "worker-1", LEASE)
            .await
            .unwrap()
    );
    let mut done = t.store.get_task(task.id).await.unwrap().unwrap();
    done.state = TaskState::Succeeded;
    done.finished_at = Some(now());
    t.store.update_task(&done).await.unwrap();

    assert_eq!(
        t.store.request_cancel(task.id).await.unwrap(),
        CancelOutcome::AlreadyEnded(TaskState::Succeeded)
    );
    assert_eq!(t.store.get_task(task.id).await.unwrap(), Some(done));
    assert_eq!(t.store.events(task.id, 0, 0).await.unwrap().len(), 1);
}

async fn cancelling_an_unknown_task_is_not_found(t: TestStore) {
    let error = t.store.request_cancel(TaskId::new()).await.unwrap_err();
    assert!(matches!(error, StoreError::NotFound { .. }), "{error}");
}

#[tokio::test]
async fn reopening_keeps_everything_and_migrations_run_once() {
    let home = tempfile::tempdir().unwrap();
    let first = SqliteStore::open(home.path()).await.unwrap();
    let task = create(&first, "p").await;
    first
        .append_event(
            task.id,
            &Event::Warning {
                message: "w".into(),
            },
        )
        .await
        .unwrap();
    first.close().await;

    for _ in 0..2 {
        let store = SqliteStore::open(home.path()).await.unwrap();
        assert_eq!(store.get_task(task.id).await.unwrap(), Some(task.clone()));
        store.close().await;
    }
    let store = SqliteStore::open(home.path()).await.unwrap();
    let next = store
        .append_event(task.id, &Event::CancelRequested)
        .await
        .unwrap();
    assert_eq!(next.seq, 3);
}

#[tokio::test]
async fn the_database_is_in_wal_mode_with_its_migrations_recorded() {
    use sqlx::Connection;

    let t = common::sqlite().await;
    let url = t.home.path().join("nightshift.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(url);
    let mut connection = sqlx::sqlite::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    // Every migration file, each once.
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "sql")
        })
        .count();
    assert_eq!(applied, files as i64);
    assert!(t.home.path().join("blobs").is_dir());
}

on_every_backend!(
    a_created_task_reads_back_exactly_with_its_queued_event,
    a_best_of_n_task_and_its_attempt_read_back_exactly,
    times_are_kept_to_the_millisecond,
    only_queued_tasks_can_be_created,
    a_task_id_cannot_be_stored_twice,
    unknown_tasks_are_none,
    listings_are_newest_first_and_page_with_before,
    the_default_limit_is_100_and_the_largest_1000,
    listings_filter_by_state,
    listings_filter_by_repository_prompt_text_and_branch,
    find_resolves_full_ids_prefixes_and_short_ids_in_any_case,
    find_reports_what_does_not_match,
    find_lists_up_to_five_matches_of_an_ambiguous_prefix,
    a_task_is_claimed_once,
    update_writes_every_field_but_keeps_a_cancel_request,
    updating_an_unknown_task_is_not_found,
    cancelling_a_queued_task_ends_it_at_once,
    cancelling_a_running_task_sets_the_flag_and_logs_it_once,
    cancelling_an_ended_task_changes_nothing,
    cancelling_an_unknown_task_is_not_found,
);
