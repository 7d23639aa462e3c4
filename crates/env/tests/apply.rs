//! `apply_change`: a task's patch merged three ways into a working tree with uncommitted
//! changes, and, on any conflict, nothing changed and the conflicting files named.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use nightshift_env::{ApplyError, SourceRepo, apply_change};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// A repository on `main` with `f.txt` (lines a..g) and `bin.dat`, and the patch of a task
/// branch that changes line b, adds `new.txt`, deletes `gone.txt` and changes `bin.dat`.
fn repo_and_task_patch() -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    git(root, &["init", "-q", "-b", "main"]);
    std::fs::write(root.join("f.txt"), "a\nb\nc\nd\ne\nf\ng\n").unwrap();
    std::fs::write(root.join("gone.txt"), "bye\n").unwrap();
    std::fs::write(root.join("bin.dat"), [0u8, 1, 2, 255, 0, 7]).unwrap();
    git(root, &["add", "."]);
    git(root, &["commit", "-q", "-m", "base"]);
    git(root, &["checkout", "-q", "-b", "task"]);
    std::fs::write(root.join("f.txt"), "a\nB from the task\nc\nd\ne\nf\ng\n").unwrap();
    std::fs::write(root.join("new.txt"), "new\n").unwrap();
    std::fs::remove_file(root.join("gone.txt")).unwrap();
    std::fs::write(root.join("bin.dat"), [9u8, 0, 255, 254]).unwrap();
    git(root, &["add", "-A"]);
    git(root, &["commit", "-q", "-m", "task"]);
    let patch = Command::new("git")
        .args(["diff", "--binary", "main", "task"])
        .current_dir(root)
        .output()
        .unwrap()
        .stdout;
    git(root, &["checkout", "-q", "main"]);
    git(root, &["branch", "-q", "-D", "task"]);
    (dir, patch)
}

fn status(root: &Path) -> String {
    git(root, &["status", "--porcelain"])
}

#[tokio::test]
async fn a_change_merges_into_uncommitted_work_without_touching_the_index() {
    let (dir, patch) = repo_and_task_patch();
    let root = dir.path();
    // The person's own uncommitted edit, further down the same file, and a staged one.
    std::fs::write(root.join("f.txt"), "a\nb\nc\nd\ne\nF mine\ng\n").unwrap();
    std::fs::write(root.join("staged.txt"), "staged\n").unwrap();
    git(root, &["add", "staged.txt"]);
    let index_before = git(root, &["ls-files", "--stage"]);

    let repo = SourceRepo::open(root).await.unwrap();
    let applied = apply_change(&repo, &patch).await.unwrap();
    let mut files = applied.files.clone();
    files.sort();
    assert_eq!(files, ["bin.dat", "f.txt", "gone.txt", "new.txt"]);
    assert_eq!(
        std::fs::read_to_string(root.join("f.txt")).unwrap(),
        "a\nB from the task\nc\nd\ne\nF mine\ng\n"
    );
    assert_eq!(
        std::fs::read(root.join("bin.dat")).unwrap(),
        [9u8, 0, 255, 254]
    );
    assert_eq!(
        std::fs::read_to_string(root.join("new.txt")).unwrap(),
        "new\n"
    );
    assert!(!root.join("gone.txt").exists());
    assert_eq!(
        git(root, &["ls-files", "--stage"]),
        index_before,
        "index untouched"
    );
    assert_eq!(
        git(root, &["rev-parse", "--abbrev-ref", "HEAD"]).trim(),
        "main"
    );

    // Applying it again is refused (the file it deletes is gone), and changes nothing.
    let before = status(root);
    let again = apply_change(&repo, &patch).await.unwrap_err();
    assert!(matches!(again, ApplyError::DoesNotApply { .. }), "{again}");
    assert!(again.to_string().contains("gone.txt"), "{again}");
    assert_eq!(status(root), before);
}

#[tokio::test]
async fn a_conflict_changes_nothing_and_names_the_files() {
    let (dir, patch) = repo_and_task_patch();
    let root = dir.path();
    std::fs::write(root.join("f.txt"), "a\nB mine\nc\nd\ne\nf\ng\n").unwrap();
    let before = status(root);
    let content = std::fs::read_to_string(root.join("f.txt")).unwrap();

    let repo = SourceRepo::open(root).await.unwrap();
    let error = apply_change(&repo, &patch).await.unwrap_err();
    match &error {
        ApplyError::Conflicts { files } => assert_eq!(files, &["f.txt"]),
        other => panic!("{other}"),
    }
    assert!(error.to_string().contains("nothing was changed"), "{error}");
    assert_eq!(status(root), before);
    assert_eq!(
        std::fs::read_to_string(root.join("f.txt")).unwrap(),
        content
    );
    assert!(!root.join("new.txt").exists() && root.join("gone.txt").exists());
}

#[tokio::test]
async fn an_untracked_file_in_the_way_is_not_overwritten() {
    let (dir, patch) = repo_and_task_patch();
    let root = dir.path();
    std::fs::write(root.join("new.txt"), "my own notes\n").unwrap();
    let repo = SourceRepo::open(root).await.unwrap();
    let error = apply_change(&repo, &patch).await.unwrap_err();
    assert!(matches!(error, ApplyError::DoesNotApply { .. }), "{error}");
    assert!(error.to_string().contains("new.txt"), "{error}");
    assert_eq!(
        std::fs::read_to_string(root.join("new.txt")).unwrap(),
        "my own notes\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("f.txt")).unwrap(),
        "a\nb\nc\nd\ne\nf\ng\n",
        "all or nothing"
    );
}
