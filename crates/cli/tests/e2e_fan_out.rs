//! An approved plan's run end to end: independent subtasks run side by side, a dependent one
//! starts from its dependency's merged result, two that declare the same file are not run
//! side by side, a merge that conflicts starts a resolution task, and every subtask's branch
//! is merged into one plan branch with the checks run after each merge. Each conversation has
//! its own script on the scripted server, told apart by its prompt.

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

fn write(path: &str, content: &str) -> Value {
    call("write_file", json!({"path": path, "content": content}))
}

/// A write that answers only after `ms`: the subtask is still running meanwhile.
fn slow_write(path: &str, content: &str, ms: u64) -> Value {
    json!({"reply": {"delay_ms": ms, "tool_calls": [{"name": "write_file", "arguments": {"path": path, "content": content}}]}})
}

fn subtask(name: &str, paths: &[&str], depends_on: &[&str]) -> Value {
    json!({"name": name, "prompt": format!("Do the {name} part."), "paths": paths, "depends_on": depends_on})
}

fn route(contains: &str, steps: Value) -> Value {
    json!({"contains": contains, "steps": steps})
}

/// Runs `command` to its end off the async runtime (the scripted model runs on it).
async fn output(mut command: std::process::Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

/// The time of a task's first event of type `kind`.
async fn time_of(ns: &Nightshift, id: &str, kind: &str) -> jiff::Timestamp {
    let events = ns.events(id).await;
    let event = events
        .iter()
        .find(|e| e["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {events:#?}"));
    event["at"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approved_plan_runs_its_subtasks_and_merges_them_into_one_checked_branch() {
    let repo = repo_with(&[
        (".nightshift.toml", "[checks]\ntest = \"sh test.sh\"\n"),
        ("test.sh", "#!/bin/sh\ntest \"$(cat base.txt)\" = base\n"),
        ("base.txt", "base\n"),
        ("NOTES.md", "notes\n"),
    ]);
    let plan = json!({
        "goal": "five parts",
        "acceptance": [{"name": "all", "run": "test -f a.txt && test -f b.txt && test -f c.txt && grep -q epsilon NOTES.md"}],
        "subtasks": [
            subtask("alpha", &["a.txt"], &[]),
            subtask("beta", &["b.txt"], &[]),
            subtask("gamma", &["c.txt"], &["alpha"]),
            subtask("delta", &["NOTES.md"], &[]),
            subtask("epsilon", &["NOTES.md"], &[]),
        ]
    });
    let script = json!({"steps": [], "routes": [
        route("The request to plan", json!([call("submit_plan", plan.clone())])),
        route("resolve a merge", json!([
            call("shell", json!({"command": "grep -c '<<<<<<<' NOTES.md"})),
            write("NOTES.md", "notes\ndelta\nepsilon\n"),
            finish("Keep both"),
        ])),
        // alpha also widens the network in the configuration: gamma, which starts from the
        // plan branch, must not take that from an agent.
        route("Your subtask: alpha", json!([
            slow_write("a.txt", "alpha\n", 1500),
            write(".nightshift.toml", "[checks]\ntest = \"sh test.sh\"\n\n[network]\nagent = [\"example.com\"]\n"),
            finish("a"),
        ])),
        route("Your subtask: beta", json!([slow_write("b.txt", "beta\n", 1500), finish("b")])),
        route("Your subtask: gamma", json!([
            call("shell", json!({"command": "cat a.txt"})),
            write("c.txt", "gamma\n"),
            finish("c"),
        ])),
        route("Your subtask: delta", json!([write("NOTES.md", "notes\ndelta\n"), finish("d")])),
        route("Your subtask: epsilon", json!([write("NOTES.md", "notes\nepsilon\n"), finish("e")])),
    ]});
    let (mut ns, _model) =
        Nightshift::with_script(Script::from_json(&script.to_string()).unwrap()).await;
    ns.env.push((
        "NIGHTSHIFT_LOG".into(),
        "debug,sqlx=debug,hyper=info,h2=info".into(),
    ));
    let out = ns
        .run(&[
            "plan",
            "--repo",
            path_str(repo.path()),
            "--model",
            "openai:m",
            "--wait",
            "--json",
            "Do five things",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let planned: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stored = &planned["plan"]["versions"][0]["plan"];
    assert_eq!(stored["goal"], plan["goal"]);
    assert_eq!(stored["subtasks"][2]["depends_on"], json!(["alpha"]));
    let plan_id = planned["task"]["id"].as_str().unwrap().to_string();

    let out = ns.run(&["plan", "approve", &plan_id]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    let run_id = printed.lines().nth(1).unwrap().trim().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let run = loop {
        let run = ns.json(&["show", &run_id, "--json"]).await;
        if ["succeeded", "failed", "cancelled"].contains(&run["state"].as_str().unwrap()) {
            break run;
        }
        if std::time::Instant::now() > deadline {
            let events = ns.events(&run_id).await;
            let kinds: Vec<String> = events
                .iter()
                .map(|e| {
                    format!(
                        "{} {} {}",
                        e["at"],
                        e["type"],
                        e.get("name")
                            .or(e.get("message"))
                            .cloned()
                            .unwrap_or_default()
                    )
                })
                .collect();
            let mut logs = String::new();
            for entry in std::fs::read_dir(ns.home.path().join("workers")).unwrap() {
                let path = entry.unwrap().path();
                logs.push_str(&format!(
                    "== {}\n{}\n",
                    path.display(),
                    std::fs::read_to_string(&path).unwrap_or_default()
                ));
            }
            let listed = ns.run(&["ls"]).await;
            panic!("stuck: {run}\n{kinds:#?}\n{}\n{logs}", stdout(&listed));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let events = ns.events(&run_id).await;
    if run["state"] != "succeeded" {
        let log = std::fs::read_to_string(
            ns.home
                .path()
                .join(format!("workers/{}.log", run["id"].as_str().unwrap())),
        )
        .unwrap_or_default();
        let kinds: Vec<String> = events
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["type"],
                    e.get("name")
                        .or(e.get("message"))
                        .cloned()
                        .unwrap_or_default()
                )
            })
            .collect();
        panic!("{run}\n{kinds:#?}\nworker log:\n{log}");
    }
    assert_eq!(run["spec"]["plan_run"]["plan"], plan_id.as_str());

    // One plan branch with every part, the conflict resolved.
    let branch = run["branch"].as_str().unwrap();
    let show = |path: &str| git(repo.path(), &["show", &format!("{branch}:{path}")]);
    assert_eq!(show("a.txt"), "alpha");
    assert_eq!(show("b.txt"), "beta");
    assert_eq!(show("c.txt"), "gamma");
    assert_eq!(show("NOTES.md"), "notes\ndelta\nepsilon");

    let of = |kind: &str| -> Vec<&Value> { events.iter().filter(|e| e["type"] == kind).collect() };
    let queued = of("subtask_queued");
    assert_eq!(queued.len(), 5, "{events:#?}");
    let task_of = |name: &str| -> String {
        queued.iter().find(|e| e["name"] == name).unwrap()["task_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(of("subtask_merged").len(), 5, "{events:#?}");
    // The checks ran after each merge: the repository's and the plan's acceptance check.
    let checks: Vec<&Value> = of("command_finished")
        .into_iter()
        .filter(|e| e["phase"] == "check")
        .collect();
    assert_eq!(checks.len(), 5 * 2, "{checks:#?}");
    assert!(
        checks
            .iter()
            .filter(|e| e["name"] == "test")
            .all(|e| e["ok"] == true)
    );
    let acceptance: Vec<&&Value> = checks
        .iter()
        .filter(|e| e["name"] == "acceptance: all")
        .collect();
    assert_eq!(acceptance.last().unwrap()["ok"], true);

    // The merge of one of delta and epsilon conflicted, and a resolution task resolved it.
    let conflicts = of("merge_conflict");
    assert_eq!(conflicts.len(), 1, "{events:#?}");
    assert_eq!(conflicts[0]["files"], json!(["NOTES.md"]));
    let resolution = conflicts[0]["resolution"].as_str().unwrap();
    let resolved = ns.json(&["show", resolution, "--json"]).await;
    assert_eq!(resolved["state"], "succeeded", "{resolved}");
    let conflicted = conflicts[0]["name"].as_str().unwrap();
    let conflicted_task = ns.json(&["show", &task_of(conflicted), "--json"]).await;
    assert_eq!(resolved["spec"]["merge"], conflicted_task["branch"]);
    let markers = shell_outputs(&ns.events(resolution).await);
    assert_eq!(markers[0].trim().lines().next(), Some("1"), "{markers:?}");

    // alpha and beta ran side by side; gamma after alpha, from its merged result; delta and
    // epsilon, which declare the same file, one after the other.
    let (alpha, beta, gamma) = (task_of("alpha"), task_of("beta"), task_of("gamma"));
    let started = |id: String| {
        let ns = &ns;
        async move { time_of(ns, &id, "claimed").await }
    };
    let ended = |id: String| {
        let ns = &ns;
        async move { time_of(ns, &id, "ended").await }
    };
    assert!(started(alpha.clone()).await < ended(beta.clone()).await);
    assert!(started(beta.clone()).await < ended(alpha.clone()).await);
    assert!(started(gamma.clone()).await > ended(alpha.clone()).await);
    let gamma_events = ns.events(&gamma).await;
    let outputs = shell_outputs(&gamma_events);
    assert!(outputs[0].contains("alpha"), "{outputs:?}");
    assert!(
        gamma_events.iter().any(|e| e["type"] == "warning"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("gets no secrets and no network")),
        "{gamma_events:#?}"
    );
    let (delta, epsilon) = (task_of("delta"), task_of("epsilon"));
    let apart = started(epsilon.clone()).await > ended(delta.clone()).await
        || started(delta.clone()).await > ended(epsilon.clone()).await;
    assert!(apart, "delta and epsilon ran side by side");

    // Each subtask is a task of the run; the run's branch is the plan branch.
    let shown = ns.json(&["show", &alpha, "--json"]).await;
    assert_eq!(shown["spec"]["subtask_of"]["run"], run_id.as_str());
    assert_eq!(shown["spec"]["subtask_of"]["name"], "alpha");
    let approved = ns.json(&["plan", "show", &plan_id, "--json"]).await;
    assert_eq!(approved["approved"], 1);

    // `ls` puts the run under its plan and the subtasks under the run; `show` of the run
    // lists them, and its cost is theirs.
    let listed = stdout(&ns.run(&["ls"]).await);
    let lines: Vec<&str> = listed.lines().collect();
    let at = lines
        .iter()
        .position(|line| line.contains("plan: Do five things"))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(
        lines[at + 1].contains("└ run of plan v1: Carry out the plan: five parts"),
        "{listed}"
    );
    let parts = lines[at + 2..]
        .iter()
        .filter(|line| line.contains("  └ subtask "))
        .count();
    assert_eq!(parts, 6, "five subtasks and a resolution: {listed}");
    let shown = stdout(&ns.run(&["show", &run_id]).await);
    assert!(shown.contains("Subtasks  5 queued, 5 merged"), "{shown}");
    assert!(shown.contains("alpha"), "{shown}");
    let run = ns.json(&["show", &run_id, "--json"]).await;
    assert!(run["usage"]["output_tokens"].as_u64().unwrap() > 0, "{run}");
    let plan_shown = stdout(&ns.run(&["show", &plan_id]).await);
    assert!(
        plan_shown.contains("version 1 approved; its run"),
        "{plan_shown}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn on_github_the_plan_branch_is_pushed_and_gets_the_one_pull_request() {
    const TOKEN: &str = "ghs-installation-token-8910";
    let git_server = GitHttp::start(TOKEN).await;
    let repo = repo_with(&[
        (".nightshift.toml", "[checks]\ntest = \"sh test.sh\"\n"),
        ("test.sh", "#!/bin/sh\ntrue\n"),
    ]);
    let url = git_server.serve(repo.path(), "acme/app");
    let GitHubApi {
        url: api, recorded, ..
    } = github_api(TOKEN).await;
    let plan = json!({
        "goal": "two files",
        "subtasks": [subtask("alpha", &["a.txt"], &[]), subtask("beta", &["b.txt"], &[])]
    });
    let script = json!({"steps": [], "routes": [
        route("The request to plan", json!([call("submit_plan", plan)])),
        route("Your subtask: alpha", json!([write("a.txt", "alpha\n"), finish("a")])),
        route("Your subtask: beta", json!([write("b.txt", "beta\n"), finish("b")])),
    ]});
    let (ns, _model) =
        Nightshift::with_script(Script::from_json(&script.to_string()).unwrap()).await;
    add_github_repo(&ns, &url, TOKEN, &api).await;
    let out = ns
        .run(&[
            "plan",
            "--repo",
            "acme/app",
            "--model",
            "openai:m",
            "--wait",
            "--json",
            "Two files",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let planned: Value = serde_json::from_slice(&out.stdout).unwrap();
    let plan_id = planned["task"]["id"].as_str().unwrap().to_string();
    let out = ns.run(&["plan", "approve", &plan_id]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let run_id = stdout(&out).lines().nth(1).unwrap().trim().to_string();
    let run = ns
        .wait_for(&run_id, |task| {
            ["succeeded", "failed", "cancelled"].contains(&task["state"].as_str().unwrap())
        })
        .await;
    assert_eq!(run["state"], "succeeded", "{run}");
    let branch = run["branch"].as_str().unwrap().to_string();

    // The plan branch is on the remote with both parts.
    let bare = git_server.root.path().join("acme/app.git");
    assert_eq!(git(&bare, &["show", &format!("{branch}:a.txt")]), "alpha");
    assert_eq!(git(&bare, &["show", &format!("{branch}:b.txt")]), "beta");
    // One pull request, of the plan branch, opened by the run; the subtasks opened none.
    let events = ns.events(&run_id).await;
    // Pushed after each merge, so that subtasks on other machines could start from it.
    assert_eq!(of_type(&events, "branch_pushed").len(), 2, "{events:#?}");
    assert_eq!(of_type(&events, "pull_request").len(), 1, "{events:#?}");
    let calls = recorded.lock().unwrap().clone();
    let creations: Vec<_> = calls
        .iter()
        .filter(|(m, p, _)| m == "POST" && p == "/repos/acme/app/pulls")
        .collect();
    assert!(!creations.is_empty(), "{calls:#?}");
    for (_, _, body) in &creations {
        assert_eq!(body["head"], branch.as_str(), "{calls:#?}");
    }
    for queued in of_type(&events, "subtask_queued") {
        let events = ns.events(queued["task_id"].as_str().unwrap()).await;
        assert!(of_type(&events, "pull_request").is_empty(), "{events:#?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_plan_run_cancels_its_subtasks() {
    let repo = repo_with(&[("README.md", "r\n")]);
    let plan = json!({"goal": "slow", "subtasks": [subtask("alpha", &["a.txt"], &[])]});
    let script = json!({"steps": [], "routes": [
        route("The request to plan", json!([call("submit_plan", plan)])),
        route("Your subtask: alpha", json!([{"reply": {"text": "Thinking.", "delay_ms": 120000}}])),
    ]});
    let (ns, model) =
        Nightshift::with_script(Script::from_json(&script.to_string()).unwrap()).await;
    let out = ns
        .run(&[
            "plan",
            "--repo",
            path_str(repo.path()),
            "--model",
            "openai:m",
            "--wait",
            "--json",
            "Slow",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let planned: Value = serde_json::from_slice(&out.stdout).unwrap();
    let out = ns
        .run(&["plan", "approve", planned["task"]["id"].as_str().unwrap()])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let run_id = stdout(&out).lines().nth(1).unwrap().trim().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while model.served() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the subtask did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let out = ns.run(&["cancel", &run_id]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    ns.wait_for(&run_id, |task| task["state"] == "cancelled")
        .await;
    let events = ns.events(&run_id).await;
    let queued = of_type(&events, "subtask_queued");
    assert_eq!(queued.len(), 1, "{events:#?}");
    ns.wait_for(queued[0]["task_id"].as_str().unwrap(), |task| {
        task["state"] == "cancelled"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_taken_over_by_another_worker_goes_on_from_its_plan_branch() {
    let repo = repo_with(&[
        (".nightshift.toml", "[checks]\ntest = \"true\"\n"),
        ("README.md", "r\n"),
    ]);
    let plan = json!({"goal": "two files", "subtasks": [
        subtask("alpha", &["a.txt"], &[]),
        subtask("beta", &["b.txt"], &[]),
    ]});
    let script = json!({"steps": [], "routes": [
        route("The request to plan", json!([call("submit_plan", plan)])),
        route("Your subtask: alpha", json!([write("a.txt", "alpha\n"), finish("a")])),
        // The first worker shuts down while beta waits for this answer.
        route("Your subtask: beta", json!([
            {"reply": {"text": "Thinking.", "delay_ms": 120000}},
            write("b.txt", "beta\n"),
            finish("b"),
        ])),
    ]});
    let (ns, _model) =
        Nightshift::with_script(Script::from_json(&script.to_string()).unwrap()).await;
    ns.serve_repo(repo.path()).await;
    let token = stdout(
        &ns.run(&["token", "create", "--scope", "submit", "--name", "t"])
            .await,
    )
    .trim()
    .to_string();
    // A server that only queues; the workers below run everything.
    let server = Server::start(&ns, 0);
    let remote = |args: &[&str]| {
        let mut command = ns.command(args);
        command
            .env("NIGHTSHIFT_SERVER", &server.url)
            .env("NIGHTSHIFT_TOKEN", &token);
        command
    };
    let first = ns.worker("0s");
    let out = output(remote(&[
        "plan",
        "--repo",
        path_str(repo.path()),
        "--model",
        "openai:m",
        "--wait",
        "--json",
        "Two files",
    ]))
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let planned: Value = serde_json::from_slice(&out.stdout).unwrap();
    let out = output(remote(&[
        "plan",
        "approve",
        planned["task"]["id"].as_str().unwrap(),
    ]))
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let run_id = stdout(&out).lines().nth(1).unwrap().trim().to_string();

    // alpha is merged and beta is running: the worker shuts down.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let events = ns.events(&run_id).await;
        let merged = events
            .iter()
            .any(|e| e["type"] == "subtask_merged" && e["name"] == "alpha");
        let beta_running = events
            .iter()
            .any(|e| e["type"] == "subtask_queued" && e["name"] == "beta");
        if merged && beta_running {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{events:#?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let status = Nightshift::stop_worker(first).await;
    assert!(status.success(), "{status:?}");
    let events = ns.events(&run_id).await;
    assert!(
        events.iter().any(|e| e["type"] == "released"),
        "{events:#?}"
    );

    // The next worker takes the run over, from the plan branch the first one left.
    let mut second = ns.worker("30s");
    let done = ns
        .wait_for(&run_id, |task| {
            ["succeeded", "failed", "cancelled"].contains(&task["state"].as_str().unwrap())
        })
        .await;
    let _ = second.kill();
    let _ = second.wait();
    let events = ns.events(&run_id).await;
    assert_eq!(done["state"], "succeeded", "{done}\n{events:#?}");
    let queued: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "subtask_queued")
        .collect();
    assert_eq!(queued.len(), 2, "nothing queued twice: {events:#?}");
    let branch = done["branch"].as_str().unwrap();
    assert_eq!(
        git(repo.path(), &["show", &format!("{branch}:a.txt")]),
        "alpha"
    );
    assert_eq!(
        git(repo.path(), &["show", &format!("{branch}:b.txt")]),
        "beta"
    );
}
