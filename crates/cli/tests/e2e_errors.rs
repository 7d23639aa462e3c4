//! Bad input and failing models: clear errors, non-zero exits, nothing lost, nothing changed in
//! the person's repository.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};

fn branches(repo: &std::path::Path) -> String {
    git(
        repo,
        &["for-each-ref", "--format=%(refname)", "refs/heads/"],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn rejects_bad_requests_before_queueing_anything() {
    let repo = buggy_repo();
    let plain = tempfile::tempdir().unwrap();
    let ns = Nightshift::new("http://127.0.0.1:9/v1");

    let out = ns
        .run(&["run", "--repo", path_str(plain.path()), "--wait", "do it"])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is not a git repository"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("hint:"), "{}", stderr(&out));

    let out = ns
        .run(&[
            "run",
            "--repo",
            path_str(repo.path()),
            "--base",
            "nope",
            "do it",
        ])
        .await;
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("no branch `nope`") && err.contains("main"),
        "{err}"
    );

    let out = ns
        .run(&["run", "--repo", path_str(repo.path()), "   "])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("prompt is empty"), "{}", stderr(&out));

    let out = ns
        .run(&[
            "run",
            "--repo",
            path_str(repo.path()),
            "--model",
            "gpt-4",
            "do it",
        ])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("openai:MODEL"), "{}", stderr(&out));

    let listed = ns.json(&["ls", "--json"]).await;
    assert_eq!(
        listed,
        json!([]),
        "nothing may be queued for a rejected request"
    );

    let out = ns.run(&["show", "01jzzzzzzzzzzzzzzzzzzzzzzz"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no task matches"), "{}", stderr(&out));
}

async fn failing_task(ns: &Nightshift, repo: &std::path::Path) -> (Value, Vec<Value>) {
    let before = branches(repo);
    let out = ns
        .run(&[
            "run",
            "--repo",
            path_str(repo),
            "--model",
            "openai:m",
            "--wait",
            "--json",
            "fix add",
        ])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["state"], "failed");
    assert_eq!(
        branches(repo),
        before,
        "a failed task without changes must leave no branch"
    );
    let events = ns.events(task["id"].as_str().unwrap()).await;
    assert_eq!(events.last().unwrap()["type"], "ended");
    (task, events)
}

fn error_event(events: &[Value]) -> &Value {
    events
        .iter()
        .find(|e| e["type"] == "error")
        .expect("an error event")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_model_fails_the_task_with_a_hint() {
    let repo = buggy_repo();
    // Nothing listens on a port we just bound and released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ns = Nightshift::new(format!("http://127.0.0.1:{port}/v1"));
    let (task, events) = failing_task(&ns, repo.path()).await;
    let error = error_event(&events);
    assert_eq!(error["kind"], "model_unreachable", "{error}");
    assert!(error["hint"].as_str().unwrap().contains("OPENAI_BASE_URL"));
    assert!(
        task["error"]
            .as_str()
            .unwrap()
            .contains("could not reach the model")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_key_fails_the_task_without_retrying() {
    let repo = buggy_repo();
    let (ns, server) = Nightshift::with_script(script(json!([
        {"error": {"status": 401, "body": "{\"error\":{\"message\":\"Incorrect API key provided\"}}"}}
    ])))
    .await;
    let (_, events) = failing_task(&ns, repo.path()).await;
    let error = error_event(&events);
    assert_eq!(error["kind"], "model_auth", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("Incorrect API key")
    );
    assert!(error["hint"].as_str().unwrap().contains("OPENAI_API_KEY"));
    assert_eq!(server.served(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_stream_fails_the_task() {
    let repo = buggy_repo();
    let (ns, _server) = Nightshift::with_script(script(json!([
        {"malformed": {"body": "{this is not json"}}
    ])))
    .await;
    let (_, events) = failing_task(&ns, repo.path()).await;
    assert_eq!(error_event(&events)["kind"], "model_protocol");
}

#[tokio::test(flavor = "multi_thread")]
async fn running_out_of_turns_keeps_the_work_on_a_branch() {
    let repo = buggy_repo();
    let (ns, _server) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [{"name": "write_file", "arguments": {"path": "progress.md", "content": "half done\n"}}]}},
        {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": "true"}}], "repeat": 5}}
    ])))
    .await;
    let out = ns
        .run(&[
            "run",
            "--repo",
            path_str(repo.path()),
            "--model",
            "openai:m",
            "--max-turns",
            "3",
            "--wait",
            "--json",
            "a long job",
        ])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["state"], "failed");
    assert_eq!(task["turns"], 3);
    let branch = task["branch"]
        .as_str()
        .expect("incomplete work is handed back");
    assert_eq!(
        git(repo.path(), &["show", &format!("{branch}:progress.md")]),
        "half done"
    );
    assert!(git(repo.path(), &["log", "-1", "--format=%B", branch]).contains("incomplete"));
    let events = ns.events(task["id"].as_str().unwrap()).await;
    assert_eq!(error_event(&events)["kind"], "budget");
    let committed = events.iter().find(|e| e["type"] == "committed").unwrap();
    assert_eq!(committed["incomplete"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_a_running_task_and_keeps_its_work() {
    let repo = buggy_repo();
    let (ns, _server) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [{"name": "write_file", "arguments": {"path": "started.txt", "content": "yes\n"}}]}},
        {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": "sleep 60"}}]}}
    ])))
    .await;
    let out = ns
        .run(&[
            "run",
            "--repo",
            path_str(repo.path()),
            "--model",
            "openai:m",
            "slow work",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    // Wait until the long command runs.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let events = ns.events(&id).await;
        if events
            .iter()
            .any(|e| e["type"] == "tool_started" && e["tool"] == "shell")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the shell call never started: {events:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let started = std::time::Instant::now();
    let out = ns.run(&["cancel", &id]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("cancellation requested"));
    let task = ns.wait_for(&id, |t| t["state"] == "cancelled").await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "cancel took {:?}",
        started.elapsed()
    );
    let branch = task["branch"].as_str().expect("work so far is committed");
    assert_eq!(
        git(repo.path(), &["show", &format!("{branch}:started.txt")]),
        "yes"
    );

    let again = ns.run(&["cancel", &id]).await;
    assert!(
        stdout(&again).contains("already cancelled"),
        "{}",
        stdout(&again)
    );
}
