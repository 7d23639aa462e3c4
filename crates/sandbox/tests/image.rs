//! Images: a session whose root is an image's layers (overlayfs's form: whiteouts as 0:0
//! character devices, opaque directories marked) rather than the host's system directories.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use common::*;
use nightshift_sandbox::{SandboxSession, SessionOptions, SessionSpec};

/// Programs the small image has, from the host, with the libraries they load.
const PROGRAMS: &[&str] = &[
    "bash", "sh", "cat", "ls", "id", "mkdir", "touch", "stat", "rm", "env",
];

/// Copies the host's `path` (as a program names it, `/lib/...` included) to the same place
/// under `layer`'s merged /usr.
fn copy_into(layer: &Path, path: &Path) {
    let relative = path.strip_prefix("/").unwrap();
    let relative = match relative.components().next().unwrap().as_os_str().to_str() {
        Some("usr") => relative.to_path_buf(),
        _ => Path::new("usr").join(relative),
    };
    let to = layer.join(relative);
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(std::fs::canonicalize(path).unwrap(), &to).unwrap();
}

fn libraries(program: &Path) -> Vec<PathBuf> {
    let out = std::process::Command::new("ldd")
        .arg(program)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.trim().split(' ').next()?,
                None => line.trim().split(' ').next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// A small image in two layers under `dir`, owned as an image's files are stored on this host
/// (by the sandbox's host id on a root host). Layer 0: the programs, merged-/usr links, an
/// /etc of its own; layer 1: deletes `/usr/bin/ls` (a whiteout), replaces `/etc/conf.d`
/// (opaque) and changes `/etc/os-release`.
fn small_image(dir: &Path, owner: Option<u32>) -> Vec<PathBuf> {
    let base = dir.join("layer0");
    for program in PROGRAMS {
        let host = Path::new("/usr/bin").join(program);
        copy_into(&base, &host);
        for library in libraries(&host) {
            copy_into(&base, &library);
        }
    }
    for (link, to) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        symlink(to, base.join(link)).unwrap();
    }
    std::fs::create_dir_all(base.join("etc/conf.d")).unwrap();
    std::fs::write(base.join("etc/os-release"), "ID=layer0\n").unwrap();
    std::fs::write(base.join("etc/conf.d/a"), "a\n").unwrap();
    std::fs::create_dir_all(base.join("opt/tool")).unwrap();
    std::fs::write(base.join("opt/tool/VERSION"), "1\n").unwrap();

    let top = dir.join("layer1");
    std::fs::create_dir_all(top.join("usr/bin")).unwrap();
    nix::sys::stat::mknod(
        &top.join("usr/bin/ls"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        0,
    )
    .unwrap();
    std::fs::create_dir_all(top.join("etc/conf.d")).unwrap();
    std::fs::write(top.join("etc/conf.d/b"), "b\n").unwrap();
    xattr_opaque(&top.join("etc/conf.d"));
    std::fs::write(top.join("etc/os-release"), "ID=layer1\n").unwrap();

    if let Some(id) = owner {
        let status = std::process::Command::new("chown")
            .args(["-hR", &format!("{id}:{id}")])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success());
    }
    vec![base, top]
}

