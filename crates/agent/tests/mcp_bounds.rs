//! What a hostile or careless MCP server can do to a task, and what it cannot: a tool list that
//! never ends is read only so far, at most 128 tools are offered, a repeated name once, a name
//! models refuse (or a terminal escape in one) is left out with one escaped warning, a huge
//! description is cut and redacted, a huge schema leaves its tool out; a server that does not
//! answer is given up when the task is cancelled, and a server whose tools are dropped without
//! being stopped is killed. The server (`tests/mcp/sprawling_server.py`) speaks the protocol by
//! hand, with Debian's python3 (which `.ci/run` installs), on the unisolated sandbox.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nightshift_agent::mcp::{McpServerSpec, McpTools};
use nightshift_sandbox::{Sandbox, SandboxSession, SessionSpec, Unisolated};
use tokio_util::sync::CancellationToken;

const PYTHON: &str = "/usr/bin/python3";

/// A workspace holding the server, a session over it, and the server's spec with `args`.
async fn sprawling(args: &[&str]) -> (tempfile::TempDir, Box<dyn SandboxSession>, McpServerSpec) {
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is missing: install Debian's python3 (.ci/run does)"
    );
    let workspace = tempfile::tempdir().unwrap();
    let server = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/sprawling_server.py");
    std::fs::copy(server, workspace.path().join("server.py")).unwrap();
    let session = Unisolated
        .start(SessionSpec::new(workspace.path()))
        .await
        .unwrap();
    let mut words = vec!["server.py".to_string()];
    words.extend(args.iter().map(|a| a.to_string()));
    let spec = McpServerSpec::stdio("wide", PYTHON, words);
    (workspace, session, spec)
}

fn redact(text: &str) -> String {
    text.replace("SECRET-abc123", "[secret]")
}

/// The one server's tools, as a task starts them.
async fn start(
    spec: &McpServerSpec,
    session: &dyn SandboxSession,
    cancel: &CancellationToken,
) -> McpTools {
    McpTools::start(std::slice::from_ref(spec), session, cancel, &redact).await
}

