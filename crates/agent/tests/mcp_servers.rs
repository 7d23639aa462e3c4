//! MCP servers' lifetimes, on the unisolated sandbox with a server written with the official
//! Python SDK (the one `crates/cli/tests/mcp/notes_server.py` holds): when the agent is done,
//! a server's input is closed, so that it can end by itself, and whatever is left is killed
//! after a short grace. Needs NIGHTSHIFT_TEST_MCP_PYTHON, a Python with the `mcp` package
//! (`.ci/run` makes one); without it the test says so and does nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use nightshift_agent::mcp::{McpServerSpec, McpTools};
use nightshift_sandbox::{Sandbox, SessionSpec, Unisolated};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn stopping_closes_the_servers_input_then_kills_what_is_left() {
    let Ok(python) = std::env::var("NIGHTSHIFT_TEST_MCP_PYTHON") else {
        eprintln!("skipped: NIGHTSHIFT_TEST_MCP_PYTHON is not set");
        return;
    };
    let workspace = tempfile::tempdir().unwrap();
    let server = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cli/tests/mcp/notes_server.py");
    std::fs::copy(server, workspace.path().join("notes_server.py")).unwrap();
    std::fs::write(workspace.path().join("NOTES.md"), "grace: two seconds\n").unwrap();
    let session = Unisolated
        .start(SessionSpec::new(workspace.path()))
        .await
        .unwrap();
    // The server; then, once its input has ended it, a note and a sleep that outlives the
    // grace, and a marker sleep the kill must end.
    let script = format!("'{python}' notes_server.py; echo ended > ended.txt; exec sleep 417");
    let spec = McpServerSpec::stdio("notes", "sh", vec!["-c".into(), script]);
    let tools = McpTools::start(
        std::slice::from_ref(&spec),
        session.as_ref(),
        &CancellationToken::new(),
        &str::to_string,
    )
    .await;
    assert_eq!(
        tools.reports()[0].tools,
        [
            "notes__crash",
            "notes__forbidden",
            "notes__lookup",
            "notes__slow"
        ],
        "{:?}",
        tools.reports()
    );
    let out = tools
        .call(
            "notes__lookup",
            r#"{"term": "grace"}"#,
            session.as_ref(),
            &CancellationToken::new(),
            None,
        )
        .await;
    assert!(out.text.starts_with("grace: two seconds"), "{}", out.text);

    let started = Instant::now();
    tools.stop().await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "stop took {took:?}"
    );
    // The input's end ended the server itself; the sleep after it was killed.
    assert_eq!(
        std::fs::read_to_string(workspace.path().join("ended.txt")).unwrap(),
        "ended\n"
    );
    let mut left = true;
    for _ in 0..50 {
        let out = std::process::Command::new("pgrep")
            .args(["-f", "sleep 417"])
            .output()
            .unwrap();
        left = out.status.success();
        if !left {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!left, "the server's sleep outlived the stop");
    session.close().await.unwrap();
}
