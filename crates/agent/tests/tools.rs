//! The agent's tools against real things: temp-dir workspaces, the unisolated sandbox, real git.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use nightshift_agent::tools::{self, Control, TOOL_NAMES, ToolContext, ToolLimits, ToolOutput};
use nightshift_protocol::{PlanStep, PlanStepStatus};
use nightshift_sandbox::{Sandbox, SandboxSession, SessionSpec, Unisolated};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// A workspace at `<outer>/ws`, so that `<outer>/secret.txt` is just outside it.
struct Fixture {
    outer: TempDir,
    session: Box<dyn SandboxSession>,
    cancel: CancellationToken,
    limits: ToolLimits,
}

impl Fixture {
    async fn new() -> Self {
        Self::with_limits(ToolLimits::default()).await
    }

    async fn with_limits(limits: ToolLimits) -> Self {
        let outer = tempfile::tempdir().unwrap();
        let workspace = outer.path().join("ws");
        std::fs::create_dir(&workspace).unwrap();
        std::fs::write(outer.path().join("secret.txt"), "top secret\n").unwrap();
        let session = Unisolated.start(SessionSpec::new(workspace)).await.unwrap();
        Fixture {
            outer,
            session,
            cancel: CancellationToken::new(),
            limits,
        }
    }

    fn root(&self) -> PathBuf {
        self.session.workspace().to_path_buf()
    }

    fn secret(&self) -> PathBuf {
        self.outer.path().join("secret.txt").canonicalize().unwrap()
    }

    fn write(&self, relative: &str, content: &str) {
        let path = self.root().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.root().join(relative)).unwrap()
    }

    fn git(&self, args: &[&str]) {
        let status = Command::new("git")
            .args(args)
            .current_dir(self.root())
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?} failed");
    }

    async fn call(&self, name: &str, arguments: Value) -> ToolOutput {
        self.call_raw(name, &arguments.to_string()).await
    }

    async fn call_raw(&self, name: &str, arguments: &str) -> ToolOutput {
        let ctx = ToolContext {
            session: self.session.as_ref(),
            cancel: &self.cancel,
            limits: &self.limits,
        };
        tools::run(name, arguments, &ctx).await
    }
}

fn assert_ok(output: &ToolOutput) {
    assert!(output.ok, "expected success, got: {}", output.text);
}

fn assert_failed(output: &ToolOutput, needles: &[&str]) {
    assert!(!output.ok, "expected failure, got: {}", output.text);
    for needle in needles {
        assert!(
            output.text.contains(needle),
            "{needle:?} missing from: {}",
            output.text
        );
    }
}

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

// ---- write_file ----

#[tokio::test]
async fn write_file_creates_parents_and_says_what_it_did() {
    let fx = Fixture::new().await;
    let out = fx
        .call(
            "write_file",
            json!({"path": "a/b/c.txt", "content": "one\ntwo\n"}),
        )
        .await;
    assert_ok(&out);
    assert_eq!(out.text, "Created `a/b/c.txt` (8 bytes, 2 lines).");
    assert_eq!(fx.read("a/b/c.txt"), "one\ntwo\n");

    let out = fx
        .call(
            "write_file",
            json!({"path": "./a/b/c.txt", "content": "1\n"}),
        )
        .await;
    assert_ok(&out);
    assert_eq!(
        out.text,
        "Overwrote `a/b/c.txt` (2 bytes, 1 lines; it had 8 bytes)."
    );
    assert_eq!(fx.read("a/b/c.txt"), "1\n");

    assert_failed(
        &fx.call("write_file", json!({"path": "a", "content": ""}))
            .await,
        &["directory"],
    );
}

// ---- edit_file ----

#[tokio::test]
async fn edit_file_replaces_exactly_one_match_and_shows_it() {
    let fx = Fixture::new().await;
    fx.write("lib.rs", "fn a() {}\nfn b() {\n    old();\n}\nfn c() {}\n");
    let out = fx
        .call("edit_file", json!({"path": "lib.rs", "old_string": "    old();", "new_string": "    new();\n    more();"}))
        .await;
    assert_ok(&out);
    assert!(
        out.text.starts_with("Replaced 1 occurrence in `lib.rs`."),
        "{}",
        out.text
    );
    assert!(
        out.text
            .contains("     3\t    new();\n     4\t    more();\n"),
        "{}",
        out.text
    );
    assert_eq!(
        fx.read("lib.rs"),
        "fn a() {}\nfn b() {\n    new();\n    more();\n}\nfn c() {}\n"
    );
}

