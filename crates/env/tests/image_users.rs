//! An image's users and groups, read from its layers' /etc/passwd and /etc/group as the
//! sessions' overlay stacks them, and never through a link out of a layer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use nightshift_env::build::users::{ImageEtc, ImageUser, UserError};

const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
broken line\n\
node:x:1000:1000::/home/node:/bin/sh\n\
nohome:x:1001:1001::relative:/bin/sh\n";

const GROUP: &str = "root:x:0:\n\
node:x:1000:\n\
staff:x:50:node,other\n\
docker:x:999:daemon,node\n\
nohome:x:1001:\n";

fn layer(dir: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let layer = dir.join(name);
    for (path, text) in files {
        let path = layer.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    std::fs::create_dir_all(&layer).unwrap();
    layer
}

fn image(dir: &Path) -> Vec<PathBuf> {
    vec![layer(
        dir,
        "base",
        &[("etc/passwd", PASSWD), ("etc/group", GROUP)],
    )]
}

#[test]
fn a_name_is_resolved_with_its_group_home_and_memberships() {
    let dir = tempfile::tempdir().unwrap();
    let etc = ImageEtc::new(&image(dir.path()), &[]);
    assert_eq!(
        etc.user("node").unwrap(),
        Some(ImageUser {
            name: "node".into(),
            uid: 1000,
            gid: 1000,
            groups: vec![1000, 50, 999],
            home: Some("/home/node".into()),
        })
    );
    // A number finds its entry; a group given is the primary one.
    let user = etc.user("1000:staff").unwrap().unwrap();
    assert_eq!((user.name.as_str(), user.gid), ("node", 50));
    assert_eq!(user.groups, vec![50, 999]);
    // A relative home is no home.
    assert_eq!(etc.user("nohome").unwrap().unwrap().home, None);
}

#[test]
fn a_number_without_an_entry_is_that_uid_with_group_zero_and_root_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let etc = ImageEtc::new(&image(dir.path()), &[]);
    let user = etc.user("4242").unwrap().unwrap();
    assert_eq!(
        (user.name.as_str(), user.uid, user.gid, user.home),
        ("4242", 4242, 0, None)
    );
    assert_eq!(etc.user("4242:7").unwrap().unwrap().gid, 7);
    for root in ["root", "0", "0:0", "", "  "] {
        assert_eq!(etc.user(root).unwrap(), None, "{root:?}");
    }
}

#[test]
fn unknown_names_are_errors_that_say_which() {
    let dir = tempfile::tempdir().unwrap();
    let etc = ImageEtc::new(&image(dir.path()), &[]);
    let err = etc.user("vscode").unwrap_err();
    assert!(matches!(err, UserError::NoSuchUser(ref name) if name == "vscode"));
    assert_eq!(
        err.to_string(),
        "the user `vscode` is not in the image's /etc/passwd"
    );
    let err = etc.user("node:wheel").unwrap_err();
    assert_eq!(
        err.to_string(),
        "the group `wheel` is not in the image's /etc/group"
    );
    // An image without /etc/passwd knows numbers only.
    let empty = ImageEtc::new(&[layer(dir.path(), "empty", &[])], &[]);
    assert!(matches!(empty.user("node"), Err(UserError::NoSuchUser(_))));
    assert_eq!(empty.user("12").unwrap().unwrap().uid, 12);
}

#[test]
fn chown_takes_names_and_numbers_and_defaults_the_group_to_the_uid() {
    let dir = tempfile::tempdir().unwrap();
    let etc = ImageEtc::new(&image(dir.path()), &[]);
    assert_eq!(etc.owner("node").unwrap(), (1000, 1000));
    assert_eq!(etc.owner("node:staff").unwrap(), (1000, 50));
    assert_eq!(etc.owner("daemon:12").unwrap(), (1, 12));
    assert_eq!(etc.owner("55").unwrap(), (55, 55));
    assert_eq!(etc.owner("55:docker").unwrap(), (55, 999));
    assert!(matches!(
        etc.owner("ghost:staff"),
        Err(UserError::NoSuchUser(_))
    ));
    assert!(matches!(
        etc.owner("node:ghosts"),
        Err(UserError::NoSuchGroup(_))
    ));
}

#[test]
fn the_topmost_layer_that_has_the_file_wins_and_kept_layers_are_above_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let base = image(dir.path());
    let top = layer(
        dir.path(),
        "top",
        &[("etc/passwd", "dev:x:2000:2000::/home/dev:/bin/sh\n")],
    );
    let kept = layer(
        dir.path(),
        "kept",
        &[("system/etc/passwd", "dev:x:3000:3000::/home/dev:/bin/sh\n")],
    );
    let image = [base[0].clone(), top];
    let etc = ImageEtc::new(&image, &[]);
    assert_eq!(etc.user("dev").unwrap().unwrap().uid, 2000);
    assert!(etc.user("node").is_err(), "the lower passwd is covered");
    // The group file is still the base layer's.
    assert_eq!(etc.owner("dev:staff").unwrap(), (2000, 50));
    let etc = ImageEtc::new(&image, std::slice::from_ref(&kept));
    assert_eq!(etc.user("dev").unwrap().unwrap().uid, 3000);
}

#[test]
fn a_link_out_of_the_layer_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    // /etc as a link to the host's /etc, then /etc/passwd as a link to a host file.
    let linked_etc = dir.path().join("linked-etc");
    std::fs::create_dir_all(&linked_etc).unwrap();
    std::os::unix::fs::symlink("/etc", linked_etc.join("etc")).unwrap();
    let err = ImageEtc::new(&[linked_etc], &[]).user("root").unwrap_err();
    assert!(matches!(err, UserError::Unreadable { .. }), "{err}");

    let host = dir.path().join("host-passwd");
    std::fs::write(&host, "spy:x:5:5::/:/bin/sh\n").unwrap();
    let linked_file = dir.path().join("linked-file");
    std::fs::create_dir_all(linked_file.join("etc")).unwrap();
    std::os::unix::fs::symlink(&host, linked_file.join("etc/passwd")).unwrap();
    let err = ImageEtc::new(&[linked_file], &[]).user("spy").unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
}

#[test]
fn a_whiteout_deletes_the_file_below() {
    if !nix_is_root() {
        eprintln!("skipped: a whiteout is a 0:0 character device, which only root makes");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = image(dir.path());
    let top = dir.path().join("top");
    std::fs::create_dir_all(top.join("etc")).unwrap();
    let path = std::ffi::CString::new(top.join("etc/passwd").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, 0) },
        0
    );
    let etc = ImageEtc::new(&[base[0].clone(), top], &[]);
    assert!(matches!(etc.user("node"), Err(UserError::NoSuchUser(_))));
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
