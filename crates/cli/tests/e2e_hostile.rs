//! A hostile repository and a hostile agent against the host side, with the real binary, the
//! real sandbox and a scripted model: links to a host file where the host reads lockfiles,
//! AGENTS.md, ignore files and untracked files to copy; FIFOs, devices and links out where the
//! agent's file tools look; and repository configuration that would run programs in host git.
//! Every task must end promptly, never show the host file, and never run the repository's
//! hooks. What the repository's code prints (and what its agent says) is shown on the
//! terminal, never obeyed by it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// What the host file holds; no event, request or layer manifest may contain it.
const HOST_SECRET: &str = "HOST-ONLY-7f3a9c\n*.sh\n";

/// Runs the binary, killing it and failing the test when it has not ended within two minutes:
/// a host thread blocked on a FIFO would otherwise hang the test.
async fn run_within(command: Command) -> Output {
    let mut command = command;
    tokio::task::spawn_blocking(move || {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                child.kill().unwrap();
                let out = child.wait_with_output().unwrap();
                panic!("nightshift did not end: {}", stderr(&out));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

fn run_args(repo: &Path) -> Vec<String> {
    [
        "run",
        "--repo",
        path_str(repo),
        "--model",
        "openai:m",
        "--wait",
        "--json",
        "fix add",
    ]
    .map(String::from)
    .to_vec()
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

fn tool_outputs<'a>(events: &'a [Value], tool: &str) -> Vec<(&'a str, bool)> {
    events
        .iter()
        .filter(|e| e["type"] == "tool_finished" && e["tool"] == tool)
        .map(|e| (e["output"].as_str().unwrap(), e["ok"].as_bool().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_repository_and_agent_get_nothing_of_the_host_and_hang_nothing() {
    let outer = tempfile::tempdir().unwrap();
    let secret = outer.path().join("host-secret.txt");
    std::fs::write(&secret, HOST_SECRET).unwrap();
    let repo = buggy_repo();
    let root = repo.path();
    std::fs::write(
        root.join(".nightshift.toml"),
        "[environment]\nsetup = \"true\"\ncopy = [\"pipe\", \"host-link\"]\n",
    )
    .unwrap();
    for name in ["Cargo.lock", "AGENTS.md", ".gitignore"] {
        std::os::unix::fs::symlink(&secret, root.join(name)).unwrap();
    }
    git(root, &["add", "."]);
    git(root, &["commit", "-q", "-m", "links to the host"]);
    // Untracked, for environment.copy.
    mkfifo(&root.join("pipe"));
    std::os::unix::fs::symlink(&secret, root.join("host-link")).unwrap();

    let call = |name: &str, arguments: Value| json!({"reply": {"tool_calls": [{"name": name, "arguments": arguments}]}});
    let steps = json!([
        call(
            "shell",
            json!({"command": "mkfifo ws-pipe .ignore && ln -s /etc/shadow shadow-link && ln -s /dev/zero zero-link && echo made"})
        ),
        call("list_files", json!({})),
        call("read_file", json!({"path": "ws-pipe"})),
        call("read_file", json!({"path": "zero-link"})),
        call("read_file", json!({"path": "shadow-link"})),
        call("search", json!({"pattern": "add", "path": "ws-pipe"})),
        call("search", json!({"pattern": "subtracts|A \\+ B"})),
        call("write_file", json!({"path": "ws-pipe", "content": "x"})),
        call(
            "shell",
            json!({"command": "rm -f ws-pipe .ignore shadow-link zero-link"})
        ),
        call(
            "edit_file",
            json!({"path": "calc.sh", "old_string": "$(($1 - $2))", "new_string": "$(($1 + $2))"})
        ),
        call("finish", json!({"summary": "Fix add"})),
    ]);
    let (ns, server) = Nightshift::with_script(script(steps)).await;
    let out = run_within(
        ns.command(
            &run_args(root)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        ),
    )
    .await;
    let task: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|err| panic!("no task ({err}): {}", stderr(&out)));
    assert_eq!(task["state"], "succeeded", "{task}\n{}", stderr(&out));
    let events = ns.events(task["id"].as_str().unwrap()).await;

    let listed = tool_outputs(&events, "list_files");
    // The `.gitignore` link (whose target would ignore `*.sh`) and the `.ignore` FIFO are not
    // rules; FIFOs are not listed.
    assert_eq!(listed.len(), 1);
    assert!(listed[0].1 && listed[0].0.contains("calc.sh"), "{listed:?}");
    assert!(!listed[0].0.contains("ws-pipe"), "{listed:?}");
    let reads = tool_outputs(&events, "read_file");
    assert!(
        !reads[0].1 && reads[0].0.contains("`ws-pipe` is a FIFO"),
        "{reads:?}"
    );
    for read in &reads[1..] {
        assert!(
            !read.1 && read.0.contains("outside the workspace"),
            "{reads:?}"
        );
    }
    let searches = tool_outputs(&events, "search");
    assert!(
        !searches[0].1 && searches[0].0.contains("is a FIFO"),
        "{searches:?}"
    );
    assert!(
        searches[1].1 && searches[1].0.contains("calc.sh:2:"),
        "{searches:?}"
    );
    let writes = tool_outputs(&events, "write_file");
    assert!(
        !writes[0].1 && writes[0].0.contains("is a FIFO"),
        "{writes:?}"
    );

    // environment.copy said why it copied neither.
    let warnings: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "warning")
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(
        warnings.iter().any(|w| w.contains("`pipe` is a FIFO"))
            && warnings
                .iter()
                .any(|w| w.contains("`host-link` leads outside")),
        "{warnings:?}"
    );

    // The host file is nowhere: not in the events, not in what the model was sent, not hashed
    // into the setup layer's key.
    let secret_line = HOST_SECRET.lines().next().unwrap();
    let logged = serde_json::to_string(&events).unwrap();
    assert!(!logged.contains(secret_line));
    let sent = serde_json::to_string(&server.requests()).unwrap();
    assert!(!sent.contains(secret_line));
    let manifest = find_file(&ns.home.path().join("layers"), "manifest.json").unwrap();
    let manifest: Value = serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    assert_eq!(
        manifest["inputs"]["file:Cargo.lock"],
        "outside the working copy"
    );

    // The work came back.
    let branch = task["branch"].as_str().unwrap();
    let calc = git(root, &["show", &format!("{branch}:calc.sh")]);
    assert!(calc.contains("$(($1 + $2))"), "{calc}");
}

fn find_file(dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if entry.file_type().ok()?.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if entry.file_name() == name {
            return Some(path);
        }
    }
    None
}

/// An executable that appends its name to `marker` when something runs it.
fn marker_script(path: &Path, marker: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        path,
        format!("#!/bin/sh\necho \"$0\" >> {}\n", marker.display()),
    )
    .unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn host_git_runs_none_of_the_repositorys_hooks_and_ignores_inherited_git_variables() {
    let repo = buggy_repo();
    let root = repo.path();
    let outer = tempfile::tempdir().unwrap();
    let marker = outer.path().join("ran");
    let fsmonitor = outer.path().join("fsmonitor");
    marker_script(&fsmonitor, &marker);
    for hook in [
        "post-checkout",
        "reference-transaction",
        "post-merge",
        "pre-auto-gc",
        "post-index-change",
    ] {
        marker_script(&root.join(".git/hooks").join(hook), &marker);
    }
    git(root, &["config", "core.fsmonitor", path_str(&fsmonitor)]);

    let (mut ns, _server) = Nightshift::with_script(fixing_script()).await;
    // Variables a parent git (a hook, an alias) would leave behind; they must not steer host git.
    let elsewhere = outer.path().join("elsewhere");
    for name in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
    ] {
        ns.env.push((name.into(), path_str(&elsewhere).into()));
    }
    ns.env.push((
        "GIT_CONFIG_PARAMETERS".into(),
        "'core.hookspath'='.git/hooks'".into(),
    ));
    let out = run_within(
        ns.command(
            &run_args(root)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        ),
    )
    .await;
    let task: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|err| panic!("no task ({err}): {}", stderr(&out)));
    assert_eq!(task["state"], "succeeded", "{task}\n{}", stderr(&out));
    let branch = task["branch"].as_str().unwrap();
    let refs = git(
        root,
        &[
            "-c",
            "core.hooksPath=/dev/null",
            "for-each-ref",
            "--format=%(refname:short)",
        ],
    );
    assert!(refs.lines().any(|r| r == branch), "{refs}");
    assert!(
        !marker.exists(),
        "host git ran the repository's programs: {}",
        std::fs::read_to_string(&marker).unwrap_or_default()
    );
    assert!(!elsewhere.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_repository_prints_cannot_drive_the_terminal() {
    let repo = repo_with(&[(
        "noisy.sh",
        // A window title, a clipboard write (OSC 52), a screen clear, a bidi override.
        "printf 'before\\033]0;owned\\007\\033]52;c;cHduZWQ=\\007\\033[2Jafter \\342\\200\\256txt\\n'\n",
    )]);
    let (ns, _model) = Nightshift::with_script(script(json!([
        shell("sh noisy.sh"),
        finish("Done.\u{1b}[8mhidden\u{1b}[0m"),
    ])))
    .await;
    let (out, task) = ns.wait_task(repo.path(), "Run the noisy script").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let id = task["id"].as_str().unwrap();
    // The record keeps what was printed, as it was.
    let events = ns.events(id).await;
    assert!(shell_output(&events).contains("\u{1b}]52;c;"), "{events:?}");
    for args in [vec!["logs", id], vec!["show", id], vec!["ls"]] {
        let text = stdout(&ns.run(&args).await);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}') && !text.contains('\u{202E}'),
            "{args:?} let a control character through: {text:?}"
        );
    }
    let logs = stdout(&ns.run(&["logs", id]).await);
    assert!(
        logs.contains("before\u{FFFD}]0;owned\u{FFFD}\u{FFFD}]52;c;cHduZWQ=\u{FFFD}\u{FFFD}[2Jafter \u{FFFD}txt"),
        "{logs}"
    );
    assert!(logs.contains("Done.\u{FFFD}[8mhidden"), "{logs}");
}
