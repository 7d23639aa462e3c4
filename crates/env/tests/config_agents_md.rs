#![allow(clippy::unwrap_used, clippy::expect_used)]

//! AGENTS.md collection: the root file, nested ones on the way to the directories worked in,
//! and the size cap.

use std::path::{Path, PathBuf};

use nightshift_env::config::{AGENTS_MD_CAP, collect_agents_md, render_agents_context};

fn write(root: &Path, relative: &str, text: &str) {
    let path = root.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn paths(docs: &[nightshift_env::config::AgentsDoc]) -> Vec<String> {
    docs.iter()
        .map(|doc| doc.path.display().to_string())
        .collect()
}

#[test]
fn root_first_then_nested_files_on_the_paths_worked_in() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "AGENTS.md", "Run `make test` before finishing.\n");
    write(root, "crates/AGENTS.md", "Every crate has a README.\n");
    write(root, "crates/env/AGENTS.md", "No network in tests.\n");
    write(root, "crates/env/src/lib.rs", "");
    write(root, "web/AGENTS.md", "Use pnpm.\n");
    write(root, "docs/AGENTS.md", "Not on any path worked in.\n");

    let touched = [
        PathBuf::from("web/src/components"),
        PathBuf::from("crates/env/src/lib.rs"),
        root.join("crates/env/src"),
        PathBuf::from("../outside"),
        PathBuf::from("/etc"),
    ];
    let docs = collect_agents_md(root, &touched);
    assert_eq!(
        paths(&docs),
        [
            "AGENTS.md",
            "crates/AGENTS.md",
            "web/AGENTS.md",
            "crates/env/AGENTS.md"
        ]
    );
    assert_eq!(docs[0].content, "Run `make test` before finishing.\n");
    assert!(docs.iter().all(|doc| !doc.truncated));

    let context = render_agents_context(&docs);
    assert!(
        context.contains(
            "<agents_md path=\"AGENTS.md\">\nRun `make test` before finishing.\n</agents_md>"
        ),
        "{context}"
    );
    assert!(
        context.contains(
            "<agents_md path=\"crates/env/AGENTS.md\">\nNo network in tests.\n</agents_md>"
        ),
        "{context}"
    );
    assert!(context.find("path=\"AGENTS.md\"") < context.find("path=\"crates/env/AGENTS.md\""));
    assert!(context.contains("the deeper one wins"));

    assert_eq!(paths(&collect_agents_md(root, &[])), ["AGENTS.md"]);
}

#[test]
fn no_agents_md_means_no_context() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "src/AGENTS.md", "nested only\n");
    assert!(collect_agents_md(dir.path(), &[]).is_empty());
    assert_eq!(render_agents_context(&[]), "");
    let docs = collect_agents_md(dir.path(), &[PathBuf::from("src")]);
    assert_eq!(paths(&docs), ["src/AGENTS.md"]);
}

#[test]
fn long_files_are_capped_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let line = "- a rule that goes on for a while, to fill the file up quickly\n";
    let long = line.repeat(AGENTS_MD_CAP / line.len() + 100);
    write(dir.path(), "AGENTS.md", &long);
    let docs = collect_agents_md(dir.path(), &[]);
    assert_eq!(docs.len(), 1);
    let doc = &docs[0];
    assert!(doc.truncated);
    let (kept, note) = doc.content.rsplit_once("\n\n").unwrap();
    assert!(kept.len() <= AGENTS_MD_CAP);
    assert!(kept.ends_with("quickly"), "cut at a line end");
    assert_eq!(
        note,
        format!(
            "[AGENTS.md is {} bytes; only the first {} are shown]",
            long.len(),
            kept.len()
        )
    );

    // A cut inside a multi-byte character still gives valid text.
    let wide = "é".repeat(AGENTS_MD_CAP);
    write(dir.path(), "AGENTS.md", &wide);
    let doc = &collect_agents_md(dir.path(), &[])[0];
    assert!(doc.truncated);
    assert!(doc.content.starts_with("ééé"));
}

#[test]
fn agents_md_linking_outside_the_repository_is_left_out() {
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "secret.txt", "not for the model\n");
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.txt"),
        dir.path().join("AGENTS.md"),
    )
    .unwrap();
    write(dir.path(), "docs/real.md", "fine\n");
    std::os::unix::fs::symlink("real.md", dir.path().join("docs/AGENTS.md")).unwrap();
    let docs = collect_agents_md(dir.path(), &[PathBuf::from("docs")]);
    assert_eq!(paths(&docs), ["docs/AGENTS.md"]);
    assert_eq!(docs[0].content, "fine\n");
}
