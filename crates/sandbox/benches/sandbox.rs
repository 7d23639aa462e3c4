//! Side-by-side timings of the namespaced sandbox: session start plus `true` (with the spare
//! helper a busy backend keeps, without one, and a warmed-up backend's first) against
//! bubblewrap with equivalent binds, `true` into a live session, a long-lived process spawned
//! into one (and a line's round trip through its pipes), and a session over a 10,000-file
//! workspace. Prints the median and the 10th and 90th percentiles over N runs.
//!
//! `cargo bench -p nightshift-sandbox --bench sandbox -- [--runs N]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nightshift_sandbox::{
    ExecRequest, HelperCommand, Namespaced, NamespacedConfig, Sandbox, SandboxSession,
    SessionOptions, SessionSpec, SpawnRequest,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

/// [`common::summary`] of durations.
fn summary(name: &str, samples: Vec<Duration>) {
    common::summary(
        name,
        samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect(),
    );
}

fn bwrap_args(workspace: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    args.extend(["--tmpfs", "/"].map(String::from));
    for dir in ["/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/lib32"] {
        let path = Path::new(dir);
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = std::fs::read_link(path).unwrap_or_default();
                args.extend(["--symlink".into(), target.display().to_string(), dir.into()]);
            }
            Ok(_) => args.extend(["--ro-bind".into(), dir.into(), dir.into()]),
            Err(_) => {}
        }
    }
    args.extend(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"].map(String::from));
    args.extend([
        "--bind".into(),
        workspace.display().to_string(),
        "/workspace".into(),
    ]);
    args.extend(["--chdir", "/workspace", "true"].map(String::from));
    args
}

fn make_repo(dir: &Path, files: usize) {
    for i in 0..files {
        let sub = dir.join(format!("d{:03}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&sub).unwrap();
        }
        std::fs::write(sub.join(format!("f{i}.rs")), format!("// file {i}\n")).unwrap();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs = common::runs(50);
    let state = tempfile::tempdir().unwrap();
    let small = tempfile::tempdir().unwrap();
    make_repo(small.path(), 10);
    let large = tempfile::tempdir().unwrap();
    make_repo(large.path(), 10_000);
    let helper = HelperCommand::new(env!("CARGO_BIN_EXE_nightshift-sandbox-helper"));
    let backend = Namespaced::new(NamespacedConfig::new(helper, state.path()));
    let cancel = CancellationToken::new();
    let spec = |dir: &Path| SessionSpec::new(dir);
    println!(
        "runs per measurement: {runs}; euid {}",
        nix::unistd::geteuid()
    );

    // Warm up the page cache and the helper binary.
    for _ in 0..3 {
        let s = backend
            .start_with(spec(small.path()), SessionOptions::default())
            .await
            .unwrap();
        s.exec(ExecRequest::new("true"), &cancel).await.unwrap();
        s.close().await.unwrap();
    }

    let mut start_exec = Vec::new();
    let mut full = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let s = backend
            .start_with(spec(small.path()), SessionOptions::default())
            .await
            .unwrap();
        s.exec(ExecRequest::new("true"), &cancel).await.unwrap();
        start_exec.push(t.elapsed());
        s.close().await.unwrap();
        full.push(t.elapsed());
    }
    summary("namespaced: start + exec true", start_exec);
    summary("namespaced: start + exec true + close", full);

    // Without a spare helper: every session is a new backend's first. Then a new backend warmed
    // up (as a worker or a task's process does when it starts), its first session once the
    // spare is ready.
    for (name, warm) in [
        ("namespaced, no spare helper: start + exec true", false),
        ("namespaced, warmed up: first start + exec true", true),
    ] {
        let mut first = Vec::new();
        for _ in 0..runs {
            let helper = HelperCommand::new(env!("CARGO_BIN_EXE_nightshift-sandbox-helper"));
            let fresh = Namespaced::new(NamespacedConfig::new(helper, state.path()));
            if warm {
                fresh.warm_up();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let t = Instant::now();
            let s = fresh
                .start_with(spec(small.path()), SessionOptions::default())
                .await
                .unwrap();
            s.exec(ExecRequest::new("true"), &cancel).await.unwrap();
            first.push(t.elapsed());
            s.close().await.unwrap();
        }
        summary(name, first);
    }

    if Command::new("bwrap").arg("--version").output().is_ok() {
        let args = bwrap_args(small.path());
        let mut bwrap = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            let status = Command::new("bwrap")
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            bwrap.push(t.elapsed());
            assert!(status.success());
        }
        summary("bwrap --unshare-all, equivalent binds: true", bwrap);
    } else {
        println!("bwrap not installed: `apt-get install -y bubblewrap` to compare");
    }

    let session = backend
        .start_with(spec(small.path()), SessionOptions::default())
        .await
        .unwrap();
    let mut exec = Vec::new();
    for _ in 0..runs * 4 {
        let t = Instant::now();
        session
            .exec(ExecRequest::new("true"), &cancel)
            .await
            .unwrap();
        exec.push(t.elapsed());
    }
    summary("exec true into a live session", exec);

    // A long-lived process (an MCP server's way in): spawned, and answering its first line;
    // then one line's round trip through its pipes.
    let mut spawn_first = Vec::new();
    let mut line_trip = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let spawned = session.spawn(SpawnRequest::new("exec cat")).await.unwrap();
        let (mut stdin, mut lines) = (spawned.stdin, BufReader::new(spawned.stdout).lines());
        stdin.write_all(b"ping\n").await.unwrap();
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ping"));
        spawn_first.push(t.elapsed());
        for _ in 0..4 {
            let t = Instant::now();
            stdin.write_all(b"ping\n").await.unwrap();
            assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ping"));
            line_trip.push(t.elapsed());
        }
        drop(stdin);
        spawned.handle.wait().await;
    }
    summary(
        "spawn cat into a live session + first line back",
        spawn_first,
    );
    summary(
        "a line through a spawned process's pipes and back",
        line_trip,
    );
    session.close().await.unwrap();

    let mut large_start = Vec::new();
    let mut large_list = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let s = backend
            .start_with(spec(large.path()), SessionOptions::default())
            .await
            .unwrap();
        s.exec(ExecRequest::new("true"), &cancel).await.unwrap();
        large_start.push(t.elapsed());
        let t = Instant::now();
        let out = s
            .exec(ExecRequest::new("find . -type f | wc -l"), &cancel)
            .await
            .unwrap();
        large_list.push(t.elapsed());
        assert_eq!(out.output.trim(), "10000");
        s.close().await.unwrap();
    }
    summary("10,000-file workspace: start + exec true", large_start);
    summary("10,000-file workspace: find over the overlay", large_list);
}
