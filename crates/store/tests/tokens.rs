//! API tokens on both backends: stored by the hash of their secret, found by it, their use
//! recorded, listed and revoked; and the other small tables of a server: repositories, webhook
//! deliveries, forge retries.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use jiff::Timestamp;
use nightshift_protocol::{ApiToken, Repository, TokenScope};
use nightshift_store::StoreError;

use common::{TestStore, now};

fn token(id: &str, scope: TokenScope, created_at: Timestamp) -> ApiToken {
    ApiToken {
        id: id.into(),
        name: format!("{id}'s name"),
        scope,
        created_at,
        last_used_at: None,
        revoked_at: None,
        repos: Vec::new(),
    }
}

async fn a_token_is_found_by_its_hash_and_its_use_recorded(t: TestStore) {
    let created = token("tok_ci", TokenScope::Submit, now());
    t.store.create_token(&created, "hash-of-ci").await.unwrap();

    assert_eq!(
        t.store.token_by_hash("hash-of-nothing").await.unwrap(),
        None
    );
    let found = t.store.token_by_hash("hash-of-ci").await.unwrap().unwrap();
    let used_at = found.last_used_at.expect("the use is recorded");
    assert!(used_at >= created.created_at);
    assert_eq!(
        found,
        ApiToken {
            last_used_at: Some(used_at),
            ..created.clone()
        }
    );
    assert_eq!(
        t.store.list_tokens().await.unwrap(),
        std::slice::from_ref(&found)
    );

    // Uses are recorded to the minute: a second lookup right after is a plain read.
    let again = t.store.token_by_hash("hash-of-ci").await.unwrap().unwrap();
    assert_eq!(again, found);
}

async fn revoked_tokens_are_not_found_but_still_listed(t: TestStore) {
    t.store
        .create_token(&token("tok_old", TokenScope::Admin, now()), "hash-old")
        .await
        .unwrap();
    t.store
        .create_token(&token("tok_keep", TokenScope::Read, now()), "hash-keep")
        .await
        .unwrap();

    assert!(t.store.revoke_token("tok_old").await.unwrap());
    assert!(!t.store.revoke_token("tok_old").await.unwrap(), "only once");
    assert!(!t.store.revoke_token("tok_missing").await.unwrap());

    assert_eq!(t.store.token_by_hash("hash-old").await.unwrap(), None);
    assert!(t.store.token_by_hash("hash-keep").await.unwrap().is_some());
    let listed = t.store.list_tokens().await.unwrap();
    let old = listed.iter().find(|token| token.id == "tok_old").unwrap();
    assert!(old.revoked_at.is_some());
    let kept = listed.iter().find(|token| token.id == "tok_keep").unwrap();
    assert_eq!(kept.revoked_at, None);
}

async fn tokens_are_listed_newest_first(t: TestStore) {
    let start = now();
    for (i, scope) in [TokenScope::Read, TokenScope::Submit, TokenScope::Admin]
        .into_iter()
        .enumerate()
    {
        let created_at = start + jiff::SignedDuration::from_secs(i as i64);
        t.store
            .create_token(
                &token(&format!("tok_{i}"), scope, created_at),
                &format!("h{i}"),
            )
            .await
            .unwrap();
    }
    let listed = t.store.list_tokens().await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|token| token.id.as_str()).collect();
    assert_eq!(ids, ["tok_2", "tok_1", "tok_0"]);
    assert_eq!(listed[0].scope, TokenScope::Admin);
    assert_eq!(listed[2].scope, TokenScope::Read);
}

async fn ids_and_secret_hashes_are_unique(t: TestStore) {
    t.store
        .create_token(&token("tok_a", TokenScope::Read, now()), "same-hash")
        .await
        .unwrap();
    let error = t
        .store
        .create_token(&token("tok_b", TokenScope::Admin, now()), "same-hash")
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Database { .. }), "{error}");
    let error = t
        .store
        .create_token(&token("tok_a", TokenScope::Admin, now()), "other-hash")
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Database { .. }), "{error}");
    // Neither failed write changed what the first token grants.
    let found = t.store.token_by_hash("same-hash").await.unwrap().unwrap();
    assert_eq!(
        (found.id.as_str(), found.scope),
        ("tok_a", TokenScope::Read)
    );
    assert_eq!(t.store.list_tokens().await.unwrap().len(), 1);
}

async fn a_tokens_repositories_are_kept(t: TestStore) {
    let limited = ApiToken {
        repos: vec!["acme/app".into(), "lib".into()],
        ..token("tok_limited", TokenScope::Submit, now())
    };
    t.store
        .create_token(&limited, "hash-limited")
        .await
        .unwrap();
    let found = t
        .store
        .token_by_hash("hash-limited")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.repos, limited.repos);
    assert!(found.may_use_repo("lib") && !found.may_use_repo("other"));
    assert_eq!(t.store.list_tokens().await.unwrap()[0].repos, limited.repos);
}

