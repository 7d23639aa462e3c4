//! Blobs on the local file system, through a store of either backend; and blobs in a real
//! S3-compatible server on loopback ([`LoopbackS3`]), reached over HTTP with signed requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use bytes::Bytes;
use nightshift_protocol::TaskId;
use nightshift_store::{Blobs, StoreError};
use nightshift_test_s3::{LoopbackS3, SECRET_KEY};

use common::TestStore;

async fn a_blob_reads_back_and_lives_under_its_task(t: TestStore) {
    let id = TaskId::new();
    let diff = Bytes::from_static(b"diff --git a/x b/x\n");

    t.store
        .put_blob(id, "diff.patch", diff.clone())
        .await
        .unwrap();

    assert_eq!(
        t.store.get_blob(id, "diff.patch").await.unwrap(),
        Some(diff.clone())
    );
    let file = t
        .home
        .path()
        .join("blobs/tasks")
        .join(id.to_string())
        .join("diff.patch");
    assert_eq!(std::fs::read(file).unwrap(), diff);
}

async fn putting_again_replaces_the_blob(t: TestStore) {
    let id = TaskId::new();
    t.store
        .put_blob(
            id,
            "agent.log",
            Bytes::from_static(b"a much longer first version"),
        )
        .await
        .unwrap();
    t.store
        .put_blob(id, "agent.log", Bytes::from_static(b"short"))
        .await
        .unwrap();
    assert_eq!(
        t.store.get_blob(id, "agent.log").await.unwrap().unwrap(),
        "short"
    );

    t.store
        .put_blob(id, "agent.log", Bytes::new())
        .await
        .unwrap();
    assert_eq!(
        t.store.get_blob(id, "agent.log").await.unwrap(),
        Some(Bytes::new())
    );
}

