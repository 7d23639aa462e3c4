//! What nightshift builds over an image beyond plain files, end to end with the real binary:
//! `ADD` of local tar archives (gzip, xz) unpacked into the image, a compressed file that is
//! not a tar copied as it is; a devcontainer feature given as a tarball URL, fetched from a
//! server the test starts on loopback, installed, and cached under its digest; an image on a
//! private address pulled only when the host configuration allows it.
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
use support::apt::{pushed_debian_image, ready};

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
    let (registry, reference, _archive) = pushed_debian_image(work.path(), "team/add");
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

/// A server on loopback answering every request with `body`, counting the requests.
fn serve(body: Vec<u8>) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    (port, served)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_feature_given_as_a_tarball_url_is_fetched_installed_and_cached_by_digest() {
    if !ready() {
        return;
    }
    let work = support::workdir();
    let (registry, reference, _archive) = pushed_debian_image(work.path(), "team/tarball");
    let feature = work.path().join("feature.tgz");
    tar_into(
        work.path(),
        &feature,
        "gzip",
        &[
            (
                "devcontainer-feature.json",
                r#"{"id": "greeter", "version": "1.0.0",
                    "options": {"greeting": {"type": "string", "default": "hello"}},
                    "containerEnv": {"GREETER_FROM": "tarball"}}"#,
            ),
            (
                "install.sh",
                "#!/bin/sh\nset -e\nprintf '#!/bin/sh\\necho %s\\n' \"$GREETING\" > /usr/local/bin/greet\nchmod 755 /usr/local/bin/greet\n",
            ),
        ],
    );
    let (port, served) = serve(std::fs::read(&feature).unwrap());
    let url = format!("http://127.0.0.1:{port}/releases/devcontainer-feature-greeter.tgz");
    let devcontainer = format!(
        r#"{{"image": "{reference}", "features": {{"{url}": {{"greeting": "hi from a tarball"}}}}}}"#
    );
    let repo = repo_with(&[(".devcontainer/devcontainer.json", &devcontainer)]);
    let probe = "greet; echo $GREETER_FROM";
    let steps = json!([
        shell(probe),
        finish("Probed"),
        shell(probe),
        finish("Again")
    ]);
    let (ns, _server) = Nightshift::with_script(script(steps)).await;
    std::fs::write(
        ns.home.path().join("config.toml"),
        format!(
            "[images]\nplain_http = [\"{}\", \"127.0.0.1:{port}\"]\n",
            registry.host()
        ),
    )
    .unwrap();

    let (out, task) = ns.wait_task(repo.path(), "probe").await;
    let events = ns.events(task["id"].as_str().unwrap()).await;
    assert!(out.status.success(), "{}\n{events:#?}", stderr(&out));
    assert!(
        shell_outputs(&events)[0].starts_with("hi from a tarball\ntarball\n"),
        "{events:#?}"
    );
    let built: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "build_step")
        .collect();
    assert_eq!(built.len(), 1, "{built:?}");
    assert!(
        built[0]["step"].as_str().unwrap().contains(&url),
        "{built:?}"
    );
    assert_eq!(built[0]["hit"], false);
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Fetched again (every task that builds fetches), the same digest: the layer is cached.
    let (out, task) = ns.wait_task(repo.path(), "again").await;
    let events = ns.events(task["id"].as_str().unwrap()).await;
    assert!(out.status.success(), "{}\n{events:#?}", stderr(&out));
    let built: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "build_step")
        .collect();
    assert_eq!(built[0]["hit"], true, "{built:?}");
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tarball_feature_over_plain_http_to_an_unlisted_host_fails_the_task_saying_so() {
    if !ready() {
        return;
    }
    let work = support::workdir();
    let (registry, reference, _archive) = pushed_debian_image(work.path(), "team/unlisted");
    let (port, served) = serve(b"never fetched".to_vec());
    let url = format!("http://127.0.0.1:{port}/devcontainer-feature-x.tgz");
    let devcontainer = format!(r#"{{"image": "{reference}", "features": {{"{url}": {{}}}}}}"#);
    let repo = repo_with(&[(".devcontainer/devcontainer.json", &devcontainer)]);
    let (ns, _server) = Nightshift::with_script(script(json!([finish("never")]))).await;
    std::fs::write(
        ns.home.path().join("config.toml"),
        format!("[images]\nplain_http = [\"{}\"]\n", registry.host()),
    )
    .unwrap();
    let (out, task) = ns.wait_task(repo.path(), "anything").await;
    assert!(!out.status.success());
    let message = task["error"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("fetching the feature {url}")) && message.contains("plain HTTP"),
        "{task}"
    );
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_on_a_private_address_is_pulled_only_when_the_host_configuration_allows_it() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: a task on an image needs nightshift to run as root");
        return;
    }
    // A "registry" on loopback, as an internal service of this host's network would be.
    let (port, served) = serve(b"{}".to_vec());
    let repo = repo_with(&[(
        ".nightshift.toml",
        &format!("[environment]\nimage = \"127.0.0.1:{port}/team/app:1\"\n"),
    )]);
    let (ns, _server) = Nightshift::with_script(script(json!([finish("never")]))).await;
    let (out, task) = ns.wait_task(repo.path(), "anything").await;
    assert!(!out.status.success());
    let message = task["error"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("127.0.0.1:{port}"))
            && message.contains("resolves to a private address")
            && message.contains("[images] allow_private"),
        "{task}"
    );
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 0);

    // Listed, it is asked (over HTTPS, which this server does not speak).
    std::fs::write(
        ns.home.path().join("config.toml"),
        format!("[images]\nallow_private = [\"127.0.0.1:{port}\"]\n"),
    )
    .unwrap();
    let (out, task) = ns.wait_task(repo.path(), "anything").await;
    assert!(!out.status.success());
    let message = task["error"].as_str().unwrap_or_default();
    assert!(!message.contains("private address"), "{task}");
    assert!(served.load(std::sync::atomic::Ordering::SeqCst) > 0);
}