#[tokio::test]
async fn edit_file_refuses_ambiguous_missing_and_identical_edits() {
    let fx = Fixture::new().await;
    let original = "let x = 1;\nlet y = 2;\nlet x = 1;\n    indented  (here);\n";
    fx.write("a.rs", original);

    let out = fx
        .call(
            "edit_file",
            json!({"path": "a.rs", "old_string": "let x = 1;", "new_string": "let x = 3;"}),
        )
        .await;
    assert_failed(
        &out,
        &["occurs 2 times", "lines 1, 3", "replace_all", "not changed"],
    );

    let out = fx
        .call(
            "edit_file",
            json!({"path": "a.rs", "old_string": "indented (here);", "new_string": "z"}),
        )
        .await;
    assert_failed(
        &out,
        &[
            "was not found",
            "differs from it only in whitespace",
            "line 4",
        ],
    );

    let out = fx
        .call(
            "edit_file",
            json!({"path": "a.rs", "old_string": "nowhere", "new_string": "z"}),
        )
        .await;
    assert_failed(&out, &["was not found", "Re-read the file"]);

    let out = fx
        .call(
            "edit_file",
            json!({"path": "a.rs", "old_string": "let y", "new_string": "let y"}),
        )
        .await;
    assert_failed(&out, &["identical"]);

    let out = fx
        .call(
            "edit_file",
            json!({"path": "a.rs", "old_string": "", "new_string": "q"}),
        )
        .await;
    assert_failed(&out, &["`old_string` is empty"]);
    assert_eq!(fx.read("a.rs"), original);

    let out = fx
        .call("edit_file", json!({"path": "a.rs", "old_string": "let x = 1;", "new_string": "let x = 3;", "replace_all": true}))
        .await;
    assert_ok(&out);
    assert!(out.text.starts_with("Replaced 2 occurrences"));
    assert_eq!(
        fx.read("a.rs"),
        "let x = 3;\nlet y = 2;\nlet x = 3;\n    indented  (here);\n"
    );
}

#[tokio::test]
async fn edit_file_matches_lf_text_in_crlf_files() {
    let fx = Fixture::new().await;
    fx.write("win.txt", "one\r\ntwo\r\nthree\r\n");
    let out = fx
        .call(
            "edit_file",
            json!({"path": "win.txt", "old_string": "one\ntwo", "new_string": "1\n2"}),
        )
        .await;
    assert_ok(&out);
    assert_eq!(fx.read("win.txt"), "1\r\n2\r\nthree\r\n");
}

// ---- apply_patch ----

const TWO_FILES_AND_A_NEW_ONE: &str = "diff --git a/a.txt b/a.txt
--- a/a.txt
+++ b/a.txt
@@ -1,3 +1,3 @@
 alpha
-beta
+BETA
 gamma
diff --git a/src/b.txt b/src/b.txt
--- a/src/b.txt
+++ b/src/b.txt
@@ -1,2 +1,3 @@
 one
+one and a half
 two
diff --git a/src/new.txt b/src/new.txt
new file mode 100644
--- /dev/null
+++ b/src/new.txt
@@ -0,0 +1,2 @@
+fresh
+file
";

fn seed_patch_files(fx: &Fixture) {
    fx.write("a.txt", "alpha\nbeta\ngamma\n");
    fx.write("src/b.txt", "one\ntwo\n");
}

#[tokio::test]
async fn apply_patch_applies_a_multi_file_patch_in_a_repository() {
    let fx = Fixture::new().await;
    seed_patch_files(&fx);
    fx.git(&["init", "-q"]);
    let out = fx
        .call("apply_patch", json!({"patch": TWO_FILES_AND_A_NEW_ONE}))
        .await;
    assert_ok(&out);
    assert!(
        out.text.starts_with("Applied the patch: 3 files changed."),
        "{}",
        out.text
    );
    assert!(out.text.contains("modified a.txt (+1 -1)"), "{}", out.text);
    assert!(out.text.contains("modified src/b.txt (+1 -0)"));
    assert!(out.text.contains("created src/new.txt (+2 -0)"));
    assert_eq!(fx.read("a.txt"), "alpha\nBETA\ngamma\n");
    assert_eq!(fx.read("src/b.txt"), "one\none and a half\ntwo\n");
    assert_eq!(fx.read("src/new.txt"), "fresh\nfile\n");
}

