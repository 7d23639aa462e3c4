//! End to end: the real binary delegates a task to a scripted model over HTTP and hands back a
//! branch in the source repository.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn a_task_fixes_the_bug_and_hands_back_a_branch() {
    let repo = buggy_repo();
    let src = repo.path();
    // Uncommitted work of the person's own: the task must not see it, nor touch it.
    std::fs::write(src.join("notes.txt"), "mine\n").unwrap();
    let status_before = git(src, &["status", "--porcelain"]);
    let (ns, server) = Nightshift::with_script(fixing_script()).await;

    let out = ns
        .run(&[
            "run",
            "--repo",
            path_str(src),
            "--model",
            "openai:test-model",
            "--wait",
            "--json",
            "Fix",
            "the",
            "add",
            "function",
        ])
        .await;
    assert!(
        out.status.success(),
        "run failed: {}\n{}",
        stderr(&out),
        stdout(&out)
    );
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(task["schema"], 1);
    assert_eq!(task["spec"]["prompt"], "Fix the add function");
    assert_eq!(task["turns"], 5);
    assert_eq!(task["usage"]["input_tokens"], 6000);
    assert_eq!(task["usage"]["cached_input_tokens"], 4200);
    assert_eq!(task["usage"]["output_tokens"], 120);
    // The sandbox's CPU time is measured, for the machine side of the cost.
    assert!(
        task["cost"]["cpu_seconds"]
            .as_f64()
            .is_some_and(|cpu| cpu >= 0.0),
        "{task}"
    );
    let id = task["id"].as_str().unwrap().to_string();
    let short = task["short_id"].as_str().unwrap();
    let branch = task["branch"].as_str().unwrap();
    assert_eq!(branch, format!("nightshift/{short}-fix-the-add-function"));

    // The fix is on the branch in the source repository; the person's checkout is untouched.
    assert_eq!(
        git(src, &["show", &format!("{branch}:calc.sh")])
            .lines()
            .nth(2)
            .unwrap(),
        "add() { echo $(($1 + $2)); }"
    );
    assert_eq!(
        git(src, &["rev-parse", branch]),
        task["head_commit"].as_str().unwrap()
    );
    assert_eq!(
        git(src, &["log", "-1", "--format=%s", branch]),
        "Fix add: it subtracted"
    );
    assert!(
        git(src, &["log", "-1", "--format=%b", branch]).contains(&format!("Nightshift-Task: {id}"))
    );
    assert_eq!(git(src, &["symbolic-ref", "--short", "HEAD"]), "main");
    assert_eq!(git(src, &["status", "--porcelain"]), status_before);
    assert!(!git(src, &["show", &format!("{branch}:calc.sh")]).is_empty());
    assert!(
        git(src, &["ls-tree", "--name-only", branch])
            .lines()
            .all(|f| f != "notes.txt")
    );

    // `diff` prints the change as a patch.
    let diff = ns.run(&["diff", short]).await;
    assert!(diff.status.success(), "{}", stderr(&diff));
    let patch = stdout(&diff);
    assert!(
        patch.contains("-add() { echo $(($1 - $2)); }")
            && patch.contains("+add() { echo $(($1 + $2)); }"),
        "{patch}"
    );

    // The event log tells the whole story, in order, without gaps.
    let events = ns.events(&id).await;
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"queued"));
    assert_eq!(kinds.last(), Some(&"ended"));
    for kind in [
        "claimed",
        "checked_out",
        "sandbox_started",
        "model_request",
        "model_response",
        "tool_started",
        "agent_finished",
        "committed",
    ] {
        assert!(kinds.contains(&kind), "no {kind} event in {kinds:?}");
    }
    let test_runs: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "tool_finished" && e["tool"] == "shell")
        .collect();
    assert_eq!(test_runs.len(), 2);
    assert_eq!(test_runs[0]["exit_code"], 1);
    assert!(
        test_runs[0]["output"]
            .as_str()
            .unwrap()
            .contains("FAIL: add 2 3 gave -1")
    );
    assert_eq!(test_runs[1]["exit_code"], 0);
    assert!(test_runs[1]["output"].as_str().unwrap().contains("PASS"));
    let checkout = events.iter().find(|e| e["type"] == "checked_out").unwrap();
    assert!(
        checkout["note"]
            .as_str()
            .unwrap()
            .contains("uncommitted changes"),
        "{checkout}"
    );

    // Human logs render the same story.
    let logs = ns.run(&["logs", short]).await;
    let text = stdout(&logs);
    assert!(
        text.contains("FAIL: add 2 3 gave -1")
            && text.contains("committed")
            && text.contains("ended"),
        "{text}"
    );

    // What went over the wire: the real protocol, tool results fed back.
    let requests = server.requests();
    assert_eq!(requests.len(), 5);
    let first = &requests[0];
    assert_eq!(first["model"], "test-model");
    assert_eq!(first["messages"][0]["role"], "system");
    assert_eq!(
        first["messages"][1],
        json!({"role": "user", "content": "Fix the add function"})
    );
    let tools: Vec<&str> = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    for tool in [
        "shell",
        "read_file",
        "write_file",
        "edit_file",
        "apply_patch",
        "search",
        "list_files",
        "update_plan",
        "finish",
    ] {
        assert!(tools.contains(&tool), "tool {tool} not offered: {tools:?}");
    }
    let second = requests[1]["messages"].as_array().unwrap();
    let tool_result = second.iter().find(|m| m["role"] == "tool").unwrap();
    assert!(
        tool_result["content"]
            .as_str()
            .unwrap()
            .contains("add() { echo $(($1 - $2)); }")
    );
    // The prefix (system prompt and tools) is byte-stable across turns, for prompt caching.
    for request in &requests[1..] {
        assert_eq!(request["messages"][0], first["messages"][0]);
        assert_eq!(request["tools"], first["tools"]);
    }

    // show and ls agree.
    let shown = ns.json(&["show", &id, "--json"]).await;
    assert_eq!(shown, task);
    let listed = ns.json(&["ls", "--json"]).await;
    assert_eq!(listed[0]["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn run_without_wait_returns_at_once_and_leaves_no_process_behind() {
    let repo = buggy_repo();
    let (ns, _server) = Nightshift::with_script(fixing_script()).await;
    let out = ns
        .run(&[
            "run",
            "--repo",
            path_str(repo.path()),
            "--model",
            "openai:m",
            "fix add",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    assert_eq!(id.len(), 26, "run should print the task id: {id:?}");
    assert!(stderr(&out).contains("nightshift logs --follow"));

    // Following the log ends by itself when the task does.
    let follow = ns.run(&["logs", "--follow", &id]).await;
    assert!(follow.status.success());
    assert!(stdout(&follow).contains("succeeded"), "{}", stdout(&follow));
    let task = ns.wait_for(&id, |t| t["state"] == "succeeded").await;
    assert!(task["branch"].is_string());

    // The detached worker exits once the task has ended.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !processes_with(&format!("__run-task {id}")).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker of {id} is still running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log =
        std::fs::read_to_string(ns.home.path().join("workers").join(format!("{id}.log"))).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_offline_demo_runs_the_real_pipeline() {
    let ns = Nightshift::new("http://127.0.0.1:9");
    let dir = tempfile::tempdir().unwrap();
    let sample = dir.path().join("sample");
    let out = ns
        .run(&["demo", "--dir", path_str(&sample), "--json"])
        .await;
    assert!(out.status.success(), "{}\n{}", stderr(&out), stdout(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["state"], "succeeded");
    let branch = task["branch"].as_str().unwrap();
    let fixed = git(&sample, &["show", &format!("{branch}:fizzbuzz.sh")]);
    assert!(
        fixed.find("% 15").unwrap() < fixed.find("% 3").unwrap(),
        "{fixed}"
    );
    // The test really ran, before and after the fix.
    let events = ns.events(task["id"].as_str().unwrap()).await;
    let outputs: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "tool_finished" && e["tool"] == "shell")
        .map(|e| e["output"].as_str().unwrap())
        .collect();
    assert!(outputs[0].contains("FAIL"), "{outputs:?}");
    assert!(outputs[1].contains("PASS"), "{outputs:?}");
    // nightshift proved it itself: the declared check ran on the committed result.
    let check = events
        .iter()
        .find(|e| e["type"] == "command_finished" && e["phase"] == "check")
        .unwrap();
    assert_eq!(check["ok"], true, "{check}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_to_an_ended_task_continues_its_work_on_the_same_branch() {
    let repo = buggy_repo();
    let mut steps: Value = serde_json::to_value(fixing_script()).unwrap()["steps"].clone();
    steps.as_array_mut().unwrap().extend([
        json!({"reply": {"tool_calls": [{"name": "write_file", "arguments": {"path": "NOTES.md", "content": "add() adds.\n"}}]}}),
        json!({"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "Documented add"}}]}}),
    ]);
    let (ns, server) = Nightshift::with_script(script(steps)).await;
    let first = ns
        .run(&[
            "run",
            "--repo",
            path_str(repo.path()),
            "--model",
            "openai:m",
            "--wait",
            "--json",
            "fix add",
        ])
        .await;
    assert!(first.status.success(), "{}", stderr(&first));
    let first: Value = serde_json::from_slice(&first.stdout).unwrap();
    let branch = first["branch"].as_str().unwrap().to_string();
    let first_head = first["head_commit"].as_str().unwrap().to_string();

    let said = ns
        .run(&[
            "say",
            first["id"].as_str().unwrap(),
            "Also",
            "document",
            "add",
        ])
        .await;
    assert!(said.status.success(), "{}", stderr(&said));
    assert!(
        stderr(&said).contains("follow-up task"),
        "{}",
        stderr(&said)
    );
    let follow_up_id = ns.follow_up_started(first["id"].as_str().unwrap()).await;
    let follow_up = ns
        .wait_for(&follow_up_id, |t| t["state"] == "succeeded")
        .await;
    assert_eq!(follow_up["spec"]["follows"], first["id"]);
    assert_eq!(
        follow_up["branch"].as_str().unwrap(),
        branch,
        "the same branch continues"
    );
    // The branch moved forward: the fix, then the notes on top of it.
    assert_eq!(
        git(repo.path(), &["rev-parse", &format!("{branch}~1")]),
        first_head
    );
    assert_eq!(
        git(repo.path(), &["show", &format!("{branch}:NOTES.md")]),
        "add() adds."
    );
    // The follow-up's agent was told what came before.
    let context = server.requests()[5]["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        context.contains("fix add")
            && context.contains("Fix add: it subtracted")
            && context.ends_with("Also document add"),
        "{context}"
    );
}
