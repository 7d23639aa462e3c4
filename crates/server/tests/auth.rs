//! Authentication over real HTTP: 401 without a usable token, 403 per scope, token management.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Harness, error_of};
use serde_json::{Value, json};

#[tokio::test]
async fn every_endpoint_but_health_and_openapi_needs_a_token() {
    let h = Harness::start().await;
    let task = h.queued_task("t").await;
    let paths = [
        "/api/tasks".to_string(),
        format!("/api/tasks/{}", task.id),
        format!("/api/tasks/{}/events", task.id),
        format!("/api/tasks/{}/diff", task.id),
        format!("/api/tasks/{}/artifacts/log.txt", task.id),
        "/api/tokens".to_string(),
        "/metrics".to_string(),
    ];
    for path in &paths {
        let response = h.client.get(h.url(path)).send().await.unwrap();
        assert_eq!(
            response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .split(' ')
                .next(),
            Some("Bearer"),
            "{path}"
        );
        let (status, error) = error_of(response).await;
        assert_eq!(
            (status, error["code"].as_str()),
            (401, Some("unauthorized")),
            "{path}"
        );
        let response = h.get(path, "ns_not-a-real-token").send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
        let response = h.get(path, "garbage").send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
    }
    let response = h.client.get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let response = h
        .client
        .get(h.url("/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    h.stop().await;
}

#[tokio::test]
async fn scopes_nest_read_submit_admin() {
    let h = Harness::start().await;
    let task = h.queued_task("t").await;
    let cancel = format!("/api/tasks/{}/cancel", task.id);

    // read: GETs only.
    assert_eq!(
        h.get("/api/tasks", &h.read).send().await.unwrap().status(),
        200
    );
    let (status, error) = error_of(h.post(&cancel, &h.read).send().await.unwrap()).await;
    assert_eq!((status, error["code"].as_str()), (403, Some("forbidden")));
    assert!(
        error["hint"].as_str().unwrap().contains("--scope submit"),
        "{error}"
    );
    let response = h
        .post("/api/tasks", &h.read)
        .json(&json!({"repo": "/x", "prompt": "p"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(
        h.get("/api/tokens", &h.read).send().await.unwrap().status(),
        403
    );

    // submit: also create, cancel, message; not tokens.
    assert_eq!(
        h.get("/metrics", &h.submit).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        h.get("/api/tokens", &h.submit)
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let response = h
        .post("/api/tokens", &h.submit)
        .json(&json!({"name": "x", "scope": "read"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);

    // admin: everything.
    assert_eq!(
        h.get("/api/tokens", &h.admin)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        h.post(&cancel, &h.admin).send().await.unwrap().status(),
        200
    );
    h.stop().await;
}

#[tokio::test]
async fn admins_create_list_and_revoke_tokens() {
    let h = Harness::start().await;
    let response = h
        .post("/api/tokens", &h.admin)
        .json(&json!({"name": "ci", "scope": "submit"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(
        secret.starts_with("ns_") && secret.len() == 3 + 64,
        "{secret}"
    );
    let id = created["token"]["id"].as_str().unwrap().to_string();
    assert_eq!(created["token"]["scope"], "submit");

    let listed: Value = h
        .get("/api/tokens", &h.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"ci") && names.contains(&"reader"),
        "{names:?}"
    );
    assert!(
        !listed.to_string().contains(&secret),
        "secrets are never listed"
    );

    // The new token works (and is now cached), and stops working once revoked.
    assert_eq!(
        h.get("/api/tasks", &secret).send().await.unwrap().status(),
        200
    );
    let response = h
        .client
        .delete(h.url(&format!("/api/tokens/{id}")))
        .bearer_auth(&h.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(
        h.get("/api/tasks", &secret).send().await.unwrap().status(),
        401
    );
    let response = h
        .client
        .delete(h.url(&format!("/api/tokens/{id}")))
        .bearer_auth(&h.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    let response = h
        .post("/api/tokens", &h.admin)
        .json(&json!({"name": "x", "scope": "root"}))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(status, 422);
    assert!(
        error["message"].as_str().unwrap().contains("scope"),
        "{error}"
    );
    h.stop().await;
}
