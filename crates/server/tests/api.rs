//! The task endpoints over real HTTP: submit, list, show, cancel, message, diff, artifacts, event
//! pages, bad input, health, metrics and the OpenAPI document.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Harness, error_of, git_repo, warning};
use nightshift_protocol::{ErrorKind, Event, TaskState, Usage};
use serde_json::{Value, json};

#[tokio::test]
async fn submitting_queues_a_task_that_reads_back_by_any_id_form() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = git_repo(dir.path());
    let response = h
        .post("/api/tasks", &h.submit)
        .json(&json!({"repo": repo, "prompt": "  fix the bug  ", "max_turns": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let task: Value = response.json().await.unwrap();
    let id = task["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/api/tasks/{id}"));
    assert_eq!(task["state"], "queued");
    assert_eq!(task["schema"], 1);
    assert_eq!(task["short_id"], id[id.len() - 8..]);
    assert_eq!(task["spec"]["prompt"], "fix the bug");
    assert_eq!(task["spec"]["base"], "main");
    assert_eq!(
        task["spec"]["model"], "openai:test-model",
        "the server's default model"
    );
    assert_eq!(task["spec"]["max_turns"], 7);

    for reference in [
        id.clone(),
        id[id.len() - 8..].to_string(),
        id[..20].to_uppercase(),
    ] {
        let response = h
            .get(&format!("/api/tasks/{reference}"), &h.read)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{reference}");
        let shown: Value = response.json().await.unwrap();
        assert_eq!(shown["id"], id.as_str());
        assert_eq!(shown["state"], "queued");
    }

    // The runner's checks come back as 422 with its message and hint.
    let response = h
        .post("/api/tasks", &h.submit)
        .json(&json!({"repo": repo, "prompt": "  "}))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (422, Some("invalid_task"))
    );
    assert!(
        error["message"].as_str().unwrap().contains("prompt"),
        "{error}"
    );

    let response = h
        .post("/api/tasks", &h.submit)
        .json(&json!({"repo": repo, "prompt": "p", "base": "no-such-branch"}))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(status, 422, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("no-such-branch"),
        "{error}"
    );

    let response = h
        .post("/api/tasks", &h.submit)
        .json(&json!({"repo": dir.path(), "prompt": "p"}))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(status, 422, "not a repository: {error}");

    let response = h
        .post("/api/tasks", &h.submit)
        .json(&json!({"repo": "relative/repo", "prompt": "p"}))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(status, 422);
    assert!(
        error["message"].as_str().unwrap().contains("absolute"),
        "{error}"
    );

    let response = h
        .post("/api/tasks", &h.submit)
        .json(&json!({"repo": repo, "prompt": "p", "model": "nope:x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await.0, 422);
    h.stop().await;
}

#[tokio::test]
async fn bad_input_gets_4xx_with_a_message() {
    let h = Harness::start().await;
    let send = |body: String| {
        h.post("/api/tasks", &h.submit)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let (status, error) = error_of(send("{\"repo\": ".into()).await.unwrap()).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (400, Some("invalid_json"))
    );

    let body = json!({"repo": "/r", "prompt": "p", "colour": "red"}).to_string();
    let (status, error) = error_of(send(body).await.unwrap()).await;
    assert_eq!(status, 422);
    assert!(
        error["message"].as_str().unwrap().contains("colour"),
        "{error}"
    );

    let body = json!({"repo": "/r", "prompt": "p", "max_turns": "many"}).to_string();
    let (status, error) = error_of(send(body).await.unwrap()).await;
    assert_eq!(status, 422);
    assert!(
        error["message"].as_str().unwrap().contains("max_turns"),
        "{error}"
    );

    let body = json!({"prompt": "p"}).to_string();
    let (status, error) = error_of(send(body).await.unwrap()).await;
    assert_eq!(status, 422);
    assert!(
        error["message"].as_str().unwrap().contains("repo"),
        "{error}"
    );

    let big = json!({"repo": "/r", "prompt": "x".repeat(2 * 1024 * 1024)}).to_string();
    let (status, error) = error_of(send(big).await.unwrap()).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (413, Some("body_too_large"))
    );

    let response = h
        .post("/api/tasks", &h.submit)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await.0, 415);

    for bad in ["ab", "not-an-id!", "ilouilou", &"z".repeat(27)] {
        let response = h
            .get(&format!("/api/tasks/{bad}"), &h.read)
            .send()
            .await
            .unwrap();
        let (status, error) = error_of(response).await;
        assert_eq!(
            (status, error["code"].as_str()),
            (400, Some("invalid_id")),
            "{bad}"
        );
    }
    let unknown = nightshift_protocol::TaskId::new();
    let response = h
        .get(&format!("/api/tasks/{unknown}"), &h.read)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await.0, 404);

    let response = h.get("/api/nothing-here", &h.read).send().await.unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!((status, error["code"].as_str()), (404, Some("not_found")));
    let response = h.client.put(h.url("/api/tasks")).send().await.unwrap();
    assert_eq!(error_of(response).await.0, 405);

    let response = h.get("/api/tasks?limit=0", &h.read).send().await.unwrap();
    assert_eq!(error_of(response).await.0, 400);
    let response = h.get("/api/tasks?limit=abc", &h.read).send().await.unwrap();
    assert_eq!(error_of(response).await.0, 400);
    let response = h
        .get("/api/tasks?state=done", &h.read)
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(status, 400);
    assert!(
        error["message"].as_str().unwrap().contains("done"),
        "{error}"
    );
    let response = h
        .get("/api/tasks?before=xyz", &h.read)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await.0, 400);
    h.stop().await;
}