#[tokio::test]
async fn apply_patch_works_outside_a_repository_with_fences_plain_paths_and_no_final_newline() {
    let fx = Fixture::new().await;
    seed_patch_files(&fx);
    let patch = "```diff\n--- src/b.txt\n+++ src/b.txt\n@@ -1,2 +1,2 @@\n-one\n+uno\n two\n```";
    let out = fx.call("apply_patch", json!({"patch": patch})).await;
    assert_ok(&out);
    assert_eq!(fx.read("src/b.txt"), "uno\ntwo\n");

    let delete = "--- a/a.txt\n+++ /dev/null\n@@ -1,3 +0,0 @@\n-alpha\n-beta\n-gamma";
    let out = fx.call("apply_patch", json!({"patch": delete})).await;
    assert_ok(&out);
    assert!(out.text.contains("deleted a.txt (+0 -3)"), "{}", out.text);
    assert!(!fx.root().join("a.txt").exists());
}

#[tokio::test]
async fn apply_patch_takes_plain_multi_file_diffs() {
    // Without `diff --git` lines, git's --recount would read the second file's header as hunk
    // lines of the first.
    let fx = Fixture::new().await;
    seed_patch_files(&fx);
    let patch = "--- a/a.txt\n+++ b/a.txt\n@@ -1,3 +1,3 @@\n alpha\n-beta\n+BETA\n gamma\n\
                 --- a/src/b.txt\n+++ b/src/b.txt\n@@ -1,2 +1,2 @@\n-one\n+ONE\n two\n\
                 --- /dev/null\n+++ b/c.txt\n@@ -0,0 +1 @@\n+c\n";
    let out = fx.call("apply_patch", json!({"patch": patch})).await;
    assert_ok(&out);
    assert!(!out.text.contains("note:"), "{}", out.text);
    assert_eq!(fx.read("a.txt"), "alpha\nBETA\ngamma\n");
    assert_eq!(fx.read("src/b.txt"), "ONE\ntwo\n");
    assert_eq!(fx.read("c.txt"), "c\n");
}

#[tokio::test]
async fn apply_patch_with_a_failing_hunk_changes_nothing_and_names_file_and_hunk() {
    let fx = Fixture::new().await;
    seed_patch_files(&fx);
    let bad = TWO_FILES_AND_A_NEW_ONE.replace(" one\n+one and a half", " uno\n+one and a half");
    let out = fx.call("apply_patch", json!({"patch": bad})).await;
    assert_failed(
        &out,
        &[
            "no file was changed",
            "Hunk #1 of `src/b.txt` (@@ -1,2 +1,3 @@)",
            "near line 1",
            "    uno",
            "Re-read the file",
        ],
    );
    assert_eq!(fx.read("a.txt"), "alpha\nbeta\ngamma\n");
    assert_eq!(fx.read("src/b.txt"), "one\ntwo\n");
    assert!(!fx.root().join("src/new.txt").exists());
}

#[tokio::test]
async fn apply_patch_explains_malformed_and_misdirected_patches() {
    let fx = Fixture::new().await;
    seed_patch_files(&fx);
    let out = fx
        .call("apply_patch", json!({"patch": "just some words"}))
        .await;
    assert_failed(&out, &["No valid patches", "Hint:"]);
    // Line 6 of what the model wrote (`beta`, counting the fence as line 1) lacks its prefix.
    let corrupt =
        "```diff\n--- a/a.txt\n+++ b/a.txt\n@@ -1,3 +1,3 @@\n alpha\nbeta\n+BETA\n gamma\n```";
    let out = fx.call("apply_patch", json!({"patch": corrupt})).await;
    assert_failed(
        &out,
        &["corrupt patch at line 6", "must start with ' ', '+' or '-'"],
    );
    let missing = "--- a/nope.txt\n+++ b/nope.txt\n@@ -1 +1 @@\n-a\n+b\n";
    assert_failed(
        &fx.call("apply_patch", json!({"patch": missing})).await,
        &["nope.txt", "list_files"],
    );
    let exists = "--- /dev/null\n+++ b/a.txt\n@@ -0,0 +1 @@\n+again\n";
    assert_failed(
        &fx.call("apply_patch", json!({"patch": exists})).await,
        &["already exists"],
    );
}

