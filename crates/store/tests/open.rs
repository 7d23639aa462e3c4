//! Choosing the backend from a database URL, and what happens when the database is not there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use nightshift_store::{PostgresStore, StoreError, open_store};

use common::{TestDatabase, create};

#[tokio::test]
async fn no_url_or_a_sqlite_url_opens_the_file_in_the_home() {
    for url in [
        None,
        Some("sqlite:"),
        Some("SQLITE://ignored.db"),
        Some("  "),
    ] {
        let home = tempfile::tempdir().unwrap();
        let store = open_store(url, home.path()).await.unwrap();
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
    let store = open_store(Some(&database.url()), home.path())
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
    let Err(error) = open_store(Some("mysql://me:hunter2@db/x"), home.path()).await else {
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
        home.path(),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, StoreError::Database { .. }), "{error}");
    assert!(error.is_retryable(), "{error}");
    let text = error.to_string();
    assert!(text.contains("could not be reached"), "{text}");
    assert!(!text.contains("secret"), "{text}");
}
