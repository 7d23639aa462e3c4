//! The service around the tasks over real HTTP: health, Prometheus metrics and the OpenAPI
//! document.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Harness;
use nightshift_protocol::{ErrorKind, Event, TaskState, Usage};
use serde_json::Value;

#[tokio::test]
async fn health_metrics_and_openapi() {
    let h = Harness::start().await;
    h.queued_task("a").await;
    h.queued_task("b").await;
    // One task that ran: its row's tokens, turns and times, its events' dollars and failures.
    let ran = h.queued_task("c").await;
    assert!(
        h.store
            .claim_task(ran.id, "worker-1", std::time::Duration::from_secs(60))
            .await
            .unwrap()
    );
    let mut row = h.store.get_task(ran.id).await.unwrap().unwrap();
    let started: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    row.state = TaskState::Failed;
    row.started_at = Some(started);
    row.finished_at = Some(started + jiff::SignedDuration::from_millis(42_500));
    row.turns = 3;
    row.usage = Usage {
        input_tokens: 1200,
        cached_input_tokens: 300,
        output_tokens: 80,
    };
    h.store.update_task(&row).await.unwrap();
    for kind in [ErrorKind::Sandbox, ErrorKind::Setup, ErrorKind::Sandbox] {
        h.append(
            ran.id,
            Event::Error {
                kind,
                message: "no".into(),
                hint: None,
            },
        )
        .await;
    }
    h.append(
        ran.id,
        Event::Ended {
            state: TaskState::Failed,
            summary: None,
            usage: row.usage,
            cost_usd: Some(0.125),
            cpu_seconds: None,
            turns: 3,
            duration_ms: 42_500,
            no_changes: false,
        },
    )
    .await;
    let health: Value = h
        .client
        .get(h.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");

    let response = h.get("/metrics", &h.read).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    assert!(
        text.contains("nightshift_tasks{state=\"queued\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("nightshift_tasks{state=\"running\"} 0"),
        "{text}"
    );
    assert!(text.contains("nightshift_queue_depth 2"), "{text}");
    assert!(text.contains("nightshift_sse_clients 0"), "{text}");
    for line in [
        "# TYPE nightshift_tokens_total counter",
        "nightshift_tokens_total{kind=\"input\"} 1200",
        "nightshift_tokens_total{kind=\"cached_input\"} 300",
        "nightshift_tokens_total{kind=\"output\"} 80",
        "# TYPE nightshift_turns_total counter",
        "nightshift_turns_total 3",
        "# TYPE nightshift_model_cost_usd_total counter",
        "nightshift_model_cost_usd_total 0.125",
        "# TYPE nightshift_task_run_seconds summary",
        "nightshift_task_run_seconds_sum 42.5",
        "nightshift_task_run_seconds_count 1",
        "# TYPE nightshift_sandbox_failures_total counter",
        "nightshift_sandbox_failures_total 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from {text}"
        );
    }
    for name in [
        "nightshift_tokens_total",
        "nightshift_turns_total",
        "nightshift_model_cost_usd_total",
        "nightshift_task_run_seconds",
        "nightshift_sandbox_failures_total",
    ] {
        assert!(text.contains(&format!("# HELP {name} ")), "{name}: {text}");
    }
    assert!(
        text.contains(
            "nightshift_http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"} 1"
        ),
        "{text}"
    );

    let doc: Value = h
        .client
        .get(h.url("/api/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/api/tasks",
        "/api/tasks/{id}",
        "/api/tasks/{id}/events",
        "/api/tasks/{id}/cancel",
        "/api/tasks/{id}/messages",
        "/api/tasks/{id}/diff",
        "/api/tasks/{id}/artifacts/{name}",
        "/api/tokens",
        "/api/tokens/{id}",
        "/healthz",
        "/metrics",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} missing from {:?}",
            paths.keys()
        );
    }
    assert!(paths["/api/tasks"].get("post").is_some());
    assert!(doc["components"]["schemas"]["CreateTask"]["properties"]["repo"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    h.stop().await;
}