async fn missing_blobs_are_none(t: TestStore) {
    let id = TaskId::new();
    assert_eq!(t.store.get_blob(id, "diff.patch").await.unwrap(), None);
    t.store
        .put_blob(id, "diff.patch", Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(t.store.get_blob(id, "other").await.unwrap(), None);
    assert_eq!(
        t.store.get_blob(TaskId::new(), "diff.patch").await.unwrap(),
        None
    );
}

async fn names_that_could_escape_are_refused(t: TestStore) {
    let id = TaskId::new();
    for name in [
        "",
        ".",
        "..",
        "../escape",
        "a/b",
        "/abs",
        ".hidden",
        "a\\b",
        "a b",
        "x#1",
    ] {
        let error = t
            .store
            .put_blob(id, name, Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert!(
            matches!(error, StoreError::InvalidBlobName { .. }),
            "`{name}`: {error}"
        );
        let error = t.store.get_blob(id, name).await.unwrap_err();
        assert!(
            matches!(error, StoreError::InvalidBlobName { .. }),
            "`{name}`: {error}"
        );
    }
    assert!(!t.home.path().join("escape").exists());
}

#[tokio::test]
async fn local_blobs_work_on_their_own_and_create_their_directory() {
    let root = tempfile::tempdir().unwrap();
    let blobs = Blobs::local(&root.path().join("nested/blobs")).unwrap();
    blobs.check().await.unwrap();
    round_trip(&blobs).await;
    let id = TaskId::new();
    blobs
        .put(id, "out.txt", Bytes::from_static(b"hello"))
        .await
        .unwrap();
    let task_dir = root.path().join("nested/blobs/tasks").join(id.to_string());
    assert_eq!(std::fs::read(task_dir.join("out.txt")).unwrap(), b"hello");
    blobs.delete(id, "out.txt").await.unwrap();
    assert!(!task_dir.exists(), "the empty task directory is removed");
}

/// Put, get, replace, list and delete, as every kind of blobs must do them.
async fn round_trip(blobs: &Blobs) {
    let id = TaskId::new();
    let other = TaskId::new();
    assert_eq!(blobs.list(id).await.unwrap(), Vec::<String>::new());
    assert_eq!(blobs.get(id, "diff.patch").await.unwrap(), None);

    blobs
        .put(
            id,
            "diff.patch",
            Bytes::from_static(b"first version, longer"),
        )
        .await
        .unwrap();
    blobs
        .put(id, "diff.patch", Bytes::from_static(b"second"))
        .await
        .unwrap();
    blobs
        .put(id, "check-test.log", Bytes::from_static(b"ok\n"))
        .await
        .unwrap();
    blobs.put(id, "empty.txt", Bytes::new()).await.unwrap();
    blobs
        .put(other, "diff.patch", Bytes::from_static(b"not mine"))
        .await
        .unwrap();

    assert_eq!(
        blobs.get(id, "diff.patch").await.unwrap().unwrap(),
        "second"
    );
    assert_eq!(
        blobs.get(id, "empty.txt").await.unwrap(),
        Some(Bytes::new())
    );
    assert_eq!(
        blobs.list(id).await.unwrap(),
        ["check-test.log", "diff.patch", "empty.txt"]
    );

    blobs.delete(id, "diff.patch").await.unwrap();
    blobs.delete(id, "diff.patch").await.unwrap();
    blobs.delete(id, "never-stored").await.unwrap();
    assert_eq!(blobs.get(id, "diff.patch").await.unwrap(), None);
    assert_eq!(
        blobs.list(id).await.unwrap(),
        ["check-test.log", "empty.txt"]
    );
    assert_eq!(
        blobs.get(other, "diff.patch").await.unwrap().unwrap(),
        "not mine"
    );
    assert!(matches!(
        blobs.put(id, "../escape", Bytes::new()).await.unwrap_err(),
        StoreError::InvalidBlobName { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_blobs_round_trip_under_their_prefix() {
    let s3 = LoopbackS3::start().unwrap();
    for prefix in ["", "teams/a"] {
        let blobs = Blobs::from_url(&s3.url(prefix), s3.env()).unwrap();
        blobs.check().await.unwrap();
        round_trip(&blobs).await;

        let id = TaskId::new();
        blobs
            .put(
                id,
                "diff.patch",
                Bytes::from_static(b"diff --git a/x b/x\n"),
            )
            .await
            .unwrap();
        let key = format!("tasks/{id}/diff.patch");
        let key = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}/{key}")
        };
        assert_eq!(
            std::fs::read(s3.object_file(&key)).unwrap(),
            b"diff --git a/x b/x\n",
            "{key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_blobs_round_trip_through_s3() {
    let s3 = LoopbackS3::start().unwrap();
    let blobs = Blobs::from_url(&s3.url(""), s3.env()).unwrap();
    // 24 MiB that no compression or chunking bug would leave intact by chance.
    let big: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let big = Bytes::from(big);
    let id = TaskId::new();
    blobs.put(id, "agent.log", big.clone()).await.unwrap();
    let read = blobs.get(id, "agent.log").await.unwrap().unwrap();
    assert_eq!(read.len(), big.len());
    assert!(read == big, "the blob came back different");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_key_is_refused_and_said_so() {
    let s3 = LoopbackS3::start().unwrap();
    let wrong = "not-the-secret-key";
    let blobs = Blobs::from_url(&s3.url("p"), s3.env_with_secret(wrong)).unwrap();
    let id = TaskId::new();
    let errors = [
        blobs.check().await.unwrap_err(),
        blobs
            .put(id, "diff.patch", Bytes::from_static(b"x"))
            .await
            .unwrap_err(),
        blobs.get(id, "diff.patch").await.unwrap_err(),
    ];
    for error in errors {
        assert!(matches!(error, StoreError::Blob { .. }), "{error}");
        assert!(!error.is_retryable(), "{error}");
        let text = error.to_string();
        assert!(text.contains("refused the credentials"), "{text}");
        assert!(text.contains("AWS_SECRET_ACCESS_KEY"), "{text}");
        assert!(text.contains(&s3.url("p")), "names the store: {text}");
        assert!(!text.contains(wrong), "{text}");
        assert!(!text.contains(SECRET_KEY), "{text}");
    }
    assert!(!s3.object_file(&format!("p/tasks/{id}")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_is_an_error_rather_than_an_empty_store() {
    let s3 = LoopbackS3::start().unwrap();
    let blobs = Blobs::from_url("s3://no-such-bucket/x", s3.env()).unwrap();
    let errors = [
        blobs.check().await.unwrap_err(),
        blobs.list(TaskId::new()).await.unwrap_err(),
    ];
    for error in errors {
        assert!(matches!(error, StoreError::Blob { .. }), "{error}");
        assert!(!error.is_retryable(), "{error}");
        let text = error.to_string();
        assert!(text.contains("the bucket does not exist"), "{text}");
        assert!(text.contains("s3://no-such-bucket/x"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_a_retryable_error() {
    let s3 = LoopbackS3::start().unwrap();
    // Port 1 on the loopback: nothing listens there, so connections are refused at once.
    let mut env = s3.env();
    for (name, value) in &mut env {
        if name == "AWS_ENDPOINT_URL" {
            *value = "http://127.0.0.1:1".into();
        }
    }
    let blobs = Blobs::from_url(&s3.url(""), env).unwrap();
    let error = blobs.check().await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    let text = error.to_string();
    assert!(text.contains("could not be reached"), "{text}");
    assert!(text.contains("at http://127.0.0.1:1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_not_retried_and_says_so() {
    // An HTTPS endpoint whose self-signed certificate nothing here trusts.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = acceptor.accept(stream).await;
        }
    });
    let s3 = LoopbackS3::start().unwrap();
    let mut env = s3.env();
    env.retain(|(name, _)| name != "AWS_ALLOW_HTTP");
    for (name, value) in &mut env {
        if name == "AWS_ENDPOINT_URL" {
            *value = format!("https://127.0.0.1:{port}");
        }
    }
    let blobs = Blobs::from_url(&s3.url(""), env).unwrap();
    let error = blobs.check().await.unwrap_err();
    assert!(!error.is_retryable(), "{error}");
    assert!(
        error.to_string().contains("TLS certificate is not trusted"),
        "{error}"
    );
}

on_every_backend!(
    a_blob_reads_back_and_lives_under_its_task,
    putting_again_replaces_the_blob,
    missing_blobs_are_none,
    names_that_could_escape_are_refused,
);
