//! Forges end to end: a GitHub repository's task opens a draft pull request with its evidence
//! and follow-ups update it; signed webhook deliveries start tasks and follow-ups, once, for
//! writers only. GitHub is a server on loopback answering as its REST API documents.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod forge_support;

use common::*;
use forge_support::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn a_github_repository_gets_a_draft_pull_request_with_the_evidence_and_follow_ups_update_it()
{
    const TOKEN: &str = "ghs-installation-token-0123";
    let git_server = GitHttp::start(TOKEN).await;
    let repo = buggy_repo_with_config("[checks]\ntest = \"sh test.sh\"\n");
    let url = git_server.serve(repo.path(), "acme/app");
    let GitHubApi {
        url: api, recorded, ..
    } = github_api(TOKEN).await;
    let mut steps = fixing_script_steps();
    steps.extend([
        serde_json::json!({"reply": {"tool_calls": [{"name": "write_file", "arguments": {"path": "NOTES.md", "content": "add adds\n"}}]}}),
        serde_json::json!({"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "Document add"}}]}}),
        serde_json::json!({"reply": {"tool_calls": [{"name": "submit_review", "arguments": {"summary": "add adds; NOTES.md is thin.", "findings": [{"path": "NOTES.md", "line": 1, "severity": "low", "problem": "says nothing about sub"}]}}]}}),
    ]);
    let (ns, _model) = Nightshift::with_script(script(Value::Array(steps))).await;
    add_github_repo(&ns, &url, TOKEN, &api).await;

    let out = ns
        .run(&["run", "--repo", "acme/app", "--wait", "--json", "Fix add"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = task["id"].as_str().unwrap().to_string();
    let branch = task["branch"].as_str().unwrap().to_string();
    let events = ns.events(&id).await;
    let opened = of_type(&events, "pull_request");
    assert_eq!(opened.len(), 1, "{events:#?}");
    assert_eq!(opened[0]["created"], true);
    assert_eq!(opened[0]["number"], 1);
    assert_eq!(
        opened[0]["url"].as_str().unwrap(),
        format!("{api}/acme/app/pull/1")
    );
    // The pull request: draft, from the task's branch to its base, the evidence in its body;
    // asked for twice (the first answer was a 502).
    let calls = recorded.lock().unwrap().clone();
    let creations: Vec<_> = calls
        .iter()
        .filter(|(m, p, _)| m == "POST" && p == "/repos/acme/app/pulls")
        .collect();
    assert_eq!(creations.len(), 2, "{calls:#?}");
    let created = &creations[1].2;
    assert_eq!(created["draft"], true);
    assert_eq!(created["head"], branch.as_str());
    assert_eq!(created["base"], "main");
    assert_eq!(created["title"], "Fix add: it subtracted");
    let body = created["body"].as_str().unwrap();
    for needed in [
        "sh test.sh passes now",
        "| test | `sh test.sh` | passed",
        "tokens in",
        &id,
    ] {
        assert!(body.contains(needed), "{needed:?} in {body}");
    }
    // Every commit on the branch names the task.
    let bare = git_server.root.path().join("acme/app.git");
    let message = git(&bare, &["log", "-1", "--format=%B", &branch]);
    assert!(
        message.contains(&format!("Nightshift-Task: {id}")),
        "{message}"
    );

    // A follow-up pushes the same branch forward, updates the body and comments.
    let said = ns.run(&["say", &id, "Also", "document", "add"]).await;
    assert!(said.status.success(), "{}", stderr(&said));
    let follow_up = ns.follow_up_started(&id).await;
    let done = ns
        .wait_for(&follow_up, |t| {
            ["succeeded", "failed", "cancelled"].contains(&t["state"].as_str().unwrap())
        })
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let events = ns.events(&follow_up).await;
    let updated = of_type(&events, "pull_request");
    assert_eq!(updated.len(), 1, "{events:#?}");
    assert_eq!(
        (updated[0]["created"].clone(), updated[0]["number"].clone()),
        (Value::Bool(false), 1.into())
    );
    let calls = recorded.lock().unwrap().clone();
    assert!(calls.iter().any(|(m, p, b)| m == "PATCH"
        && p == "/repos/acme/app/pulls/1"
        && b["body"].as_str().unwrap().contains("Document add")));
    assert!(calls.iter().any(|(m, p, b)| m == "POST"
        && p == "/repos/acme/app/issues/1/comments"
        && b["body"].as_str().unwrap().contains(&follow_up)));
    assert_eq!(
        git(&bare, &["show", &format!("{branch}:NOTES.md")]),
        "add adds"
    );
    // A review of the task puts its findings on the branch's pull request.
    let out = ns.run(&["review", &id, "--wait", "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let review = printed["review"]["id"].as_str().unwrap();
    let events = ns.events(review).await;
    assert_eq!(
        of_type(&events, "forge_commented")[0]["number"],
        1,
        "{events:#?}"
    );
    let calls = recorded.lock().unwrap().clone();
    let comment = calls
        .iter()
        .rev()
        .find(|(m, p, _)| m == "POST" && p == "/repos/acme/app/issues/1/comments")
        .unwrap();
    let body = comment.2["body"].as_str().unwrap();
    assert!(body.contains("**nightshift review**"), "{body}");
    assert!(
        body.contains("- **low** `NOTES.md:1`: says nothing about sub"),
        "{body}"
    );
    // Nothing approves or merges.
    assert!(
        calls
            .iter()
            .all(|(_, p, _)| !p.contains("merge") && !p.contains("reviews"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_comment_from_a_writer_starts_a_task_once_and_a_review_comment_follows_up() {
    const TOKEN: &str = "ghs-installation-token-4567";
    const WEBHOOK_SECRET: &str = "It's a Secret to Everybody";
    let git_server = GitHttp::start(TOKEN).await;
    let repo = buggy_repo();
    let url = git_server.serve(repo.path(), "acme/app");
    let GitHubApi {
        url: api, recorded, ..
    } = github_api(TOKEN).await;
    let mut steps = fixing_script_steps();
    steps.extend([
        serde_json::json!({"reply": {"tool_calls": [{"name": "write_file", "arguments": {"path": "NOTES.md", "content": "reviewed\n"}}]}}),
        serde_json::json!({"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "Address the review"}}]}}),
    ]);
    let (mut ns, _model) = Nightshift::with_script(script(Value::Array(steps))).await;
    add_github_repo(&ns, &url, TOKEN, &api).await;
    ns.env.push((
        "NIGHTSHIFT_GITHUB_WEBHOOK_SECRET".into(),
        WEBHOOK_SECRET.into(),
    ));
    let (_server, base) = Serve::start(&ns);

    let repository = serde_json::json!({
        "full_name": "acme/app",
        "clone_url": url,
        "html_url": format!("{}/acme/app", git_server.url),
    });
    let comment_by = |login: &str, repository: &Value| {
        serde_json::json!({
            "action": "created",
            "issue": {"number": 7, "title": "add subtracts", "body": "sh calc.sh 2 3 prints -1"},
            "comment": {"body": "@nightshift fix add please"},
            "repository": repository,
            "sender": {"login": login},
        })
    };

    // A bad signature, a reader, an unregistered repository: nothing starts.
    let (status, _) = deliver(
        &base,
        "wrong secret",
        "issue_comment",
        "d-0",
        &comment_by("alice", &repository),
    )
    .await;
    assert_eq!(status, 401);
    let (status, outcome) = deliver(
        &base,
        WEBHOOK_SECRET,
        "issue_comment",
        "d-1",
        &comment_by("mallory", &repository),
    )
    .await;
    assert_eq!(
        (status, outcome["outcome"].as_str()),
        (200, Some("refused")),
        "{outcome}"
    );
    assert!(
        outcome["reason"].as_str().unwrap().contains("needs write"),
        "{outcome}"
    );
    let elsewhere = serde_json::json!({"full_name": "evil/app", "clone_url": "https://github.com/evil/app.git"});
    let (_, outcome) = deliver(
        &base,
        WEBHOOK_SECRET,
        "issue_comment",
        "d-2",
        &comment_by("alice", &elsewhere),
    )
    .await;
    assert_eq!(outcome["outcome"], "refused", "{outcome}");
    let listed = ns.json(&["ls", "--json"]).await;
    assert_eq!(
        listed.as_array().unwrap().len(),
        0,
        "nothing started: {listed}"
    );

    // A writer's comment starts a task and is answered; its redelivery starts nothing.
    let (status, outcome) = deliver(
        &base,
        WEBHOOK_SECRET,
        "issue_comment",
        "d-3",
        &comment_by("alice", &repository),
    )
    .await;
    assert_eq!(
        (status, outcome["outcome"].as_str()),
        (201, Some("started")),
        "{outcome}"
    );
    let id = outcome["task"].as_str().unwrap().to_string();
    let (status, again) = deliver(
        &base,
        WEBHOOK_SECRET,
        "issue_comment",
        "d-3",
        &comment_by("alice", &repository),
    )
    .await;
    assert_eq!(
        (status, again["outcome"].as_str()),
        (200, Some("ignored")),
        "{again}"
    );
    let task = ns
        .wait_for(&id, |t| {
            ["succeeded", "failed", "cancelled"].contains(&t["state"].as_str().unwrap())
        })
        .await;
    assert_eq!(task["state"], "succeeded", "{task}");
    assert!(
        task["spec"]["prompt"]
            .as_str()
            .unwrap()
            .contains("fix add please")
    );
    assert_eq!(
        ns.json(&["ls", "--json"]).await.as_array().unwrap().len(),
        1
    );
    // The issue hears that the task started, and then how it ended, with its pull request;
    // the pull request says which issue it fixes.
    let calls = recorded.lock().unwrap().clone();
    let on_issue: Vec<&str> = calls
        .iter()
        .filter(|(m, p, _)| m == "POST" && p == "/repos/acme/app/issues/7/comments")
        .map(|(_, _, b)| b["body"].as_str().unwrap())
        .collect();
    assert_eq!(on_issue.len(), 2, "{calls:#?}");
    assert!(
        on_issue[0].contains(&format!("started task `{id}`")),
        "{on_issue:?}"
    );
    assert!(
        on_issue[1].contains(&format!("task `{id}` succeeded: #1"))
            && on_issue[1].contains("Fix add: it subtracted"),
        "{on_issue:?}"
    );
    let created = calls
        .iter()
        .rfind(|(m, p, _)| m == "POST" && p == "/repos/acme/app/pulls")
        .unwrap();
    assert!(
        created.2["body"].as_str().unwrap().contains("Fixes #7."),
        "{created:?}"
    );
    let events = ns.events(&id).await;
    assert_eq!(of_type(&events, "forge_commented")[0]["number"], 7);

    // A review comment on its pull request starts a follow-up on the same branch.
    let review = serde_json::json!({
        "action": "created",
        "comment": {"body": "Please document add", "path": "calc.sh", "line": 3},
        "pull_request": {"number": 1, "head": {"ref": task["branch"]}},
        "repository": repository,
        "sender": {"login": "alice"},
    });
    let (status, outcome) = deliver(
        &base,
        WEBHOOK_SECRET,
        "pull_request_review_comment",
        "d-4",
        &review,
    )
    .await;
    assert_eq!(
        (status, outcome["outcome"].as_str()),
        (200, Some("follow_up")),
        "{outcome}"
    );
    let follow_up = outcome["task"].as_str().unwrap().to_string();
    assert_ne!(follow_up, id);
    let done = ns
        .wait_for(&follow_up, |t| {
            ["succeeded", "failed", "cancelled"].contains(&t["state"].as_str().unwrap())
        })
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["branch"], task["branch"]);
    // The review, with where it points, is the follow-up's instruction.
    let prompt = done["spec"]["prompt"].as_str().unwrap();
    assert!(
        prompt.contains("Please document add") && prompt.contains("calc.sh line 3"),
        "{prompt}"
    );
    let events = ns.events(&id).await;
    let received = of_type(&events, "message_received");
    assert_eq!(received[0]["from"], "alice on GitHub", "{received:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_and_pull_request_held_up_by_an_outage_are_retried_until_they_land() {
    const TOKEN: &str = "ghs-installation-token-8910";
    let git_server = GitHttp::start(TOKEN).await;
    let repo = buggy_repo();
    let url = git_server.serve(repo.path(), "acme/app");
    let github = github_api(TOKEN).await;
    let (mut ns, _model) =
        Nightshift::with_script(script(Value::Array(fixing_script_steps()))).await;
    set_secret_with(&ns, "GH_TOKEN", TOKEN, &["--repo", &url]);
    let out = ns
        .run(&[
            "repo",
            "add",
            &url,
            "--name",
            "acme/app",
            "--credential",
            "GH_TOKEN",
            "--github-api",
            &github.url,
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));

    // Both down: the task succeeds, its work on the mirror's branch, the push deferred.
    ns.env.push(("NIGHTSHIFT_FORGE_RETRY".into(), "1s".into()));
    git_server
        .pushes_down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    github.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let out = ns
        .run(&["run", "--repo", "acme/app", "--wait", "--json", "Fix add"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = task["id"].as_str().unwrap().to_string();
    let branch = task["branch"].as_str().unwrap().to_string();
    let events = ns.events(&id).await;
    let deferred = of_type(&events, "forge_retry");
    assert_eq!(deferred.len(), 1, "{events:#?}");
    assert_eq!(
        (&deferred[0]["action"], &deferred[0]["attempt"]),
        (&Value::from("push"), &Value::from(1))
    );
    assert!(deferred[0]["retry_at"].is_string(), "{deferred:?}");
    assert!(of_type(&events, "branch_pushed").is_empty());
    assert!(of_type(&events, "pull_request").is_empty());
    let bare = git_server.root.path().join("acme/app.git");
    let remote_has = |branch: &str| {
        std::process::Command::new("git")
            .args([
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("refs/heads/{branch}"),
            ])
            .current_dir(&bare)
            .status()
            .unwrap()
            .success()
    };
    assert!(!remote_has(&branch));

    // The remote comes back, GitHub does not yet: a worker pushes, and defers the pull request.
    git_server
        .pushes_down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let (_server, _base) = Serve::start(&ns);
    let events = wait_for_event(&ns, &id, "pull_request", |events| {
        of_type(events, "forge_retry").len() >= 2
    })
    .await;
    assert!(remote_has(&branch));
    assert_eq!(of_type(&events, "branch_pushed").len(), 1, "{events:#?}");
    let second = of_type(&events, "forge_retry")[1].clone();
    assert_eq!(
        (&second["action"], &second["attempt"]),
        (&Value::from("pull_request"), &Value::from(2)),
        "{events:#?}"
    );

    // GitHub comes back: the next attempt opens the pull request, once.
    github
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let events = wait_for_event(&ns, &id, "pull_request", |events| {
        !of_type(events, "pull_request").is_empty()
    })
    .await;
    let opened = of_type(&events, "pull_request");
    assert_eq!(
        (opened.len(), &opened[0]["created"]),
        (1, &Value::Bool(true))
    );
    let calls = github.recorded.lock().unwrap().clone();
    let created: Vec<_> = calls
        .iter()
        .filter(|(m, p, _)| m == "POST" && p == "/repos/acme/app/pulls")
        .collect();
    // The first creation answers 502 (a short outage), the second opens it.
    assert_eq!(created.len(), 2, "{calls:#?}");
    assert_eq!(created[1].2["head"], branch.as_str());
}

/// The task's events once `done` holds for them (a minute at most).
async fn wait_for_event(
    ns: &Nightshift,
    id: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let events = ns.events(id).await;
        if done(&events) {
            return events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waiting for {what}: {events:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
