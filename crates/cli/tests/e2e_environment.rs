//! The repository's environment in a task: setup and maintenance scripts, untracked files
//! brought along, AGENTS.md in the agent's context, and declared checks run on the committed
//! result in a fresh sandbox.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};

const CONFIG: &str = r#"
[environment]
setup = "echo setting up; echo ready > .setup-marker"
maintenance = "echo maintenance ran"
copy = [".env"]

[checks]
test = "sh test.sh"
"#;

fn configured_repo() -> tempfile::TempDir {
    let repo = buggy_repo();
    let root = repo.path();
    std::fs::write(root.join(".nightshift.toml"), CONFIG).unwrap();
    std::fs::write(
        root.join("AGENTS.md"),
        "Run `sh test.sh` before finishing.\n",
    )
    .unwrap();
    std::fs::write(root.join(".gitignore"), ".setup-marker\n").unwrap();
    git(root, &["add", "."]);
    git(root, &["commit", "-q", "-m", "configure nightshift"]);
    // Untracked, and not ignored: only `copy` brings it, and it must never be committed.
    std::fs::write(root.join(".env"), "API_URL=http://example.invalid\n").unwrap();
    repo
}

fn environment_events(events: &[Value]) -> Vec<(String, String, bool)> {
    events
        .iter()
        .filter(|e| e["type"] == "command_finished")
        .map(|e| {
            (
                e["phase"].as_str().unwrap().to_string(),
                e["name"].as_str().unwrap().to_string(),
                e["ok"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_runs_before_the_agent_and_checks_verify_the_committed_result() {
    let repo = configured_repo();
    let mut steps: Value = serde_json::to_value(fixing_script()).unwrap()["steps"].clone();
    steps.as_array_mut().unwrap().insert(
        0,
        json!({"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": "cat .setup-marker .env"}}]}}),
    );
    let (ns, server) = Nightshift::with_script(script(steps)).await;
    let (out, task) = ns.wait_task(repo.path(), "fix add").await;
    assert!(out.status.success(), "{}\n{}", stderr(&out), stdout(&out));
    assert_eq!(task["state"], "succeeded");
    let events = ns.events(task["id"].as_str().unwrap()).await;
    assert_eq!(
        environment_events(&events),
        vec![
            ("setup".into(), "setup".into(), true),
            ("maintenance".into(), "maintenance".into(), true),
            // The checks' fresh sandbox stacks the same setup layer: no second setup run.
            ("check".into(), "test".into(), true),
        ]
    );
    let loaded = events
        .iter()
        .find(|e| e["type"] == "environment_loaded")
        .unwrap();
    assert_eq!(loaded["checks"], json!(["test"]));
    // The agent saw what setup made and the copied file.
    let first_shell = events
        .iter()
        .find(|e| e["type"] == "tool_finished" && e["tool"] == "shell")
        .unwrap();
    let output = first_shell["output"].as_str().unwrap();
    assert!(
        output.contains("ready") && output.contains("API_URL=http://example.invalid"),
        "{output}"
    );
    // The check's output is kept.
    let check = events
        .iter()
        .find(|e| e["type"] == "command_finished" && e["phase"] == "check")
        .unwrap();
    assert!(check["output_tail"].as_str().unwrap().contains("PASS"));
    assert_eq!(check["artifact"], "check-test.log");
    // AGENTS.md and the checks were in the agent's first message.
    let first = &server.requests()[0]["messages"][1]["content"];
    let first = first.as_str().unwrap();
    assert!(
        first.contains("Run `sh test.sh` before finishing.")
            && first.contains("- test: `sh test.sh`"),
        "{first}"
    );
    assert!(first.ends_with("fix add"), "{first}");
    // The copied file is never committed.
    let branch = task["branch"].as_str().unwrap();
    let files = git(repo.path(), &["ls-tree", "-r", "--name-only", branch]);
    assert!(
        !files.lines().any(|f| f == ".env" || f == ".setup-marker"),
        "{files}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_check_fails_the_task_with_its_log_and_keeps_the_branch() {
    let repo = configured_repo();
    let (ns, _server) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [{"name": "edit_file", "arguments": {"path": "calc.sh", "old_string": "$(($1 - $2))", "new_string": "$(($1 * $2))"}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "Fixed add (I think)"}}]}}
    ])))
    .await;
    let (out, task) = ns.wait_task(repo.path(), "fix add").await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(task["state"], "failed");
    assert!(
        task["error"]
            .as_str()
            .unwrap()
            .contains("check `test` (exit 1) failed"),
        "{task}"
    );
    assert_eq!(task["summary"], "Fixed add (I think)");
    let branch = task["branch"]
        .as_str()
        .expect("the work is kept on its branch");
    assert!(git(repo.path(), &["show", &format!("{branch}:calc.sh")]).contains("$(($1 * $2))"));
    let events = ns.events(task["id"].as_str().unwrap()).await;
    let error = events.iter().find(|e| e["type"] == "error").unwrap();
    assert_eq!(error["kind"], "checks");
    let check = events
        .iter()
        .find(|e| e["type"] == "command_finished" && e["phase"] == "check")
        .unwrap();
    assert!(
        check["output_tail"]
            .as_str()
            .unwrap()
            .contains("FAIL: add 2 3 gave 6"),
        "{check}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_setup_fails_the_task_while_preparing() {
    let repo = buggy_repo();
    std::fs::write(
        repo.path().join(".nightshift.toml"),
        "[environment]\nsetup = \"echo installing; exit 3\"\n",
    )
    .unwrap();
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "bad setup"]);
    let (ns, server) = Nightshift::with_script(fixing_script()).await;
    let (out, task) = ns.wait_task(repo.path(), "fix add").await;
    assert_eq!(out.status.code(), Some(1));
    let events = ns.events(task["id"].as_str().unwrap()).await;
    let error = events.iter().find(|e| e["type"] == "error").unwrap();
    assert_eq!(error["kind"], "setup");
    assert!(
        error["message"].as_str().unwrap().contains("exit 3")
            && error["message"].as_str().unwrap().contains("installing"),
        "{error}"
    );
    assert_eq!(server.served(), 0, "the agent never started");
    assert!(task.get("branch").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_configuration_fails_with_its_position() {
    let repo = buggy_repo();
    std::fs::write(
        repo.path().join(".nightshift.toml"),
        "[environment\nsetup = 1\n",
    )
    .unwrap();
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "broken config"]);
    let (ns, _server) = Nightshift::with_script(fixing_script()).await;
    let (out, task) = ns.wait_task(repo.path(), "fix add").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        task["error"]
            .as_str()
            .unwrap()
            .contains(".nightshift.toml:1:"),
        "{task}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_second_task_starts_from_the_cached_setup_and_a_lockfile_change_says_why_it_missed() {
    let repo = buggy_repo();
    let root = repo.path();
    std::fs::write(
        root.join(".nightshift.toml"),
        "[environment]\nsetup = \"sleep 1; mkdir -p deps; date +%s%N > deps/built-at\"\n",
    )
    .unwrap();
    std::fs::write(root.join(".gitignore"), "deps/\n").unwrap();
    std::fs::write(root.join("package-lock.json"), "{\"lockfileVersion\": 3}\n").unwrap();
    git(root, &["add", "."]);
    git(root, &["commit", "-q", "-m", "setup with a lockfile"]);
    let read_built_at = json!({"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": "cat deps/built-at"}}]}});
    let finish =
        json!({"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "looked"}}]}});
    let (ns, _server) = Nightshift::with_script(script(json!([
        read_built_at,
        finish,
        read_built_at,
        finish,
        read_built_at,
        finish
    ])))
    .await;
    let mut runs = Vec::new();
    for round in 0..3 {
        if round == 2 {
            std::fs::write(
                root.join("package-lock.json"),
                "{\"lockfileVersion\": 3, \"packages\": {}}\n",
            )
            .unwrap();
            git(root, &["commit", "-q", "-am", "new dependency"]);
            let explained = stdout(&ns.run(&["env", "explain", "--repo", path_str(root)]).await);
            assert!(
                explained.contains("miss") && explained.contains("file:package-lock.json` changed"),
                "{explained}"
            );
        } else if round == 1 {
            let explained = stdout(&ns.run(&["env", "explain", "--repo", path_str(root)]).await);
            assert!(
                explained.contains("hit: the next task mounts"),
                "{explained}"
            );
        }
        let out = ns
            .run(&[
                "run",
                "--repo",
                path_str(root),
                "--model",
                "openai:m",
                "--wait",
                "--json",
                "look",
            ])
            .await;
        assert!(out.status.success(), "{}", stderr(&out));
        let task: Value = serde_json::from_slice(&out.stdout).unwrap();
        let events = ns.events(task["id"].as_str().unwrap()).await;
        let cache = events
            .iter()
            .find(|e| e["type"] == "setup_cache")
            .cloned()
            .expect("a setup_cache event");
        let shell = events
            .iter()
            .find(|e| e["type"] == "tool_finished" && e["tool"] == "shell")
            .unwrap();
        let built_at = shell["output"]
            .as_str()
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .to_string();
        let setups = events
            .iter()
            .filter(|e| e["type"] == "command_finished" && e["phase"] == "setup")
            .count();
        runs.push((cache, built_at, setups));
    }
    let (first, second, third) = (&runs[0], &runs[1], &runs[2]);
    assert_eq!(first.0["hit"], false);
    assert!(
        first.0["reasons"][0]
            .as_str()
            .unwrap()
            .contains("no setup layer"),
        "{}",
        first.0
    );
    assert_eq!(first.2, 1);
    assert_eq!(second.0["hit"], true, "{}", second.0);
    assert_eq!(second.2, 0, "a hit runs no setup");
    assert_eq!(
        second.1, first.1,
        "the second task sees the layer the first one built"
    );
    assert_eq!(third.0["hit"], false);
    let reasons = third.0["reasons"].to_string();
    assert!(
        reasons.contains("file:package-lock.json") && reasons.contains("changed"),
        "{reasons}"
    );
    assert_ne!(third.1, first.1, "a miss builds a new layer");
}
