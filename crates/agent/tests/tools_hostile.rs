//! The file tools against a hostile workspace: FIFOs, devices and sockets where files should
//! be, links to host files, ignore files that are links or FIFOs, and huge files and lines.
//! The tools run on the host, so each of these must fail promptly or be skipped, never hang,
//! read a host file or hold a whole huge file in memory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use nightshift_agent::tools::ToolOutput;
use serde_json::{Value, json};

fn mkfifo(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

/// `mknod path c 1 5`, a /dev/zero of the workspace's own; false where it is not allowed.
fn mknod_zero(path: &Path) -> bool {
    Command::new("mknod")
        .arg(path)
        .args(["c", "1", "5"])
        .status()
        .is_ok_and(|status| status.success())
}

/// Calls the tool, failing the test if it does not answer within seconds. A call blocked on a
/// FIFO is released first (by opening its other end), so the failure is reported rather than
/// the test hanging on the blocked thread.
async fn promptly(fx: &Fixture, name: &str, arguments: Value, fifos: &[PathBuf]) -> ToolOutput {
    match tokio::time::timeout(Duration::from_secs(10), fx.call(name, arguments.clone())).await {
        Ok(output) => output,
        Err(_) => {
            for fifo in fifos {
                let _ = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(fifo);
            }
            panic!("{name} {arguments} blocked");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fifos_devices_and_links_out_are_refused_at_once() {
    let fx = Fixture::new().await;
    let root = fx.root();
    let fifo = root.join("pipe");
    mkfifo(&fifo);
    std::os::unix::fs::symlink("/dev/zero", root.join("zero-link")).unwrap();
    std::os::unix::fs::symlink(fx.secret(), root.join("secret-link")).unwrap();
    let fifos = [fifo.clone()];

    for tool in ["read_file", "search", "list_files"] {
        let arguments = match tool {
            "search" => json!({"pattern": "x", "path": "pipe"}),
            _ => json!({"path": "pipe"}),
        };
        let out = promptly(&fx, tool, arguments, &fifos).await;
        assert_failed(&out, &["`pipe` is a FIFO, not a regular file"]);
    }
    let out = promptly(
        &fx,
        "write_file",
        json!({"path": "pipe", "content": "x"}),
        &fifos,
    )
    .await;
    assert_failed(&out, &["`pipe` is a FIFO"]);
    let out = promptly(
        &fx,
        "edit_file",
        json!({"path": "pipe", "old_string": "a", "new_string": "b"}),
        &fifos,
    )
    .await;
    assert_failed(&out, &["`pipe` is a FIFO", "The file was not changed"]);

    for link in ["zero-link", "secret-link"] {
        for tool in ["read_file", "search", "list_files"] {
            let arguments = match tool {
                "search" => json!({"pattern": "x", "path": link}),
                _ => json!({"path": link}),
            };
            let out = promptly(&fx, tool, arguments, &fifos).await;
            assert_failed(&out, &["outside the workspace"]);
            assert!(!out.text.contains("top secret"), "{}", out.text);
        }
    }

    // A device node of the workspace's own (tests run as root; elsewhere this part is skipped).
    if mknod_zero(&root.join("zero")) {
        for tool in ["read_file", "search", "list_files"] {
            let arguments = match tool {
                "search" => json!({"pattern": "x", "path": "zero"}),
                _ => json!({"path": "zero"}),
            };
            let out = promptly(&fx, tool, arguments, &fifos).await;
            assert_failed(&out, &["`zero` is a device, not a regular file"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn walks_pass_over_fifos_devices_and_sockets() {
    let fx = Fixture::new().await;
    let root = fx.root();
    fx.write("src/lib.rs", "needle\n");
    let fifo = root.join("src/pipe.rs");
    mkfifo(&fifo);
    mknod_zero(&root.join("src/zero.rs"));
    let _socket = std::os::unix::net::UnixListener::bind(root.join("src/sock.rs")).unwrap();
    let fifos = [fifo];

    let out = promptly(&fx, "search", json!({"pattern": "needle"}), &fifos).await;
    assert_ok(&out);
    assert_eq!(out.text, "src/lib.rs:1:needle");
    let out = promptly(&fx, "list_files", json!({}), &fifos).await;
    assert_ok(&out);
    assert_eq!(out.text, "src/lib.rs");
}

#[tokio::test(flavor = "multi_thread")]
async fn ignore_files_that_are_links_or_fifos_are_skipped_not_followed() {
    let fx = Fixture::new().await;
    let root = fx.root();
    // Were the host file read as ignore rules, it would hide every `.rs` file.
    std::fs::write(fx.secret(), "*.rs\n").unwrap();
    fx.write("a.rs", "needle\n");
    fx.write("sub/b.rs", "needle\n");
    fx.write("fifo/c.rs", "needle\n");
    fx.write("real/d.rs", "needle\n");
    fx.write("real/.gitignore", "d.rs\n");
    std::os::unix::fs::symlink(fx.secret(), root.join(".gitignore")).unwrap();
    std::os::unix::fs::symlink(fx.secret(), root.join("sub/.ignore")).unwrap();
    let fifo = root.join("fifo/.gitignore");
    mkfifo(&fifo);
    // A `.git` file pointing git at a directory outside, whose exclude file hides `.rs`.
    let outside_git = fx.outer.path().join("gitdir");
    std::fs::create_dir_all(outside_git.join("info")).unwrap();
    std::fs::write(outside_git.join("info/exclude"), "*.rs\n").unwrap();
    std::fs::write(
        root.join(".git"),
        format!("gitdir: {}\n", outside_git.display()),
    )
    .unwrap();
    let fifos = [fifo];

    let out = promptly(&fx, "list_files", json!({}), &fifos).await;
    assert_ok(&out);
    assert_eq!(
        out.text,
        ".gitignore\na.rs\nfifo/c.rs\nreal/.gitignore\nsub/.ignore\nsub/b.rs"
    );
    let out = promptly(&fx, "search", json!({"pattern": "needle"}), &fifos).await;
    assert_eq!(
        out.text,
        "a.rs:1:needle\nfifo/c.rs:1:needle\nsub/b.rs:1:needle"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_line_is_neither_held_nor_shown_whole() {
    let fx = Fixture::new().await;
    // One 4 MiB line with a match at its start, and a normal file after it.
    let mut huge = b"needle ".to_vec();
    huge.resize(4 << 20, b'x');
    huge.push(b'\n');
    std::fs::write(fx.root().join("a-minified.js"), &huge).unwrap();
    fx.write("b.js", "needle\n");

    let out = promptly(&fx, "search", json!({"pattern": "needle"}), &[]).await;
    assert_ok(&out);
    assert!(out.text.starts_with("b.js:1:needle"), "{}", out.text);
    assert!(
        out.text
            .contains("not searched past a line longer than 1024 KiB")
            && out.text.contains("`a-minified.js`"),
        "{}",
        out.text
    );
    assert!(out.text.len() < 1024, "{}", out.text.len());

    let out = promptly(&fx, "read_file", json!({"path": "a-minified.js"}), &[]).await;
    assert_ok(&out);
    assert!(
        out.text.starts_with("     1\tneedle xxx"),
        "{}",
        &out.text[..40]
    );
    assert!(
        out.text
            .contains(&format!("[line cut: {} more bytes]", (4 << 20) - 2000)),
        "{}",
        &out.text[out.text.len() - 80..]
    );
    assert!(out.text.len() < 3000, "{}", out.text.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sparse_terabyte_file_is_read_only_up_to_the_bound() {
    let fx = Fixture::new().await;
    let path = fx.root().join("sparse.log");
    std::fs::write(&path, "first line\nsecond line\n").unwrap();
    // Holes read as NUL bytes, which are a binary file's: the read stops there.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let out = promptly(&fx, "read_file", json!({"path": "sparse.log"}), &[]).await;
    assert_failed(&out, &["is a binary file"]);
    let out = promptly(&fx, "search", json!({"pattern": "line"}), &[]).await;
    assert_ok(&out);
    assert!(out.text.starts_with("no matches"), "{}", out.text);
    assert!(out.text.contains("only the first 64 MiB"), "{}", out.text);
}
