//! `nightshift repo`: registering, listing and forgetting the repositories a server serves;
//! `run --repo NAME` in local mode; tokens limited to registered repositories.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod forge_support;

use common::*;
use forge_support::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn repositories_are_registered_listed_named_by_run_and_forgotten() {
    let repo = buggy_repo();
    let ns = Nightshift::new("http://127.0.0.1:9/v1");

    let sub = repo.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let out = ns
        .run(&["repo", "add", path_str(&sub), "--name", "acme/app"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "acme/app");

    // Twice, or a bad name, or not a repository: exit 2, saying what was wrong.
    let plain = tempfile::tempdir().unwrap();
    for (args, says) in [
        (vec!["repo", "add", path_str(repo.path())], "already exists"),
        (
            vec!["repo", "add", path_str(repo.path()), "--name=../x"],
            "not a valid repository name",
        ),
        (
            vec!["repo", "add", path_str(plain.path())],
            "not a git repository",
        ),
    ] {
        let out = ns.run(&args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }

    let out = ns.run(&["repo", "ls", "--json"]).await;
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["name"], "acme/app");
    assert_eq!(listed[0]["location"], path_str(repo.path()));
    let out = ns.run(&["repo", "ls"]).await;
    assert!(stdout(&out).contains("acme/app"), "{}", stdout(&out));

    // `run --repo NAME` queues a task on its location (the model is unreachable: it fails
    // later, which does not matter here).
    let out = ns
        .run(&["run", "--repo", "acme/app", "--json", "fix it"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["spec"]["repo"], path_str(repo.path()));

    // Tokens may be limited to registered repositories only.
    let out = ns
        .run(&["token", "create", "--scope", "submit", "--repo", "nope"])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no repository is registered as `nope`"));
    let out = ns
        .run(&["token", "create", "--scope", "submit", "--repo", "acme/app"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("only for acme/app"),
        "{}",
        stderr(&out)
    );
    let out = ns.run(&["token", "ls", "--json"]).await;
    let tokens: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tokens[0]["repos"], serde_json::json!(["acme/app"]));

    let out = ns.run(&["repo", "rm", "acme/app"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ns.run(&["repo", "rm", "acme/app"]).await;
    assert_eq!(out.status.code(), Some(2));
    let out = ns.run(&["run", "--repo", "acme/app", "fix it"]).await;
    assert_eq!(out.status.code(), Some(2), "a name no longer resolves");
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_merges_a_finished_tasks_change_into_a_working_tree_or_changes_nothing() {
    let repo = buggy_repo();
    let (ns, _model) = Nightshift::with_script(fixing_script()).await;
    let (out, task) = ns.wait_task(repo.path(), "Fix add").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let id = task["id"].as_str().unwrap();

    // A clone with an unrelated uncommitted edit takes the change by a three-way merge.
    let clone = tempfile::tempdir().unwrap();
    git(clone.path(), &["clone", "-q", path_str(repo.path()), "."]);
    let test = clone.path().join("test.sh");
    let mine = format!("{}# my note\n", std::fs::read_to_string(&test).unwrap());
    std::fs::write(&test, &mine).unwrap();
    let out = ns
        .run(&["apply", id, "--repo", path_str(clone.path())])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "calc.sh");
    let merged = std::fs::read_to_string(clone.path().join("calc.sh")).unwrap();
    assert!(merged.contains("$(($1 + $2))"), "{merged}");
    assert_eq!(std::fs::read_to_string(&test).unwrap(), mine);
    assert_eq!(git(clone.path(), &["diff", "--cached", "--name-only"]), "");

    // Another whose edit touches the same line: nothing changes, the file is named.
    let other = tempfile::tempdir().unwrap();
    git(other.path(), &["clone", "-q", path_str(repo.path()), "."]);
    let calc = other.path().join("calc.sh");
    let conflicting = std::fs::read_to_string(&calc)
        .unwrap()
        .replace("$(($1 - $2))", "$(( $1 - $2 ))");
    std::fs::write(&calc, &conflicting).unwrap();
    let out = ns
        .run(&["apply", id, "--repo", path_str(other.path())])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("conflicts with the working tree in 1 file: calc.sh"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("nothing was changed"));
    assert_eq!(std::fs::read_to_string(&calc).unwrap(), conflicting);
}

/// A bare repository made from `repo`, as a remote to work on over `file://`.
fn bare_remote(repo: &std::path::Path) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    git(
        dir.path(),
        &["clone", "-q", "--bare", path_str(repo), "remote.git"],
    );
    let url = format!("file://{}/remote.git", dir.path().display());
    (dir, url)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_on_a_remote_repository_pushes_its_branch_and_the_next_starts_from_what_was_pushed_since()
 {
    let repo = buggy_repo();
    let (remote, url) = bare_remote(repo.path());
    let bare = remote.path().join("remote.git");
    let (ns, _model) = Nightshift::with_script(fixing_script()).await;

    let out = ns
        .run(&["run", "--repo", &url, "--wait", "--json", "Fix add"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["spec"]["repo"], url.as_str());
    let branch = task["branch"].as_str().unwrap().to_string();
    let events = ns.events(task["id"].as_str().unwrap()).await;
    let pushed = of_type(&events, "branch_pushed");
    assert_eq!(pushed.len(), 1, "{events:#?}");
    assert_eq!(pushed[0]["branch"], branch.as_str());
    // The remote has the branch, with the fix.
    let fixed = git(&bare, &["show", &format!("{branch}:calc.sh")]);
    assert!(fixed.contains("$(($1 + $2))"), "{fixed}");
    // Nothing of nightshift's reached the person's own clone: the work went to the remote.
    assert_eq!(git(repo.path(), &["branch", "--list", "nightshift/*"]), "");

    // Someone pushes to main; the next task starts from that commit, fetched into the mirror.
    let work = tempfile::tempdir().unwrap();
    git(work.path(), &["clone", "-q", &url, "."]);
    std::fs::write(work.path().join("NEWS"), "news\n").unwrap();
    git(work.path(), &["add", "NEWS"]);
    git(
        work.path(),
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@e",
            "commit",
            "-q",
            "-m",
            "news",
        ],
    );
    git(work.path(), &["push", "-q", "origin", "main"]);
    let news = git(work.path(), &["rev-parse", "HEAD"]);
    let out = ns
        .run(&["run", "--repo", &url, "--wait", "--json", "Fix add again"])
        .await;
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["base_commit"], news.as_str(), "{task}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_that_fails_keeps_the_work_on_the_mirrors_branch_and_says_so() {
    let repo = buggy_repo();
    let (remote, url) = bare_remote(repo.path());
    let bare = remote.path().join("remote.git");
    let (ns, _model) = Nightshift::with_script(script(serde_json::json!([
        {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": "sleep 3"}}]}},
        {"reply": {"tool_calls": [{"name": "write_file", "arguments": {"path": "done.txt", "content": "done\n"}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "wrote done.txt"}}]}}
    ])))
    .await;
    let out = ns.run(&["run", "--repo", &url, "--json", "write it"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = task["id"].as_str().unwrap().to_string();
    // The remote goes away while the agent works.
    ns.wait_for(&id, |task| task["state"] == "running").await;
    let gone = remote.path().join("gone.git");
    std::fs::rename(&bare, &gone).unwrap();
    let task = ns
        .wait_for(&id, |task| {
            ["succeeded", "failed", "cancelled"].contains(&task["state"].as_str().unwrap())
        })
        .await;
    assert_eq!(task["state"], "succeeded", "{task}");
    let events = ns.events(&id).await;
    assert!(of_type(&events, "branch_pushed").is_empty());
    let warned = of_type(&events, "warning").into_iter().any(|e| {
        e["message"]
            .as_str()
            .unwrap()
            .contains("the work stays on that branch")
    });
    assert!(warned, "{events:#?}");
    // The work is in the mirror, on the task's branch.
    let branch = task["branch"].as_str().unwrap();
    let mirrors = ns.home.path().join("mirrors");
    let mirror = std::fs::read_dir(&mirrors)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "git"))
        .unwrap();
    assert_eq!(
        git(&mirror, &["show", &format!("{branch}:done.txt")]),
        "done"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_over_smart_http_is_fetched_and_pushed_with_a_stored_token_only() {
    const TOKEN: &str = "ghp-t0ken-for-the-test-0123";
    let server = GitHttp::start(TOKEN).await;
    let repo = buggy_repo();
    let url = server.serve(repo.path(), "acme/app");
    let (ns, _model) = Nightshift::with_script(fixing_script()).await;

    // Without a credential the remote refuses, and nothing is queued.
    let out = ns.run(&["run", "--repo", &url, "Fix add"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot be used"), "{}", stderr(&out));
    assert!(stderr(&out).contains("--credential"), "{}", stderr(&out));

    // Registered with a stored token granted to it, the task fetches, works and pushes.
    set_secret_with(&ns, "GIT_TOKEN", TOKEN, &["--repo", &url]);
    let out = ns
        .run(&[
            "repo",
            "add",
            &url,
            "--name",
            "acme/app",
            "--credential",
            "GIT_TOKEN",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ns
        .run(&["run", "--repo", "acme/app", "--wait", "--json", "Fix add"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = task["id"].as_str().unwrap();
    let branch = task["branch"].as_str().unwrap();
    let events = ns.events(id).await;
    assert_eq!(of_type(&events, "branch_pushed").len(), 1, "{events:#?}");
    let bare = server.root.path().join("acme/app.git");
    let fixed = git(&bare, &["show", &format!("{branch}:calc.sh")]);
    assert!(fixed.contains("$(($1 + $2))"), "{fixed}");
    // The token is in no event, and not in the mirror's configuration.
    let log = serde_json::to_string(&events).unwrap();
    assert!(!log.contains(TOKEN));
    for entry in std::fs::read_dir(ns.home.path().join("mirrors")).unwrap() {
        let path = entry.unwrap().path();
        if path.join("config").exists() {
            let config = std::fs::read_to_string(path.join("config")).unwrap();
            assert!(
                !config.contains(TOKEN) && !config.contains("extraHeader"),
                "{config}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_at_once_on_one_remote_share_its_mirror_and_all_push() {
    let repo = buggy_repo();
    let (remote, url) = bare_remote(repo.path());
    let bare = remote.path().join("remote.git");
    // One turn per task, whichever task the scripted model's next answer goes to.
    let steps: Vec<Value> = (0..4)
        .map(|i| {
            serde_json::json!({"reply": {"tool_calls": [
                {"name": "write_file", "arguments": {"path": format!("done{i}.txt"), "content": "done\n"}},
                {"name": "finish", "arguments": {"summary": "done"}}
            ]}})
        })
        .collect();
    let (ns, _model) = Nightshift::with_script(script(Value::Array(steps))).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let out = ns
            .run(&["run", "--repo", &url, "--json", &format!("task {i}")])
            .await;
        assert!(out.status.success(), "{}", stderr(&out));
        let task: Value = serde_json::from_slice(&out.stdout).unwrap();
        ids.push(task["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let task = ns
            .wait_for(id, |t| {
                ["succeeded", "failed", "cancelled"].contains(&t["state"].as_str().unwrap())
            })
            .await;
        assert_eq!(task["state"], "succeeded", "{task}");
        let events = ns.events(id).await;
        assert_eq!(of_type(&events, "branch_pushed").len(), 1, "{events:#?}");
        let branch = task["branch"].as_str().unwrap();
        git(&bare, &["rev-parse", "--verify", branch]);
    }
    // One mirror for the remote.
    let mirrors: Vec<_> = std::fs::read_dir(ns.home.path().join("mirrors"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "git"))
        .collect();
    assert_eq!(mirrors.len(), 1, "{mirrors:?}");
}
