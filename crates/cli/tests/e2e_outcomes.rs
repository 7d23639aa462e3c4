//! Truthful outcomes: a task whose agent changes nothing is still held to the repository's
//! declared checks (run on the tree it stands on), and says "no changes" everywhere it shows.

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

/// An agent that looks and calls `finish` without editing anything.
fn looking_script() -> Value {
    json!([
        {"reply": {"tool_calls": [{"name": "read_file", "arguments": {"path": "calc.sh"}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "Nothing to change"}}]}}
    ])
}

fn check_events(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["type"] == "command_finished" && e["phase"] == "check")
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_that_changes_nothing_fails_when_its_checks_fail_on_the_base() {
    // `sh test.sh` fails on this tree: add subtracts.
    let repo = buggy_repo_with_config("[checks]\ntest = \"sh test.sh\"\n");
    let base = git(repo.path(), &["rev-parse", "HEAD"]);
    let before = branches(repo.path());
    let (ns, _server) = Nightshift::with_script(script(looking_script())).await;

    let (out, task) = ns.wait_task(repo.path(), "fix add").await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(task["state"], "failed", "{task}");
    assert_eq!(task["no_changes"], true, "{task}");
    assert_eq!(task["base_commit"], base.as_str());
    assert_eq!(task["head_commit"], base.as_str(), "the result is the base");
    assert!(task.get("branch").is_none(), "{task}");
    assert_eq!(task["summary"], "Nothing to change");
    let error = task["error"].as_str().unwrap();
    assert!(
        error.contains("without changing any file") && error.contains("check `test` (exit 1)"),
        "{error}"
    );
    assert_eq!(branches(repo.path()), before, "no branch is created");

    let id = task["id"].as_str().unwrap();
    let events = ns.events(id).await;
    let checks = check_events(&events);
    assert_eq!(checks.len(), 1, "the check ran once, in the fresh sandbox");
    assert_eq!(checks[0]["ok"], false);
    assert!(
        checks[0]["output_tail"]
            .as_str()
            .unwrap()
            .contains("FAIL: add 2 3 gave -1"),
        "{}",
        checks[0]
    );
    let error = events.iter().find(|e| e["type"] == "error").unwrap();
    assert_eq!(error["kind"], "checks", "{error}");
    let ended = events.last().unwrap();
    assert_eq!(ended["type"], "ended");
    assert_eq!(ended["state"], "failed");
    assert_eq!(ended["no_changes"], true, "{ended}");

    // show, ls (JSON and text) and logs say it too.
    let shown = ns.json(&["show", id, "--json"]).await;
    assert_eq!(shown["no_changes"], true, "{shown}");
    assert_eq!(shown["state"], "failed");
    let listed = ns.json(&["ls", "--json"]).await;
    assert_eq!(listed[0]["id"], id);
    assert_eq!(listed[0]["no_changes"], true, "{listed}");
    let text = stdout(&ns.run(&["show", id]).await);
    assert!(
        text.contains("Changes   none") && text.contains(&base[..12]),
        "{text}"
    );
    let rows = stdout(&ns.run(&["ls"]).await);
    assert!(rows.contains("(no changes) fix add"), "{rows}");
    let logs = stdout(&ns.run(&["logs", id]).await);
    let ended = logs.lines().find(|l| l.contains(" ended ")).unwrap();
    assert!(
        ended.contains("failed after") && ended.ends_with(" · no changes"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_that_changes_nothing_succeeds_when_its_checks_pass_and_says_so() {
    let repo = buggy_repo_with_config("[checks]\ntest = \"sh test.sh\"\n");
    // Someone already fixed it: the check passes on the base.
    let calc = repo.path().join("calc.sh");
    let fixed = std::fs::read_to_string(&calc)
        .unwrap()
        .replace("$(($1 - $2))", "$(($1 + $2))");
    std::fs::write(&calc, fixed).unwrap();
    git(repo.path(), &["commit", "-q", "-am", "fix add"]);
    let base = git(repo.path(), &["rev-parse", "HEAD"]);
    let before = branches(repo.path());
    let (ns, _server) = Nightshift::with_script(script(looking_script())).await;

    let (out, task) = ns.wait_task(repo.path(), "fix add").await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(task["no_changes"], true, "{task}");
    assert_eq!(task["head_commit"], base.as_str());
    assert!(task.get("branch").is_none() && task.get("error").is_none());
    assert_eq!(branches(repo.path()), before);

    let id = task["id"].as_str().unwrap();
    let events = ns.events(id).await;
    let checks = check_events(&events);
    assert_eq!(checks.len(), 1);
    assert_eq!(checks[0]["ok"], true, "{}", checks[0]);
    assert_eq!(events.last().unwrap()["no_changes"], true);
    let shown = ns.json(&["show", id, "--json"]).await;
    assert_eq!(shown["no_changes"], true, "{shown}");
    assert_eq!(ns.json(&["ls", "--json"]).await[0]["no_changes"], true);

    // The text of `run --wait` says it.
    let (ns, _server) = Nightshift::with_script(script(looking_script())).await;
    let out = ns
        .run(&[
            "run",
            "--repo",
            path_str(repo.path()),
            "--model",
            "openai:m",
            "--wait",
            "fix add",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("changes   none"), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_with_changes_does_not_say_no_changes() {
    let repo = buggy_repo_with_config("[checks]\ntest = \"sh test.sh\"\n");
    let (ns, _server) = Nightshift::with_script(fixing_script()).await;
    let (out, task) = ns.wait_task(repo.path(), "fix add").await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(task.get("no_changes").is_none(), "{task}");
    assert!(task["branch"].is_string());
    let events = ns.events(task["id"].as_str().unwrap()).await;
    assert!(events.last().unwrap().get("no_changes").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follow_up_that_changes_nothing_keeps_the_branch_it_continues() {
    let repo = buggy_repo_with_config("[checks]\ntest = \"sh test.sh\"\n");
    let mut steps: Value = serde_json::to_value(fixing_script()).unwrap()["steps"].clone();
    steps.as_array_mut().unwrap().extend([
        json!({"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "It already adds"}}]}}),
    ]);
    let (ns, _server) = Nightshift::with_script(script(steps)).await;
    let (out, first) = ns.wait_task(repo.path(), "fix add").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let branch = first["branch"].as_str().unwrap().to_string();
    let head = first["head_commit"].as_str().unwrap().to_string();

    let said = ns
        .run(&["say", first["id"].as_str().unwrap(), "check", "it", "adds"])
        .await;
    assert!(said.status.success(), "{}", stderr(&said));
    let follow_up_id = ns.follow_up_started(first["id"].as_str().unwrap()).await;
    let follow_up = ns
        .wait_for(&follow_up_id, |t| {
            t["state"] == "succeeded" || t["state"] == "failed"
        })
        .await;
    assert_eq!(follow_up["state"], "succeeded", "{follow_up}");
    assert_eq!(follow_up["no_changes"], true, "{follow_up}");
    assert_eq!(
        follow_up["branch"],
        branch.as_str(),
        "it stands on the branch"
    );
    assert_eq!(follow_up["head_commit"], head.as_str());
    assert_eq!(
        git(repo.path(), &["rev-parse", &branch]),
        head,
        "the branch did not move"
    );
    let events = ns.events(&follow_up_id).await;
    let checks = check_events(&events);
    assert_eq!(checks.len(), 1);
    assert_eq!(checks[0]["ok"], true, "the checks ran on the branch's fix");
}
