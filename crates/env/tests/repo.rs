#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use nightshift_env::{EnvError, SourceRepo};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn sample_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    std::fs::write(dir.path().join("a.txt"), "one\n").unwrap();
    git(dir.path(), &["add", "."]);
    git(dir.path(), &["commit", "-q", "-m", "first"]);
    dir
}

#[tokio::test]
async fn checkout_excludes_uncommitted_changes_and_hand_off_leaves_the_source_alone() {
    let source_dir = sample_repo();
    let src = source_dir.path();
    std::fs::write(src.join("a.txt"), "dirty\n").unwrap();
    std::fs::write(src.join("untracked.txt"), "x\n").unwrap();
    let status_before = git(src, &["status", "--porcelain"]);

    let source = SourceRepo::open(src).await.unwrap();
    assert!(source.has_uncommitted_changes().await.unwrap());
    let base = source.resolve_base(None).await.unwrap();
    assert_eq!(base.name, "main");

    let work = tempfile::tempdir().unwrap();
    let copy = source
        .checkout(&base, &work.path().join("wc"))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(copy.root().join("a.txt")).unwrap(),
        "one\n"
    );
    assert!(!copy.root().join("untracked.txt").exists());

    // Work happens in another copy (as in a sandbox) and comes back as a bundle.
    let elsewhere = work.path().join("sandbox-view");
    git(
        work.path(),
        &[
            "clone",
            "-q",
            copy.root().to_str().unwrap(),
            elsewhere.to_str().unwrap(),
        ],
    );
    git(&elsewhere, &["checkout", "-q", &base.commit]);
    std::fs::write(elsewhere.join("a.txt"), "one\ntwo\n").unwrap();
    std::fs::write(elsewhere.join("new.txt"), "new\n").unwrap();
    git(&elsewhere, &["add", "-A"]);
    git(&elsewhere, &["commit", "-q", "-m", "Add two\n\nbody"]);
    let head = git(&elsewhere, &["rev-parse", "HEAD"]);
    let bundle = work.path().join("result.bundle");
    let range = format!("{}..HEAD", base.commit);
    git(
        &elsewhere,
        &["bundle", "create", "-q", bundle.to_str().unwrap(), &range],
    );
    // A remote-tracking ref naming an object the copy lacks (a branch another task handed
    // back into the source while it was cloned) does not stop the import.
    std::fs::write(
        copy.root()
            .join(".git/refs/remotes/origin/handed-back-meanwhile"),
        "0123456789abcdef0123456789abcdef01234567\n",
    )
    .unwrap();
    assert_eq!(copy.import_bundle(&bundle).await.unwrap(), head);

    let stats = copy.stats(&head).await.unwrap();
    assert_eq!(
        (stats.files_changed, stats.insertions, stats.deletions),
        (2, 2, 0)
    );
    assert!(copy.diff(&head).await.unwrap().contains("+two"));

    copy.hand_off(&source, "nightshift/abc-add-two", &head, false)
        .await
        .unwrap();
    assert_eq!(git(src, &["rev-parse", "nightshift/abc-add-two"]), head);
    assert_eq!(git(src, &["symbolic-ref", "--short", "HEAD"]), "main");
    assert_eq!(git(src, &["status", "--porcelain"]), status_before);
    assert_eq!(
        std::fs::read_to_string(src.join("a.txt")).unwrap(),
        "dirty\n"
    );
    assert_eq!(
        git(src, &["log", "-1", "--format=%s", "nightshift/abc-add-two"]),
        "Add two"
    );

    let again = copy
        .hand_off(&source, "nightshift/abc-add-two", &head, false)
        .await
        .unwrap_err();
    assert!(matches!(again, EnvError::BranchExists { .. }));
    copy.remove().await.unwrap();
}

#[tokio::test]
async fn explains_bad_repositories_and_bases() {
    let plain = tempfile::tempdir().unwrap();
    let err = SourceRepo::open(plain.path()).await.unwrap_err();
    assert!(matches!(err, EnvError::NotARepository { .. }), "{err}");
    assert!(err.is_invalid_input());
    assert!(err.hint().unwrap().contains("git init"));

    let err = SourceRepo::open(&plain.path().join("missing"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no such directory"), "{err}");

    let repo = sample_repo();
    let source = SourceRepo::open(repo.path()).await.unwrap();
    let err = source.resolve_base(Some("nope")).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("no branch `nope`") && text.contains("main"),
        "{text}"
    );

    let empty = tempfile::tempdir().unwrap();
    git(empty.path(), &["init", "-q"]);
    let source = SourceRepo::open(empty.path()).await.unwrap();
    let err = source.resolve_base(None).await.unwrap_err();
    assert!(matches!(err, EnvError::EmptyRepository { .. }), "{err}");
}

#[tokio::test]
async fn a_subdirectory_opens_the_whole_repository_and_other_bases_work() {
    let repo = sample_repo();
    git(repo.path(), &["checkout", "-q", "-b", "feature"]);
    std::fs::create_dir(repo.path().join("sub")).unwrap();
    std::fs::write(repo.path().join("sub/f.txt"), "f\n").unwrap();
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "feature"]);
    git(repo.path(), &["checkout", "-q", "main"]);

    let source = SourceRepo::open(&repo.path().join("a.txt").with_file_name(""))
        .await
        .unwrap();
    let base = source.resolve_base(Some("feature")).await.unwrap();
    assert_eq!(base.commit, git(repo.path(), &["rev-parse", "feature"]));
    let work = tempfile::tempdir().unwrap();
    let copy = source
        .checkout(&base, &work.path().join("wc"))
        .await
        .unwrap();
    assert!(copy.root().join("sub/f.txt").exists());
}

