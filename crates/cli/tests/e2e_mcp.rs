//! `nightshift mcp` driven by a real MCP client: the official Python SDK's, over stdio, as an
//! interactive agent would use it. It starts a task, follows it to its end, reads its log and
//! its diff. The model is the scripted server over loopback.
//!
//! The client needs Python with the `mcp` package: NIGHTSHIFT_TEST_MCP_PYTHON names that
//! interpreter (`.ci/run` makes a virtual environment with it); without it the test says so
//! and does nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::server::Server;
use common::*;
use serde_json::{Value, json};

/// Runs the Python client against `nightshift mcp` with `env` as the server's environment,
/// and returns what it saw; `None` when no Python with `mcp` is configured.
async fn drive(repo: &Path, env: Value) -> Option<Value> {
    let Ok(python) = std::env::var("NIGHTSHIFT_TEST_MCP_PYTHON") else {
        eprintln!("skipped: NIGHTSHIFT_TEST_MCP_PYTHON is not set");
        return None;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client.py");
    let mut client = std::process::Command::new(python);
    client
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_nightshift"))
        .arg(path_str(repo))
        .env("NS_ENV", env.to_string());
    let out = tokio::task::spawn_blocking(move || client.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "the client failed: {}", stderr(&out));
    Some(
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|err| panic!("{err}: {}{}", stdout(&out), stderr(&out))),
    )
}

/// What the client must have seen of a task that fixed `repo`.
fn check(seen: &Value, repo: &Path) {
    assert_eq!(
        seen["tools"],
        json!([
            "cancel_task",
            "send_message",
            "start_task",
            "task_diff",
            "task_logs",
            "task_status"
        ])
    );
    assert_eq!(seen["server"], "nightshift");
    assert_eq!(seen["version"], env!("CARGO_PKG_VERSION"));
    let schema = &seen["start_schema"];
    assert_eq!(schema["required"], json!(["repo", "prompt"]), "{schema}");
    assert!(schema["properties"]["base"].is_object(), "{schema}");
    assert!(
        seen["instructions"]
            .as_str()
            .unwrap()
            .contains("start_task"),
        "{seen}"
    );

    assert_eq!(seen["start_error"], false, "{seen}");
    assert_eq!(seen["started"]["state"], "queued", "{seen}");
    assert_eq!(seen["status"]["state"], "succeeded", "{seen}");
    let branch = seen["status"]["branch"].as_str().unwrap();
    assert!(git(repo, &["show", &format!("{branch}:calc.sh")]).contains("$(($1 + $2))"));

    let log = seen["log"].as_str().unwrap();
    for needed in ["queued", "sh test.sh", "committed", "ended"] {
        assert!(log.contains(needed), "{needed:?} in {log}");
    }
    assert_eq!(seen["log_ended"], true);
    let diff = seen["diff"].as_str().unwrap();
    assert!(
        diff.starts_with(&format!("On {branch}:"))
            && diff.contains("+add() { echo $(($1 + $2)); }"),
        "{diff}"
    );

    assert_eq!(seen["empty_message"]["error"], true, "{seen}");
    assert!(
        seen["cancel"]
            .as_str()
            .unwrap()
            .contains("already succeeded"),
        "{seen}"
    );
    assert_eq!(seen["missing"]["error"], true, "{seen}");
    assert!(
        seen["missing"]["text"]
            .as_str()
            .unwrap()
            .contains("no task matches `zzzzzzzz`"),
        "{seen}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_mcp_client_delegates_a_task_follows_it_and_reads_its_diff() {
    let repo = buggy_repo_with_config("[checks]\ntest = \"sh test.sh\"\n");
    let (ns, model) = Nightshift::with_script(fixing_script()).await;
    // The server's environment: what `Nightshift::command` gives every command.
    let env = json!({
        "NIGHTSHIFT_HOME": ns.home.path(),
        "OPENAI_BASE_URL": ns.base_url,
        "OPENAI_API_KEY": "test-key",
        "PATH": std::env::var("PATH").unwrap(),
    });
    let Some(seen) = drive(repo.path(), env).await else {
        return;
    };
    check(&seen, repo.path());
    assert_eq!(model.served(), 5);
    // The task ran as any task does: listed, with its log, in the home the server used.
    let listed = ns.json(&["ls", "--json"]).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_nightshift_server_set_the_tools_work_on_the_server() {
    let repo = buggy_repo_with_config("[checks]\ntest = \"sh test.sh\"\n");
    let (ns, model) = Nightshift::with_script(fixing_script()).await;
    ns.serve_repo(repo.path()).await;
    let token = ns
        .run(&["token", "create", "--scope", "submit", "--name", "mcp"])
        .await;
    let token = stdout(&token).trim().to_string();
    let server = Server::start(&ns, 2);
    // The MCP server's own home stays empty: everything goes to the server.
    let own = tempfile::tempdir().unwrap();
    let env = json!({
        "NIGHTSHIFT_HOME": own.path(),
        "NIGHTSHIFT_SERVER": server.url,
        "NIGHTSHIFT_TOKEN": token,
        "PATH": std::env::var("PATH").unwrap(),
    });
    let Some(seen) = drive(repo.path(), env).await else {
        return;
    };
    check(&seen, repo.path());
    assert_eq!(model.served(), 5);
    assert_eq!(std::fs::read_dir(own.path()).unwrap().count(), 0);
    let listed = ns.json(&["ls", "--json"]).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
}