fn repo(name: &str, location: &str) -> Repository {
    Repository {
        name: name.into(),
        location: location.into(),
        created_at: now(),
        credential: None,
        github_api: None,
        github_app: None,
    }
}

async fn repositories_are_registered_once_by_name_and_by_location(t: TestStore) {
    assert!(t.store.repos().await.unwrap().is_empty());
    let app = Repository {
        credential: Some("GIT_TOKEN".into()),
        github_api: Some("https://ghe.example/api/v3".into()),
        github_app: Some("1234".into()),
        ..repo("acme/app", "https://git.example/acme/app.git")
    };
    let lib = repo("Lib", "/srv/lib");
    t.store.add_repo(&app).await.unwrap();
    t.store.add_repo(&lib).await.unwrap();
    // Listed by name, in byte order on both backends.
    assert_eq!(t.store.repos().await.unwrap(), [lib.clone(), app.clone()]);

    for duplicate in [
        repo("acme/app", "/srv/other"),
        repo("other", "https://git.example/acme/app.git"),
    ] {
        let error = t.store.add_repo(&duplicate).await.unwrap_err();
        assert!(
            matches!(error, StoreError::AlreadyExists { .. }),
            "{duplicate:?}: {error}"
        );
    }
    let error = t.store.add_repo(&repo("../x", "/srv/x")).await.unwrap_err();
    assert!(matches!(error, StoreError::InvalidRepoName(_)), "{error}");
    assert_eq!(t.store.repos().await.unwrap().len(), 2, "nothing was added");

    assert!(t.store.remove_repo("acme/app").await.unwrap());
    assert!(!t.store.remove_repo("acme/app").await.unwrap());
    assert_eq!(t.store.repos().await.unwrap(), [lib]);
    // Its place can be registered again, under another name.
    t.store
        .add_repo(&repo("app2", "https://git.example/acme/app.git"))
        .await
        .unwrap();
}

async fn a_webhook_delivery_is_acted_on_once(t: TestStore) {
    assert!(t.store.record_delivery("72d3162e-cc78-11e3").await.unwrap());
    assert!(!t.store.record_delivery("72d3162e-cc78-11e3").await.unwrap());
    assert!(t.store.record_delivery("another").await.unwrap());
}

async fn a_forge_retry_comes_due_is_claimed_once_and_counts_its_attempts(t: TestStore) {
    let task = common::create(&*t.store, "push me").await;
    let later = common::create(&*t.store, "not yet").await;
    let hold = std::time::Duration::from_secs(60);
    let past = Timestamp::now() - jiff::SignedDuration::from_secs(1);
    let future = Timestamp::now() + jiff::SignedDuration::from_secs(3600);
    assert_eq!(
        t.store
            .schedule_forge_retry(task.id, past, "503 from GitHub")
            .await
            .unwrap(),
        1
    );
    t.store
        .schedule_forge_retry(later.id, future, "unreachable")
        .await
        .unwrap();
    // Only the due one, and only to the first claimer (another connection, as another worker).
    let other = t.another().await;
    let claimed = t.store.claim_forge_retries(hold, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].task_id, task.id);
    assert_eq!(claimed[0].attempts, 1);
    assert_eq!(claimed[0].reason, "503 from GitHub");
    assert!(
        other
            .claim_forge_retries(hold, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Failing again counts; finishing forgets.
    assert_eq!(
        t.store
            .schedule_forge_retry(task.id, past, "502 from GitHub")
            .await
            .unwrap(),
        2
    );
    let again = other.claim_forge_retries(hold, 10).await.unwrap();
    assert_eq!(
        (again[0].attempts, again[0].reason.as_str()),
        (2, "502 from GitHub")
    );
    t.store.finish_forge_retry(task.id).await.unwrap();
    t.store.finish_forge_retry(task.id).await.unwrap();
    assert_eq!(
        t.store
            .schedule_forge_retry(task.id, past, "down")
            .await
            .unwrap(),
        1
    );
}

on_every_backend!(
    a_token_is_found_by_its_hash_and_its_use_recorded,
    revoked_tokens_are_not_found_but_still_listed,
    tokens_are_listed_newest_first,
    ids_and_secret_hashes_are_unique,
    a_tokens_repositories_are_kept,
    repositories_are_registered_once_by_name_and_by_location,
    a_webhook_delivery_is_acted_on_once,
    a_forge_retry_comes_due_is_claimed_once_and_counts_its_attempts,
);
