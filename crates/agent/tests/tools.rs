//! The agent's tools against real things: temp-dir workspaces, the unisolated sandbox, real git.
//! This file: the catalogue and dispatcher, shell, read_file and path safety.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

use std::time::Duration;

use nightshift_agent::tools::{self, TOOL_NAMES, ToolLimits};
use serde_json::json;

// ---- the catalogue and the dispatcher ----

#[test]
fn specs_list_the_nine_tools_in_a_stable_order() {
    let specs = tools::specs();
    let names: Vec<&str> = specs.iter().map(|spec| spec.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "shell",
            "read_file",
            "write_file",
            "edit_file",
            "apply_patch",
            "search",
            "list_files",
            "update_plan",
            "finish"
        ]
    );
    assert_eq!(names, TOOL_NAMES);
    for spec in &specs {
        assert_eq!(spec.parameters["type"], "object", "{}", spec.name);
        assert_eq!(
            spec.parameters["additionalProperties"], false,
            "{}",
            spec.name
        );
        assert!(
            spec.description.len() > 100,
            "{} needs a real description",
            spec.name
        );
    }
    let first = serde_json::to_string(&specs).unwrap();
    let second = serde_json::to_string(&tools::specs()).unwrap();
    assert_eq!(first, second);
}

#[tokio::test]
async fn an_unknown_tool_lists_the_known_ones() {
    let fx = Fixture::new().await;
    let out = fx.call("grep", json!({})).await;
    assert_failed(
        &out,
        &["unknown tool `grep`", "shell", "apply_patch", "finish"],
    );
}

#[tokio::test]
async fn malformed_arguments_name_the_tool_the_problem_and_the_fields() {
    let fx = Fixture::new().await;
    let out = fx.call_raw("read_file", "{\"path\": ").await;
    assert_failed(
        &out,
        &[
            "read_file: invalid arguments",
            "\"path\": string",
            "\"offset\"?",
        ],
    );

    let out = fx.call("read_file", json!({"file": "a.txt"})).await;
    assert_failed(&out, &["unknown field `file`", "\"path\": string"]);

    let out = fx
        .call("edit_file", json!({"path": "a.txt", "old_string": "x"}))
        .await;
    assert_failed(&out, &["edit_file", "missing field `new_string`"]);

    let out = fx
        .call("read_file", json!({"path": "a.txt", "offset": "ten"}))
        .await;
    assert_failed(&out, &["invalid type"]);
}

#[tokio::test]
async fn lenient_about_empty_and_double_encoded_arguments() {
    let fx = Fixture::new().await;
    fx.write("a.txt", "hello\n");
    assert_ok(&fx.call_raw("list_files", "").await);
    let twice = serde_json::to_string(&json!({"path": "a.txt"}).to_string()).unwrap();
    let out = fx.call_raw("read_file", &twice).await;
    assert_ok(&out);
    assert!(out.text.contains("hello"));
}

// ---- shell ----

#[tokio::test]
async fn shell_runs_in_the_workspace_and_reports_the_exit_code() {
    let fx = Fixture::new().await;
    let out = fx
        .call("shell", json!({"command": "pwd; echo oops >&2"}))
        .await;
    assert_ok(&out);
    assert_eq!(out.exit_code, Some(0));
    assert!(
        out.text.starts_with(fx.root().to_str().unwrap()),
        "{}",
        out.text
    );
    assert!(out.text.contains("oops"));
    assert!(out.text.ends_with("[exit code: 0]"), "{}", out.text);

    let out = fx
        .call("shell", json!({"command": "echo failing; exit 3"}))
        .await;
    assert!(!out.ok);
    assert_eq!(out.exit_code, Some(3));
    assert!(
        out.text.ends_with("failing\n[exit code: 3]"),
        "{}",
        out.text
    );
}

