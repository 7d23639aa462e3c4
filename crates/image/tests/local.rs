//! Pulls from local sources: OCI layouts, OCI archives and docker archives, and what the
//! store makes of their layers (overlayfs whiteouts and opaque directories, links, modes).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use nightshift_image::{Image, ImageError, Owner, PullOptions, Reference, Store};

use support::{TarLayer, gzip_layer, mode, store_leftovers, workdir};

async fn pull(store: &Store, reference: &str) -> Result<Image, ImageError> {
    store
        .pull(
            &Reference::parse(reference).unwrap(),
            &PullOptions::default(),
        )
        .await
}

/// Checks the on-disk overlay form of the tiny image's two layers.
fn check_tiny_layers(image: &Image, shifted: bool) {
    let [base, top] = &image.layers[..] else {
        panic!("two layers expected: {image:?}")
    };
    assert_eq!(std::fs::read(base.join("etc/issue")).unwrap(), b"tiny\n");
    assert_eq!(mode(&base.join("bin/tool")), 0o4755);
    // `.wh.issue` is a 0:0 character device named `issue`.
    let whiteout = std::fs::symlink_metadata(top.join("etc/issue")).unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0);
    assert!(!top.join("etc/.wh.issue").exists());
    // The opaque marker became an xattr on `docs`.
    assert_eq!(
        xattr(&top.join("docs"), "user.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!top.join("docs/.wh..wh..opq").exists());
    // Hard links share an inode; symlinks are kept as written; FIFOs are skipped.
    let original = std::fs::metadata(top.join("opt/original")).unwrap();
    assert_eq!(
        original.ino(),
        std::fs::metadata(top.join("opt/linked")).unwrap().ino()
    );
    assert_eq!(original.mode() & 0o7777, 0o640);
    assert_eq!(
        std::fs::read_link(top.join("opt/release")).unwrap(),
        Path::new("/etc/os-release")
    );
    assert!(std::fs::symlink_metadata(top.join("opt/pipe")).is_err());
    // A read-only directory was still filled; its mode and time come last.
    assert_eq!(mode(&top.join("opt/ro")), 0o555);
    assert_eq!(std::fs::read(top.join("opt/ro/inside")).unwrap(), b"x");
    assert_eq!(
        std::fs::metadata(top.join("opt/ro")).unwrap().mtime(),
        1_700_000_000
    );
    if shifted {
        assert_eq!(original.uid(), 101_000);
        assert_eq!(std::fs::metadata(top.join("docs")).unwrap().uid(), 100_000);
    }
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    let mut value = vec![0u8; 64];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    (n >= 0).then(|| {
        value.truncate(n as usize);
        value
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oci_layout_unpacks_into_overlay_form() {
    let work = workdir();
    let layout = work.path().join("layout");
    let digest = support::write_layout(&layout, "v1", &support::tiny_layers(work.path()), &["A=1"]);
    let store_dir = work.path().join("store");
    let store = Store::open(&store_dir, support::owner()).unwrap();
    let image = pull(&store, &format!("oci:{}:v1", layout.display()))
        .await
        .unwrap();
    assert_eq!(image.digest, digest);
    assert_eq!(image.config.env, vec![("A".to_string(), "1".to_string())]);
    check_tiny_layers(&image, support::is_root());
    // A layout with one image needs no tag; the store keys it by the canonical reference.
    let untagged = pull(&store, &format!("oci:{}", layout.display()))
        .await
        .unwrap();
    assert_eq!(untagged.layers, image.layers);
    assert_eq!(store.list().unwrap().len(), 2);
    // The store root is private: it holds images' setuid programs.
    assert_eq!(mode(&store_dir), 0o700);
    assert_eq!(store_leftovers(&store_dir).0, Vec::<String>::new());

    // With two images, the tag is needed, and a wrong one lists what is there.
    support::write_layout(&layout, "v2", &support::tiny_layers(work.path())[..1], &[]);
    let error = pull(&store, &format!("oci:{}", layout.display()))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ImageError::TagNotInArchive { available, .. } if available.len() == 2),
        "{error}"
    );
    let error = pull(&store, &format!("oci:{}:v9", layout.display()))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("v1, v2"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn oci_and_docker_archives_unpack_the_same_layers() {
    require_tools!("skopeo");
    let work = workdir();
    let layout = work.path().join("layout");
    support::write_layout(&layout, "v1", &support::tiny_layers(work.path()), &[]);
    let oci_archive = work.path().join("image.oci.tar");
    let docker_archive = work.path().join("image.docker.tar");
    support::skopeo_copy(
        &format!("oci:{}:v1", layout.display()),
        &format!("oci-archive:{}:v1", oci_archive.display()),
    )
    .unwrap();
    support::skopeo_copy(
        &format!("oci:{}:v1", layout.display()),
        &format!("docker-archive:{}:test/tiny:v1", docker_archive.display()),
    )
    .unwrap();
    for (index, reference) in [
        format!("oci-archive:{}", oci_archive.display()),
        format!("oci-archive:{}:v1", oci_archive.display()),
        format!("docker-archive:{}", docker_archive.display()),
        format!("docker-archive:{}:test/tiny:v1", docker_archive.display()),
    ]
    .iter()
    .enumerate()
    {
        let store_dir = work.path().join(format!("store-{index}"));
        let store = Store::open(&store_dir, support::owner()).unwrap();
        let image = pull(&store, reference).await.unwrap();
        check_tiny_layers(&image, support::is_root());
        assert_eq!(
            store_leftovers(&store_dir).0,
            Vec::<String>::new(),
            "{reference}: scratch removed"
        );
    }
    let store = Store::open(&work.path().join("store-x"), support::owner()).unwrap();
    let error = pull(
        &store,
        &format!("docker-archive:{}:other:v1", docker_archive.display()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, ImageError::TagNotInArchive { .. }),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_for_other_machines_names_what_exists() {
    let work = workdir();
    let layout = work.path().join("layout");
    let layers = support::tiny_layers(work.path());
    // Two platform manifests, neither for this machine, behind one index.
    let mut entries = Vec::new();
    for arch in ["s390x", "riscv64"] {
        let config = serde_json::json!({"architecture": arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layers[0].diff_id]}});
        let (config_digest, config_size) =
            support::put_blob(&layout, config.to_string().as_bytes());
        let manifest = serde_json::json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layers[0].digest, "size": layers[0].size}]});
        let (digest, size) = support::put_blob(&layout, manifest.to_string().as_bytes());
        entries.push(
            serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": size, "platform": {"architecture": arch, "os": "linux"}}),
        );
    }
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries});
    let (digest, size) = support::put_blob(&layout, index.to_string().as_bytes());
    support::add_to_index(
        &layout,
        serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest,
            "size": size, "annotations": {"org.opencontainers.image.ref.name": "multi"}}),
    );
    let store = Store::open(&work.path().join("store"), support::owner()).unwrap();
    let error = pull(&store, &format!("oci:{}:multi", layout.display()))
        .await
        .unwrap_err();
    match &error {
        ImageError::WrongArchitecture { available, .. } => {
            assert_eq!(
                available,
                &["linux/s390x".to_string(), "linux/riscv64".to_string()]
            );
        }
        other => panic!("{other}"),
    }
    assert!(
        error.to_string().contains("linux/s390x, linux/riscv64"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn layers_stack_as_a_read_only_overlay() {
    require_root!();
    let work = workdir();
    let layout = work.path().join("layout");
    support::write_layout(&layout, "v1", &support::tiny_layers(work.path()), &[]);
    let store = Store::open(&work.path().join("store"), support::owner()).unwrap();
    let image = pull(&store, &format!("oci:{}:v1", layout.display()))
        .await
        .unwrap();
    // Both forms the sandbox may mount: user.* xattrs (userxattr) and trusted.* ones.
    for extra in ["userxattr", ""] {
        let merged = work.path().join(format!("merged-{}", extra.len()));
        std::fs::create_dir(&merged).unwrap();
        let lower: Vec<String> = image
            .layers
            .iter()
            .rev()
            .map(|l| l.display().to_string())
            .collect();
        let mut options = format!("ro,lowerdir={}", lower.join(":"));
        if !extra.is_empty() {
            options.push(',');
            options.push_str(extra);
        }
        let status = std::process::Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &options])
            .arg(&merged)
            .status()
            .unwrap();
        assert!(status.success(), "mount -o {options}");
        let seen = || {
            assert!(
                !merged.join("etc/issue").exists(),
                "the whiteout hides the base's file"
            );
            assert_eq!(
                std::fs::read(merged.join("etc/hostname")).unwrap(),
                b"tiny\n"
            );
            let mut docs: Vec<String> = std::fs::read_dir(merged.join("docs"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            docs.sort();
            assert_eq!(
                docs,
                vec!["only-this".to_string()],
                "the opaque directory hides the base's docs"
            );
            assert_eq!(mode(&merged.join("bin/tool")), 0o4755);
        };
        let outcome = std::panic::catch_unwind(seen);
        let _ = std::process::Command::new("umount").arg(&merged).status();
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }
}

/// A layout whose only layer is `tar`, gzipped.
fn layout_with_layer(work: &Path, name: &str, tar: Vec<u8>) -> String {
    let layout = work.join(name);
    support::write_layout(&layout, "v1", &[gzip_layer(work, &tar)], &[]);
    format!("oci:{}:v1", layout.display())
}

#[tokio::test(flavor = "multi_thread")]
async fn layers_that_write_outside_their_root_are_refused() {
    let work = workdir();
    let outside = work.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dotdot",
            TarLayer::new()
                .file("ok", b"1", 0o644, 0)
                .file("../escaped", b"x", 0o644, 0)
                .finish(),
        ),
        (
            "deep-dotdot",
            TarLayer::new()
                .file("a/../../escaped", b"x", 0o644, 0)
                .finish(),
        ),
        (
            "absolute",
            TarLayer::new()
                .file(&format!("{}/escaped", outside.display()), b"x", 0o644, 0)
                .finish(),
        ),
        (
            "hard-link-out",
            TarLayer::new()
                .hard_link("passwd", "../../../../etc/passwd")
                .finish(),
        ),
        (
            "symlink-traversal",
            TarLayer::new()
                .symlink("evil", &outside.display().to_string())
                .file("evil/escaped", b"x", 0o644, 0)
                .finish(),
        ),
        (
            "relative-symlink-traversal",
            TarLayer::new()
                .dir("a/", 0o755)
                .symlink("a/up", "../..")
                .file("a/up/escaped", b"x", 0o644, 0)
                .finish(),
        ),
        (
            "hard-link-through-symlink",
            TarLayer::new()
                .symlink("etc", "/etc")
                .hard_link("stolen", "etc/passwd")
                .finish(),
        ),
    ];
    for (name, tar) in cases {
        let reference = layout_with_layer(work.path(), name, tar);
        let store_dir = work.path().join(format!("store-{name}"));
        let store = Store::open(&store_dir, support::owner()).unwrap();
        let error = pull(&store, &reference).await.unwrap_err();
        eprintln!("{name}: {error}");
        assert!(
            matches!(error, ImageError::UnsafeEntry { .. }),
            "{name}: {error}"
        );
        assert_eq!(
            store_leftovers(&store_dir),
            (vec![], vec![]),
            "{name}: nothing kept"
        );
        assert!(store.list().unwrap().is_empty());
    }
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing was written outside"
    );
    assert!(!work.path().join("escaped").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_and_truncated_layers_are_refused() {
    let work = workdir();
    let tar = TarLayer::new()
        .file("data", &vec![7u8; 1 << 20], 0o644, 0)
        .finish();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let blob = gz.finish().unwrap();
    let diff_id = support::sha256(&tar);
    let cases = [
        // Cut short: the manifest's digest is that of the cut blob, so only unpacking sees it.
        (
            "truncated",
            support::raw_layer(work.path(), &blob[..blob.len() / 2], &diff_id),
        ),
        (
            "garbage",
            support::raw_layer(work.path(), b"\x1f\x8bnot really gzip at all", &diff_id),
        ),
        // Unpacks cleanly but is not what the configuration's diff id promises.
        (
            "wrong-diff-id",
            support::raw_layer(work.path(), &blob, &support::sha256(b"other")),
        ),
    ];
    for (name, layer) in cases {
        let layout = work.path().join(name);
        support::write_layout(&layout, "v1", &[layer], &[]);
        let store_dir = work.path().join(format!("store-{name}"));
        let store = Store::open(&store_dir, support::owner()).unwrap();
        let error = pull(&store, &format!("oci:{}:v1", layout.display()))
            .await
            .unwrap_err();
        eprintln!("{name}: {error}");
        match name {
            "wrong-diff-id" => assert!(
                matches!(error, ImageError::DigestMismatch { .. }),
                "{name}: {error}"
            ),
            _ => assert!(
                matches!(error, ImageError::CorruptLayer { .. }),
                "{name}: {error}"
            ),
        }
        assert_eq!(
            store_leftovers(&store_dir),
            (vec![], vec![]),
            "{name}: nothing kept"
        );
    }
    // A blob changed after its manifest was written.
    let layout = work.path().join("changed");
    let layer = gzip_layer(work.path(), &tar);
    support::write_layout(&layout, "v1", std::slice::from_ref(&layer), &[]);
    let stored = layout.join("blobs/sha256").join(&layer.digest[7..]);
    std::fs::remove_file(&stored).unwrap();
    let mut changed = std::fs::read(&layer.path).unwrap();
    let last = changed.len() - 10;
    changed[last] ^= 1;
    std::fs::write(&stored, changed).unwrap();
    let store = Store::open(&work.path().join("store-changed"), support::owner()).unwrap();
    let error = pull(&store, &format!("oci:{}:v1", layout.display()))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ImageError::DigestMismatch { .. }),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unprivileged_store_keeps_the_callers_ids_and_is_not_reused_shifted() {
    let work = workdir();
    let layout = work.path().join("layout");
    support::write_layout(&layout, "v1", &support::tiny_layers(work.path()), &[]);
    let store_dir = work.path().join("store");
    // A crash's leftovers are cleaned when the store is next opened with no pull running.
    std::fs::create_dir_all(store_dir.join("tmp/layer-crashed/deep")).unwrap();
    std::fs::set_permissions(
        store_dir.join("tmp/layer-crashed"),
        std::os::unix::fs::PermissionsExt::from_mode(0o500),
    )
    .unwrap();
    let store = Store::open(&store_dir, Owner::Caller).unwrap();
    assert_eq!(store_leftovers(&store_dir).0, Vec::<String>::new());
    let image = pull(&store, &format!("oci:{}:v1", layout.display()))
        .await
        .unwrap();
    check_tiny_layers(&image, false);
    // uid 1000 in the image, but no chown: the caller owns it.
    let owned = std::fs::metadata(image.layers[1].join("opt/original")).unwrap();
    assert_eq!(owned.uid(), nix::unistd::geteuid().as_raw());
    let error = Store::open(&store_dir, Owner::Shift(100_000)).unwrap_err();
    assert!(matches!(error, ImageError::OwnerMismatch { .. }), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn eviction_forgets_the_least_recently_used_images_but_never_held_layers() {
    let work = workdir();
    let one_layer = |name: &str, bytes: usize| {
        let tar = TarLayer::new()
            .dir("data/", 0o755)
            .file(&format!("data/{name}"), &vec![b'x'; bytes], 0o644, 0)
            .finish();
        layout_with_layer(work.path(), name, tar)
    };
    let (old, recent, held) = (
        one_layer("old", 3000),
        one_layer("recent", 2000),
        one_layer("held", 1000),
    );
    let store = Store::open(&work.path().join("store"), Owner::Caller).unwrap();
    let held_image = pull(&store, &held).await.unwrap();
    // Held first, then the others pulled: the held image is the least recently used.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let old_image = pull(&store, &old).await.unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    pull(&store, &recent).await.unwrap();
    let hold = store.hold(&held_image).unwrap();

    // A budget for two of the three: the oldest unheld image goes.
    let report = store.evict(3500).unwrap();
    assert_eq!(
        report.images,
        vec![old_image.reference.clone()],
        "{report:?}"
    );
    assert_eq!(report.pruned.layers, 1);
    assert_eq!(report.bytes_left, 3000);
    assert!(!old_image.layers[0].exists());

    // Nothing fits a budget of 0 but what is held.
    let report = store.evict(0).unwrap();
    assert_eq!(report.bytes_left, 1000, "{report:?}");
    assert!(held_image.layers[0].exists());

    // Removed while held, its layers survive a prune, and go once the hold does.
    assert!(store.remove(&Reference::parse(&held).unwrap()).unwrap());
    assert_eq!(store.prune().unwrap().layers, 0);
    assert!(held_image.layers[0].join("data/held").exists());
    drop(hold);
    assert_eq!(store.prune().unwrap().layers, 1);
    assert!(!held_image.layers[0].exists());
    assert!(store.list().unwrap().is_empty());
}
