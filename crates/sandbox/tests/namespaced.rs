//! The namespaced sandbox as the runner uses it: a session per task, commands executed into
//! it, the workspace shared with the host through `workspace()`, and nothing left after close.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use nightshift_sandbox::{ExecRequest, ExitStatus, Sandbox, SandboxSession};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn runs_a_command_in_the_workspace() {
    let fixture = Fixture::new();
    let session = fixture.start().await;
    let out = run(&session, "pwd; id -u; cat README.md; hostname").await;
    assert_eq!(out.status, ExitStatus::Exited(0), "{}", out.output);
    assert_eq!(
        out.output,
        "/workspace\n1000\nhello from the host\nnightshift\n"
    );
    session.close().await.unwrap();
    assert!(fixture.state_is_empty());
}

#[tokio::test]
async fn the_host_sees_the_live_workspace_and_the_working_copy_stays_untouched() {
    let fixture = Fixture::new();
    let session = fixture.start().await;
    let out = run(
        &session,
        "echo inside > new.txt && echo changed >> README.md && rm src/lib.rs",
    )
    .await;
    assert!(out.status.success(), "{}", out.output);
    // Through workspace(): the merged view.
    assert_eq!(read(&path_of(&session, "new.txt")), "inside\n");
    assert_eq!(
        read(&path_of(&session, "README.md")),
        "hello from the host\nchanged\n"
    );
    assert!(!path_of(&session, "src/lib.rs").exists());
    // Written by the host, seen inside. (A host running as root can change files but not
    // create them: root is not mapped in the sandbox, see `NamespacedSession::workspace`.)
    std::fs::write(path_of(&session, "new.txt"), "host wrote this\n").unwrap();
    let out = run(&session, "cat new.txt; stat -c %u new.txt").await;
    assert_eq!(out.output, "host wrote this\n1000\n");
    // The host's working copy is the lower layer: never written.
    let original = fixture.workspace.path();
    assert_eq!(read(&original.join("README.md")), "hello from the host\n");
    assert!(original.join("src/lib.rs").exists());
    assert!(!original.join("new.txt").exists());
    session.close().await.unwrap();
    assert!(fixture.state_is_empty());
}

#[tokio::test]
async fn the_agents_commits_leave_the_sandbox_as_a_bundle() {
    let fixture = Fixture::new();
    let git = |dir: &std::path::Path, args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .current_dir(dir)
            .env_remove("GIT_DIR")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    git(fixture.workspace.path(), &["init", "-q"]);
    git(fixture.workspace.path(), &["add", "."]);
    git(fixture.workspace.path(), &["commit", "-qm", "base"]);
    let session = fixture.start().await;
    // git runs where the agent's repository is, with its configuration: inside.
    let out = run(
        &session,
        "echo agent >> README.md && git status --short && git -c user.name=a -c user.email=a@b \
         commit -qam 'agent work' && git bundle create -q /tmp/handoff.bundle master",
    )
    .await;
    assert!(out.status.success(), "{}", out.output);
    assert!(out.output.starts_with(" M README.md\n"), "{}", out.output);
    // The host reads the bundle through the workspace path and fetches from it.
    let bundle = session.workspace().join("../tmp/handoff.bundle");
    let copy = tempfile::NamedTempFile::new().unwrap();
    std::fs::copy(&bundle, copy.path()).unwrap();
    git(
        fixture.workspace.path(),
        &["fetch", "-q", copy.path().to_str().unwrap(), "master:agent"],
    );
    assert_eq!(
        git(fixture.workspace.path(), &["log", "--format=%s", "agent"]),
        "agent work\nbase\n"
    );
    assert_eq!(
        git(fixture.workspace.path(), &["log", "--format=%s", "master"]),
        "base\n"
    );
    session.close().await.unwrap();
}

#[tokio::test]
async fn files_and_background_processes_persist_between_execs() {
    let fixture = Fixture::new();
    let session = fixture.start().await;
    let out = run(&session, "echo 1 > /tmp/state; (sleep 300 >/dev/null 2>&1 &) ; nohup sleep 301 >/dev/null 2>&1 & echo started").await;
    assert_eq!(out.output, "started\n");
    assert!(
        out.duration < Duration::from_secs(2),
        "a background process held the exec: {:?}",
        out.duration
    );
    let out = run(&session, "cat /tmp/state; pgrep -c sleep").await;
    assert_eq!(out.output, "1\n2\n");
    session.close().await.unwrap();
}

