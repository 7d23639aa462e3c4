//! Long-lived processes of a session (`SandboxSession::spawn`), as the agent's MCP servers use
//! them: the host talks to the process over its standard streams while commands still run in
//! the session, closing its input ends it, a kill ends it and everything it started, and its
//! exit status is reported. Each check runs on the namespaced sandbox and on the unisolated
//! backend, which must behave alike.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::Fixture;
use nightshift_sandbox::{
    ExecRequest, ExitStatus, Sandbox, SandboxSession, SessionSpec, SpawnRequest, Spawned,
    Unisolated,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

/// A process that answers each line of its input, notes it on its standard error, and exits
/// with code 7 when its input ends.
const ECHOER: &str = r#"while read -r line; do echo "$GREETING $line from $(pwd)"; echo "noted $line" >&2; done; exit 7"#;

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("{what} took over 10 s"))
}

async fn run(session: &dyn SandboxSession, command: &str) -> String {
    let mut request = ExecRequest::new(command);
    request.timeout = Duration::from_secs(30);
    let out = session
        .exec(request, &CancellationToken::new())
        .await
        .unwrap();
    out.output
}

/// Where commands start: `/workspace` inside the namespaced sandbox, the directory itself on
/// the host.
async fn talks_over_its_streams_and_ends_with_its_input(
    session: &dyn SandboxSession,
    workspace: &str,
) {
    let mut request = SpawnRequest::new(ECHOER);
    request.env = vec![("GREETING".into(), "hello".into())];
    let Spawned {
        mut stdin,
        stdout,
        mut stderr,
        handle,
    } = session.spawn(request).await.unwrap();
    let mut lines = BufReader::new(stdout).lines();
    stdin.write_all(b"one\n").await.unwrap();
    let first = within("the first answer", lines.next_line()).await.unwrap();
    assert_eq!(
        first.as_deref(),
        Some(format!("hello one from {workspace}").as_str())
    );
    // A command runs in the session meanwhile.
    assert_eq!(run(session, "echo beside").await, "beside\n");
    stdin.write_all(b"two\n").await.unwrap();
    let second = within("the second answer", lines.next_line())
        .await
        .unwrap();
    assert!(second.unwrap().starts_with("hello two"));
    assert_eq!(handle.exit_status(), None);
    // Closing its input ends it, with its own exit code.
    drop(stdin);
    assert_eq!(
        within("its exit", handle.wait()).await,
        ExitStatus::Exited(7)
    );
    assert_eq!(handle.exit_status(), Some(ExitStatus::Exited(7)));
    let mut errors = String::new();
    within("its standard error", stderr.read_to_string(&mut errors))
        .await
        .unwrap();
    assert_eq!(errors, "noted one\nnoted two\n");
}

/// `seconds` tells its sleeps apart from those of the other backend's test, which runs at the
/// same time and whose processes the host sees.
async fn a_kill_ends_it_and_what_it_started(session: &dyn SandboxSession, seconds: u32) {
    let spawned = session
        .spawn(SpawnRequest::new(format!(
            "sleep {} & echo started; sleep {seconds}; echo never",
            seconds + 1
        )))
        .await
        .unwrap();
    let mut lines = BufReader::new(spawned.stdout).lines();
    let started = within("its start", lines.next_line()).await.unwrap();
    assert_eq!(started.as_deref(), Some("started"));
    spawned.handle.kill();
    assert_eq!(
        within("the kill", spawned.handle.wait()).await,
        ExitStatus::Cancelled
    );
    // Its output ends, and nothing it started is left.
    assert_eq!(
        within("its output's end", lines.next_line()).await.unwrap(),
        None
    );
    let mut left = String::new();
    for _ in 0..50 {
        left = run(
            session,
            &format!("pgrep -f 'sleep ({seconds}|{})' || true", seconds + 1),
        )
        .await;
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, "", "processes of the killed one are left");
}

async fn a_process_that_exits_at_once_says_how(session: &dyn SandboxSession) {
    let spawned = session
        .spawn(SpawnRequest::new("echo gone >&2; exit 3"))
        .await
        .unwrap();
    assert_eq!(
        within("its exit", spawned.handle.wait()).await,
        ExitStatus::Exited(3)
    );
    let spawned = session
        .spawn(SpawnRequest::new("/no/such/program"))
        .await
        .unwrap();
    assert_eq!(
        within("its exit", spawned.handle.wait()).await,
        ExitStatus::Exited(127)
    );
}

/// A kill sent right after the spawn, which may reach the sandbox before the process has
/// started, is not lost.
async fn a_kill_at_once_is_not_lost(session: &dyn SandboxSession, seconds: u32) {
    for _ in 0..20 {
        let spawned = session
            .spawn(SpawnRequest::new(format!("sleep {}", seconds + 2)))
            .await
            .unwrap();
        spawned.handle.kill();
        assert_eq!(
            within("the kill", spawned.handle.wait()).await,
            ExitStatus::Cancelled
        );
    }
}

/// A process whose every handle is gone is killed: nobody could end it any more.
async fn a_process_without_a_handle_is_killed(session: &dyn SandboxSession, seconds: u32) {
    let spawned = session
        .spawn(SpawnRequest::new(format!("echo up; sleep {}", seconds + 3)))
        .await
        .unwrap();
    let mut lines = BufReader::new(spawned.stdout).lines();
    assert_eq!(
        within("its start", lines.next_line())
            .await
            .unwrap()
            .as_deref(),
        Some("up")
    );
    drop(spawned.handle);
    assert_eq!(
        within("its output's end", lines.next_line()).await.unwrap(),
        None
    );
}

async fn all_of_them(session: &dyn SandboxSession, workspace: &str, seconds: u32) {
    talks_over_its_streams_and_ends_with_its_input(session, workspace).await;
    a_kill_ends_it_and_what_it_started(session, seconds).await;
    a_kill_at_once_is_not_lost(session, seconds).await;
    a_process_without_a_handle_is_killed(session, seconds).await;
    a_process_that_exits_at_once_says_how(session).await;
}

#[tokio::test]
async fn a_spawned_process_in_the_namespaced_sandbox() {
    let fixture = Fixture::new();
    let session = fixture.start().await;
    all_of_them(&session, "/workspace", 300).await;
    // Closing the session ends a process still running.
    let spawned = session.spawn(SpawnRequest::new("sleep 300")).await.unwrap();
    session.close().await.unwrap();
    assert_eq!(
        within("the close", spawned.handle.wait()).await,
        ExitStatus::Cancelled
    );
    assert!(fixture.state_is_empty());
}

#[tokio::test]
async fn a_spawned_process_on_the_unisolated_backend() {
    let workspace = tempfile::tempdir().unwrap();
    let session = Unisolated
        .start(SessionSpec::new(workspace.path()))
        .await
        .unwrap();
    let path = workspace.path().canonicalize().unwrap();
    all_of_them(session.as_ref(), path.to_str().unwrap(), 310).await;
    let spawned = session.spawn(SpawnRequest::new("sleep 300")).await.unwrap();
    session.close().await.unwrap();
    assert_eq!(
        within("the close", spawned.handle.wait()).await,
        ExitStatus::Cancelled
    );
}
