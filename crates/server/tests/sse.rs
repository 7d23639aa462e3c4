//! Live events over SSE: tailing, resuming without gaps or duplicates, closing after `ended`,
//! and fan-out to many clients.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Harness, open_stream, read_to_end, spawn_reader, warning};
use nightshift_protocol::{Event, TaskState};

fn seqs(received: &[common::Received]) -> Vec<u64> {
    received.iter().map(|r| r.id).collect()
}

#[tokio::test]
async fn a_stream_tails_new_events_and_closes_after_ended() {
    let h = Harness::start().await;
    let task = h.queued_task("t").await;
    let reader = spawn_reader(open_stream(&h, &task.id.to_string(), None).await);
    tokio::time::sleep(Duration::from_millis(150)).await;
    h.append(
        task.id,
        Event::StateChanged {
            state: TaskState::Running,
            detail: None,
        },
    )
    .await;
    for n in 0..5 {
        h.append(task.id, warning(n)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.finish(task.id, TaskState::Succeeded).await;
    let received = reader.await.unwrap();
    assert_eq!(seqs(&received), (1..=8).collect::<Vec<_>>());
    assert_eq!(received[0].kind, "queued");
    assert_eq!(received[1].kind, "state_changed");
    assert_eq!(received[1].data["state"], "running");
    assert_eq!(received[2].data["message"], "w0");
    assert_eq!(received[7].kind, "ended");
    assert_eq!(received[7].data["type"], "ended");
    assert_eq!(received[7].data["seq"], 8);
    assert_eq!(received[7].data["task_id"], task.id.to_string());
    h.stop().await;
}

#[tokio::test]
async fn streams_resume_after_last_event_id_without_gaps_or_duplicates() {
    let h = Harness::start().await;
    let task = h.queued_task("t").await;
    for n in 0..5 {
        h.append(task.id, warning(n)).await;
    }
    // Resume mid-log while more events keep coming.
    let reader = spawn_reader(open_stream(&h, &task.id.short(), Some(3)).await);
    for n in 5..40 {
        h.append(task.id, warning(n)).await;
        if n % 7 == 0 {
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    }
    h.finish(task.id, TaskState::Failed).await;
    let received = reader.await.unwrap();
    assert_eq!(seqs(&received), (4..=42).collect::<Vec<_>>());

    // `?after=` works too; resuming at or after `ended` closes at once with nothing.
    let response = h
        .get(&format!("/api/tasks/{}/events?after=40", task.id), &h.read)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(
        seqs(&read_to_end(response, Duration::from_secs(5)).await),
        [41, 42]
    );
    let received = read_to_end(
        open_stream(&h, &task.id.to_string(), Some(42)).await,
        Duration::from_secs(5),
    )
    .await;
    assert!(received.is_empty(), "{received:?}");

    let response = h
        .get(&format!("/api/tasks/{}/events", task.id), &h.read)
        .header("accept", "text/event-stream")
        .header("last-event-id", "seven")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    h.stop().await;
}

#[tokio::test]
async fn a_finished_task_streams_its_whole_log_and_closes() {
    let h = Harness::start().await;
    let task = h.queued_task("t").await;
    h.append(task.id, warning(0)).await;
    h.finish(task.id, TaskState::Succeeded).await;
    // A follow-up run appends after the first `ended`: reading from the start does not stop there.
    h.append(
        task.id,
        Event::MessageReceived {
            text: "more".into(),
            from: None,
        },
    )
    .await;
    h.finish(task.id, TaskState::Succeeded).await;
    let received = read_to_end(
        open_stream(&h, &task.id.to_string(), None).await,
        Duration::from_secs(5),
    )
    .await;
    let kinds: Vec<&str> = received.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["queued", "warning", "ended", "message_received", "ended"]
    );

    // Cancelling a queued task ends its stream.
    let queued = h.queued_task("q").await;
    let reader = spawn_reader(open_stream(&h, &queued.id.to_string(), None).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.post(&format!("/api/tasks/{}/cancel", queued.id), &h.submit)
        .send()
        .await
        .unwrap();
    let received = reader.await.unwrap();
    assert_eq!(received.last().unwrap().kind, "ended");
    assert_eq!(received.last().unwrap().data["state"], "cancelled");

    let response = h
        .get(
            &format!("/api/tasks/{}/events", common::Harness::unknown_id()),
            &h.read,
        )
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    h.stop().await;
}

#[tokio::test]
async fn a_hundred_clients_each_receive_every_event() {
    let h = Harness::start().await;
    let task = h.queued_task("t").await;
    let mut readers = Vec::new();
    for n in 0..100 {
        // Half resume from the middle of the backlog, half follow from the start.
        let resume = if n % 2 == 0 { None } else { Some(1) };
        readers.push(spawn_reader(
            open_stream(&h, &task.id.to_string(), resume).await,
        ));
        if n == 50 {
            h.append(task.id, warning(0)).await;
        }
    }
    for n in 1..30 {
        h.append(task.id, warning(n)).await;
        if n % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    let metrics = h
        .get("/metrics", &h.read)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("nightshift_sse_clients 100"), "{metrics}");
    assert!(
        metrics.contains("nightshift_event_feeds 1"),
        "one poller for 100 clients: {metrics}"
    );
    let ended = h.finish(task.id, TaskState::Succeeded).await;
    for (n, reader) in readers.into_iter().enumerate() {
        let received = reader.await.unwrap();
        let first = if n % 2 == 0 { 1 } else { 2 };
        assert_eq!(
            seqs(&received),
            (first..=ended.seq).collect::<Vec<_>>(),
            "client {n}"
        );
    }
    // Once every stream closed, the feed and the gauge are gone too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = h
        .get("/metrics", &h.read)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("nightshift_sse_clients 0"), "{metrics}");
    assert!(metrics.contains("nightshift_event_feeds 0"), "{metrics}");
    h.stop().await;
}

#[tokio::test]
async fn shutting_down_ends_open_streams() {
    let h = Harness::start().await;
    let task = h.queued_task("t").await;
    let reader = spawn_reader(open_stream(&h, &task.id.to_string(), None).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // `stop` fails the test if the server waits on the open stream.
    h.stop().await;
    let received = reader.await.unwrap();
    assert_eq!(seqs(&received), [1]);
}
