//! Best-of-N end to end: `run --attempts N` runs N attempts as tasks of their own, each verified
//! by the checks; they are ranked by checks passed, then a review of each, then the smaller
//! diff, and the best one's branch becomes the task's. Each model has its own script on the
//! scripted server, so attempts that run at the same time each get theirs in order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod forge_support;

use common::server::Server;
use common::*;
use forge_support::*;
use nightshift_scripted_model::Script;
use serde_json::{Value, json};

fn call(name: &str, arguments: Value) -> Value {
    json!({"reply": {"tool_calls": [{"name": name, "arguments": arguments}]}})
}

fn edit(new: &str) -> Value {
    call(
        "edit_file",
        json!({"path": "calc.sh", "old_string": "$(($1 - $2))", "new_string": new}),
    )
}

fn review(summary: &str, findings: Value) -> Value {
    call(
        "submit_review",
        json!({"summary": summary, "findings": findings}),
    )
}

/// One script per model.
fn by_model(models: Value) -> Script {
    Script::from_json(&json!({"steps": [], "models": models}).to_string()).unwrap()
}

fn run_attempts(repo: &std::path::Path, models: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["run".into(), "--repo".into(), path_str(repo).into()];
    for model in models {
        args.extend(["--model".into(), (*model).into()]);
    }
    args.extend(["--wait".into(), "--json".into(), "Fix add".into()]);
    args
}

