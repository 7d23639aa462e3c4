//! What a setup layer may be trusted with, with the real binary, the real sandbox and a scripted
//! model: the checks test the committed tree, not what setup left in the working copy; a
//! follow-up whose branch holds commits beyond the base a person chose gets no setup secrets
//! and neither reads nor feeds the shared setup cache; a setup that deletes `.git` is cached
//! all the same.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};

fn check_events(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["type"] == "command_finished" && e["phase"] == "check")
        .collect()
}

/// The cached setup layers under the binary's home.
fn cached_layers(ns: &Nightshift) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(ns.home.path().join("layers"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("layer"))
        .filter(|layer| layer.is_dir())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_checks_test_the_committed_tree_not_what_setup_left_in_it() {
    // Setup rewrites a tracked file; the agent commits another content; the check holds the
    // committed one to account.
    let repo = buggy_repo_with_config(
        "[environment]\nsetup = \"echo from-setup > version.txt\"\n\n[checks]\nversion = \"grep -qx v2 version.txt\"\n",
    );
    std::fs::write(repo.path().join("version.txt"), "v1\n").unwrap();
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "version 1"]);
    let (ns, _server) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [{"name": "write_file", "arguments": {"path": "version.txt", "content": "v2\n"}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "version 2"}}]}}
    ])))
    .await;
    let (out, task) = ns.wait_task(repo.path(), "bump the version").await;
    assert!(out.status.success(), "{task}");
    let branch = task["branch"].as_str().unwrap();
    assert_eq!(
        git(repo.path(), &["show", &format!("{branch}:version.txt")]),
        "v2"
    );
    let events = ns.events(task["id"].as_str().unwrap()).await;
    let checks = check_events(&events);
    assert_eq!(checks.len(), 1, "{events:#?}");
    assert_eq!(checks[0]["ok"], true, "{:#?}", checks[0]);
    assert_eq!(
        cached_layers(&ns).len(),
        1,
        "setup ran in a layer of its own"
    );
}

const TOKEN: &str = "tok-5ecr3t-0123456789";

/// Sends `text` to task `id` and returns the follow-up it started, once it has ended.
async fn follow_up(ns: &Nightshift, id: &str, text: &str) -> (String, Value) {
    let said = ns.run(&["say", id, text]).await;
    assert!(said.status.success(), "{}", stderr(&said));
    let follow_up = ns.follow_up_started(id).await;
    let task = ns
        .wait_for(&follow_up, |t| {
            t["state"] == "succeeded" || t["state"] == "failed"
        })
        .await;
    (follow_up, task)
}