fn xattr_opaque(dir: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid NUL-terminated strings and a live buffer of the given length.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            c"user.overlay.opaque".as_ptr(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

/// The owner an image's files are stored with: the id that is root inside a root session.
fn image_owner(fixture: &Fixture) -> Option<u32> {
    nix::unistd::geteuid()
        .is_root()
        .then(|| fixture.backend.config().root_host_id)
}

fn over_image(fixture: &Fixture, image: &[PathBuf], layers: &[PathBuf]) -> SessionSpec {
    SessionSpec {
        image: image.to_vec(),
        layers: layers.to_vec(),
        ..fixture.spec()
    }
}

#[tokio::test]
async fn the_image_is_the_root_and_nothing_of_the_hosts_system_shows() {
    let fixture = Fixture::new();
    let images = tempfile::tempdir().unwrap();
    let image = small_image(images.path(), image_owner(&fixture));
    let session = fixture
        .backend
        .start_with(over_image(&fixture, &image, &[]), SessionOptions::default())
        .await
        .unwrap();
    let out = run(
        &session,
        "cat /etc/os-release; cat /etc/conf.d/*; cat /opt/tool/VERSION; \
         for p in /etc/passwd /usr/bin/git /usr/bin/ls /etc/conf.d/a; do test -e $p && echo \"visible $p\"; done; \
         cat README.md; id -u; echo $HOME",
    )
    .await;
    assert!(out.status.success(), "{}", out.output);
    assert_eq!(
        out.output,
        "ID=layer1\nb\n1\nhello from the host\n1000\n/home/agent\n"
    );
    // The system is writable for the session, and what it writes is its own.
    let out = run(
        &session,
        "echo 2 > /opt/tool/VERSION && mkdir -p /usr/local/share && touch /usr/local/share/x && cat /opt/tool/VERSION",
    )
    .await;
    assert!(out.status.success(), "{}", out.output);
    assert_eq!(out.output, "2\n");
    // So is the rest of the root, as a container's is.
    let out = run(&session, "mkdir /srv-new && touch /srv-new/x").await;
    assert!(out.status.success(), "{}", out.output);
    session.close().await.unwrap();
    assert_eq!(read(&image[0].join("opt/tool/VERSION")), "1\n");
    assert!(!image[0].join("usr/local").exists());
    assert!(!image[0].join("srv-new").exists());
    assert!(fixture.state_is_empty());
}

#[tokio::test]
async fn a_root_session_on_an_image_keeps_its_system_changes_as_a_layer() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: an image's owners exist inside only when nightshift runs as root");
        return;
    }
    let fixture = Fixture::new();
    let images = tempfile::tempdir().unwrap();
    let image = small_image(images.path(), image_owner(&fixture));
    let setup = fixture
        .backend
        .start_with(
            over_image(&fixture, &image, &[]),
            SessionOptions {
                root: true,
                ..SessionOptions::default()
            },
        )
        .await
        .unwrap();
    let out = run(
        &setup,
        "id -u; stat -c %u /usr/bin/bash; mkdir -p /usr/share/tool /srv/app && echo installed > /usr/share/tool/x && echo app > /srv/app/f && rm /etc/conf.d/b && echo cached > ~/.cache-file",
    )
    .await;
    assert!(out.status.success(), "{}", out.output);
    assert_eq!(out.output, "0\n0\n");
    let layer = fixture.state.path().join("layer-image");
    setup.close_keeping_changes(&layer).await.unwrap();
    assert!(layer.join("system/usr/share/tool/x").is_file());
    // The rest of the root is kept too, but not the sandbox's own mount points and files.
    assert!(layer.join("root/srv/app/f").is_file());
    for made in [
        "workspace",
        "tmp",
        "proc",
        "dev",
        "run/nightshift",
        "home/agent",
    ] {
        assert!(!layer.join("root").join(made).exists(), "{made} was kept");
    }

    let task = fixture
        .backend
        .start_with(
            over_image(&fixture, &image, std::slice::from_ref(&layer)),
            SessionOptions::default(),
        )
        .await
        .unwrap();
    let out = run(
        &task,
        "cat /usr/share/tool/x ~/.cache-file /srv/app/f; test -e /etc/conf.d/b || echo deleted; cat /etc/os-release",
    )
    .await;
    assert!(out.status.success(), "{}", out.output);
    assert_eq!(out.output, "installed\ncached\napp\ndeleted\nID=layer1\n");
    task.close().await.unwrap();
}

#[test]
fn an_image_is_the_root_for_an_unprivileged_user_too() {
    if !nix::unistd::geteuid().is_root() {
        // Already unprivileged: the test above is the one that matters here.
        return;
    }
    let Some(setpriv) = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|path| Path::new(path).exists())
    else {
        eprintln!(
            "skipped: setpriv is missing (util-linux), so the image is not tried as `nobody`"
        );
        return;
    };
    // The same test, as `nobody`: the image's files are that user's, whiteouts made without
    // privileges, and one id mapped.
    let output = std::process::Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "the_image_is_the_root_and_nothing_of_the_hosts_system_shows",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TMPDIR", "/tmp")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
}

