//! SSE fan-out and submit throughput of the API, on loopback against a real SQLite store.
//!
//! Fan-out: 100 clients follow one task's event stream. For each of EVENTS events, the time from
//! the append returning (the event is durable; for the API, the request being sent) to the 100th
//! client having received it. Measured
//! three ways: events appended by another process's way (straight into the store, so the feed's
//! poller finds them at its next tick) with the default 100 ms poll and with a 20 ms poll, and
//! events appended through the API (a message), which nudge the feed at once.
//!
//! Submit: `POST /api/tasks` against a real git repository, sequentially and 8 at a time.
//!
//! Run: `cargo bench -p nightshift-server --bench sse_fanout` (EVENTS=N, SUBMITS=N to change
//! the counts).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use tokio::sync::mpsc;

use common::{Harness, warning};

const CLIENTS: usize = 100;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<52} n={:<4} median {:>7.2} ms  p10 {:>7.2}  p90 {:>7.2}  max {:>7.2}",
        samples.len(),
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.1)),
        ms(percentile(&samples, 0.9)),
        ms(samples[samples.len() - 1]),
    );
}

fn count(name: &str) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// How events reach the store in a fan-out run.
#[derive(Clone, Copy)]
enum Append {
    Store,
    Api,
}

async fn fanout(poll: Duration, append: Append, events: usize) -> Vec<Duration> {
    let h = Harness::start_with_poll(poll).await;
    let task = h.queued_task("bench").await;
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let mut readers = Vec::new();
    for _ in 0..CLIENTS {
        let response = common::open_stream(&h, &task.id.to_string(), None).await;
        let tx = tx.clone();
        readers.push(tokio::spawn(async move {
            let mut stream = response.bytes_stream().eventsource();
            while let Some(Ok(event)) = stream.next().await {
                let _ = tx.send((event.id.parse().unwrap(), Instant::now()));
            }
        }));
    }
    // Every client has the backlog (the `queued` event): all streams are live.
    let mut got = 0;
    while got < CLIENTS {
        let (seq, _) = rx.recv().await.unwrap();
        assert_eq!(seq, 1);
        got += 1;
    }
    let mut samples = Vec::with_capacity(events);
    let message_path = format!("/api/tasks/{}/messages", task.id);
    for n in 0..events {
        // From the append returning (store) or the request being sent (API, which includes the
        // HTTP round trip: the feed is nudged before the response goes out).
        let mut appended = Instant::now();
        let seq = match append {
            Append::Store => {
                let seq = h.append(task.id, warning(n as u64)).await.seq;
                appended = Instant::now();
                seq
            }
            Append::Api => {
                let record: serde_json::Value = h
                    .post(&message_path, &h.submit)
                    .json(&serde_json::json!({"text": format!("m{n}")}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                record["seq"].as_u64().unwrap()
            }
        };
        let mut last = appended;
        let mut received = 0;
        while received < CLIENTS {
            let (got_seq, at) = rx.recv().await.unwrap();
            assert_eq!(
                got_seq, seq,
                "clients receive events in order, none skipped"
            );
            last = last.max(at);
            received += 1;
        }
        samples.push(last.saturating_duration_since(appended));
        // Receipt happens just after a poll: wait a spread of fractions of the poll interval so
        // that appends land at every phase of it, as appends by real workers do.
        tokio::time::sleep(poll.mul_f64(((n * 37) % 100) as f64 / 100.0)).await;
    }
    h.finish(task.id, nightshift_protocol::TaskState::Succeeded)
        .await;
    for reader in readers {
        reader.await.unwrap();
    }
    h.stop().await;
    samples
}

async fn submits(total: usize, concurrency: usize) -> f64 {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = common::git_repo(dir.path());
    let body = serde_json::json!({"repo": repo, "prompt": "bench"});
    let started = Instant::now();
    let per_worker = total / concurrency;
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let client = h.client.clone();
        let url = h.url("/api/tasks");
        let token = h.submit.clone();
        let body = body.clone();
        workers.push(tokio::spawn(async move {
            for _ in 0..per_worker {
                let response = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 201);
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let rate = (per_worker * concurrency) as f64 / started.elapsed().as_secs_f64();
    h.stop().await;
    rate
}

#[tokio::main]
async fn main() {
    let events = count("EVENTS");
    let submit_count = count("SUBMITS");
    report(
        "fan-out to 100, appended to the store, 100 ms poll",
        fanout(Duration::from_millis(100), Append::Store, events).await,
    );
    report(
        "fan-out to 100, appended to the store, 20 ms poll",
        fanout(Duration::from_millis(20), Append::Store, events).await,
    );
    report(
        "fan-out to 100, appended through the API (nudged)",
        fanout(Duration::from_millis(100), Append::Api, events).await,
    );
    for concurrency in [1, 8] {
        let rate = submits(submit_count, concurrency).await;
        println!(
            "POST /api/tasks, {concurrency} at a time{:<30} {rate:>7.1} tasks/s",
            ""
        );
    }
}
