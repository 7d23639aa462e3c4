//! Plan mode end to end: a read-only planner reads the repository, asks the person a question
//! and waits for the answer, then submits a plan of subtasks; the plan is versioned by edits
//! and approved once. The model is the scripted server over loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};

fn call(name: &str, arguments: Value) -> Value {
    json!({"reply": {"tool_calls": [{"name": name, "arguments": arguments}]}})
}

fn plan() -> Value {
    json!({
        "goal": "calc.sh adds and subtracts, with notes",
        "constraints": ["keep calc.sh POSIX sh"],
        "acceptance": [{"name": "test", "run": "sh test.sh"}],
        "subtasks": [
            {"name": "fix-add", "prompt": "Make add add.", "paths": ["calc.sh"]},
            {"name": "notes", "prompt": "Write NOTES.md about calc.sh.", "paths": ["NOTES.md"]},
            {"name": "test-sub", "prompt": "Test sub in test.sh.", "paths": ["test.sh"], "depends_on": ["fix-add"]}
        ]
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_planner_asks_waits_for_the_answer_and_its_plan_is_edited_and_approved() {
    let repo = buggy_repo_with_config("[checks]\ntest = \"sh test.sh\"\n");
    let (ns, model) = Nightshift::with_script(script(json!([
        call("read_file", json!({"path": "calc.sh"})),
        call(
            "write_file",
            json!({"path": "calc.sh", "content": "hacked"})
        ),
        call("shell", json!({"command": "echo hacked > calc.sh"})),
        call("ask", json!({"question": "Should sub be added as well?"})),
        call("submit_plan", plan()),
    ])))
    .await;
    let out = ns
        .run(&[
            "plan",
            "--repo",
            path_str(repo.path()),
            "--model",
            "openai:m",
            "Fix calc.sh and document it",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();

    // The question: the task waits for the answer.
    let waiting = ns.wait_for(&id, |task| task["state"] == "waiting").await;
    assert_eq!(waiting["spec"]["plan"], true);
    let events = ns.events(&id).await;
    let asked: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "question_asked")
        .collect();
    assert_eq!(asked.len(), 1, "{events:#?}");
    assert_eq!(asked[0]["question"], "Should sub be added as well?");
    let served = model.served();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        model.served(),
        served,
        "the model is not asked while it waits"
    );
    let logs = ns.run(&["logs", &id]).await;
    assert!(
        stdout(&logs).contains("nightshift say ID ANSWER"),
        "{}",
        stdout(&logs)
    );

    let said = ns.run(&["say", &id, "Yes, add sub too."]).await;
    assert!(said.status.success(), "{}", stderr(&said));
    let done = ns
        .wait_for(&id, |task| {
            ["succeeded", "failed", "cancelled"].contains(&task["state"].as_str().unwrap())
        })
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(done["branch"].is_null(), "a plan changes nothing: {done}");
    assert!(
        done["summary"]
            .as_str()
            .unwrap()
            .starts_with("Plan version 1: calc.sh adds and subtracts, with notes (3 subtask(s))"),
        "{done}"
    );
    // The answer came back as the result of the `ask` call; the workspace was read-only and
    // the write tools were not there.
    let requests = model.requests();
    let last = requests.last().unwrap().to_string();
    assert!(
        last.contains("The person answered:\\nYes, add sub too."),
        "{last}"
    );
    let tools: Vec<&str> = requests[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tool| tool["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        tools,
        [
            "shell",
            "read_file",
            "search",
            "list_files",
            "ask",
            "submit_plan"
        ]
    );
    let outputs = shell_outputs(&ns.events(&id).await);
    assert!(
        outputs
            .iter()
            .any(|output| output.contains("Read-only file system")),
        "{outputs:?}"
    );
    assert!(git(repo.path(), &["show", "HEAD:calc.sh"]).contains("$(($1 - $2))"));
    let states: Vec<String> = ns
        .events(&id)
        .await
        .iter()
        .filter(|e| e["type"] == "state_changed")
        .map(|e| e["state"].as_str().unwrap().to_string())
        .collect();
    let waited = states.iter().position(|s| s == "waiting").unwrap();
    assert_eq!(states[waited + 1], "running", "{states:?}");

    // Version 1, by the planner.
    let shown = ns.json(&["plan", "show", &id, "--json"]).await;
    assert_eq!(shown["versions"].as_array().unwrap().len(), 1);
    assert_eq!(shown["versions"][0]["author"], "planner");
    assert_eq!(shown["versions"][0]["plan"], plan());
    assert!(shown["approved"].is_null());
    let text = ns.run(&["plan", "show", &id]).await;
    let text = stdout(&text);
    assert!(text.contains("version 1 of 1 by planner"), "{text}");
    assert!(text.contains("3. test-sub (after fix-add)"), "{text}");

    // Edits: from a file, then in an "editor"; bad ones change nothing.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plan.json");
    let mut edited = plan();
    edited["subtasks"].as_array_mut().unwrap().remove(1);
    std::fs::write(&file, edited.to_string()).unwrap();
    let out = ns
        .run(&["plan", "edit", &id, "--file", path_str(&file)])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("plan version 2 stored"),
        "{}",
        stdout(&out)
    );
    std::fs::write(&file, "{not json").unwrap();
    let out = ns
        .run(&["plan", "edit", &id, "--file", path_str(&file)])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not valid JSON of a plan")
            && stderr(&out).contains("nothing was changed"),
        "{}",
        stderr(&out)
    );
    let mut cyclic = plan();
    cyclic["subtasks"][0]["depends_on"] = json!(["test-sub"]);
    std::fs::write(&file, cyclic.to_string()).unwrap();
    let out = ns
        .run(&["plan", "edit", &id, "--file", path_str(&file)])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("round in a circle"),
        "{}",
        stderr(&out)
    );
    let out = ns
        .command(&["plan", "edit", &id])
        .env("VISUAL", "sed -i s/fix-add/fix-add-first/g")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = ns.json(&["plan", "show", &id, "--json"]).await;
    let versions = shown["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 3, "{shown}");
    assert_eq!(
        versions[2]["plan"]["subtasks"][1]["depends_on"],
        json!(["fix-add-first"])
    );
    assert_ne!(versions[2]["author"], "planner");

    // Approval: a version that exists, once; then the plan no longer changes.
    let out = ns.run(&["plan", "approve", &id, "--version", "9"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no version 9"), "{}", stderr(&out));
    let out = ns.run(&["plan", "approve", &id, "--version", "2"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("plan version 2 approved"),
        "{}",
        stdout(&out)
    );
    for args in [
        vec!["plan", "approve", &id],
        vec!["plan", "edit", &id, "--file", path_str(&file)],
    ] {
        let out = ns.run(&args).await;
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("approved already (version 2)"),
            "{}",
            stderr(&out)
        );
    }
    let shown = ns.json(&["plan", "show", &id, "--json"]).await;
    assert_eq!(shown["approved"], 2);
    let events = ns.events(&id).await;
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "plan_approved" && e["version"] == 2)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_commands_refuse_what_is_not_a_plan() {
    let repo = buggy_repo();
    let (ns, _model) = Nightshift::with_script(fixing_script()).await;
    let (out, task) = ns.wait_task(repo.path(), "Fix add").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let id = task["id"].as_str().unwrap();
    let out = ns.run(&["plan", "show", id]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not a planning task"),
        "{}",
        stderr(&out)
    );
}
