//! `ADD` of local tar archives: unpacked into the destination and placed into the parts of the
//! step's layer their paths belong to; other files copied as they are; and no write of a step
//! goes through a link an earlier source of the same step made.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use nightshift_env::build::add_archive::Archives;
use nightshift_env::build::context::Copy;
use nightshift_image::Owner;

fn write(root: &Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

/// `tar -cz` of `files` (as paths relative to the archive's root) into `archive`.
fn tgz(work: &Path, archive: &Path, files: &[(&str, &str)]) {
    let tree = work.join("tree");
    let _ = std::fs::remove_dir_all(&tree);
    write(&tree, files);
    let status = Command::new("tar")
        .arg("-czf")
        .arg(archive)
        .arg("-C")
        .arg(&tree)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
}

fn archives() -> Archives {
    Archives {
        ids: Owner::Caller,
        chown: None,
        max_bytes: 1 << 20,
    }
}

#[test]
fn an_archive_is_unpacked_into_the_destination_and_other_files_are_copied() {
    let work = tempfile::tempdir().unwrap();
    let context = work.path().join("context");
    write(&context, &[("notes.txt", "not an archive\n")]);
    tgz(
        work.path(),
        &context.join("app.tgz"),
        &[("README", "packed\n"), ("bin/tool", "tool\n")],
    );
    let layer = work.path().join("layer");
    std::fs::create_dir(&layer).unwrap();
    let sources = ["app.tgz".to_string(), "notes.txt".to_string()];
    Copy::plan(&context, &sources, "/opt/app/")
        .unwrap()
        .write(&layer, None, None, Some(&archives()))
        .unwrap();
    let at = layer.join("system/opt/app");
    assert_eq!(
        std::fs::read_to_string(at.join("README")).unwrap(),
        "packed\n"
    );
    assert_eq!(
        std::fs::read_to_string(at.join("bin/tool")).unwrap(),
        "tool\n"
    );
    assert_eq!(
        std::fs::read_to_string(at.join("notes.txt")).unwrap(),
        "not an archive\n"
    );
    assert!(
        !at.join("app.tgz").exists(),
        "the archive itself is not copied"
    );
    assert!(
        !layer.join(".add").exists(),
        "nothing is left of the staging"
    );

    // COPY (no archives) copies the archive as the file it is.
    let copied = work.path().join("copied");
    std::fs::create_dir(&copied).unwrap();
    Copy::plan(&context, &["app.tgz".to_string()], "/opt/")
        .unwrap()
        .write(&copied, None, None, None)
        .unwrap();
    assert!(copied.join("system/opt/app.tgz").is_file());
}

#[test]
fn an_archive_added_at_the_root_lands_in_each_part_of_the_layer() {
    let work = tempfile::tempdir().unwrap();
    let context = work.path().join("context");
    std::fs::create_dir_all(&context).unwrap();
    tgz(
        work.path(),
        &context.join("rootfs.tar.gz"),
        &[
            ("usr/local/bin/x", "x\n"),
            ("etc/app.conf", "conf\n"),
            ("srv/data", "data\n"),
            ("home/agent/.profile", "profile\n"),
            ("home/other/file", "other\n"),
        ],
    );
    let layer = work.path().join("layer");
    std::fs::create_dir(&layer).unwrap();
    Copy::plan(&context, &["rootfs.tar.gz".to_string()], "/")
        .unwrap()
        .write(&layer, None, None, Some(&archives()))
        .unwrap();
    for (path, text) in [
        ("system/usr/local/bin/x", "x\n"),
        ("system/etc/app.conf", "conf\n"),
        ("root/srv/data", "data\n"),
        ("home/.profile", "profile\n"),
        ("root/home/other/file", "other\n"),
    ] {
        assert_eq!(
            std::fs::read_to_string(layer.join(path)).unwrap(),
            text,
            "{path}"
        );
    }
}

#[test]
fn chown_gives_every_unpacked_entry_its_owner() {
    if !nix_is_root() {
        eprintln!("skipped: giving files another owner needs root");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let context = work.path().join("context");
    std::fs::create_dir_all(&context).unwrap();
    tgz(work.path(), &context.join("a.tgz"), &[("d/f", "f\n")]);
    let layer = work.path().join("layer");
    std::fs::create_dir(&layer).unwrap();
    let archives = Archives {
        chown: Some((1234, 1235)),
        ..archives()
    };
    Copy::plan(&context, &["a.tgz".to_string()], "/srv/")
        .unwrap()
        .write(&layer, None, None, Some(&archives))
        .unwrap();
    use std::os::unix::fs::MetadataExt;
    for path in ["root/srv/d", "root/srv/d/f"] {
        let meta = std::fs::symlink_metadata(layer.join(path)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1234, 1235), "{path}");
    }
}

#[test]
fn no_write_goes_through_a_link_an_earlier_source_of_the_step_made() {
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let context = work.path().join("context");
    write(&context, &[("b/link/planted", "x\n")]);
    std::fs::create_dir_all(context.join("a")).unwrap();
    std::os::unix::fs::symlink(&outside, context.join("a/link")).unwrap();
    let layer = work.path().join("layer");
    std::fs::create_dir(&layer).unwrap();
    let sources = ["a/link".to_string(), "b/".to_string()];
    let err = Copy::plan(&context, &sources, "/x/")
        .unwrap()
        .write(&layer, None, None, None)
        .unwrap_err();
    assert!(err.contains("through the link"), "{err}");
    assert!(!outside.join("planted").exists());

    // Two archives in one ADD: the first plants a link where the second has a directory; the
    // second replaces the link rather than writing through it.
    std::fs::remove_dir_all(&layer).unwrap();
    std::fs::create_dir(&layer).unwrap();
    let tree = work.path().join("linktree");
    std::fs::create_dir_all(&tree).unwrap();
    std::os::unix::fs::symlink(&outside, tree.join("srv")).unwrap();
    let status = Command::new("tar")
        .arg("-cf")
        .arg(context.join("first.tar"))
        .arg("-C")
        .arg(&tree)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    tgz(
        work.path(),
        &context.join("second.tgz"),
        &[("srv/planted", "x\n")],
    );
    let sources = ["first.tar".to_string(), "second.tgz".to_string()];
    Copy::plan(&context, &sources, "/")
        .unwrap()
        .write(&layer, None, None, Some(&archives()))
        .unwrap();
    assert!(!outside.join("planted").exists());
    assert!(layer.join("root/srv/planted").is_file());
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
