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

/// Files and directories directly under `dir`, or none when it does not exist.
fn entries(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_provider_key_is_refused_at_submit_naming_the_variable() {
    let repo = buggy_repo_with_config("[environment]\nsetup = \"touch setup-ran\"\n");
    let ns = Nightshift::new("http://127.0.0.1:9/v1");
    for (model, variable) in [
        ("openai:gpt-x", "OPENAI_API_KEY"),
        ("openai-responses:gpt-x", "OPENAI_API_KEY"),
        ("anthropic:claude-x", "ANTHROPIC_API_KEY"),
    ] {
        let mut command = ns.command(&[
            "run",
            "--repo",
            path_str(repo.path()),
            "--model",
            model,
            "--wait",
            "fix add",
        ]);
        // The providers' own endpoints, and no keys.
        for name in [
            "OPENAI_API_KEY",
            "OPENAI_BASE_URL",
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_BASE_URL",
        ] {
            command.env_remove(name);
        }
        let started = std::time::Instant::now();
        let out = tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{model}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(variable), "{model}: {err}");
        assert!(err.contains("hint:"), "{err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "refused at once"
        );
    }
    assert_eq!(
        ns.json(&["ls", "--json"]).await,
        json!([]),
        "nothing queued"
    );
    assert!(entries(&ns.home.path().join("work")).is_empty());
    assert!(entries(&ns.home.path().join("workers")).is_empty());
    assert!(!repo.path().join("setup-ran").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_server_needs_no_key_and_a_key_may_come_from_config_toml() {
    let repo = buggy_repo();
    // An OpenAI-compatible server on loopback (like Ollama): no key needed.
    let (ns, server) = Nightshift::with_script(fixing_script()).await;
    let mut command = ns.command(&[
        "run",
        "--repo",
        path_str(repo.path()),
        "--model",
        "openai:m",
        "--wait",
        "--json",
        "fix add",
    ]);
    command.env_remove("OPENAI_API_KEY");
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        server.recorded()[0].headers.get("authorization"),
        None,
        "no key, none sent"
    );

    // The provider's own endpoint, with the key in config.toml: accepted.
    let ns = Nightshift::new("http://127.0.0.1:9/v1");
    std::fs::write(
        ns.home.path().join("config.toml"),
        "[providers]\nanthropic_api_key = \"from-config\"\n",
    )
    .unwrap();
    let mut command = ns.command(&[
        "run",
        "--repo",
        path_str(repo.path()),
        "--model",
        "anthropic:claude-x",
        "fix add",
    ]);
    command
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_BASE_URL")
        // Its worker must not reach the real provider from a test.
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("https_proxy", "http://127.0.0.1:9");
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let _ = ns.run(&["cancel", &id]).await;
    ns.wait_for(&id, |t| t["state"] == "cancelled" || t["state"] == "failed")
        .await;
}
