//! Tar archives a Dockerfile's `ADD` unpacks: made by the system's `tar` and compressors,
//! recognised by their content (not their names), unpacked by the layers' confined
//! extraction, and refused when an entry would leave the destination or is a whiteout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use nightshift_image::{Owner, unpack_archive};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// A tree to archive: a file, an executable in a directory, a link inside it.
fn tree(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::write(src.join("README"), "packed\n").unwrap();
    std::fs::write(src.join("bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(src.join("bin/tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("bin/tool", src.join("run")).unwrap();
    src
}

/// `tar` of `src`'s contents, then `compressor` (if any) over it, as a file named `name`.
fn archive(dir: &Path, src: &Path, compressor: Option<&str>, name: &str) -> PathBuf {
    let tar = dir.join(format!("{name}.tar"));
    let status = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(src)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let out = dir.join(name);
    match compressor {
        None => std::fs::rename(&tar, &out).unwrap(),
        Some(tool) => {
            let compressed = Command::new(tool).arg("-c").arg(&tar).output().unwrap();
            assert!(compressed.status.success(), "{tool}");
            std::fs::write(&out, compressed.stdout).unwrap();
        }
    }
    out
}

fn unpack(file: &Path, dest: &Path) -> Result<bool, String> {
    std::fs::create_dir_all(dest).unwrap();
    unpack_archive(
        std::fs::File::open(file).unwrap(),
        dest,
        Owner::Caller,
        "the archive",
        1 << 20,
    )
    .map(|unpacked| unpacked.is_some())
    .map_err(|err| err.to_string())
}

#[test]
fn plain_and_compressed_tars_are_recognised_by_content_and_unpacked() {
    let dir = tempfile::tempdir().unwrap();
    let src = tree(dir.path());
    for (compressor, name) in [
        (None, "plain.bin"),
        (Some("gzip"), "a.tgz"),
        (Some("bzip2"), "b.data"),
        (Some("xz"), "c.tar.xz"),
        (Some("zstd"), "d.zst"),
    ] {
        if compressor.is_some_and(|tool| !have(tool)) {
            eprintln!("skipped {name}: {compressor:?} is not installed");
            continue;
        }
        let file = archive(dir.path(), &src, compressor, name);
        let dest = dir.path().join(format!("out-{name}"));
        assert_eq!(unpack(&file, &dest), Ok(true), "{name}");
        assert_eq!(
            std::fs::read_to_string(dest.join("README")).unwrap(),
            "packed\n"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dest.join("bin/tool"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{name}");
        assert_eq!(
            std::fs::read_link(dest.join("run")).unwrap(),
            Path::new("bin/tool")
        );
    }
}

#[test]
fn a_file_that_is_not_a_tar_is_not_an_archive_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "just text, not a tar\n".repeat(100)).unwrap();
    let gzipped_text = dir.path().join("notes.txt.gz");
    let out = Command::new("gzip").arg("-c").arg(&text).output().unwrap();
    std::fs::write(&gzipped_text, out.stdout).unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    for file in [&text, &gzipped_text, &empty] {
        let dest = dir.path().join("out");
        assert_eq!(unpack(file, &dest), Ok(false), "{}", file.display());
        assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
    }
}

/// A tar with one entry named `name` (written into the header as is).
fn tar_with(name: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(if kind == tar::EntryType::Regular {
        1
    } else {
        0
    });
    let field = &mut header.as_old_mut().name;
    field[..name.len()].copy_from_slice(name.as_bytes());
    if let Some(link) = link {
        header.set_link_name(link).unwrap();
    }
    header.set_cksum();
    let data: &[u8] = if kind == tar::EntryType::Regular {
        b"x"
    } else {
        b""
    };
    builder.append(&header, data).unwrap();
    builder.into_inner().unwrap()
}

#[test]
fn entries_that_leave_the_destination_or_are_whiteouts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let cases = [
        (
            tar_with("../escaped", tar::EntryType::Regular, None),
            "climbs out",
        ),
        (
            tar_with("/etc/x", tar::EntryType::Regular, None),
            "absolute",
        ),
        (
            tar_with("hard", tar::EntryType::Link, Some("../../etc/passwd")),
            "hard",
        ),
        (
            tar_with(".wh.README", tar::EntryType::Regular, None),
            "whiteout",
        ),
    ];
    for (index, (bytes, words)) in cases.into_iter().enumerate() {
        let file = dir.path().join(format!("case{index}.tar"));
        std::fs::write(&file, bytes).unwrap();
        let dest = outside.join(format!("dest{index}"));
        let err = unpack(&file, &dest).unwrap_err();
        assert!(err.contains(words), "{words}: {err}");
    }
    assert!(!dir.path().join("escaped").exists());
    // A link the archive plants is not followed by a later entry.
    let mut builder = tar::Builder::new(Vec::new());
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    link.set_path("out").unwrap();
    link.set_link_name(&outside).unwrap();
    link.set_cksum();
    builder.append(&link, &b""[..]).unwrap();
    let mut file = tar::Header::new_gnu();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_size(1);
    file.set_mode(0o644);
    file.set_path("out/planted").unwrap();
    file.set_cksum();
    builder.append(&file, &b"x"[..]).unwrap();
    let path = dir.path().join("through-link.tar");
    std::fs::write(&path, builder.into_inner().unwrap()).unwrap();
    let err = unpack(&path, &dir.path().join("dest-link")).unwrap_err();
    assert!(err.contains("symlink"), "{err}");
    assert!(!outside.join("planted").exists());
}

#[test]
fn an_archive_that_unpacks_past_the_bound_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("zeros"), vec![0u8; 4 << 20]).unwrap();
    let file = archive(dir.path(), &src, Some("gzip"), "big.tgz");
    assert!(
        std::fs::metadata(&file).unwrap().len() < 1 << 20,
        "it compresses"
    );
    let err = unpack(&file, &dir.path().join("out")).unwrap_err();
    assert!(err.contains("more than allowed"), "{err}");
}
