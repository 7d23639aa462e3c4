//! Choosing the backends from a database URL and a blob URL, and what happens when the
//! database is not there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use nightshift_store::{Blobs, PostgresStore, StoreError, open_blobs, open_store};
use nightshift_test_s3::LoopbackS3;

use common::{TestDatabase, create};

const NO_ENV: [(&str, &str); 0] = [];

#[tokio::test]
async fn no_url_or_a_sqlite_url_opens_the_file_in_the_home() {
    for url in [
        None,
        Some("sqlite:"),
        Some("SQLITE://ignored.db"),
        Some("  "),
    ] {
        let home = tempfile::tempdir().unwrap();
        let blobs = open_blobs(None, home.path(), NO_ENV).unwrap();
        let store = open_store(url, blobs, home.path()).await.unwrap();
        let task = create(&*store, "p").await;
        assert_eq!(store.get_task(task.id).await.unwrap(), Some(task));
        assert!(home.path().join("nightshift.db").is_file(), "{url:?}");
    }
}

#[tokio::test]
async fn a_postgres_url_opens_postgres_with_blobs_in_the_home() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let blobs = open_blobs(Some(" "), home.path(), NO_ENV).unwrap();
    let store = open_store(Some(&database.url()), blobs, home.path())
        .await
        .unwrap();
    let task = create(&*store, "p").await;
    assert_eq!(store.get_task(task.id).await.unwrap(), Some(task.clone()));
    store
        .put_blob(task.id, "diff.patch", "x".into())
        .await
        .unwrap();
    assert!(
        home.path()
            .join("blobs/tasks")
            .join(task.id.to_string())
            .join("diff.patch")
            .is_file()
    );
    assert!(!home.path().join("nightshift.db").exists());
}

#[tokio::test]
async fn unknown_urls_are_refused_without_showing_the_password() {
    let home = tempfile::tempdir().unwrap();
    let blobs = open_blobs(None, home.path(), NO_ENV).unwrap();
    let Err(error) = open_store(Some("mysql://me:hunter2@db/x"), blobs, home.path()).await else {
        panic!("a MySQL URL was accepted");
    };
    let text = error.to_string();
    assert!(text.contains("postgres://"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!error.is_retryable());
}

/// The server answers 503 and retries on these, rather than failing for good.
#[tokio::test]
async fn an_unreachable_postgres_is_a_retryable_error() {
    let home = tempfile::tempdir().unwrap();
    // Port 1 on the loopback: nothing listens there, so the connection is refused at once.
    let error = PostgresStore::connect(
        "postgres://nightshift:secret@127.0.0.1:1/nightshift",
        Blobs::local(home.path()).unwrap(),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, StoreError::Database { .. }), "{error}");
    assert!(error.is_retryable(), "{error}");
    let text = error.to_string();
    assert!(text.contains("could not be reached"), "{text}");
    assert!(!text.contains("secret"), "{text}");
}

#[tokio::test]
async fn a_blob_url_puts_the_blobs_of_either_backend_in_that_bucket() {
    let s3 = LoopbackS3::start().unwrap();
    let home = tempfile::tempdir().unwrap();
    let blobs = open_blobs(Some(&s3.url("team-a")), home.path(), s3.env()).unwrap();
    let store = open_store(None, blobs, home.path()).await.unwrap();
    store.check_blobs().await.unwrap();
    let task = create(&*store, "p").await;
    store
        .put_blob(task.id, "diff.patch", "x".into())
        .await
        .unwrap();
    let key = format!("team-a/tasks/{}/diff.patch", task.id);
    assert_eq!(std::fs::read(s3.object_file(&key)).unwrap(), b"x");
    assert!(!home.path().join("blobs").exists());

    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let blobs = open_blobs(Some(&s3.url("team-b")), home.path(), s3.env()).unwrap();
    let store = open_store(Some(&database.url()), blobs, home.path())
        .await
        .unwrap();
    let task = create(&*store, "p").await;
    store
        .put_blob(task.id, "diff.patch", "y".into())
        .await
        .unwrap();
    let key = format!("team-b/tasks/{}/diff.patch", task.id);
    assert_eq!(std::fs::read(s3.object_file(&key)).unwrap(), b"y");
}

#[tokio::test]
async fn a_file_blob_url_names_a_directory_of_its_own() {
    let home = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let url = format!("file://{}/blobs", elsewhere.path().display());
    let store = open_store(
        None,
        open_blobs(Some(&url), home.path(), NO_ENV).unwrap(),
        home.path(),
    )
    .await
    .unwrap();
    let task = create(&*store, "p").await;
    store
        .put_blob(task.id, "diff.patch", "x".into())
        .await
        .unwrap();
    assert!(
        elsewhere
            .path()
            .join("blobs/tasks")
            .join(task.id.to_string())
            .join("diff.patch")
            .is_file()
    );
    assert!(!home.path().join("blobs").exists());
}

#[test]
fn unknown_blob_urls_are_refused_with_the_accepted_forms() {
    let home = tempfile::tempdir().unwrap();
    for url in ["gs://bucket", "http://minio:9000/bucket", "blobs", "s3://"] {
        let error = open_blobs(Some(url), home.path(), NO_ENV).unwrap_err();
        assert!(
            matches!(error, StoreError::BlobUrl { .. }),
            "{url}: {error}"
        );
        let text = error.to_string();
        assert!(text.contains("s3://BUCKET"), "{text}");
        assert!(text.contains("NIGHTSHIFT_BLOB_URL unset"), "{text}");
        assert!(!error.is_retryable());
    }
}
