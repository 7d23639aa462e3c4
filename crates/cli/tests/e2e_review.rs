//! Review mode end to end: a read-only agent reviews a task's branch (or a branch against a
//! base), reports findings as data and changes nothing; `--send` makes the findings a
//! follow-up that fixes them. The model is the scripted server over loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};

/// calc.sh with add fixed and a planted bug: `sub` adds. `sh test.sh` tests only add.
const PLANTED: &str = "#!/bin/sh\n# add A B: prints A + B\nadd() { echo $(($1 + $2)); }\n# sub A B: prints A - B\nsub() { echo $(($1 + $2)); }\nadd \"$@\"\n";

fn call(name: &str, arguments: Value) -> Value {
    json!({"reply": {"tool_calls": [{"name": name, "arguments": arguments}]}})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_review_finds_a_planted_bug_cannot_write_and_send_gets_it_fixed() {
    let repo = buggy_repo_with_config("[checks]\ntest = \"sh test.sh\"\n");
    let steps = json!([
        // The build task: fixes add, adds a sub that adds.
        call("write_file", json!({"path": "calc.sh", "content": PLANTED})),
        finish("Fix add and add sub"),
        // The review: reads, tries to write (refused twice), reports.
        call("read_file", json!({"path": "calc.sh"})),
        call("shell", json!({"command": "echo hacked > calc.sh"})),
        call(
            "write_file",
            json!({"path": "calc.sh", "content": "hacked"})
        ),
        call(
            "submit_review",
            json!({
                "summary": "add is fixed; sub adds instead of subtracting.",
                "findings": [
                    {"path": "NOTES.md", "line": 1, "severity": "low", "problem": "a note is missing"},
                    {"path": "calc.sh", "line": 5, "severity": "critical", "problem": "sub adds its arguments", "suggestion": "use $(($1 - $2))"}
                ]
            })
        ),
        // The follow-up --send starts: fixes sub.
        call(
            "edit_file",
            json!({"path": "calc.sh", "old_string": "sub() { echo $(($1 + $2)); }", "new_string": "sub() { echo $(($1 - $2)); }"})
        ),
        finish("Fix sub"),
    ]);
    let (ns, model) = Nightshift::with_script(script(steps)).await;
    let (out, built) = ns.wait_task(repo.path(), "Fix add and add sub").await;
    assert!(out.status.success(), "{}{built}", stderr(&out));
    let built_id = built["id"].as_str().unwrap().to_string();
    let branch = built["branch"].as_str().unwrap().to_string();
    let head_before = git(repo.path(), &["rev-parse", &branch]);

    let out = ns
        .run(&[
            "review", &built_id, "--model", "openai:m", "--send", "--json",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let review = &printed["review"];
    assert_eq!(review["state"], "succeeded", "{printed}");
    assert_eq!(review["spec"]["review"]["task"], built_id.as_str());
    assert_eq!(review["spec"]["base"], branch.as_str());
    assert!(review["branch"].is_null(), "{printed}");
    assert!(
        review["summary"]
            .as_str()
            .unwrap()
            .starts_with("2 finding(s): 1 critical, 1 low."),
        "{printed}"
    );
    // Most severe first.
    let findings = printed["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 2, "{printed}");
    assert_eq!(findings[0]["severity"], "critical");
    assert_eq!(findings[0]["path"], "calc.sh");
    assert_eq!(findings[0]["line"], 5);
    assert_eq!(printed["sent_to"], built_id.as_str());

    // The review's agent had the review tools only, its own instructions, the request and
    // the diff; it could not write the working copy, and nothing was committed.
    let requests = model.requests();
    let first_review = requests
        .iter()
        .find(|r| r.to_string().contains("nightshift's reviewer"))
        .expect("a request with the reviewer's instructions");
    let tools: Vec<&str> = first_review["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        tools,
        [
            "shell",
            "read_file",
            "search",
            "list_files",
            "submit_review"
        ]
    );
    let asked = first_review["messages"].to_string();
    assert!(asked.contains("Fix add and add sub"), "{asked}");
    assert!(asked.contains("+sub() { echo $(($1 + $2)); }"), "{asked}");
    let id = review["id"].as_str().unwrap();
    let events = ns.events(id).await;
    let finished: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "tool_finished")
        .collect();
    let shell = finished.iter().find(|e| e["tool"] == "shell").unwrap();
    assert_eq!(shell["ok"], false, "{shell}");
    assert!(
        shell["output"]
            .as_str()
            .unwrap()
            .contains("Read-only file system"),
        "{shell}"
    );
    let write = finished.iter().find(|e| e["tool"] == "write_file").unwrap();
    assert_eq!(write["ok"], false);
    assert!(
        write["output"]
            .as_str()
            .unwrap()
            .contains("`write_file` is not available in this task"),
        "{write}"
    );
    assert!(events.iter().any(|e| e["type"] == "review_submitted"));
    assert!(events.iter().all(|e| e["type"] != "committed"));
    assert_eq!(git(repo.path(), &["rev-parse", &branch]), head_before);

    // --send made the findings a follow-up of the built task, which fixed sub.
    let follow_up = ns.follow_up_started(&built_id).await;
    let events = ns.events(&built_id).await;
    let received = events
        .iter()
        .find(|e| e["type"] == "message_received")
        .unwrap();
    assert!(
        received["text"]
            .as_str()
            .unwrap()
            .contains("1. [critical] calc.sh:5: sub adds its arguments"),
        "{received}"
    );
    let done = ns
        .wait_for(&follow_up, |t| {
            ["succeeded", "failed", "cancelled"].contains(&t["state"].as_str().unwrap())
        })
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let fixed = git(repo.path(), &["show", &format!("{branch}:calc.sh")]);
    assert!(fixed.contains("sub() { echo $(($1 - $2)); }"), "{fixed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_branch_is_reviewed_against_its_base_and_bad_targets_are_refused() {
    let repo = buggy_repo();
    git(repo.path(), &["checkout", "-q", "-b", "feature"]);
    std::fs::write(repo.path().join("README.md"), "calc: add two numbers\n").unwrap();
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "readme"]);
    git(repo.path(), &["checkout", "-q", "main"]);
    let steps = json!([call(
        "submit_review",
        json!({"summary": "Only a README.", "findings": []})
    )]);
    let (ns, model) = Nightshift::with_script(script(steps)).await;
    let out = ns
        .run(&[
            "review",
            "--repo",
            path_str(repo.path()),
            "--branch",
            "feature",
            "--base",
            "main",
            "--model",
            "openai:m",
            "--wait",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("findings  none"), "{printed}");
    assert!(printed.contains("No findings. Only a README."), "{printed}");
    // `show` of a review task lists its findings too.
    let id = printed
        .lines()
        .find_map(|line| line.split_whitespace().next().filter(|w| w.len() == 8))
        .unwrap();
    let shown = ns.run(&["show", id]).await;
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("findings  none"),
        "{}",
        String::from_utf8_lossy(&shown.stdout)
    );
    let asked = model.requests()[0]["messages"].to_string();
    assert!(asked.contains("+calc: add two numbers"), "{asked}");
    assert!(
        !asked.contains("add() {"),
        "only the branch's changes: {asked}"
    );

    // A task that is not there, a branch that is not there, --send without a task.
    for (args, expected) in [
        (vec!["review", "01jdoesnotexist"], "no task"),
        (
            vec![
                "review",
                "--repo",
                path_str(repo.path()),
                "--branch",
                "nope",
            ],
            "nope",
        ),
        (
            vec![
                "review",
                "--repo",
                path_str(repo.path()),
                "--branch",
                "feature",
                "--send",
            ],
            "--send",
        ),
    ] {
        let out = ns.run(&args).await;
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let listed = ns.json(&["ls", "--json"]).await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn review_auto_queues_a_review_of_every_task_that_succeeds() {
    let repo = buggy_repo_with_config("[checks]\ntest = \"sh test.sh\"\n\n[review]\nauto = true\n");
    let mut steps = fixing_script_steps();
    steps.push(call(
        "submit_review",
        json!({"summary": "add adds now.", "findings": []}),
    ));
    let (ns, _model) = Nightshift::with_script(script(Value::Array(steps))).await;
    let (out, built) = ns.wait_task(repo.path(), "Fix add").await;
    assert!(out.status.success(), "{}{built}", stderr(&out));
    let id = built["id"].as_str().unwrap();
    let events = ns.events(id).await;
    let queued: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "review_queued")
        .collect();
    assert_eq!(queued.len(), 1, "{events:#?}");
    assert_eq!(events.last().unwrap()["type"], "ended");
    // The task's own worker runs the review once the task has ended.
    let review = queued[0]["task_id"].as_str().unwrap();
    let done = ns
        .wait_for(review, |t| {
            ["succeeded", "failed", "cancelled"].contains(&t["state"].as_str().unwrap())
        })
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["spec"]["review"]["task"], id);
    assert_eq!(done["summary"], "No findings. add adds now.");
}
