//! Sealed secrets on both backends: stored and replaced by name, listed in name order, deleted,
//! their names checked, their bytes kept exactly, and kept across reopening the store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::time::Duration;

use nightshift_store::{SealedSecret, StoreError};

use common::{TestStore, now};

/// Bytes no UTF-8 decoder accepts, NULs and every byte value: what ciphertext looks like.
fn ciphertext() -> Vec<u8> {
    let mut bytes = vec![0xff, 0xfe, 0x00, 0xc3, 0x28, 0x80, 0x00];
    bytes.extend(0..=u8::MAX);
    bytes
}

async fn a_secret_is_stored_and_replaced(t: TestStore) {
    assert_eq!(t.store.secrets().await.unwrap(), []);

    let before = now();
    t.store
        .put_secret("GITHUB_TOKEN", b"sealed-1")
        .await
        .unwrap();
    let first = t.store.secrets().await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].name, "GITHUB_TOKEN");
    assert_eq!(first[0].sealed, b"sealed-1");
    assert!(first[0].updated_at >= before, "{first:?}");
    assert!(first[0].updated_at <= now(), "{first:?}");

    // Times are kept to the millisecond: wait for the clock to move past the first put.
    tokio::time::sleep(Duration::from_millis(5)).await;
    t.store
        .put_secret("GITHUB_TOKEN", b"sealed-2")
        .await
        .unwrap();
    let second = t.store.secrets().await.unwrap();
    assert_eq!(second.len(), 1, "replaced, not added: {second:?}");
    assert_eq!(second[0].name, "GITHUB_TOKEN");
    assert_eq!(second[0].sealed, b"sealed-2");
    assert!(
        second[0].updated_at > first[0].updated_at,
        "updated_at moves: {first:?} then {second:?}"
    );

    // Another store on the same database (another process or machine) sees the same.
    assert_eq!(t.another().await.secrets().await.unwrap(), second);
}

async fn secrets_are_listed_by_name(t: TestStore) {
    // Byte order on both backends, whatever PostgreSQL's collation: upper case, then `_`, then
    // lower case.
    for name in ["b", "a_2", "_x", "Z", "a_10", "A", "a"] {
        t.store.put_secret(name, name.as_bytes()).await.unwrap();
    }
    let listed = t.store.secrets().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|secret| secret.name.as_str()).collect();
    assert_eq!(names, ["A", "Z", "_x", "a", "a_10", "a_2", "b"]);
    for secret in &listed {
        assert_eq!(secret.sealed, secret.name.as_bytes());
    }
}

async fn a_secret_is_deleted_once(t: TestStore) {
    t.store.put_secret("KEEP", b"k").await.unwrap();
    t.store.put_secret("DROP", b"d").await.unwrap();

    assert!(t.store.delete_secret("DROP").await.unwrap());
    assert!(!t.store.delete_secret("DROP").await.unwrap(), "only once");
    assert!(!t.store.delete_secret("NEVER_STORED").await.unwrap());
    // Names are case-sensitive: `keep` is not `KEEP`.
    assert!(!t.store.delete_secret("keep").await.unwrap());

    let names: Vec<String> = t
        .store
        .secrets()
        .await
        .unwrap()
        .into_iter()
        .map(|secret| secret.name)
        .collect();
    assert_eq!(names, ["KEEP"]);

    // A deleted secret can be stored again.
    t.store.put_secret("DROP", b"again").await.unwrap();
    assert_eq!(t.store.secrets().await.unwrap().len(), 2);
}