fn setup_outputs(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "command_finished" && e["phase"] == "setup")
        .map(|e| e["output_tail"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follow_up_on_an_agents_commits_gets_no_setup_secret_and_no_shared_layer() {
    // The configuration stays as the person wrote it; the setup script it runs does not.
    let repo = buggy_repo_with_config(
        "[environment]\nsetup = \"sh setup.sh\"\n\n[secrets]\nNPM_TOKEN = \"setup\"\n",
    );
    std::fs::write(
        repo.path().join("setup.sh"),
        "echo \"setup sees [$NPM_TOKEN]\"\n",
    )
    .unwrap();
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "a setup script"]);
    let rewritten = "echo \"rewritten setup sees [$NPM_TOKEN]\"\n";
    let (ns, _server) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [{"name": "write_file", "arguments": {"path": "setup.sh", "content": rewritten}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "a better setup"}}]}},
        {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": "cat setup.sh"}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "looked"}}]}}
    ])))
    .await;
    set_secret(&ns, "NPM_TOKEN", TOKEN);
    let (out, first) = ns.wait_task(repo.path(), "improve the setup").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let first_id = first["id"].as_str().unwrap();
    let events = ns.events(first_id).await;
    assert_eq!(
        setup_outputs(&events),
        ["setup sees [[secret:NPM_TOKEN]]\n"],
        "the base a person chose gets its setup secret"
    );
    assert_eq!(cached_layers(&ns).len(), 1);

    let (follow_up_id, follow_up) = follow_up(&ns, first_id, "look again").await;
    assert_eq!(follow_up["state"], "succeeded", "{follow_up}");
    let events = ns.events(&follow_up_id).await;
    assert_eq!(
        setup_outputs(&events),
        ["rewritten setup sees []\n"],
        "the script an agent rewrote runs without the secret: {events:#?}"
    );
    assert!(
        events.iter().any(|e| e["type"] == "warning"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("1 commit(s) beyond the base you chose")
            && e["message"]
                .as_str()
                .unwrap()
                .contains("setup runs without its secrets")),
        "{events:#?}"
    );
    assert!(
        events.iter().all(|e| e["type"] != "setup_cache"),
        "no cache key is computed from the agent's tree: {events:#?}"
    );
    assert_eq!(
        cached_layers(&ns).len(),
        1,
        "the follow-up's layer is not added to the cache"
    );
    let unshared = std::fs::read_dir(ns.home.path().join("layers/unshared"))
        .unwrap()
        .count();
    assert_eq!(unshared, 0, "the follow-up's own layer went with it");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_setup_that_deletes_git_is_cached_without_touching_the_tasks_own() {
    let repo = buggy_repo_with_config(
        "[environment]\nsetup = \"rm -rf .git && echo built > built.txt\"\n\n[checks]\ntest = \"sh test.sh\"\n",
    );
    let (ns, _server) = Nightshift::with_script(fixing_script()).await;
    let (out, task) = ns.wait_task(repo.path(), "fix add").await;
    assert!(out.status.success(), "{task}");
    let layers = cached_layers(&ns);
    assert_eq!(layers.len(), 1, "{task}");
    assert!(layers[0].join("workspace/built.txt").exists());
    assert!(
        std::fs::symlink_metadata(layers[0].join("workspace/.git")).is_err(),
        "the layer does not delete the task's .git"
    );
    let branch = task["branch"].as_str().unwrap();
    let changed = git(repo.path(), &["diff", "--name-only", "main", branch]);
    assert_eq!(changed, "calc.sh", "setup's file stays out of the branch");
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_run_again_for_the_checks_on_an_agents_commit_gets_no_setup_secret() {
    // Without layers (here: the unisolated sandbox) setup runs again in the checks' sandbox,
    // on the committed tree, whose setup script the agent rewrote.
    let repo = buggy_repo_with_config(
        "[environment]\nsetup = \"sh setup.sh\"\n\n[secrets]\nNPM_TOKEN = \"setup\"\n\n[checks]\ntest = \"true\"\n",
    );
    std::fs::write(
        repo.path().join("setup.sh"),
        "echo \"setup sees [$NPM_TOKEN]\"\n",
    )
    .unwrap();
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "a setup script"]);
    let rewritten = "echo \"rewritten setup sees [$NPM_TOKEN]\"\n";
    let (mut ns, _server) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [{"name": "write_file", "arguments": {"path": "setup.sh", "content": rewritten}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "a better setup"}}]}}
    ])))
    .await;
    ns.env
        .push(("NIGHTSHIFT_SANDBOX".into(), "unisolated".into()));
    set_secret(&ns, "NPM_TOKEN", TOKEN);
    let (out, task) = ns.wait_task(repo.path(), "improve the setup").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let events = ns.events(task["id"].as_str().unwrap()).await;
    assert_eq!(
        setup_outputs(&events),
        [
            "setup sees [[secret:NPM_TOKEN]]\n",
            "rewritten setup sees []\n"
        ],
        "{events:#?}"
    );
    assert!(
        events.iter().any(|e| e["type"] == "warning"
            && e["message"]
                .as_str()
                .unwrap()
                .starts_with("setup runs again for the checks without its secrets")),
        "{events:#?}"
    );
}
