//! What nightshift builds from a devcontainer's Dockerfile beyond plain files, end to end with
//! the real binary: `ADD` of local tar archives (gzip, xz) unpacked into the image, a
//! compressed file that is not a tar copied as it is.
//!
//! Each test needs host root and the tools `.ci/run` installs; without them it says so and
//! returns.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../image/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::json;
use support::apt::{debian_image, ready};

/// `tar` of `files` into `archive`, compressed by `compressor`.
fn tar_into(work: &Path, archive: &Path, compressor: &str, files: &[(&str, &str)]) {
    let tree = work.join(format!(
        "tree-{}",
        archive.file_name().unwrap().to_string_lossy()
    ));
    for (path, text) in files {
        let path = tree.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let status = Command::new("tar")
        .arg(format!("--use-compress-program={compressor}"))
        .arg("-cf")
        .arg(archive)
        .arg("-C")
        .arg(&tree)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn add_unpacks_local_tar_archives_into_the_image_and_copies_other_files() {
    if !ready() {
        return;
    }
    let work = support::workdir();
    let (layout, _archive) = debian_image(work.path());
    let registry = support::Registry::start(None).unwrap();
    let reference = registry.push(&layout, "v1", "team/add", None).unwrap();
    let dockerfile = format!(
        "FROM {reference}\n\
         ADD tools.tgz /opt/tools/\n\
         ADD rootfs.tar.xz /\n\
         ADD notes.txt.gz /srv/\n"
    );
    let repo = repo_with(&[
        (
            ".devcontainer/devcontainer.json",
            r#"{"build": {"dockerfile": "Dockerfile"}}"#,
        ),
        (".devcontainer/Dockerfile", &dockerfile),
    ]);
    let dir = repo.path().join(".devcontainer");
    tar_into(
        work.path(),
        &dir.join("tools.tgz"),
        "gzip",
        &[("README", "packed tools\n"), ("bin/tool", "tool\n")],
    );
    tar_into(
        work.path(),
        &dir.join("rootfs.tar.xz"),
        "xz",
        &[("srv/data", "data\n"), ("usr/local/share/added", "added\n")],
    );
    std::fs::write(work.path().join("notes.txt"), "plain notes\n").unwrap();
    let gz = Command::new("gzip")
        .arg("-c")
        .arg(work.path().join("notes.txt"))
        .output()
        .unwrap();
    std::fs::write(dir.join("notes.txt.gz"), gz.stdout).unwrap();
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "archives"]);

    let probe = "cat /opt/tools/README /srv/data /usr/local/share/added; zcat /srv/notes.txt.gz";
    let steps = json!([shell(probe), finish("Probed")]);
    let (ns, _server) = Nightshift::with_script(script(steps)).await;
    std::fs::write(
        ns.home.path().join("config.toml"),
        format!("[images]\nplain_http = [\"{}\"]\n", registry.host()),
    )
    .unwrap();
    let (out, task) = ns.wait_task(repo.path(), "probe").await;
    let events = ns.events(task["id"].as_str().unwrap()).await;
    assert!(out.status.success(), "{}\n{events:#?}", stderr(&out));
    let seen = &shell_outputs(&events)[0];
    assert_eq!(
        seen.lines().take(4).collect::<Vec<_>>(),
        ["packed tools", "data", "added", "plain notes"],
        "{seen}"
    );
}
