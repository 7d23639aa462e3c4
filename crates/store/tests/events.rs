//! The event log on both backends: numbering, paging and exact round trips; and, in SQLite,
//! how it is stored.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use nightshift_protocol::{
    ErrorKind, Event, PlanStep, PlanStepStatus, TaskId, TaskState, ToolCallRecord, Usage,
};
use nightshift_store::StoreError;
use serde_json::json;
use sqlx::Connection;

use common::{TestStore, create, spec};

/// One of every event, with the awkward values filled in: nested JSON, unicode, big numbers.
fn every_event() -> Vec<Event> {
    vec![
        Event::Queued {
            spec: Box::new(spec("é ✓ \"quoted\"\nnew line")),
        },
        Event::StateChanged {
            state: TaskState::Running,
            detail: Some("agent loop".into()),
        },
        Event::StateChanged {
            state: TaskState::Verifying,
            detail: None,
        },
        Event::Claimed {
            worker: "host:1234".into(),
        },
        Event::CheckedOut {
            base: "main".into(),
            base_commit: "0123456789abcdef0123456789abcdef01234567".into(),
            note: "uncommitted changes were left out".into(),
        },
        Event::SandboxStarted {
            backend: "bwrap".into(),
            isolated: true,
        },
        Event::ModelRequest {
            turn: 1,
            model: "openai:gpt-4.1".into(),
            messages: 3,
        },
        Event::ModelResponse {
            turn: 1,
            text: Some("Let me look.".into()),
            tool_calls: vec![ToolCallRecord {
                id: "call_1".into(),
                name: "shell".into(),
                arguments: json!({"command": ["ls", "-la"], "timeout": 1.5, "env": null}),
            }],
            usage: Usage {
                input_tokens: u64::from(u32::MAX) + 7,
                cached_input_tokens: 3,
                output_tokens: 9,
            },
            stop_reason: "tool_calls".into(),
            cost_usd: Some(0.0125),
            duration_ms: 1234,
        },
        Event::ToolStarted {
            call_id: "call_1".into(),
            tool: "shell".into(),
            arguments: json!("not json at all {"),
        },
        Event::ToolFinished {
            call_id: "call_1".into(),
            tool: "shell".into(),
            ok: false,
            output: "total 0\n\u{0}binary\u{7f}".into(),
            exit_code: Some(-1),
            duration_ms: 5,
        },
        Event::PlanUpdated {
            steps: vec![
                PlanStep {
                    step: "read".into(),
                    status: PlanStepStatus::Completed,
                },
                PlanStep {
                    step: "write".into(),
                    status: PlanStepStatus::InProgress,
                },
                PlanStep {
                    step: "test".into(),
                    status: PlanStepStatus::Pending,
                },
            ],
        },
        Event::AgentFinished {
            summary: "done".into(),
        },
        Event::Committed {
            branch: "nightshift/abcdefgh".into(),
            commit: "f".repeat(40),
            files_changed: 2,
            insertions: 10,
            deletions: 1,
            incomplete: false,
        },
        Event::CancelRequested,
        Event::MessageReceived {
            text: "also update the changelog".into(),
            from: Some("tok_ci".into()),
        },
        Event::MessageReceived {
            text: "thanks".into(),
            from: None,
        },
        Event::Released {
            worker: "host-b:77".into(),
            reason: "shutting down".into(),
        },
        Event::Warning {
            message: "careful".into(),
        },
        Event::Error {
            kind: ErrorKind::Sandbox,
            message: "boom".into(),
            hint: Some("retry".into()),
        },
        Event::Ended {
            state: TaskState::Failed,
            summary: None,
            usage: Usage::default(),
            cost_usd: None,
            cpu_seconds: None,
            turns: 1,
            duration_ms: 99,
            no_changes: false,
        },
    ]
}

async fn appends_are_numbered_from_one_without_gaps(t: TestStore) {
    let task = create(&*t.store, "p").await;
    let mut seqs = vec![1];
    for i in 0..20 {
        let event = Event::Warning {
            message: format!("w{i}"),
        };
        seqs.push(t.store.append_event(task.id, &event).await.unwrap().seq);
    }
    assert_eq!(seqs, (1..=21).collect::<Vec<u64>>());

    // Each task has its own numbering.
    let other = create(&*t.store, "other").await;
    let first = t
        .store
        .append_event(other.id, &Event::CancelRequested)
        .await
        .unwrap();
    assert_eq!(first.seq, 2);
}

