//! Toolchains from the host: `[sandbox]` of config.toml binds them into every sandbox (the real
//! binary, the real sandbox), refuses credential stores, and `doctor` and `env check` say what to
//! bind when a tool of the host would be missing inside.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;

/// A directory outside /tmp: the sandbox's own /tmp would hide a bind there, so they are
/// refused.
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn executable(path: &Path, script: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, script).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn write_config(ns: &Nightshift, text: &str) {
    std::fs::write(ns.home.path().join("config.toml"), text).unwrap();
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bound_toolchain_runs_inside_sandbox_exec() {
    let toolchain = scratch();
    executable(
        &toolchain.path().join("bin/mytool"),
        "#!/bin/sh\necho \"mytool ran with $*\"\n",
    );
    let ns = Nightshift::new("http://127.0.0.1:9");
    let dir = toolchain.path().display();
    write_config(
        &ns,
        &format!("[sandbox]\nbinds = [\"{dir}\"]\npath = [\"{dir}/bin\"]\n"),
    );
    let workspace = tempfile::tempdir().unwrap();
    let out = ns
        .run(&[
            "sandbox",
            "exec",
            "--workspace",
            workspace.path().to_str().unwrap(),
            "--",
            "mytool a b && (echo x > \"$(command -v mytool)\") 2>/dev/null || echo read-only",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "mytool ran with a b\nread-only\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hosts_rustup_toolchain_runs_cargo_inside() {
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
    if !home.join(".rustup/toolchains").is_dir() || !home.join(".cargo/bin/cargo").is_file() {
        eprintln!(
            "skipped: no rustup toolchain under {} (~/.rustup, ~/.cargo/bin)",
            home.display()
        );
        return;
    }
    let ns = Nightshift::new("http://127.0.0.1:9");
    write_config(
        &ns,
        "[sandbox]\nbinds = [\"~/.rustup\", \"~/.cargo/bin\"]\npath = [\"~/.cargo/bin\"]\n",
    );
    let workspace = tempfile::tempdir().unwrap();
    let out = ns
        .run(&[
            "sandbox",
            "exec",
            "--workspace",
            workspace.path().to_str().unwrap(),
            "--",
            "cargo --version && echo RUSTUP_HOME=$RUSTUP_HOME CARGO_HOME=$CARGO_HOME",
        ])
        .await;
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("cargo 1."), "{text}");
    assert!(
        text.contains(&format!(
            "RUSTUP_HOME={} CARGO_HOME=/home/agent/.cargo",
            std::fs::canonicalize(home.join(".rustup"))
                .unwrap()
                .display()
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_credential_bind_stops_sandbox_exec_with_the_reason() {
    let host = scratch();
    let home = host.path().join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::write(home.join(".ssh/id_ed25519"), "secret").unwrap();
    let mut ns = Nightshift::new("http://127.0.0.1:9");
    ns.env.push(("HOME".into(), home.display().to_string()));
    write_config(&ns, "[sandbox]\nbinds = [\"~/.ssh\"]\n");
    let workspace = tempfile::tempdir().unwrap();
    let out = ns
        .run(&[
            "sandbox",
            "exec",
            "--workspace",
            workspace.path().to_str().unwrap(),
            "--",
            "echo started",
        ])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!stdout(&out).contains("started"));
    let err = stderr(&out);
    assert!(err.contains("binds entry `~/.ssh`"), "{err}");
    assert!(err.contains("credentials: no sandbox may see it"), "{err}");
    assert!(err.contains("config.toml"), "{err}");
    assert!(err.contains("hint: remove it from binds"), "{err}");
}

/// A HOME with a rustup proxy `cargo` in `~/.cargo/bin` and a rustup home, none of it visible
/// to the sandbox without binds; and the PATH that finds it first.
fn rustup_host() -> (tempfile::TempDir, PathBuf, String) {
    let host = scratch();
    let home = host.path().join("home");
    executable(
        &home.join(".cargo/bin/cargo"),
        "#!/bin/sh\necho fake cargo\n",
    );
    executable(&home.join(".cargo/bin/rustup"), "#!/bin/sh\n");
    std::fs::create_dir_all(home.join(".rustup/toolchains/stable-x86_64-unknown-linux-gnu"))
        .unwrap();
    std::fs::write(
        home.join(".rustup/settings.toml"),
        "profile = \"default\"\n",
    )
    .unwrap();
    let path = format!("{}:/usr/bin:/bin", home.join(".cargo/bin").display());
    (host, home, path)
}

const SUGGESTED: &str =
    "  [sandbox]\n  binds = [\"~/.rustup\", \"~/.cargo/bin\"]\n  path = [\"~/.cargo/bin\"]\n";

#[tokio::test(flavor = "multi_thread")]
async fn doctor_and_env_check_print_the_binds_a_hidden_tool_needs() {
    let (_host, home, path) = rustup_host();
    let mut ns = Nightshift::new("http://127.0.0.1:9");
    ns.env.push(("HOME".into(), home.display().to_string()));
    ns.env.push(("PATH".into(), path));
    ns.env.push(("RUSTUP_HOME".into(), String::new()));

    let out = ns.run(&["doctor"]).await;
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(
        text.contains(&format!(
            "cargo: {}/.cargo/bin/cargo (a rustup proxy); the sandbox finds",
            home.display()
        )),
        "{text}"
    );
    assert!(text.contains(SUGGESTED), "{text}");

    let repo = tempfile::tempdir().unwrap();
    std::fs::write(
        repo.path().join("Cargo.toml"),
        "[package]\nname = \"x\"\nversion = \"0.1.0\"\n",
    )
    .unwrap();
    git(repo.path(), &["init", "-q", "-b", "main"]);
    let out = ns
        .run(&["env", "check", "--repo", repo.path().to_str().unwrap()])
        .await;
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains("ecosystems: Rust (Cargo)"), "{text}");
    assert!(text.contains(SUGGESTED), "{text}");
    // JSON stays one document on stdout; the advice goes to stderr.
    let out = ns
        .run(&[
            "env",
            "check",
            "--repo",
            repo.path().to_str().unwrap(),
            "--json",
        ])
        .await;
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
    assert!(stderr(&out).contains(SUGGESTED), "{}", stderr(&out));

    // Configured as suggested, nothing is left to say.
    write_config(&ns, SUGGESTED.replace("  ", "").as_str());
    let out = ns.run(&["doctor"]).await;
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(!text.contains("binds ="), "{text}");
    assert!(
        text.contains("Toolchains: the sandbox finds the same"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn env_explain_lists_each_bind_as_a_cache_input() {
    let toolchain = scratch();
    executable(&toolchain.path().join("bin/mytool"), "#!/bin/sh\n");
    let ns = Nightshift::new("http://127.0.0.1:9");
    let dir = std::fs::canonicalize(toolchain.path()).unwrap();
    write_config(
        &ns,
        &format!("[sandbox]\nbinds = [\"{}\"]\n", dir.display()),
    );
    let repo = buggy_repo_with_config("[environment]\nsetup = \"true\"\n");
    let out = ns
        .run(&["env", "explain", "--repo", repo.path().to_str().unwrap()])
        .await;
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains(&format!("bind:{}", dir.display())), "{text}");
}
