//! Blobs on the local file system, through a store of either backend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use bytes::Bytes;
use nightshift_protocol::TaskId;
use nightshift_store::{LocalBlobs, StoreError};

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
    let blobs = LocalBlobs::open(&root.path().join("nested/blobs")).unwrap();
    let id = TaskId::new();
    blobs
        .put(id, "out.txt", Bytes::from_static(b"hello"))
        .await
        .unwrap();
    assert_eq!(blobs.get(id, "out.txt").await.unwrap().unwrap(), "hello");
}

on_every_backend!(
    a_blob_reads_back_and_lives_under_its_task,
    putting_again_replaces_the_blob,
    missing_blobs_are_none,
    names_that_could_escape_are_refused,
);