#[tokio::test]
async fn the_environment_is_clean_and_pid_1_is_ours() {
    let fixture = Fixture::new();
    let session = fixture
        .backend
        .start_with(
            nightshift_sandbox::SessionSpec {
                env: vec![("GREETING".into(), "hi".into())],
                ..nightshift_sandbox::SessionSpec::new(fixture.workspace.path())
            },
            Default::default(),
        )
        .await
        .unwrap();
    let out = run(&session, "echo $GREETING; env | grep -c -e CARGO -e RUST || true; echo $HOME; ps -o pid= -o comm= -p 1").await;
    assert_eq!(
        out.output, "hi\n0\n/home/agent\n      1 nightshift-sand\n",
        "host variables leaked"
    );
    session.close().await.unwrap();
}

#[tokio::test]
async fn timeouts_and_cancellations_kill_the_command_group() {
    let fixture = Fixture::new();
    let session = fixture.start().await;
    let out = run_for(
        &session,
        "sleep 30 & sleep 30; echo never",
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(out.status, ExitStatus::TimedOut);
    assert!(out.duration < Duration::from_secs(5));
    assert!(!out.output.contains("never"));
    let out = run(&session, "pgrep -c sleep || true").await;
    assert_eq!(out.output.trim(), "0", "the timed-out group survived");

    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        trigger.cancel();
    });
    let out = session
        .exec(ExecRequest::new("sleep 30"), &cancel)
        .await
        .unwrap();
    assert_eq!(out.status, ExitStatus::Cancelled);
    // The session is still usable.
    assert!(run(&session, "true").await.status.success());
    session.close().await.unwrap();
}

