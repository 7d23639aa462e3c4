//! Secrets: set once, given to setup only, redacted from everything a task records, never
//! stored in the clear, and never committed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::Stdio;

use common::*;
use serde_json::json;

const TOKEN: &str = "tok-5ecr3t-0123456789";

fn set_secret(ns: &Nightshift, name: &str, value: &str) {
    let mut child = ns
        .command(&["secret", "set", name])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{value}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn repo_with_secret_setup() -> tempfile::TempDir {
    let repo = buggy_repo();
    std::fs::write(
        repo.path().join(".nightshift.toml"),
        "[environment]\nsetup = \"echo the token is $NPM_TOKEN; echo $NPM_TOKEN > /tmp/seen\"\n\n[secrets]\nNPM_TOKEN = \"setup\"\n",
    )
    .unwrap();
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "setup with a secret"]);
    repo
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_reaches_setup_only_and_appears_nowhere_in_the_clear() {
    let repo = repo_with_secret_setup();
    let (ns, server) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": "echo \"agent sees: [$NPM_TOKEN]\"; cat /tmp/seen"}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "looked around"}}]}}
    ])))
    .await;
    set_secret(&ns, "NPM_TOKEN", TOKEN);
    let listed = ns.run(&["secret", "ls"]).await;
    assert!(stdout(&listed).contains("NPM_TOKEN") && !stdout(&listed).contains(TOKEN));

    let (out, task) = ns.wait_task(repo.path(), "look").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let id = task["id"].as_str().unwrap();

    let logs = stdout(&ns.run(&["logs", id]).await);
    assert!(
        logs.contains("agent sees: []"),
        "the agent's environment must not have the secret: {logs}"
    );
    // Setup printed it: redacted in the recorded output.
    assert!(!logs.contains(TOKEN));
    let json_logs = stdout(&ns.run(&["logs", id, "--json"]).await);
    assert!(
        json_logs.contains("the token is [secret:NPM_TOKEN]"),
        "{json_logs}"
    );
    assert!(!json_logs.contains(TOKEN));
    let found = files_containing(ns.home.path(), TOKEN);
    assert!(found.is_empty(), "the secret is in the clear in {found:?}");
    // The model saw what the agent's command printed (the agent could read what setup left
    // in /tmp); what nightshift stores is redacted.
    assert_eq!(server.served(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_result_containing_a_secret_is_not_committed() {
    let repo = repo_with_secret_setup();
    let (ns, _server) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [{"name": "write_file", "arguments": {"path": "leaked.txt", "content": format!("{TOKEN}\n")}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "oops"}}]}}
    ])))
    .await;
    set_secret(&ns, "NPM_TOKEN", TOKEN);
    let before = git(
        repo.path(),
        &["for-each-ref", "--format=%(refname)", "refs/heads/"],
    );
    let (out, task) = ns.wait_task(repo.path(), "leak").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        task["error"]
            .as_str()
            .unwrap()
            .contains("contains the value of secret NPM_TOKEN"),
        "{task}"
    );
    assert_eq!(
        git(
            repo.path(),
            &["for-each-ref", "--format=%(refname)", "refs/heads/"]
        ),
        before
    );
    let found = files_containing(ns.home.path(), TOKEN);
    assert!(found.is_empty(), "the secret is in the clear in {found:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_secret_fails_the_task_saying_how_to_set_it() {
    let repo = repo_with_secret_setup();
    let (ns, server) = Nightshift::with_script(fixing_script()).await;
    let (out, task) = ns.wait_task(repo.path(), "fix").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        task["error"].as_str().unwrap().contains("NPM_TOKEN"),
        "{task}"
    );
    assert_eq!(server.served(), 0);
    let bad = ns.run(&["secret", "set", "bad-name"]).await;
    assert_eq!(bad.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_setup_that_writes_a_secret_into_the_workspace_is_not_cached() {
    let repo = buggy_repo();
    std::fs::write(
        repo.path().join(".nightshift.toml"),
        "[environment]\nsetup = \"echo $NPM_TOKEN > .npmrc-token\"\n\n[secrets]\nNPM_TOKEN = \"setup\"\n",
    )
    .unwrap();
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "a careless setup"]);
    let (ns, server) = Nightshift::with_script(fixing_script()).await;
    set_secret(&ns, "NPM_TOKEN", TOKEN);
    let (out, task) = ns.wait_task(repo.path(), "fix").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        task["error"]
            .as_str()
            .unwrap()
            .contains("wrote the value of secret NPM_TOKEN"),
        "{task}"
    );
    assert_eq!(server.served(), 0);
    let found = files_containing(ns.home.path(), TOKEN);
    assert!(found.is_empty(), "the secret is in the clear in {found:?}");
}