async fn bad_names_are_refused_and_nothing_is_stored(t: TestStore) {
    let too_long = "S".repeat(129);
    for bad in [
        "",
        "1PASSWORD",
        "MY-TOKEN",
        "my.token",
        "MY TOKEN",
        "../etc/passwd",
        "TOKEN=1",
        "naïve",
        "x'; DROP TABLE secrets; --",
        too_long.as_str(),
    ] {
        let error = t.store.put_secret(bad, b"v").await.unwrap_err();
        assert!(
            matches!(&error, StoreError::InvalidSecretName { name } if name == bad),
            "{bad}: {error}"
        );
        assert!(!error.is_retryable());
        let text = error.to_string();
        assert!(text.contains("not a valid secret name"), "{text}");
        assert!(text.contains("letters, digits or `_`"), "{text}");

        let error = t.store.delete_secret(bad).await.unwrap_err();
        assert!(
            matches!(error, StoreError::InvalidSecretName { .. }),
            "{bad}: {error}"
        );
    }
    assert_eq!(t.store.secrets().await.unwrap(), []);

    // The limits themselves are fine.
    let longest = "S".repeat(128);
    for good in ["_", "a", "_9", longest.as_str()] {
        t.store.put_secret(good, b"v").await.unwrap();
    }
    assert_eq!(t.store.secrets().await.unwrap().len(), 4);
}

async fn bytes_round_trip_exactly(t: TestStore) {
    let bytes = ciphertext();
    assert!(std::str::from_utf8(&bytes).is_err());
    let big: Vec<u8> = (0..256 * 1024).map(|i: u32| (i * 7 % 251) as u8).collect();
    t.store.put_secret("BINARY", &bytes).await.unwrap();
    t.store.put_secret("EMPTY", b"").await.unwrap();
    t.store.put_secret("LARGE", &big).await.unwrap();

    let listed = t.store.secrets().await.unwrap();
    let sealed: Vec<(&str, &[u8])> = listed
        .iter()
        .map(|secret| (secret.name.as_str(), secret.sealed.as_slice()))
        .collect();
    assert_eq!(
        sealed,
        [
            ("BINARY", bytes.as_slice()),
            ("EMPTY", &[][..]),
            ("LARGE", big.as_slice())
        ]
    );
}

async fn secrets_survive_reopening_the_store(mut t: TestStore) {
    let bytes = ciphertext();
    t.store.put_secret("DEPLOY_KEY", &bytes).await.unwrap();
    t.store.put_secret("GONE", b"x").await.unwrap();
    assert!(t.store.delete_secret("GONE").await.unwrap());
    let stored = t.store.secrets().await.unwrap();

    // A new store replaces the old one, which is dropped with its connections.
    let reopened = t.another().await;
    drop(std::mem::replace(&mut t.store, reopened));

    let listed = t.store.secrets().await.unwrap();
    assert_eq!(listed, stored);
    assert_eq!(
        listed,
        [SealedSecret {
            name: "DEPLOY_KEY".into(),
            sealed: bytes,
            updated_at: stored[0].updated_at,
            repos: vec![],
        }]
    );
}

async fn grants_are_replaced_and_survive_a_new_value(t: TestStore) {
    t.store.put_secret("NPM_TOKEN", b"v1").await.unwrap();
    assert_eq!(
        t.store.secrets().await.unwrap()[0].repos,
        Vec::<String>::new()
    );
    let repos = vec![
        "/src/app".to_string(),
        "https://example.com/org/repo".to_string(),
    ];
    assert!(t.store.set_secret_repos("NPM_TOKEN", &repos).await.unwrap());
    assert_eq!(t.store.secrets().await.unwrap()[0].repos, repos);
    // A new value keeps the grants.
    t.store.put_secret("NPM_TOKEN", b"v2").await.unwrap();
    let listed = t.store.secrets().await.unwrap();
    assert_eq!(
        (listed[0].sealed.as_slice(), &listed[0].repos),
        (&b"v2"[..], &repos)
    );
    assert!(
        t.store
            .set_secret_repos("NPM_TOKEN", &["*".into()])
            .await
            .unwrap()
    );
    assert_eq!(t.another().await.secrets().await.unwrap()[0].repos, ["*"]);
    assert!(!t.store.set_secret_repos("MISSING", &repos).await.unwrap());
    assert!(matches!(
        t.store.set_secret_repos("bad name", &repos).await,
        Err(StoreError::InvalidSecretName { .. })
    ));
}

on_every_backend!(
    a_secret_is_stored_and_replaced,
    secrets_are_listed_by_name,
    a_secret_is_deleted_once,
    bad_names_are_refused_and_nothing_is_stored,
    bytes_round_trip_exactly,
    secrets_survive_reopening_the_store,
    grants_are_replaced_and_survive_a_new_value,
);