#[tokio::test]
async fn an_update_moves_a_branch_only_forward() {
    let source_dir = sample_repo();
    let src = source_dir.path();
    let source = SourceRepo::open(src).await.unwrap();
    let base = source.resolve_base(None).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let copy = source
        .checkout(&base, &work.path().join("wc"))
        .await
        .unwrap();
    let commit = |message: &str| {
        std::fs::write(copy.root().join("a.txt"), format!("{message}\n")).unwrap();
        git(copy.root(), &["commit", "-q", "-am", message]);
        git(copy.root(), &["rev-parse", "HEAD"])
    };
    let first = commit("first change");
    copy.hand_off(&source, "nightshift/x", &first, false)
        .await
        .unwrap();
    let second = commit("second change");
    copy.hand_off(&source, "nightshift/x", &second, true)
        .await
        .unwrap();
    assert_eq!(git(src, &["rev-parse", "nightshift/x"]), second);
    // Someone else's commit on the branch is never overwritten.
    git(src, &["checkout", "-q", "nightshift/x"]);
    std::fs::write(src.join("theirs.txt"), "mine\n").unwrap();
    git(src, &["add", "."]);
    git(src, &["commit", "-q", "-m", "their commit"]);
    git(src, &["checkout", "-q", "main"]);
    let theirs = git(src, &["rev-parse", "nightshift/x"]);
    let third = commit("third change");
    assert!(
        copy.hand_off(&source, "nightshift/x", &third, true)
            .await
            .is_err()
    );
    assert_eq!(git(src, &["rev-parse", "nightshift/x"]), theirs);
}

#[tokio::test]
async fn secrets_are_found_anywhere_in_the_commits_of_a_result() {
    use nightshift_env::secrets::Redactor;
    const TOKEN: &str = "tok-5ecr3t-0123456789";
    let source_dir = sample_repo();
    let src = source_dir.path();
    // Before the base: not the task's doing, and already in the source.
    std::fs::write(src.join("old.txt"), format!("{TOKEN}\n")).unwrap();
    git(src, &["add", "."]);
    git(src, &["commit", "-q", "-m", "an old mistake"]);
    let source = SourceRepo::open(src).await.unwrap();
    let base = source.resolve_base(None).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let copy = source
        .checkout(&base, &work.path().join("wc"))
        .await
        .unwrap();
    let wc = copy.root();
    let redactor = Redactor::new(&[("TOKEN".into(), TOKEN.into())]);
    let commit = |message: &str| {
        git(wc, &["add", "-A"]);
        git(wc, &["commit", "-q", "--allow-empty", "-m", message]);
        git(wc, &["rev-parse", "HEAD"])
    };

    std::fs::write(wc.join("clean.txt"), "nothing to see\n").unwrap();
    let clean = commit("clean");
    assert!(
        copy.secrets_in_commits(&clean, &redactor)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        copy.secrets_in_commits(&clean, &Redactor::none())
            .await
            .unwrap()
            .is_empty()
    );

    // Each of these leaves the last tree clean, or hides the value from a text diff.
    let mut binary = vec![0u8, 1, 2, 3];
    binary.extend_from_slice(TOKEN.as_bytes());
    std::fs::write(wc.join("blob.bin"), &binary).unwrap();
    let in_binary = commit("binary");
    std::fs::remove_file(wc.join("blob.bin")).unwrap();
    let removed_again = commit("removed");
    git(wc, &["reset", "-q", "--hard", &clean]);
    let in_message = commit(&format!("the token is {}", hex::encode(TOKEN)));
    git(wc, &["reset", "-q", "--hard", &clean]);
    std::fs::write(wc.join("dG9rLTVlY3IzdC0wMTIzNDU2Nzg5"), "x").unwrap();
    let in_name = commit("a name");
    for head in [in_binary, removed_again, in_message, in_name] {
        assert_eq!(
            copy.secrets_in_commits(&head, &redactor).await.unwrap(),
            ["TOKEN"],
            "{head}"
        );
    }
    assert!(
        copy.secrets_in_commits("not-a-commit", &redactor)
            .await
            .is_err()
    );
}