#[tokio::test]
async fn listings_page_newest_first_and_filter_by_state() {
    let h = Harness::start().await;
    let mut ids = Vec::new();
    for n in 0..7 {
        ids.push(h.queued_task(&format!("task {n}")).await.id.to_string());
    }
    // Newest first is id order (ULIDs made within one millisecond sort by their random part).
    ids.sort();
    ids.reverse();
    let mut seen = Vec::new();
    let mut path = "/api/tasks?limit=3".to_string();
    loop {
        let page: Value = h
            .get(&path, &h.read)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for task in page["tasks"].as_array().unwrap() {
            seen.push(task["id"].as_str().unwrap().to_string());
        }
        match page["next_before"].as_str() {
            Some(cursor) => path = format!("/api/tasks?limit=3&before={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);

    let cancelled = &ids[2];
    h.post(&format!("/api/tasks/{cancelled}/cancel"), &h.submit)
        .send()
        .await
        .unwrap();
    let page: Value = h
        .get("/api/tasks?state=cancelled,failed", &h.read)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tasks = page["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["id"], cancelled.as_str());
    assert!(page.get("next_before").is_none());
    h.stop().await;
}

#[tokio::test]
async fn cancel_reports_what_happened() {
    let h = Harness::start().await;
    let task = h.queued_task("t").await;
    let path = format!("/api/tasks/{}/cancel", task.id.short());
    let body: Value = h
        .post(&path, &h.submit)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["outcome"], "cancelled");
    assert_eq!(body["task"]["state"], "cancelled");
    let body: Value = h
        .post(&path, &h.submit)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["outcome"], "already_ended");

    // A running task is asked to stop.
    let running = h.queued_task("r").await;
    let mut row = h.store.get_task(running.id).await.unwrap().unwrap();
    row.state = TaskState::Running;
    row.started_at = Some(jiff::Timestamp::now());
    h.store.update_task(&row).await.unwrap();
    let body: Value = h
        .post(&format!("/api/tasks/{}/cancel", running.id), &h.submit)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["outcome"], "requested");
    assert_eq!(body["task"]["cancel_requested"], true);
    h.stop().await;
}

#[tokio::test]
async fn messages_land_in_the_log_with_the_sender() {
    let h = Harness::start().await;
    let task = h.queued_task("t").await;
    let path = format!("/api/tasks/{}/messages", task.id);
    let response = h
        .post(&path, &h.submit)
        .json(&json!({"text": "also update the docs"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let record: Value = response.json().await.unwrap();
    assert_eq!(record["type"], "message_received");
    assert_eq!(record["from"], "submitter");
    assert_eq!(record["seq"], 2);
    let events = h.store.events(task.id, 0, 0).await.unwrap();
    assert_eq!(events.last().unwrap().event.kind(), "message_received");

    // Finished tasks take follow-ups.
    h.finish(task.id, TaskState::Succeeded).await;
    let response = h
        .post(&path, &h.submit)
        .json(&json!({"text": "now rename it"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    let response = h
        .post(&path, &h.submit)
        .json(&json!({"text": " "}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await.0, 422);
    let response = h
        .post(&path, &h.submit)
        .json(&json!({"txt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await.0, 422);

    // A task cancelled before it ever ran has nothing to follow up on.
    let never_ran = h.queued_task("n").await;
    h.store.request_cancel(never_ran.id).await.unwrap();
    let response = h
        .post(&format!("/api/tasks/{}/messages", never_ran.id), &h.submit)
        .json(&json!({"text": "hello?"}))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!((status, error["code"].as_str()), (409, Some("conflict")));
    assert!(
        error["hint"].as_str().unwrap().contains("new task"),
        "{error}"
    );
    h.stop().await;
}

#[tokio::test]
async fn diffs_and_artifacts_come_from_blobs() {
    let h = Harness::start().await;
    let task = h.queued_task("t").await;
    let diff = format!("/api/tasks/{}/diff", task.id);
    let (status, error) = error_of(h.get(&diff, &h.read).send().await.unwrap()).await;
    assert_eq!(status, 404);
    assert!(
        error["message"].as_str().unwrap().contains("no diff yet"),
        "{error}"
    );

    let patch = "diff --git a/x b/x\n+hello\n";
    h.store
        .put_blob(
            task.id,
            nightshift_runner::DIFF_BLOB,
            patch.as_bytes().to_vec().into(),
        )
        .await
        .unwrap();
    let response = h.get(&diff, &h.read).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/x-diff")
    );
    assert_eq!(response.text().await.unwrap(), patch);

    let artifact = |name: &str| format!("/api/tasks/{}/artifacts/{name}", task.id);
    assert_eq!(
        h.get(&artifact("log.txt"), &h.read)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    h.store
        .put_blob(task.id, "log.txt", vec![0u8, 1, 2, 255].into())
        .await
        .unwrap();
    let response = h.get(&artifact("log.txt"), &h.read).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    assert_eq!(response.bytes().await.unwrap().as_ref(), &[0u8, 1, 2, 255]);
    for bad in [".env", "a%20b", "..%2Fetc"] {
        let response = h.get(&artifact(bad), &h.read).send().await.unwrap();
        let (status, error) = error_of(response).await;
        assert_eq!(
            (status, error["code"].as_str()),
            (400, Some("invalid_name")),
            "{bad}"
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn events_page_as_json() {
    let h = Harness::start().await;
    let task = h.queued_task("t").await;
    for n in 0..4 {
        h.append(task.id, warning(n)).await;
    }
    let path = |after: u64| format!("/api/tasks/{}/events?after={after}&limit=2", task.id);
    let page: Value = h
        .get(&path(0), &h.read)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let seqs: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2]);
    assert_eq!(page["events"][0]["type"], "queued");
    assert_eq!(page["next_after"], 2);
    assert_eq!(page["ended"], false);
    let page: Value = h
        .get(&path(4), &h.read)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_after"], 5);
    let page: Value = h
        .get(&path(5), &h.read)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 0);
    assert_eq!(page["next_after"], 5);
    assert_eq!(page["ended"], false);

    h.finish(task.id, TaskState::Failed).await;
    let page: Value = h
        .get(&path(5), &h.read)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"][0]["type"], "ended");
    assert_eq!(page["ended"], true);
    let page: Value = h
        .get(&path(6), &h.read)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["ended"], true, "a page after `ended` says so too");

    let response = h
        .get(&format!("/api/tasks/{}/events?limit=0", task.id), &h.read)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await.0, 400);
    h.stop().await;
}

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