#[tokio::test]
async fn a_sprawling_tool_list_is_bounded_deduplicated_and_redacted() {
    let (_workspace, session, spec) = sprawling(&[]).await;
    let tools = start(&spec, session.as_ref(), &CancellationToken::new()).await;
    let report = &tools.reports()[0];
    let warnings = report.warnings.join("\n");

    // 128 tools, by name: `big_schema` (too large) and the escaped name are left out, `dup`
    // comes once.
    assert_eq!(report.tools.len(), 128, "{warnings}");
    assert_eq!(tools.specs().len(), 128);
    assert_eq!(
        report.tools[..3],
        ["wide__dup", "wide__long_desc", "wide__t00_000"]
    );
    assert!(!report.tools.iter().any(|t| t.contains("big_schema")));

    // The list was read to its 1024th tool (on its eleventh page), not forever.
    assert!(
        warnings.contains("goes on past the 1024 tools read from its first 11 pages"),
        "{warnings}"
    );
    assert!(
        warnings.contains("1 tool names more than once"),
        "{warnings}"
    );
    assert!(
        warnings.contains(r#"names models do not accept"#)
            && warnings.contains(r#""bad\u{1b}[31mname""#),
        "{warnings}"
    );
    assert!(
        !warnings.contains('\u{1b}'),
        "an escape reached the warning"
    );
    assert!(
        warnings.contains(r#"input schema is over 64 KiB: "big_schema""#),
        "{warnings}"
    );
    assert!(
        warnings.contains("only its first 128 tools (by name) are offered and 893 more"),
        "{warnings}"
    );

    let long = tools
        .specs()
        .iter()
        .find(|t| t.name == "wide__long_desc")
        .unwrap();
    assert!(long.description.len() <= 4096 + '…'.len_utf8());
    assert!(
        long.description.starts_with("uses [secret] xxx"),
        "{}",
        long.description
    );
    assert!(!long.description.contains("SECRET"));

    // And its tools work.
    let out = tools
        .call(
            "wide__t00_007",
            "{}",
            session.as_ref(),
            &CancellationToken::new(),
            None,
        )
        .await;
    assert!(out.ok && out.text == "called t00_007", "{out:?}");
    tools.stop().await;
}

/// The process whose id the server wrote to `file`, once it has.
async fn server_pid(file: &Path) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(pid) = std::fs::read_to_string(file)
            && !pid.is_empty()
        {
            return PathBuf::from(format!("/proc/{pid}"));
        }
        assert!(Instant::now() < deadline, "the server never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the process at `proc` is gone (or a zombie) within a few seconds.
async fn ends(proc: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match std::fs::read_to_string(proc.join("stat")) {
            Err(_) => return true,
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|s| s.trim_start().starts_with('Z')) =>
            {
                return true;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    false
}

#[tokio::test]
async fn a_server_that_never_answers_is_given_up_on_cancel_and_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pid = dir.path().join("pid");
    let (_workspace, session, mut spec) =
        sprawling(&["pid", pid.to_str().unwrap(), "mute", "linger"]).await;
    spec.startup_timeout = Duration::from_secs(600);
    let cancel = CancellationToken::new();
    let fire = cancel.clone();
    let canceller = tokio::spawn(async move {
        let proc = server_pid(&pid).await;
        fire.cancel();
        proc
    });
    let started = Instant::now();
    let tools = start(&spec, session.as_ref(), &cancel).await;
    assert!(started.elapsed() < Duration::from_secs(30));
    let warnings = tools.reports()[0].warnings.join("\n");
    assert!(
        warnings.contains("cancelled while it started"),
        "{warnings}"
    );
    let proc = canceller.await.unwrap();
    assert!(ends(&proc).await, "the server outlived its cancelled start");
}

#[tokio::test]
async fn a_server_whose_tools_are_dropped_unstopped_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pid = dir.path().join("pid");
    let (_workspace, session, spec) = sprawling(&["pid", pid.to_str().unwrap(), "linger"]).await;
    let tools = start(&spec, session.as_ref(), &CancellationToken::new()).await;
    assert_eq!(tools.reports()[0].tools.len(), 128);
    let proc = server_pid(&pid).await;
    assert!(proc.exists());
    drop(tools);
    assert!(ends(&proc).await, "the server outlived its tools");
}

#[tokio::test]
async fn a_call_ends_at_the_tasks_deadline() {
    let (_workspace, session, spec) = sprawling(&["small"]).await;
    let tools = start(&spec, session.as_ref(), &CancellationToken::new()).await;
    assert_eq!(tools.specs().len(), 3, "{:?}", tools.reports());
    let never = CancellationToken::new();
    let started = Instant::now();
    let deadline = Some(started + Duration::from_millis(500));
    let out = tools
        .call("wide__time", "{}", session.as_ref(), &never, deadline)
        .await;
    // The server's own timeout is two minutes; the task's time ends first.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        !out.ok && out.text.contains("did not answer within"),
        "{out:?}"
    );
    let out = tools
        .call("wide__echo", "{}", session.as_ref(), &never, deadline)
        .await;
    assert!(!out.ok && out.text.contains("time is up"), "{out:?}");
    tools.stop().await;
}

#[tokio::test]
async fn a_message_over_the_limit_is_not_taken_in() {
    let (_workspace, session, mut spec) = sprawling(&["huge"]).await;
    spec.startup_timeout = Duration::from_secs(3);
    let tools = start(&spec, session.as_ref(), &CancellationToken::new()).await;
    let warnings = tools.reports()[0].warnings.join("\n");
    assert!(tools.specs().is_empty());
    // The line is dropped unread past 4 MiB, so the answer never comes.
    assert!(
        warnings.contains("did not start") && warnings.contains("did not answer within 3s"),
        "{warnings}"
    );
}
