//! Pulls from a real registry on loopback: by tag and by digest, with credentials, from
//! corrupted storage, and for names and tags the registry does not have.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::MetadataExt;

use nightshift_image::{Credentials, ImageError, PullEvent, Reference, Store};

use support::{Registry, TarLayer, fetched_and_cached, gzip_layer, store_leftovers, workdir};

/// The Debian base plus the extra layer, pushed to `registry` as `test/debian:v1`.
fn push_debian(registry: &Registry, work: &std::path::Path) -> String {
    let base = support::debian_base().expect("build the Debian base");
    let extra = gzip_layer(work, &support::extra_layer());
    let layout = work.join("layout");
    support::write_layout(
        &layout,
        "v1",
        &[base, extra],
        &["PATH=/usr/bin:/bin", "LANG=C.UTF-8"],
    );
    registry.push(&layout, "v1", "test/debian", None).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn pulls_by_tag_then_by_digest_share_layers() {
    require_tools!("docker-registry", "skopeo", "mmdebstrap");
    let work = workdir();
    let registry = Registry::start(None).unwrap();
    let pushed = push_debian(&registry, work.path());
    let store_dir = work.path().join("store");
    let store = Store::open(&store_dir, support::owner()).unwrap();
    let (options, events) = registry.options();

    let by_tag = Reference::parse(&pushed).unwrap();
    let image = store.pull(&by_tag, &options).await.unwrap();
    assert_eq!(image.reference, pushed);
    assert_eq!(image.layers.len(), 2);
    assert_eq!(fetched_and_cached(&events.lock().unwrap()), (2, 0));
    assert!(matches!(
        events.lock().unwrap().first(),
        Some(PullEvent::Resolved { digest, .. }) if *digest == image.digest
    ));
    assert_eq!(
        image.config.env,
        vec![
            ("PATH".to_string(), "/usr/bin:/bin".to_string()),
            ("LANG".to_string(), "C.UTF-8".to_string())
        ]
    );
    assert_eq!(image.config.working_dir.as_deref(), Some("/work"));
    assert_eq!(image.config.user.as_deref(), Some("1000:1000"));

    // The base is a real Debian: setuid programs keep their bit, ids are shifted.
    let base = &image.layers[0];
    let passwd = std::fs::metadata(base.join("usr/bin/passwd")).unwrap();
    assert_eq!(passwd.mode() & 0o7777, 0o4755);
    if support::is_root() {
        assert_eq!((passwd.uid(), passwd.gid()), (100_000, 100_000));
    }
    let shadow = std::fs::metadata(base.join("etc/shadow")).unwrap();
    if support::is_root() {
        assert_eq!(
            shadow.gid(),
            100_000 + 42,
            "/etc/shadow belongs to group shadow (42)"
        );
    }
    assert_eq!(
        std::fs::read_link(base.join("bin")).unwrap(),
        std::path::Path::new("usr/bin")
    );
    assert!(!base.join("dev/null").exists(), "device nodes are skipped");
    let top = &image.layers[1];
    let profile = std::fs::metadata(top.join("home/user/.profile")).unwrap();
    assert_eq!(profile.mode() & 0o777, 0o600);
    if support::is_root() {
        assert_eq!(profile.uid(), 101_000);
    }

    // By digest: same manifest, nothing fetched again.
    let by_digest =
        Reference::parse(&format!("{}/test/debian@{}", registry.host(), image.digest)).unwrap();
    events.lock().unwrap().clear();
    let again = store.pull(&by_digest, &options).await.unwrap();
    assert_eq!(again.digest, image.digest);
    assert_eq!(again.layers, image.layers);
    assert_eq!(fetched_and_cached(&events.lock().unwrap()), (0, 2));

    // The store answers without the network, lists both, and prunes only unused layers.
    assert_eq!(store.get(&by_tag).unwrap().unwrap().digest, image.digest);
    assert_eq!(store.list().unwrap().len(), 2);
    assert!(store.remove(&by_tag).unwrap());
    assert!(!store.remove(&by_tag).unwrap());
    assert!(store.get(&by_tag).unwrap().is_none());
    assert_eq!(
        store.prune().unwrap().layers,
        0,
        "the digest reference still uses them"
    );
    assert!(store.remove(&by_digest).unwrap());
    let pruned = store.prune().unwrap();
    assert_eq!(pruned.layers, 2);
    assert!(
        pruned.bytes > 100 << 20,
        "the Debian base holds over 100 MiB: {pruned:?}"
    );
    assert_eq!(store_leftovers(&store_dir), (vec![], vec![]));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pulls_fetch_each_layer_once() {
    require_tools!("docker-registry", "skopeo", "mmdebstrap");
    let work = workdir();
    let registry = Registry::start(None).unwrap();
    let pushed = push_debian(&registry, work.path());
    let reference = Reference::parse(&pushed).unwrap();
    let store_dir = work.path().join("store");
    // Two handles on one directory stand for two processes.
    let first = Store::open(&store_dir, support::owner()).unwrap();
    let second = Store::open(&store_dir, support::owner()).unwrap();
    let (options, events) = registry.options();
    let (a, b) = tokio::join!(
        tokio::spawn({
            let (store, reference, options) = (first.clone(), reference.clone(), options.clone());
            async move { store.pull(&reference, &options).await }
        }),
        tokio::spawn({
            let (store, reference, options) = (second.clone(), reference.clone(), options.clone());
            async move { store.pull(&reference, &options).await }
        }),
    );
    let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
    assert_eq!(a, b);
    assert_eq!(fetched_and_cached(&events.lock().unwrap()), (2, 2));
    // The registry served each layer blob once.
    let log = std::fs::read_to_string(&registry.log).unwrap();
    let blob_gets = log
        .lines()
        .filter(|l| l.contains("GET /v2/test/debian/blobs/") && l.contains("\" 200 "))
        .count();
    // Two configuration fetches (one per pull) and one per layer.
    assert_eq!(blob_gets, 2 + 2, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_with_credentials_refuses_anonymous_pulls() {
    require_tools!("docker-registry", "skopeo", "htpasswd");
    let work = workdir();
    let registry = Registry::start(Some(("ci", "hunter2"))).unwrap();
    let layout = work.path().join("layout");
    support::write_layout(&layout, "v1", &support::tiny_layers(work.path()), &[]);
    let pushed = registry
        .push(&layout, "v1", "private/tiny", Some("ci:hunter2"))
        .unwrap();
    let reference = Reference::parse(&pushed).unwrap();
    let store = Store::open(&work.path().join("store"), support::owner()).unwrap();
    let (mut options, _) = registry.options();

    let anonymous = store.pull(&reference, &options).await.unwrap_err();
    assert!(
        matches!(
            anonymous,
            ImageError::Unauthorized {
                with_credentials: false,
                ..
            }
        ),
        "{anonymous}"
    );
    options.credentials = Some(Credentials {
        username: "ci".into(),
        password: "wrong".into(),
    });
    let wrong = store.pull(&reference, &options).await.unwrap_err();
    assert!(
        matches!(
            wrong,
            ImageError::Unauthorized {
                with_credentials: true,
                ..
            }
        ),
        "{wrong}"
    );
    options.credentials = Some(Credentials {
        username: "ci".into(),
        password: "hunter2".into(),
    });
    let image = store.pull(&reference, &options).await.unwrap();
    assert_eq!(image.layers.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_blob_is_a_digest_mismatch_and_leaves_nothing() {
    require_tools!("docker-registry", "skopeo");
    let work = workdir();
    let registry = Registry::start(None).unwrap();
    let layout = work.path().join("layout");
    // One layer big enough to be the largest blob in the registry.
    let big: Vec<u8> = (0..2_000_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect();
    let layer = gzip_layer(
        work.path(),
        &TarLayer::new().file("big", &big, 0o644, 0).finish(),
    );
    support::write_layout(&layout, "v1", std::slice::from_ref(&layer), &[]);
    let pushed = registry.push(&layout, "v1", "test/corrupt", None).unwrap();
    let blob = registry.blob_files().into_iter().next().unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    assert_eq!(bytes.len() as u64, layer.size);
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();

    let store_dir = work.path().join("store");
    let store = Store::open(&store_dir, support::owner()).unwrap();
    let (options, _) = registry.options();
    let error = store
        .pull(&Reference::parse(&pushed).unwrap(), &options)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ImageError::DigestMismatch { .. }),
        "{error}"
    );
    assert!(error.to_string().contains(&layer.digest), "{error}");
    assert_eq!(store_leftovers(&store_dir), (vec![], vec![]));
    assert!(store.list().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_names_tags_and_registries_are_told_apart() {
    require_tools!("docker-registry", "skopeo");
    let work = workdir();
    let registry = Registry::start(None).unwrap();
    let layout = work.path().join("layout");
    support::write_layout(&layout, "v1", &support::tiny_layers(work.path()), &[]);
    registry.push(&layout, "v1", "test/tiny", None).unwrap();
    let store = Store::open(&work.path().join("store"), support::owner()).unwrap();
    let (options, _) = registry.options();
    let pull = |text: String| {
        let (store, options) = (store.clone(), options.clone());
        async move {
            store
                .pull(&Reference::parse(&text).unwrap(), &options)
                .await
                .unwrap_err()
        }
    };

    let tag = pull(format!("{}/test/tiny:v2", registry.host())).await;
    assert!(
        matches!(&tag, ImageError::TagNotFound { tag, .. } if tag == "v2"),
        "{tag}"
    );
    let name = pull(format!("{}/test/nothing:v1", registry.host())).await;
    assert!(
        matches!(name, ImageError::RepositoryNotFound { .. }),
        "{name}"
    );
    let digest = pull(format!(
        "{}/test/tiny@sha256:{}",
        registry.host(),
        "0".repeat(64)
    ))
    .await;
    assert!(matches!(digest, ImageError::NotFound { .. }), "{digest}");

    let port = support::free_port().unwrap();
    let mut unreachable_options = options.clone();
    unreachable_options.plain_http = vec![format!("127.0.0.1:{port}")];
    let started = std::time::Instant::now();
    let unreachable = store
        .pull(
            &Reference::parse(&format!("127.0.0.1:{port}/test/tiny:v1")).unwrap(),
            &unreachable_options,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(unreachable, ImageError::Unreachable { .. }),
        "{unreachable}"
    );
    assert!(unreachable.is_retryable());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "retries are bounded"
    );
}
