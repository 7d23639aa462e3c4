//! What is done to a task over real HTTP: cancel, messages, its diff and artifacts, and its
//! event pages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Harness, error_of, warning};
use nightshift_protocol::TaskState;
use serde_json::{Value, json};

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