#[tokio::test]
async fn shell_timeouts_are_reported_and_clamped() {
    let limits = ToolLimits {
        max_shell_timeout: Duration::from_secs(1),
        ..ToolLimits::default()
    };
    let fx = Fixture::with_limits(limits).await;
    let out = fx
        .call(
            "shell",
            json!({"command": "echo started; sleep 30", "timeout_secs": 60}),
        )
        .await;
    assert!(!out.ok);
    assert_eq!(out.exit_code, Some(124));
    assert!(out.text.contains("started"));
    assert!(
        out.text
            .contains("timeout_secs 60 is above the maximum; used 1s"),
        "{}",
        out.text
    );
    assert!(out.text.contains("[timed out after 1s"), "{}", out.text);

    let out = fx
        .call("shell", json!({"command": "true", "timeout_secs": 0}))
        .await;
    assert_failed(&out, &["at least 1"]);
    let out = fx.call("shell", json!({"command": "  "})).await;
    assert_failed(&out, &["`command` is empty"]);
}

#[tokio::test]
async fn shell_output_is_cut_in_the_middle_but_keeps_the_status_line() {
    let limits = ToolLimits {
        output_bytes: 2000,
        ..ToolLimits::default()
    };
    let fx = Fixture::with_limits(limits).await;
    let out = fx
        .call("shell", json!({"command": "seq 1 50000; echo the-end"}))
        .await;
    assert_ok(&out);
    assert!(out.text.len() <= 2000, "{} bytes", out.text.len());
    assert!(out.text.starts_with("1\n2\n"));
    assert!(out.text.contains("omitted"), "{}", out.text);
    assert!(out.text.contains("the-end"));
    assert!(out.text.contains("bytes were left out of the middle"));
    assert!(out.text.ends_with("[exit code: 0]"));
}

#[tokio::test]
async fn shell_reports_cancellation() {
    let fx = Fixture::new().await;
    let trigger = fx.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        trigger.cancel();
    });
    let out = fx.call("shell", json!({"command": "sleep 30"})).await;
    assert!(!out.ok);
    assert!(out.text.ends_with("[cancelled]"), "{}", out.text);
}

// ---- read_file ----

#[tokio::test]
async fn read_file_numbers_lines_and_pages() {
    let fx = Fixture::new().await;
    let content: String = (1..=10).map(|i| format!("line {i}\n")).collect();
    fx.write("src/ten.txt", &content);

    let out = fx.call("read_file", json!({"path": "src/ten.txt"})).await;
    assert_ok(&out);
    assert!(
        out.text.starts_with("     1\tline 1\n     2\tline 2\n"),
        "{}",
        out.text
    );
    assert!(
        out.text.ends_with("    10\tline 10\n"),
        "whole file needs no note: {}",
        out.text
    );

    let out = fx
        .call(
            "read_file",
            json!({"path": "src/ten.txt", "offset": 3, "limit": 2}),
        )
        .await;
    assert_ok(&out);
    assert_eq!(
        out.text,
        "     3\tline 3\n     4\tline 4\n[file has 10 lines; showing 3-4; call again with offset=5]"
    );

    let out = fx
        .call("read_file", json!({"path": "src/ten.txt", "offset": 9}))
        .await;
    assert!(
        out.text
            .ends_with("    10\tline 10\n[file has 10 lines; showing 9-10]"),
        "{}",
        out.text
    );

    let out = fx
        .call("read_file", json!({"path": "src/ten.txt", "offset": 11}))
        .await;
    assert_failed(&out, &["offset 11 is past the end", "10 lines"]);

    let absolute = fx.root().join("src/ten.txt");
    let out = fx
        .call("read_file", json!({"path": absolute, "limit": 1}))
        .await;
    assert_ok(&out);
    assert!(
        out.text
            .starts_with("     1\tline 1\n[file has 10 lines; showing 1-1")
    );
}

