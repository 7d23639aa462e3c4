//! Store throughput, SQLite against PostgreSQL: submitting tasks (`create_task`, one at a time)
//! and appending events (one appender on one task, and 8 concurrent appenders on 8 tasks).
//!
//! `cargo bench -p nightshift-store --bench store`. PostgreSQL is measured too when
//! `NIGHTSHIFT_TEST_DATABASE_URL` names a server (a scratch database is created and dropped).
//! Each figure is the median of several rounds after a warm-up, with the slowest and fastest
//! round beside it: on a shared machine the spread matters as much as the median.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use nightshift_protocol::{Event, Task, TaskId, TaskSpec};
use nightshift_store::{Blobs, PostgresStore, SqliteStore, Store};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

const ROUNDS: usize = 7;
const SUBMITS_PER_ROUND: usize = 300;
const APPENDS_PER_ROUND: usize = 1200;
const CONCURRENT_APPENDERS: usize = 8;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!(
            "{:<10} {:<28} {:>12} {:>22}",
            "backend", "what", "median/s", "range/s (min..max)"
        );
        let home = tempfile::tempdir().unwrap();
        let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open(home.path()).await.unwrap());
        measure_all("sqlite", &sqlite).await;

        match std::env::var("NIGHTSHIFT_TEST_DATABASE_URL") {
            Err(_) => println!("postgres: skipped: NIGHTSHIFT_TEST_DATABASE_URL is not set"),
            Ok(url) => {
                let server = PgConnectOptions::from_str(&url).unwrap();
                let name = format!("nightshift_bench_{}", TaskId::new());
                admin(&server, &format!("CREATE DATABASE {name}")).await;
                let store: Arc<dyn Store> = Arc::new(
                    PostgresStore::connect_with(
                        server.clone().database(&name),
                        Blobs::local(&home.path().join("blobs")).unwrap(),
                    )
                    .await
                    .unwrap(),
                );
                measure_all("postgres", &store).await;
                drop(store);
                admin(&server, &format!("DROP DATABASE {name} WITH (FORCE)")).await;
            }
        }
    });
}

async fn admin(server: &PgConnectOptions, statement: &str) {
    let mut connection = PgConnection::connect_with(server).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
        .execute(&mut connection)
        .await
        .unwrap();
    connection.close().await.unwrap();
}

async fn measure_all(backend: &str, store: &Arc<dyn Store>) {
    report(
        backend,
        "submit (create_task)",
        rounds(|| submit(store)).await,
    );
    report(
        backend,
        "append, 1 appender",
        rounds(|| append(store, 1)).await,
    );
    report(
        backend,
        &format!("append, {CONCURRENT_APPENDERS} appenders"),
        rounds(|| append(store, CONCURRENT_APPENDERS)).await,
    );
}

/// Runs a warm-up and then [`ROUNDS`] rounds, each returning (operations, time taken); gives
/// the rates, sorted.
async fn rounds<F, Fut>(mut round: F) -> Vec<f64>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = (usize, Duration)>,
{
    round().await;
    let mut rates: Vec<f64> = Vec::new();
    for _ in 0..ROUNDS {
        let (operations, took) = round().await;
        rates.push(operations as f64 / took.as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    rates
}

fn report(backend: &str, what: &str, rates: Vec<f64>) {
    let median = rates[rates.len() / 2];
    let (min, max) = (rates[0], rates[rates.len() - 1]);
    println!(
        "{backend:<10} {what:<28} {median:>12.0} {:>22}",
        format!("{min:.0}..{max:.0}")
    );
}

fn task() -> Task {
    let spec: TaskSpec = serde_json::from_value(serde_json::json!({
        "repo": "/src/bench",
        "prompt": "make the benchmark faster",
        "model": "openai:gpt-4.1",
        "max_turns": 50,
    }))
    .unwrap();
    Task::queued(TaskId::new(), spec, Timestamp::now())
}

async fn submit(store: &Arc<dyn Store>) -> (usize, Duration) {
    let tasks: Vec<Task> = (0..SUBMITS_PER_ROUND).map(|_| task()).collect();
    let started = Instant::now();
    for task in &tasks {
        store.create_task(task).await.unwrap();
    }
    (SUBMITS_PER_ROUND, started.elapsed())
}

/// `appenders` tokio tasks, each appending its share of [`APPENDS_PER_ROUND`] events to a task
/// of its own, one after another: the shape of several agents logging at once.
async fn append(store: &Arc<dyn Store>, appenders: usize) -> (usize, Duration) {
    let mut ids = Vec::new();
    for _ in 0..appenders {
        let task = task();
        store.create_task(&task).await.unwrap();
        ids.push(task.id);
    }
    let each = APPENDS_PER_ROUND / appenders;
    let started = Instant::now();
    let handles: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let store = Arc::clone(store);
            tokio::spawn(async move {
                for i in 0..each {
                    let event = Event::Warning {
                        message: format!("tool output line {i}: something worth a few dozen bytes"),
                    };
                    store.append_event(id, &event).await.unwrap();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    (each * appenders, started.elapsed())
}
