//! Layers: a session's changes kept as a directory, stacked read-only under later sessions'
//! workspaces (how a cached setup is reused).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use nightshift_sandbox::{SandboxSession, SessionOptions, SessionSpec};

#[tokio::test]
async fn a_kept_session_becomes_a_layer_of_later_sessions() {
    let fixture = Fixture::new();
    let setup = fixture.start().await;
    let out = run(
        &setup,
        "mkdir -p deps && echo installed > deps/lib.txt && rm README.md",
    )
    .await;
    assert!(out.status.success(), "{}", out.output);
    let layer = fixture.state.path().join("layer-1");
    setup.close_keeping_changes(&layer).await.unwrap();
    assert!(layer.join("workspace/deps/lib.txt").exists());
    // The host's working copy never changed.
    assert!(fixture.workspace.path().join("README.md").exists());
    assert!(!fixture.workspace.path().join("deps").exists());

    let spec = SessionSpec {
        layers: vec![layer.clone()],
        ..fixture.spec()
    };
    let task = fixture
        .backend
        .start_with(spec, SessionOptions::default())
        .await
        .unwrap();
    let out = run(&task, "cat deps/lib.txt; test -e README.md && echo readme || echo no-readme; echo mine > deps/own.txt").await;
    assert!(out.status.success(), "{}", out.output);
    assert!(out.output.contains("installed"), "{}", out.output);
    assert!(
        out.output.contains("no-readme"),
        "the layer's deletion shows: {}",
        out.output
    );
    task.close().await.unwrap();
    // The layer is read-only for the session that used it.
    assert!(!layer.join("workspace/deps/own.txt").exists());
    assert!(layer.join("workspace/deps/lib.txt").exists());
}

/// A session over a committed tree (the checks') stacks the working copy above the layers: a
/// file both hold, or one the layer deleted, is the working copy's; what only the layer holds
/// still shows.
#[tokio::test]
async fn a_working_copy_over_the_layers_keeps_every_path_it_holds() {
    let fixture = Fixture::new();
    std::fs::write(fixture.workspace.path().join("version.txt"), "v1\n").unwrap();
    let setup = fixture.start().await;
    let out = run(
        &setup,
        "echo from-setup > version.txt && rm README.md && mkdir -p deps && echo installed > deps/lib.txt",
    )
    .await;
    assert!(out.status.success(), "{}", out.output);
    let layer = fixture.state.path().join("layer-over");
    setup.close_keeping_changes(&layer).await.unwrap();
    // The committed tree moved on since setup ran.
    std::fs::write(fixture.workspace.path().join("version.txt"), "v2\n").unwrap();
    let show =
        "cat version.txt; test -e README.md && echo readme || echo no-readme; cat deps/lib.txt";

    let below = session_over(
        &fixture,
        std::slice::from_ref(&layer),
        SessionOptions::default(),
    )
    .await;
    let out = run(&below, show).await;
    assert_eq!(
        out.output, "from-setup\nno-readme\ninstalled\n",
        "the layers win by default"
    );
    below.close().await.unwrap();

    let spec = SessionSpec {
        layers: vec![layer.clone()],
        workspace_over_layers: true,
        ..fixture.spec()
    };
    let over = fixture
        .backend
        .start_with(spec, SessionOptions::default())
        .await
        .unwrap();
    let out = run(&over, show).await;
    assert_eq!(
        out.output, "v2\nreadme\ninstalled\n",
        "the working copy wins over the layers"
    );
    let out = run(&over, "echo changed > version.txt && cat version.txt").await;
    assert_eq!(out.output, "changed\n", "and stays writable");
    over.close().await.unwrap();
    assert_eq!(
        std::fs::read_to_string(fixture.workspace.path().join("version.txt")).unwrap(),
        "v2\n"
    );
}

/// Starts a session over `layers` with `options`.
async fn session_over(
    fixture: &Fixture,
    layers: &[std::path::PathBuf],
    options: SessionOptions,
) -> nightshift_sandbox::NamespacedSession {
    let spec = SessionSpec {
        layers: layers.to_vec(),
        ..fixture.spec()
    };
    fixture.backend.start_with(spec, options).await.unwrap()
}

#[tokio::test]
async fn the_home_directory_is_writable_and_a_layer_keeps_it() {
    let fixture = Fixture::new();
    let setup = fixture.start().await;
    let out = run(
        &setup,
        "echo $HOME; mkdir -p ~/.cache/deps && echo fetched > ~/.cache/deps/crate.txt",
    )
    .await;
    assert!(out.status.success(), "{}", out.output);
    assert_eq!(out.output, "/home/agent\n");
    let layer = fixture.state.path().join("layer-home");
    setup.close_keeping_changes(&layer).await.unwrap();
    assert!(layer.join("home/.cache/deps/crate.txt").is_file());

    let task = session_over(
        &fixture,
        std::slice::from_ref(&layer),
        SessionOptions::default(),
    )
    .await;
    let out = run(
        &task,
        "cat ~/.cache/deps/crate.txt && echo more >> ~/.cache/deps/crate.txt && stat -c %u ~/.cache/deps/crate.txt",
    )
    .await;
    assert!(out.status.success(), "{}", out.output);
    assert_eq!(out.output, "fetched\n1000\n");
    task.close().await.unwrap();
    // The task's own writes to HOME went to its upper directory, not into the layer.
    assert_eq!(
        std::fs::read_to_string(layer.join("home/.cache/deps/crate.txt")).unwrap(),
        "fetched\n"
    );
}