#[tokio::test]
async fn apply_patch_refuses_paths_that_escape_the_workspace() {
    let fx = Fixture::new().await;
    let secret = fx.secret();
    std::os::unix::fs::symlink(secret.parent().unwrap(), fx.root().join("linkdir")).unwrap();
    let patches = [
        "--- a/../secret.txt\n+++ b/../secret.txt\n@@ -1 +1 @@\n-top secret\n+pwned\n".to_string(),
        "--- /dev/null\n+++ b/linkdir/planted.txt\n@@ -0,0 +1 @@\n+pwned\n".to_string(),
        "--- /dev/null\n+++ ../planted.txt\n@@ -0,0 +1 @@\n+pwned\n".to_string(),
        format!(
            "--- {0}\n+++ {0}\n@@ -1 +1 @@\n-top secret\n+pwned\n",
            secret.display()
        ),
    ];
    for patch in &patches {
        let out = fx.call("apply_patch", json!({"patch": patch})).await;
        assert!(!out.ok, "{patch} applied: {}", out.text);
    }
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "top secret\n");
    assert!(!fx.outer.path().join("planted.txt").exists());
}

// ---- search ----

fn seed_tree(fx: &Fixture) {
    fx.write(".gitignore", "target/\n*.log\n");
    fx.write("src/main.rs", "fn main() {\n    println!(\"needle\");\n}\n");
    fx.write("src/lib.rs", "// needle in lib\npub fn f() {}\n");
    fx.write("README.md", "a needle in the readme\n");
    fx.write(".github/workflows/ci.yml", "run: needle\n");
    fx.write("target/debug/out.rs", "needle in build output\n");
    fx.write("debug.log", "needle in a log\n");
    fx.write(".git/config", "needle in git\n");
}

#[tokio::test]
async fn search_respects_gitignore_and_glob_and_reads_hidden_files() {
    let fx = Fixture::new().await;
    seed_tree(&fx);
    let out = fx.call("search", json!({"pattern": "needle"})).await;
    assert_ok(&out);
    assert_eq!(
        out.text,
        ".github/workflows/ci.yml:1:run: needle\nREADME.md:1:a needle in the readme\n\
         src/lib.rs:1:// needle in lib\nsrc/main.rs:2:    println!(\"needle\");"
    );

    let out = fx
        .call("search", json!({"pattern": "needle", "glob": "*.rs"}))
        .await;
    assert_eq!(
        out.text,
        "src/lib.rs:1:// needle in lib\nsrc/main.rs:2:    println!(\"needle\");"
    );

    let out = fx
        .call(
            "search",
            json!({"pattern": "fn \\w+\\(", "path": "src/lib.rs"}),
        )
        .await;
    assert_eq!(out.text, "src/lib.rs:2:pub fn f() {}");

    let out = fx
        .call("search", json!({"pattern": "needle", "path": "target"}))
        .await;
    assert_ok(&out);
    assert!(
        out.text.starts_with("target/debug/out.rs:1:"),
        "{}",
        out.text
    );
    assert!(out.text.contains("ignored by .gitignore"));
}

#[tokio::test]
async fn search_reports_bad_patterns_no_matches_and_caps() {
    let limits = ToolLimits {
        max_entries: 3,
        ..ToolLimits::default()
    };
    let fx = Fixture::with_limits(limits).await;
    seed_tree(&fx);
    let out = fx.call("search", json!({"pattern": "fn main("})).await;
    assert_failed(
        &out,
        &["invalid regular expression `fn main(`", "unclosed group"],
    );

    let out = fx.call("search", json!({"pattern": "haystack"})).await;
    assert_ok(&out);
    assert!(
        out.text.starts_with("no matches for `haystack`"),
        "{}",
        out.text
    );

    let out = fx.call("search", json!({"pattern": "needle"})).await;
    assert_ok(&out);
    assert_eq!(
        out.text
            .lines()
            .filter(|l| l.contains(":1:") || l.contains(":2:"))
            .count(),
        3
    );
    assert!(
        out.text
            .contains("[showing the first 3 matches; there are more"),
        "{}",
        out.text
    );
}