/// An image's user: commands run with its ids in a namespace that maps the image's, so its
/// files show with their owners; the workspace, its home and what setup left in the workspace
/// are the user's, the image's root files are not.
#[tokio::test]
async fn commands_run_as_the_images_user_over_their_files() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: an image's user needs nightshift to run as root");
        return;
    }
    let fixture = Fixture::new();
    let images = tempfile::tempdir().unwrap();
    let base = image_owner(&fixture).unwrap();
    let mut image = small_image(images.path(), Some(base));
    let users = images.path().join("layer2");
    std::fs::create_dir_all(users.join("home/dev")).unwrap();
    std::os::unix::fs::chown(&users, Some(base), Some(base)).unwrap();
    std::os::unix::fs::chown(users.join("home"), Some(base), Some(base)).unwrap();
    std::os::unix::fs::chown(users.join("home/dev"), Some(base + 1234), Some(base + 1235)).unwrap();
    image.push(users);

    let setup = fixture
        .backend
        .start_with(
            over_image(&fixture, &image, &[]),
            SessionOptions {
                root: true,
                ..SessionOptions::default()
            },
        )
        .await
        .unwrap();
    let out = run(&setup, "mkdir from-setup && echo 1 > from-setup/file").await;
    assert!(out.status.success(), "{}", out.output);
    let layer = fixture.state.path().join("layer-user");
    setup.close_keeping_changes(&layer).await.unwrap();

    let user = nightshift_sandbox::SessionUser {
        name: "dev".into(),
        uid: 1234,
        gid: 1235,
        groups: vec![1235, 50],
        home: Some("/home/dev".into()),
    };
    let spec = SessionSpec {
        user: Some(user),
        ..over_image(&fixture, &image, std::slice::from_ref(&layer))
    };
    let session = fixture
        .backend
        .start_with(spec, SessionOptions::default())
        .await
        .unwrap();
    let out = run(
        &session,
        "id -u; id -g; id -G; echo $HOME $USER; \
         stat -c %u:%g /home/dev /workspace /workspace/README.md /workspace/from-setup/file /etc/os-release; \
         touch /workspace/new ~/new && echo more >> from-setup/file && mkdir from-setup/sub && echo writable",
    )
    .await;
    assert!(out.status.success(), "{}", out.output);
    assert_eq!(
        out.output,
        "1234\n1235\n1235 50\n/home/dev dev\n1234:1235\n1234:1235\n1234:1235\n1234:1235\n0:0\nwritable\n"
    );
    // The image's own files stay root's.
    let out = run(&session, "echo changed > /etc/os-release").await;
    assert!(!out.status.success(), "{}", out.output);
    assert!(out.output.contains("Permission denied"), "{}", out.output);
    // The host writes into the workspace as the user's host id.
    assert_eq!(
        session.file_owner(),
        Some(nightshift_sandbox::FileOwner {
            uid: base + 1234,
            gid: base + 1235
        })
    );
    session.close().await.unwrap();
    assert_eq!(read(&layer.join("workspace/from-setup/file")), "1\n");
}

#[tokio::test]
async fn an_images_user_with_an_id_the_session_cannot_map_is_refused() {
    let fixture = Fixture::new();
    let images = tempfile::tempdir().unwrap();
    let image = small_image(images.path(), image_owner(&fixture));
    let user = nightshift_sandbox::SessionUser {
        name: "far".into(),
        uid: 70_000,
        gid: 70_000,
        groups: Vec::new(),
        home: None,
    };
    let spec = SessionSpec {
        user: Some(user),
        ..over_image(&fixture, &image, &[])
    };
    let err = fixture
        .backend
        .start_with(spec, SessionOptions::default())
        .await
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(text.contains("the user far has the id 70000"), "{text}");
    assert!(fixture.state_is_empty());
}
