//! Totals over every task for metrics: tokens, turns and run time from the tasks' rows, dollars
//! and sandbox failures from their events, on both backends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use nightshift_protocol::{CommandPhase, ErrorKind, Event, Task, TaskState, Usage};
use nightshift_store::{Store, TaskOutcome, TaskTotals};

use common::{TestStore, create};

const LEASE: Duration = Duration::from_secs(60);

/// Claims the task and ends it as a worker would: `ran` after it started, with this usage,
/// turns and model cost.
async fn run_to_the_end(
    store: &dyn Store,
    task: &Task,
    ran: SignedDuration,
    usage: Usage,
    turns: u32,
    cost_usd: Option<f64>,
) {
    assert!(store.claim_task(task.id, "worker-1", LEASE).await.unwrap());
    let started: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let mut ended = store.get_task(task.id).await.unwrap().unwrap();
    ended.state = TaskState::Succeeded;
    ended.started_at = Some(started);
    ended.finished_at = Some(started + ran);
    ended.updated_at = started + ran;
    ended.turns = turns;
    ended.usage = usage;
    store.update_task(&ended).await.unwrap();
    store
        .append_event(
            task.id,
            &Event::Ended {
                state: TaskState::Succeeded,
                summary: None,
                usage,
                cost_usd,
                cpu_seconds: None,
                turns,
                duration_ms: u64::try_from(ran.as_millis()).unwrap(),
                no_changes: false,
            },
        )
        .await
        .unwrap();
}

fn error(kind: ErrorKind) -> Event {
    Event::Error {
        kind,
        // A message that mentions the other kind must not count as it.
        message: r#"{"type":"error","kind":"sandbox"}"#.into(),
        hint: None,
    }
}

async fn an_empty_store_totals_zero(t: TestStore) {
    assert_eq!(t.store.task_totals().await.unwrap(), TaskTotals::default());
}

async fn totals_sum_tokens_turns_run_time_dollars_and_sandbox_failures(t: TestStore) {
    let first = create(&*t.store, "one").await;
    let second = create(&*t.store, "two").await;
    let third = create(&*t.store, "three").await;
    // Still queued: no run time, but its events count.
    let queued = create(&*t.store, "four").await;

    run_to_the_end(
        &*t.store,
        &first,
        SignedDuration::from_millis(90_500),
        Usage {
            input_tokens: 1000,
            cached_input_tokens: 400,
            output_tokens: 250,
        },
        7,
        Some(0.25),
    )
    .await;
    run_to_the_end(
        &*t.store,
        &second,
        SignedDuration::from_secs(30),
        Usage {
            input_tokens: 20,
            cached_input_tokens: 0,
            output_tokens: 5,
        },
        2,
        Some(1.5),
    )
    .await;
    // A model without a known price.
    run_to_the_end(
        &*t.store,
        &third,
        SignedDuration::from_secs(10),
        Usage {
            input_tokens: 1,
            cached_input_tokens: 1,
            output_tokens: 1,
        },
        1,
        None,
    )
    .await;
    for (task, kind) in [
        (&first, ErrorKind::Sandbox),
        (&second, ErrorKind::Sandbox),
        (&second, ErrorKind::Setup),
        (&queued, ErrorKind::Model),
        (&queued, ErrorKind::Sandbox),
    ] {
        t.store.append_event(task.id, &error(kind)).await.unwrap();
    }
    // A warning is no failure.
    t.store
        .append_event(
            queued.id,
            &Event::Warning {
                message: "sandbox".into(),
            },
        )
        .await
        .unwrap();

    let totals = t.store.task_totals().await.unwrap();
    assert_eq!(
        totals,
        TaskTotals {
            input_tokens: 1021,
            cached_input_tokens: 401,
            output_tokens: 256,
            turns: 10,
            finished: 3,
            run_seconds_sum: 130.5,
            model_usd: 1.75,
            sandbox_failures: 3,
        }
    );
    // Every process sharing the store sees the same.
    assert_eq!(t.another().await.task_totals().await.unwrap(), totals);
}

async fn a_task_cancelled_while_queued_has_no_run_time(t: TestStore) {
    let task = create(&*t.store, "p").await;
    t.store.request_cancel(task.id).await.unwrap();
    let totals = t.store.task_totals().await.unwrap();
    assert_eq!(totals.finished, 0);
    assert_eq!(totals.run_seconds_sum, 0.0);
    assert_eq!(totals.model_usd, 0.0);
}

fn check(ok: bool) -> Event {
    Event::CommandFinished {
        phase: CommandPhase::Check,
        name: "test".into(),
        command: "sh test.sh".into(),
        ok,
        exit_code: if ok { 0 } else { 1 },
        duration_ms: 5,
        output_tail: String::new(),
        artifact: None,
    }
}

async fn outcomes_give_dollars_and_check_counts_per_task(t: TestStore) {
    let store = &*t.store;
    let priced = create(store, "priced").await;
    let unpriced = create(store, "unpriced").await;
    let untouched = create(store, "untouched").await;
    let other = create(store, "not asked for").await;
    for ok in [true, true, false] {
        store.append_event(priced.id, &check(ok)).await.unwrap();
    }
    // A setup command is not a check.
    let mut setup = check(false);
    if let Event::CommandFinished { phase, .. } = &mut setup {
        *phase = CommandPhase::Setup;
    }
    store.append_event(unpriced.id, &setup).await.unwrap();
    store.append_event(other.id, &check(true)).await.unwrap();
    run_to_the_end(
        store,
        &priced,
        SignedDuration::from_secs(1),
        Usage::default(),
        1,
        Some(0.25),
    )
    .await;
    run_to_the_end(
        store,
        &unpriced,
        SignedDuration::from_secs(1),
        Usage::default(),
        1,
        None,
    )
    .await;

    let mut outcomes = store
        .task_outcomes(&[priced.id, unpriced.id, untouched.id])
        .await
        .unwrap();
    outcomes.sort_by_key(|o| o.id != priced.id);
    assert_eq!(
        outcomes,
        vec![
            TaskOutcome {
                id: priced.id,
                cost_usd: Some(0.25),
                checks_passed: 2,
                checks_failed: 1
            },
            TaskOutcome {
                id: unpriced.id,
                cost_usd: None,
                checks_passed: 0,
                checks_failed: 0
            },
        ]
    );
    assert!(store.task_outcomes(&[]).await.unwrap().is_empty());
}

on_every_backend!(
    outcomes_give_dollars_and_check_counts_per_task,
    an_empty_store_totals_zero,
    totals_sum_tokens_turns_run_time_dollars_and_sandbox_failures,
    a_task_cancelled_while_queued_has_no_run_time,
);
