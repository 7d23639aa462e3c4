//! The sandbox as an unprivileged user gets it: no root to drop, no cgroups to create (limits
//! fall back to rlimits), and the host user mapped to the sandbox user, so that files written
//! from either side belong to both. Run as root, the test re-runs itself as `nobody`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use nightshift_sandbox::{
    Namespaced, NamespacedConfig, SandboxSession, SessionOptions, SessionSpec,
};

const STATE: &str = "NIGHTSHIFT_SANDBOX_TEST_STATE";
const WORKSPACE: &str = "NIGHTSHIFT_SANDBOX_TEST_WORKSPACE";

#[test]
fn works_for_an_unprivileged_user() {
    if !nix::unistd::geteuid().is_root() {
        // Already unprivileged: the child test below does the work when given its directories.
        return;
    }
    let Ok(setpriv) = which("setpriv") else {
        eprintln!("setpriv is missing: skipping the unprivileged run");
        return;
    };
    let base = tempfile::tempdir().unwrap();
    let state = base.path().join("state");
    let workspace = base.path().join("workspace");
    std::fs::create_dir_all(workspace.join("src")).unwrap();
    std::fs::write(workspace.join("README.md"), "unprivileged host\n").unwrap();
    std::fs::create_dir(&state).unwrap();
    for path in [
        base.path().to_path_buf(),
        state.clone(),
        workspace.clone(),
        workspace.join("src"),
        workspace.join("README.md"),
    ] {
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    }
    let output = Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "unprivileged_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(STATE, &state)
        .env(WORKSPACE, &workspace)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    assert!(text.contains("unprivileged run complete"), "{text}");
    // Nothing left behind by the unprivileged host.
    assert!(std::fs::read_dir(&state).unwrap().next().is_none());
    assert_eq!(
        std::fs::read_to_string(workspace.join("README.md")).unwrap(),
        "unprivileged host\n"
    );
}

fn which(name: &str) -> Result<PathBuf, ()> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|p| p.exists())
        .ok_or(())
}

#[tokio::test]
async fn unprivileged_child() {
    let (Some(state), Some(workspace)) = (std::env::var_os(STATE), std::env::var_os(WORKSPACE))
    else {
        return;
    };
    assert!(!nix::unistd::geteuid().is_root());
    let state = PathBuf::from(state);
    let workspace = PathBuf::from(workspace);
    let backend = Namespaced::new(NamespacedConfig::new(helper(), &state));

    // Setup runs as root inside, with the one id mapped: its HOME is kept, the system stays
    // read-only, and later sessions own what it made.
    let setup = backend
        .start_with(
            SessionSpec::new(&workspace),
            SessionOptions {
                root: true,
                ..SessionOptions::default()
            },
        )
        .await
        .unwrap();
    let out = run(
        &setup,
        "id -u; echo kept > ~/from-setup; touch /usr/x 2>/dev/null || echo usr-read-only; \
         ls /proc/1/fd >/dev/null 2>&1 || echo init-closed",
    )
    .await;
    assert_eq!(out.output, "0\nusr-read-only\ninit-closed\n");
    let layer = state.parent().unwrap().join("layer");
    setup.close_keeping_changes(&layer).await.unwrap();
    let spec = SessionSpec {
        layers: vec![layer.clone()],
        ..SessionSpec::new(&workspace)
    };
    let later = backend
        .start_with(spec, SessionOptions::default())
        .await
        .unwrap();
    let out = run(&later, "cat ~/from-setup; stat -c %u ~/from-setup").await;
    assert_eq!(out.output, "kept\n1000\n");
    later.close().await.unwrap();
    std::fs::remove_dir_all(&layer).unwrap();

    let session = backend
        .start_with(SessionSpec::new(workspace), SessionOptions::default())
        .await
        .unwrap();
    let report = session.report().join("\n");
    println!("{report}");
    assert!(report.contains("landlock: fully enforced"), "{report}");

    let out = run(
        &session,
        "id -u; cat README.md; echo inside > made-inside.txt",
    )
    .await;
    assert_eq!(out.output, "1000\nunprivileged host\n");
    assert_eq!(read(&path_of(&session, "made-inside.txt")), "inside\n");
    // The host user is the sandbox user: it can create files through workspace().
    std::fs::write(path_of(&session, "made-outside.txt"), "outside\n").unwrap();
    let out = run(
        &session,
        "cat made-outside.txt; stat -c %u made-outside.txt; echo more >> made-outside.txt",
    )
    .await;
    assert_eq!(out.output, "outside\n1000\n");
    assert_eq!(
        read(&path_of(&session, "made-outside.txt")),
        "outside\nmore\n"
    );

    // Without cgroups, a fork bomb meets RLIMIT_NPROC and its timeout; the session survives.
    let out = run_for(&session, ":(){ :|:& };:", Duration::from_secs(3)).await;
    println!("fork bomb without cgroups: {:?}", out.status);
    let out = run(&session, "echo alive").await;
    assert_eq!(out.output, "alive\n");

    let init = session.init_pid();
    session.close().await.unwrap();
    assert!(!alive(init));
    println!("unprivileged run complete");
}