#[tokio::test]
async fn read_file_stops_at_the_byte_limit() {
    let limits = ToolLimits {
        read_bytes: 1000,
        ..ToolLimits::default()
    };
    let fx = Fixture::with_limits(limits).await;
    let content: String = (1..=500)
        .map(|i| format!("this is line number {i}\n"))
        .collect();
    fx.write("big.txt", &content);
    let out = fx.call("read_file", json!({"path": "big.txt"})).await;
    assert_ok(&out);
    assert!(out.text.len() < 1100, "{} bytes", out.text.len());
    assert!(
        out.text.contains("[file has 500 lines; showing 1-"),
        "{}",
        out.text
    );
    assert!(
        !out.text.contains("omitted"),
        "paging, not cutting: {}",
        out.text
    );
}

#[tokio::test]
async fn read_file_explains_directories_binaries_empty_and_missing_files() {
    let fx = Fixture::new().await;
    fx.write("dir/a.txt", "a\n");
    std::fs::write(fx.root().join("blob.bin"), b"\x7fELF\x00\x01\x02").unwrap();
    fx.write("empty.txt", "");

    assert_failed(
        &fx.call("read_file", json!({"path": "dir"})).await,
        &["directory", "list_files"],
    );
    assert_failed(
        &fx.call("read_file", json!({"path": "blob.bin"})).await,
        &["binary file"],
    );
    let out = fx.call("read_file", json!({"path": "empty.txt"})).await;
    assert_ok(&out);
    assert!(out.text.contains("is empty"));
    assert_failed(
        &fx.call("read_file", json!({"path": "nope.txt"})).await,
        &["does not exist"],
    );
}

// ---- path safety ----

#[tokio::test]
async fn file_tools_refuse_paths_outside_the_workspace() {
    let fx = Fixture::new().await;
    let secret = fx.secret();
    std::os::unix::fs::symlink(&secret, fx.root().join("link.txt")).unwrap();
    std::os::unix::fs::symlink(secret.parent().unwrap(), fx.root().join("linkdir")).unwrap();
    let escapes = [
        "../secret.txt".to_string(),
        "sub/../../secret.txt".to_string(),
        secret.display().to_string(),
        "link.txt".to_string(),
        "linkdir/secret.txt".to_string(),
    ];
    for path in &escapes {
        let read = fx.call("read_file", json!({"path": path})).await;
        assert_failed(&read, &["outside the workspace"]);
        let write = fx
            .call("write_file", json!({"path": path, "content": "pwned\n"}))
            .await;
        assert_failed(&write, &["outside the workspace"]);
        let edit = fx
            .call(
                "edit_file",
                json!({"path": path, "old_string": "top", "new_string": "pwned"}),
            )
            .await;
        assert_failed(&edit, &["outside the workspace"]);
        assert!(!read.text.contains("top secret"));
    }
    let list = fx.call("list_files", json!({"path": "linkdir"})).await;
    assert_failed(&list, &["outside the workspace"]);
    let search = fx
        .call("search", json!({"pattern": "secret", "path": ".."}))
        .await;
    assert_failed(&search, &["outside the workspace"]);
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "top secret\n");
    assert!(!fx.outer.path().join("linkdir").exists());
}

#[tokio::test]
async fn write_and_edit_refuse_the_git_directory() {
    let fx = Fixture::new().await;
    fx.git(&["init", "-q"]);
    let out = fx
        .call(
            "write_file",
            json!({"path": ".git/hooks/pre-commit", "content": "x"}),
        )
        .await;
    assert_failed(&out, &["inside `.git/`"]);
    std::os::unix::fs::symlink(".git", fx.root().join("sneaky")).unwrap();
    let out = fx
        .call(
            "write_file",
            json!({"path": "sneaky/config", "content": "x"}),
        )
        .await;
    assert_failed(&out, &["inside `.git/`"]);
    let out = fx
        .call(
            "edit_file",
            json!({"path": ".git/config", "old_string": "[core]", "new_string": "x"}),
        )
        .await;
    assert_failed(&out, &["inside `.git/`"]);
    assert!(fx.read(".git/config").contains("[core]"));
}