#[tokio::test]
async fn exit_codes_stdin_output_caps_and_workdirs() {
    let fixture = Fixture::new();
    let session = fixture.start().await;
    let out = run(&session, "echo out; echo err >&2; exit 3").await;
    assert_eq!(out.status, ExitStatus::Exited(3));
    assert!(out.output.contains("out") && out.output.contains("err"));

    let mut request = ExecRequest::new("cat; head -c 100000 /dev/zero | tr '\\0' x");
    request.stdin = Some(b"from stdin\n".to_vec());
    request.output_limit = 1000;
    let out = session
        .exec(request, &CancellationToken::new())
        .await
        .unwrap();
    assert!(out.output.starts_with("from stdin\n"));
    assert!(out.omitted_bytes > 90_000);

    let mut request = ExecRequest::new("pwd");
    request.workdir = Some("src".into());
    let out = session
        .exec(request, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(out.output, "/workspace/src\n");
    let mut request = ExecRequest::new("pwd");
    request.workdir = Some("../..".into());
    assert!(
        session
            .exec(request, &CancellationToken::new())
            .await
            .is_err()
    );
    let mut request = ExecRequest::new("pwd");
    request.workdir = Some("missing".into());
    assert!(
        session
            .exec(request, &CancellationToken::new())
            .await
            .is_err()
    );
    let out = run(&session, "kill -9 $$").await;
    assert_eq!(out.status, ExitStatus::Signaled(9));
    session.close().await.unwrap();
}

#[tokio::test]
async fn concurrent_execs_in_one_session() {
    let fixture = Fixture::new();
    let session = fixture.start().await;
    let (a, b) = tokio::join!(run(&session, "sleep 0.3; echo a"), run(&session, "echo b"));
    assert_eq!((a.output.as_str(), b.output.as_str()), ("a\n", "b\n"));
    assert!(b.duration < a.duration);
    session.close().await.unwrap();
}

#[tokio::test]
async fn dropping_a_session_without_close_kills_everything() {
    let fixture = Fixture::new();
    let session = fixture.start().await;
    let init = session.init_pid();
    run(&session, "nohup sleep 300 >/dev/null 2>&1 &").await;
    let children: Vec<i32> = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children"))
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(!children.is_empty());
    drop(session);
    for _ in 0..100 {
        if !alive(init) && children.iter().all(|p| !alive(*p)) && fixture.state_is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the sandbox outlived its dropped session");
}

#[tokio::test]
async fn the_trait_object_reports_an_isolated_backend() {
    let fixture = Fixture::new();
    assert_eq!(fixture.backend.backend(), "namespaced");
    assert!(fixture.backend.isolated());
    let session = fixture.backend.start(fixture.spec()).await.unwrap();
    assert!(
        session
            .exec(ExecRequest::new("true"), &CancellationToken::new())
            .await
            .unwrap()
            .status
            .success()
    );
    session.close().await.unwrap();
    assert!(matches!(
        session
            .exec(ExecRequest::new("true"), &CancellationToken::new())
            .await,
        Err(nightshift_sandbox::SandboxError::Closed)
    ));
}

#[tokio::test]
async fn a_session_reports_its_confinement() {
    let fixture = Fixture::new();
    let session = fixture.start().await;
    let report = session.report().join("\n");
    assert!(report.contains("landlock: fully enforced"), "{report}");
    assert!(report.contains("seccomp"), "{report}");
    assert!(report.contains("cgroups v1"), "{report}");
    session.close().await.unwrap();
}

/// How long a test waits for a spare helper to be ready.
const SPARE_READY: Duration = Duration::from_secs(2);

/// Host clock ticks since boot, as `/proc/<pid>/stat` counts a process's start. A session's
/// init that started in an earlier tick than the session was asked for was a spare's.
fn ticks_now() -> u64 {
    let uptime = std::fs::read_to_string("/proc/uptime").unwrap();
    let seconds: f64 = uptime.split_whitespace().next().unwrap().parse().unwrap();
    (seconds * 100.0) as u64
}

/// Field `n` (1-based, as in proc(5)) of `/proc/<pid>/stat`.
fn stat_field(pid: i32, n: usize) -> u64 {
    stat_file_field(&format!("/proc/{pid}/stat"), n).unwrap()
}

/// Field `n` of a stat file; `None` when it is gone (a thread that ended meanwhile).
fn stat_file_field(path: &str, n: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which ends at the last ')', start at field 3.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    Some(rest.split_whitespace().nth(n - 3).unwrap().parse().unwrap())
}

#[tokio::test]
async fn a_session_from_a_spare_helper_runs_at_normal_priority() {
    let fixture = Fixture::new();
    // The second session asks for a spare once its first command is done; the third takes it.
    for _ in 0..2 {
        let session = fixture.start().await;
        run(&session, "true").await;
        session.close().await.unwrap();
    }
    // Time for the spare to start, even at the lowest priority on a busy machine.
    tokio::time::sleep(SPARE_READY).await;
    let asked = ticks_now();
    let session = fixture.start().await;
    let init = session.init_pid();
    // Its init existed before this session was asked for: it was the spare.
    assert!(
        stat_field(init, 22) < asked,
        "the third session's init is not the spare"
    );
    // A spare waits at nice 19 (when the host is root); the session must not.
    assert_eq!(stat_field(init, 19), 0);
    let out = run(&session, "nice; cut -d' ' -f19 /proc/1/stat").await;
    assert_eq!(out.output, "0\n0\n");
    // Every thread of the init too (nice values are per thread). The thread that ran the last
    // command may end while they are listed.
    for thread in std::fs::read_dir(format!("/proc/{init}/task")).unwrap() {
        let Ok(thread) = thread else { continue };
        let path = format!("/proc/{init}/task/{}/stat", thread.file_name().display());
        if let Some(nice) = stat_file_field(&path, 19) {
            assert_eq!(nice, 0, "{path}");
        }
    }
    session.close().await.unwrap();
}

#[tokio::test]
async fn warming_up_prepares_the_first_session() {
    let fixture = Fixture::new();
    fixture.backend.warm_up();
    // Time for the spare to start, even at the lowest priority on a busy machine.
    tokio::time::sleep(SPARE_READY).await;
    let asked = ticks_now();
    let session = fixture.start().await;
    let init = session.init_pid();
    assert!(
        stat_field(init, 22) < asked,
        "the first session did not take the spare"
    );
    assert_eq!(stat_field(init, 19), 0);
    run(&session, "true").await;
    session.close().await.unwrap();
    // The first session asked for the next spare once its command was done.
    // Time for the spare to start, even at the lowest priority on a busy machine.
    tokio::time::sleep(SPARE_READY).await;
    let asked = ticks_now();
    let session = fixture.start().await;
    assert!(
        stat_field(session.init_pid(), 22) < asked,
        "no spare for the second session"
    );
    session.close().await.unwrap();
}
