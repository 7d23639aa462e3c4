//! The agent's editing tools against real files and real git: write_file, edit_file and
//! apply_patch.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

use serde_json::json;

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