async fn every_event_round_trips_exactly(t: TestStore) {
    let task = create(&*t.store, "p").await;
    let mut appended = Vec::new();
    for event in every_event() {
        let record = t.store.append_event(task.id, &event).await.unwrap();
        assert_eq!(record.event, event);
        assert_eq!(record.task_id, task.id);
        appended.push(record);
    }

    let read = t.store.events(task.id, 1, 0).await.unwrap();
    assert_eq!(read, appended);
}

async fn events_page_with_after_and_limit(t: TestStore) {
    let task = create(&*t.store, "p").await;
    for i in 0..9 {
        t.store
            .append_event(
                task.id,
                &Event::Warning {
                    message: i.to_string(),
                },
            )
            .await
            .unwrap();
    }
    let seqs = |records: Vec<nightshift_protocol::EventRecord>| {
        records
            .into_iter()
            .map(|record| record.seq)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        seqs(t.store.events(task.id, 0, 3).await.unwrap()),
        [1, 2, 3]
    );
    assert_eq!(
        seqs(t.store.events(task.id, 3, 3).await.unwrap()),
        [4, 5, 6]
    );
    assert_eq!(seqs(t.store.events(task.id, 8, 3).await.unwrap()), [9, 10]);
    assert!(t.store.events(task.id, 10, 3).await.unwrap().is_empty());
    assert_eq!(t.store.events(task.id, 0, 0).await.unwrap().len(), 10);
}

async fn appending_to_an_unknown_task_is_not_found(t: TestStore) {
    let error = t
        .store
        .append_event(TaskId::new(), &Event::CancelRequested)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NotFound { .. }), "{error}");
}

/// A raw connection to the test store's database, to look at and damage what it wrote.
async fn raw(home: &std::path::Path) -> sqlx::sqlite::SqliteConnection {
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(home.join("nightshift.db"));
    sqlx::sqlite::SqliteConnection::connect_with(&options)
        .await
        .unwrap()
}

#[tokio::test]
async fn events_are_stored_as_their_own_tagged_json() {
    let t = common::sqlite().await;
    let task = create(&*t.store, "p").await;
    let event = Event::Warning {
        message: "careful".into(),
    };
    let record = t.store.append_event(task.id, &event).await.unwrap();

    let mut db = raw(t.home.path()).await;
    let (kind, body, schema): (String, String, i64) =
        sqlx::query_as("SELECT type, body, schema FROM events WHERE task_id = ? AND seq = ?")
            .bind(task.id.to_string())
            .bind(2_i64)
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(kind, "warning");
    assert_eq!(schema, i64::from(nightshift_protocol::SCHEMA_VERSION));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        json!({"type": "warning", "message": "careful"})
    );

    // A field added by a newer nightshift stays in the row and does not stop an older one reading.
    sqlx::query("UPDATE events SET body = ? WHERE task_id = ? AND seq = 2")
        .bind(r#"{"type":"warning","message":"careful","severity":"high"}"#)
        .bind(task.id.to_string())
        .execute(&mut db)
        .await
        .unwrap();
    let read = t.store.events(task.id, 1, 1).await.unwrap();
    assert_eq!(read, vec![record]);
}

#[tokio::test]
async fn rows_that_do_not_decode_are_reported_as_corrupt() {
    let t = common::sqlite().await;
    let task = create(&*t.store, "p").await;
    let mut db = raw(t.home.path()).await;
    sqlx::query("UPDATE events SET body = '{\"type\":\"teleported\"}' WHERE task_id = ?")
        .bind(task.id.to_string())
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("UPDATE tasks SET state = 'sleeping' WHERE id = ?")
        .bind(task.id.to_string())
        .execute(&mut db)
        .await
        .unwrap();

    let error = t.store.events(task.id, 0, 0).await.unwrap_err();
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
    assert!(error.to_string().contains("event 1 of task"), "{error}");
    let error = t.store.get_task(task.id).await.unwrap_err();
    assert!(error.to_string().contains("sleeping"), "{error}");
}

on_every_backend!(
    appends_are_numbered_from_one_without_gaps,
    every_event_round_trips_exactly,
    events_page_with_after_and_limit,
    appending_to_an_unknown_task_is_not_found,
);