#[tokio::test(flavor = "multi_thread")]
async fn best_of_three_where_only_one_passes_the_checks_takes_that_one() {
    let repo = buggy_repo_with_config("[checks]\ntest = \"sh test.sh\"\n");
    let (ns, _model) = Nightshift::with_script(by_model(json!({
        // Multiplies: 2 * 3 is not 5.
        "a": [edit("$(($1 * $2))"), finish("Fix add")],
        "b": [edit("$(($1 + $2))"), finish("Fix add: it subtracted")],
        // Changes nothing: the checks fail on the tree it started from.
        "c": [finish("Nothing to do")],
    })))
    .await;
    let args = run_attempts(repo.path(), &["openai:a", "openai:b", "openai:c"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ns.run(&args).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = task["id"].as_str().unwrap();
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(
        task["spec"]["attempts"],
        json!(["openai:a", "openai:b", "openai:c"])
    );

    let compared = ns.json(&["compare", id, "--json"]).await;
    assert_eq!(compared["ranked"], true, "{compared}");
    let attempts = compared["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    let best = &attempts[0];
    assert_eq!(best["model"], "openai:b", "{compared}");
    assert_eq!(best["state"], "succeeded");
    assert_eq!(best["checks_passed"], 1);
    assert_eq!(compared["chosen"], best["task_id"]);
    assert_eq!(
        compared["reason"],
        "it was the only attempt that succeeded (its checks passed)"
    );
    // One attempt that succeeded: no reviews were needed to choose.
    assert!(attempts.iter().all(|rank| rank["review"].is_null()));
    // The failing attempt with a branch comes before the one that changed nothing.
    assert_eq!(attempts[1]["model"], "openai:a");
    assert_eq!(attempts[1]["checks_failed"], 1);
    assert_eq!(attempts[2]["model"], "openai:c");

    // The best one's branch is the task's; the others keep theirs.
    let branch = task["branch"].as_str().unwrap();
    assert_eq!(best["branch"], branch);
    assert!(git(repo.path(), &["show", &format!("{branch}:calc.sh")]).contains("$(($1 + $2))"));
    let wrong = attempts[1]["branch"].as_str().unwrap();
    assert!(git(repo.path(), &["show", &format!("{wrong}:calc.sh")]).contains("$(($1 * $2))"));
    let diff = ns.run(&["diff", id]).await;
    assert!(
        stdout(&diff).contains("+add() { echo $(($1 + $2)); }"),
        "{}",
        stdout(&diff)
    );

    // Each attempt is a task of its own, linked to this one, verified on its own.
    let chosen = ns
        .json(&["show", best["task_id"].as_str().unwrap(), "--json"])
        .await;
    assert_eq!(chosen["spec"]["attempt_of"]["task"], id);
    assert_eq!(chosen["spec"]["attempt_of"]["index"], 1);
    let events = ns.events(id).await;
    let queued: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "attempt_queued")
        .collect();
    assert_eq!(queued.len(), 3, "{events:#?}");
    let ended = events.last().unwrap();
    assert_eq!(ended["type"], "ended");
    // The task's usage is its attempts' together.
    let mut output_tokens = 0;
    for rank in attempts {
        let attempt = ns
            .json(&["show", rank["task_id"].as_str().unwrap(), "--json"])
            .await;
        output_tokens += attempt["usage"]["output_tokens"].as_u64().unwrap();
    }
    assert!(output_tokens > 0);
    assert_eq!(task["usage"]["output_tokens"], output_tokens, "{task}");
    let summary = task["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("Fix add: it subtracted") && summary.contains("Best of 3: attempt 2"),
        "{summary}"
    );

    let listed = stdout(&ns.run(&["ls"]).await);
    let lines: Vec<&str> = listed.lines().collect();
    let at = lines
        .iter()
        .position(|line| line.contains("best of 3: Fix add"))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(lines[at + 1].contains("└ attempt 1 (openai:a)"), "{listed}");
    assert!(
        lines[at + 3].contains("└ (no changes) attempt 3 (openai:c)"),
        "{listed}"
    );

    let text = ns.run(&["compare", id]).await;
    assert!(text.status.success(), "{}", stderr(&text));
    assert!(
        stdout(&text).contains("only attempt that succeeded"),
        "{}",
        stdout(&text)
    );
    let once = ns
        .run(&["compare", best["task_id"].as_str().unwrap()])
        .await;
    assert_eq!(once.status.code(), Some(2), "{}", stderr(&once));
    assert!(
        stderr(&once).contains("it is attempt 2 of"),
        "{}",
        stderr(&once)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn when_several_pass_a_review_of_each_outweighs_the_smaller_diff() {
    let repo = buggy_repo_with_config("[checks]\ntest = \"sh test.sh\"\n");
    let (ns, model) = Nightshift::with_script(by_model(json!({
        // The smallest diff, which its review finds wrong.
        "a": [
            edit("$(($1 + $2))"),
            finish("Fix add"),
            review("add is fixed, but the overflow case is not handled.", json!([
                {"path": "calc.sh", "line": 3, "severity": "critical", "problem": "overflows past 2^63"}
            ])),
        ],
        // A larger diff that its review finds fine.
        "b": [
            edit("$(($1 + $2))"),
            call("write_file", json!({"path": "NOTES.md", "content": "add sums.\n"})),
            finish("Fix add and note it"),
            review("Fine.", json!([])),
        ],
        "c": [edit("$(($1 * $2))"), finish("Fix add")],
    })))
    .await;
    let mut args = run_attempts(repo.path(), &["openai:a", "openai:b", "openai:c"]);
    args.splice(3..3, ["--attempts".to_string(), "3".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ns.run(&args).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = task["id"].as_str().unwrap();

    let compared = ns.json(&["compare", id, "--json"]).await;
    let attempts = compared["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["model"], "openai:b", "{compared}");
    assert_eq!(attempts[1]["model"], "openai:a", "{compared}");
    assert!(
        attempts[0]["lines_changed"].as_u64() > attempts[1]["lines_changed"].as_u64(),
        "{compared}"
    );
    assert_eq!(attempts[0]["findings"]["critical"], 0);
    assert_eq!(attempts[1]["findings"]["critical"], 1);
    assert_eq!(
        compared["reason"],
        "its review found less (no findings, against 1 critical)"
    );
    // The failed attempt was not reviewed.
    assert!(attempts[2]["review"].is_null(), "{compared}");
    assert_eq!(task["branch"], attempts[0]["branch"]);

    // Each review was a review task of its attempt, read-only, with the attempt's model.
    let review = ns
        .json(&["show", attempts[1]["review"].as_str().unwrap(), "--json"])
        .await;
    assert_eq!(review["spec"]["review"]["task"], attempts[1]["task_id"]);
    assert_eq!(review["state"], "succeeded");
    let requests = model.requests();
    let reviews = requests
        .iter()
        .filter(|body| body.to_string().contains("submit_review"))
        .count();
    assert_eq!(reviews, 2, "two reviews asked the model");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_for_too_many_or_mismatched_attempts_is_refused_before_anything_runs() {
    let repo = buggy_repo();
    let (ns, model) = Nightshift::with_script(script(json!([]))).await;
    for (args, said) in [
        (
            vec!["--attempts", "9"],
            "9 attempts asked for; a task runs 2 to 8",
        ),
        (
            vec!["--attempts", "0"],
            "--attempts 0 asks for no attempt at all",
        ),
        (
            vec![
                "--attempts",
                "2",
                "--model",
                "openai:a",
                "--model",
                "openai:b",
                "--model",
                "openai:c",
            ],
            "3 models for 2 attempt(s)",
        ),
    ] {
        let mut full = vec!["run", "--repo", path_str(repo.path())];
        full.extend(args);
        full.push("Fix add");
        let out = ns.run(&full).await;
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(said), "{}", stderr(&out));
    }
    let listed = ns.json(&["ls", "--json"]).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
    assert_eq!(model.served(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_best_of_n_task_cancels_its_attempts() {
    let repo = buggy_repo_with_config("[checks]\ntest = \"sh test.sh\"\n");
    let slow = json!([{"reply": {"text": "Thinking.", "delay_ms": 120000}}]);
    let (ns, model) = Nightshift::with_script(by_model(json!({"a": slow, "b": slow}))).await;
    let out = ns
        .run(&[
            "run",
            "--repo",
            path_str(repo.path()),
            "--model",
            "openai:a",
            "--model",
            "openai:b",
            "Fix add",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    // Both attempts are waiting for the model at the same time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while model.served() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the attempts did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let out = ns.run(&["cancel", &id]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let task = ns.wait_for(&id, |task| task["state"] == "cancelled").await;
    assert!(task["branch"].is_null(), "{task}");
    let compared = ns.json(&["compare", &id, "--json"]).await;
    let attempts = compared["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{compared}");
    for attempt in attempts {
        let shown = ns
            .wait_for(attempt["task_id"].as_str().unwrap(), |task| {
                task["state"] == "cancelled"
            })
            .await;
        assert_eq!(shown["spec"]["attempt_of"]["task"], id.as_str());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn on_github_every_attempt_is_pushed_and_only_the_chosen_one_gets_the_pull_request() {
    const TOKEN: &str = "ghs-installation-token-4567";
    let git_server = GitHttp::start(TOKEN).await;
    let repo = buggy_repo_with_config("[checks]\ntest = \"sh test.sh\"\n");
    let url = git_server.serve(repo.path(), "acme/app");
    let GitHubApi {
        url: api, recorded, ..
    } = github_api(TOKEN).await;
    let (ns, _model) = Nightshift::with_script(by_model(json!({
        "a": [
            edit("$(($1 * $2))"),
            finish("Fix add"),
            // The follow-up on the task: it goes on from the chosen branch.
            call("write_file", json!({"path": "NOTES.md", "content": "add adds\n"})),
            finish("Document add"),
        ],
        "b": [edit("$(($1 + $2))"), finish("Fix add: it subtracted")],
    })))
    .await;
    add_github_repo(&ns, &url, TOKEN, &api).await;
    let out = ns
        .run(&[
            "run", "--repo", "acme/app", "--model", "openai:a", "--model", "openai:b", "--wait",
            "--json", "Fix add",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = task["id"].as_str().unwrap().to_string();
    let branch = task["branch"].as_str().unwrap().to_string();
    let compared = ns.json(&["compare", &id, "--json"]).await;
    let attempts = compared["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["model"], "openai:b", "{compared}");
    assert_eq!(attempts[0]["branch"], branch.as_str());

    // Both attempts' branches are on the remote.
    let bare = git_server.root.path().join("acme/app.git");
    for attempt in attempts {
        let name = attempt["branch"].as_str().unwrap();
        assert!(!git(&bare, &["rev-parse", name]).is_empty());
    }
    // One pull request, of the chosen branch, with its checks in the body, opened by the task.
    let calls = recorded.lock().unwrap().clone();
    let creations: Vec<_> = calls
        .iter()
        .filter(|(m, p, _)| m == "POST" && p == "/repos/acme/app/pulls")
        .collect();
    assert!(!creations.is_empty(), "{calls:#?}");
    for (_, _, body) in &creations {
        assert_eq!(body["head"], branch.as_str(), "{calls:#?}");
    }
    let body = creations.last().unwrap().2["body"].as_str().unwrap();
    assert!(body.contains("| test | `sh test.sh` | passed"), "{body}");
    assert!(body.contains(&id), "{body}");
    let events = ns.events(&id).await;
    assert_eq!(of_type(&events, "pull_request").len(), 1, "{events:#?}");
    for attempt in attempts {
        let events = ns.events(attempt["task_id"].as_str().unwrap()).await;
        assert!(of_type(&events, "pull_request").is_empty(), "{events:#?}");
        assert_eq!(of_type(&events, "branch_pushed").len(), 1, "{events:#?}");
    }

    // A follow-up on the task continues the chosen branch and updates its pull request.
    let said = ns.run(&["say", &id, "Also", "document", "add"]).await;
    assert!(said.status.success(), "{}", stderr(&said));
    let follow_up = ns.follow_up_started(&id).await;
    let done = ns
        .wait_for(&follow_up, |t| {
            ["succeeded", "failed", "cancelled"].contains(&t["state"].as_str().unwrap())
        })
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["branch"], branch.as_str());
    assert_eq!(
        git(&bare, &["show", &format!("{branch}:NOTES.md")]),
        "add adds"
    );
    assert!(git(&bare, &["show", &format!("{branch}:calc.sh")]).contains("$(($1 + $2))"));
    let events = ns.events(&follow_up).await;
    let updated = of_type(&events, "pull_request");
    assert_eq!(updated.len(), 1, "{events:#?}");
    assert_eq!(updated[0]["created"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_shuts_down_hands_the_attempts_back_and_the_next_queues_none_twice() {
    let repo = buggy_repo_with_config("[checks]\ntest = \"sh test.sh\"\n");
    let slow = json!({"reply": {"text": "Thinking.", "delay_ms": 120000}});
    let (ns, model) = Nightshift::with_script(by_model(json!({
        "a": [slow, edit("$(($1 * $2))"), finish("Fix add")],
        "b": [slow, edit("$(($1 + $2))"), finish("Fix add: it subtracted")],
    })))
    .await;
    ns.serve_repo(repo.path()).await;
    let token = ns
        .run(&["token", "create", "--scope", "submit", "--name", "t"])
        .await;
    let token = stdout(&token).trim().to_string();
    // A server that only queues: the workers below run the tasks.
    let server = Server::start(&ns, 0);
    let mut submit = ns.command(&[
        "run",
        "--repo",
        path_str(repo.path()),
        "--model",
        "openai:a",
        "--model",
        "openai:b",
        "--json",
        "Fix add",
    ]);
    submit
        .env("NIGHTSHIFT_SERVER", &server.url)
        .env("NIGHTSHIFT_TOKEN", &token);
    let out = tokio::task::spawn_blocking(move || submit.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = task["id"].as_str().unwrap().to_string();

    // One worker runs the task and both its attempts, then shuts down mid-way.
    let first = ns.worker("0s");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while model.served() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the attempts did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let status = Nightshift::stop_worker(first).await;
    assert!(status.success(), "{status:?}");
    let events = ns.events(&id).await;
    assert!(
        events.iter().any(|e| e["type"] == "released"),
        "{events:#?}"
    );

    // The next worker takes it over and finishes it.
    let mut second = ns.worker("30s");
    let done = ns
        .wait_for(&id, |t| {
            ["succeeded", "failed", "cancelled"].contains(&t["state"].as_str().unwrap())
        })
        .await;
    let _ = second.kill();
    let _ = second.wait();
    assert_eq!(done["state"], "succeeded", "{done}");
    let events = ns.events(&id).await;
    let queued: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "attempt_queued")
        .collect();
    assert_eq!(queued.len(), 2, "{events:#?}");
    let compared = ns.json(&["compare", &id, "--json"]).await;
    assert_eq!(compared["attempts"][0]["model"], "openai:b", "{compared}");
    assert_eq!(compared["attempts"].as_array().unwrap().len(), 2);
    // Each attempt was handed back once and then run to its end.
    for attempt in compared["attempts"].as_array().unwrap() {
        let events = ns.events(attempt["task_id"].as_str().unwrap()).await;
        let released = events.iter().filter(|e| e["type"] == "released").count();
        assert_eq!(released, 1, "{events:#?}");
    }
}