#[tokio::test]
async fn long_output_is_cut_with_a_marker() {
    let limits = ToolLimits {
        output_bytes: 600,
        ..ToolLimits::default()
    };
    let fx = Fixture::with_limits(limits).await;
    let content: String = (0..200).map(|i| format!("match number {i}\n")).collect();
    fx.write("many.txt", &content);
    let out = fx.call("search", json!({"pattern": "match"})).await;
    assert_ok(&out);
    assert!(out.text.len() <= 700, "{} bytes", out.text.len());
    assert!(out.text.starts_with("many.txt:1:match number 0\n"));
    assert!(out.text.contains("bytes ("), "{}", out.text);
    assert!(out.text.contains("omitted ...]"), "{}", out.text);
}

// ---- list_files ----

#[tokio::test]
async fn list_files_lists_sorted_files_respecting_gitignore() {
    let fx = Fixture::new().await;
    seed_tree(&fx);
    let out = fx.call("list_files", json!({})).await;
    assert_ok(&out);
    assert_eq!(
        out.text,
        ".github/workflows/ci.yml\n.gitignore\nREADME.md\nsrc/lib.rs\nsrc/main.rs"
    );
    let out = fx
        .call("list_files", json!({"path": "src", "glob": "m*.rs"}))
        .await;
    assert_eq!(out.text, "src/main.rs");
    let out = fx.call("list_files", json!({"glob": "src/*.rs"})).await;
    assert_eq!(out.text, "src/lib.rs\nsrc/main.rs");
    let out = fx.call("list_files", json!({"glob": "!*.rs"})).await;
    assert_eq!(out.text, ".github/workflows/ci.yml\n.gitignore\nREADME.md");
    let out = fx.call("list_files", json!({"path": "nowhere"})).await;
    assert_failed(&out, &["does not exist"]);
}

#[tokio::test]
async fn list_files_caps_the_listing_and_counts_the_rest() {
    let limits = ToolLimits {
        max_entries: 2,
        ..ToolLimits::default()
    };
    let fx = Fixture::with_limits(limits).await;
    for name in ["c", "a", "e", "b", "d"] {
        fx.write(&format!("{name}.txt"), "x\n");
    }
    let out = fx.call("list_files", json!({"path": "."})).await;
    assert_ok(&out);
    assert_eq!(
        out.text,
        "a.txt\nb.txt\n[... and 3 more files (5 in total); narrow the listing with path or glob]"
    );
}

// ---- update_plan and finish ----

#[tokio::test]
async fn update_plan_returns_the_plan_and_allows_one_step_in_progress() {
    let fx = Fixture::new().await;
    let out = fx
        .call(
            "update_plan",
            json!({"steps": [
                {"step": "Read the code", "status": "completed"},
                {"step": "Fix the bug", "status": "in_progress"},
                {"step": "Run the tests", "status": "pending"}
            ]}),
        )
        .await;
    assert_ok(&out);
    assert_eq!(
        out.text,
        "Plan updated:\n[x] Read the code\n[>] Fix the bug\n[ ] Run the tests\n"
    );
    let Some(Control::Plan { steps }) = out.control else {
        panic!("no plan: {out:?}")
    };
    assert_eq!(
        steps[1],
        PlanStep {
            step: "Fix the bug".into(),
            status: PlanStepStatus::InProgress
        }
    );

    let out = fx
        .call(
            "update_plan",
            json!({"steps": [
                {"step": "a", "status": "in_progress"},
                {"step": "b", "status": "in_progress"}
            ]}),
        )
        .await;
    assert_failed(&out, &["2 steps are in_progress", "steps 1, 2"]);
    assert!(out.control.is_none());

    let out = fx
        .call(
            "update_plan",
            json!({"steps": [{"step": "a", "status": "done"}]}),
        )
        .await;
    assert_failed(&out, &["unknown variant `done`", "in_progress"]);
}

#[tokio::test]
async fn finish_needs_a_summary() {
    let fx = Fixture::new().await;
    let out = fx
        .call(
            "finish",
            json!({"summary": "  Fixed the bug; tests pass.\n"}),
        )
        .await;
    assert_ok(&out);
    assert_eq!(
        out.control,
        Some(Control::Finish {
            summary: "Fixed the bug; tests pass.".into()
        })
    );
    let out = fx.call("finish", json!({"summary": " "})).await;
    assert_failed(&out, &["`summary` is empty"]);
    assert!(out.control.is_none());
}