fn root_options() -> SessionOptions {
    SessionOptions {
        root: true,
        ..SessionOptions::default()
    }
}

fn host_is_root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipped: a writable system needs nightshift to run as root");
    }
    root
}

#[tokio::test]
async fn a_root_session_changes_the_system_and_later_sessions_see_its_layer() {
    if !host_is_root() {
        return;
    }
    let fixture = Fixture::new();
    let setup = fixture.start_with(root_options()).await;
    let out = run(
        &setup,
        "set -e; id -u; printf '#!/bin/sh\\necho hello from the layer\\n' > /usr/local/bin/layer-hello; \
         chmod 755 /usr/local/bin/layer-hello; echo configured > /etc/layer-test.conf; \
         mkdir -p /opt/tool && echo v1 > /opt/tool/VERSION; echo kept > ~/from-setup; \
         echo generated > generated.txt; sudo -E true; rm /etc/hostname 2>/dev/null || true",
    )
    .await;
    assert!(out.status.success(), "{}", out.output);
    assert_eq!(out.output, "0\n");
    let layer = fixture.state.path().join("layer-root");
    setup.close_keeping_changes(&layer).await.unwrap();
    assert!(layer.join("system/usr/local/bin/layer-hello").is_file());
    assert!(layer.join("system/etc/layer-test.conf").is_file());
    // The host's own system is untouched.
    assert!(!std::path::Path::new("/usr/local/bin/layer-hello").exists());
    assert!(!std::path::Path::new("/etc/layer-test.conf").exists());

    let task = session_over(
        &fixture,
        std::slice::from_ref(&layer),
        SessionOptions::default(),
    )
    .await;
    let out = run(
        &task,
        "id -u; layer-hello; cat /etc/layer-test.conf /opt/tool/VERSION ~/from-setup generated.txt; \
         stat -c %u ~/from-setup generated.txt; echo more >> ~/from-setup && echo home-writable; \
         touch /usr/local/bin/x 2>/dev/null || echo usr-read-only; test -e /etc/hostname || echo hostname-gone",
    )
    .await;
    assert!(out.status.success(), "{}", out.output);
    assert_eq!(
        out.output,
        "1000\nhello from the layer\nconfigured\nv1\nkept\ngenerated\n1000\n1000\nhome-writable\nusr-read-only\nhostname-gone\n"
    );
    task.close().await.unwrap();
}

#[tokio::test]
async fn root_inside_sees_no_host_secret_of_the_system_directories() {
    if !host_is_root() {
        return;
    }
    let fixture = Fixture::new();
    let setup = fixture.start_with(root_options()).await;
    // Every account is there, no password hash is; files other users may not read are gone;
    // of /var only the package managers' state shows.
    let out = run(
        &setup,
        "cut -d: -f2 /etc/shadow | sort -u; grep -c '^root:' /etc/shadow; \
         test -e /etc/shadow- && echo backup-visible; \
         find /etc /usr /opt -xdev -type f ! -perm -o=r 2>/dev/null | grep -v -x -e /etc/shadow -e /etc/gshadow; \
         ls /var/log | wc -l; test -s /var/lib/dpkg/status && echo dpkg-status; \
         stat -c '%a %u' /usr /etc /var; ls /proc/1/fd >/dev/null 2>&1 || echo init-closed",
    )
    .await;
    assert!(out.status.success(), "{}", out.output);
    // The system directories are the host's mode and owner: every user inside reaches them.
    assert_eq!(
        out.output,
        "*\n1\n0\ndpkg-status\n755 0\n755 0\n755 0\ninit-closed\n"
    );
    setup.close().await.unwrap();
}

#[tokio::test]
async fn a_root_session_installs_a_debian_package_that_later_sessions_use() {
    if !host_is_root() || !std::path::Path::new("/usr/bin/dpkg-deb").exists() {
        eprintln!("skipped: needs root and dpkg");
        return;
    }
    let fixture = Fixture::new();
    let setup = fixture.start_with(root_options()).await;
    let out = run(
        &setup,
        "set -e; mkdir -p /tmp/pkg/DEBIAN /tmp/pkg/usr/bin; \
         printf 'Package: nightshift-layer-test\\nVersion: 1.0\\nArchitecture: all\\nMaintainer: t <t@example.invalid>\\nDescription: test\\n' > /tmp/pkg/DEBIAN/control; \
         printf '#!/bin/sh\\necho installed by dpkg\\n' > /tmp/pkg/usr/bin/nightshift-layer-test; \
         chmod 755 /tmp/pkg/usr/bin/nightshift-layer-test; \
         dpkg-deb --root-owner-group --build /tmp/pkg /tmp/test.deb >/dev/null; dpkg -i /tmp/test.deb >/dev/null; \
         dpkg -s nightshift-layer-test | grep Status",
    )
    .await;
    assert!(out.status.success(), "{}", out.output);
    assert_eq!(out.output, "Status: install ok installed\n");
    let layer = fixture.state.path().join("layer-dpkg");
    setup.close_keeping_changes(&layer).await.unwrap();
    let task = session_over(&fixture, &[layer], SessionOptions::default()).await;
    let out = run(
        &task,
        "nightshift-layer-test; dpkg -s nightshift-layer-test | grep Status",
    )
    .await;
    assert!(out.status.success(), "{}", out.output);
    assert_eq!(
        out.output,
        "installed by dpkg\nStatus: install ok installed\n"
    );
    task.close().await.unwrap();
}
