//! Which repositories a server serves: registering them over the API (admins only), tasks only
//! for registered ones (by name or by path), and tokens limited to some of them, which neither
//! submit to nor see the others.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Harness, error_of, git_repo};
use serde_json::{Value, json};

async fn submit(h: &Harness, token: &str, repo: Value) -> reqwest::Response {
    h.post("/api/tasks", token)
        .json(&json!({"repo": repo, "prompt": "fix it"}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn admins_register_repositories_and_tasks_name_them_by_name_or_path() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = git_repo(dir.path());

    // Before it is registered, nothing runs on it, and nothing is queued.
    let (status, error) = error_of(submit(&h, &h.submit, json!(repo)).await).await;
    assert_eq!(status, 403, "{error}");
    assert!(
        error["hint"]
            .as_str()
            .unwrap()
            .contains("nightshift repo add")
    );
    assert!(
        h.store
            .list_tasks(&Default::default())
            .await
            .unwrap()
            .is_empty()
    );

    // Only an admin registers; a subdirectory of the work tree registers its top level.
    std::fs::create_dir(repo.join("src")).unwrap();
    let add = json!({"path": repo.join("src"), "name": "acme/app"});
    let response = h
        .post("/api/repos", &h.submit)
        .json(&add)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response = h
        .post("/api/repos", &h.admin)
        .json(&add)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let added: Value = response.json().await.unwrap();
    assert_eq!(added["name"], "acme/app");
    assert_eq!(added["location"], repo.to_str().unwrap());

    // The same name or the same place again is a conflict; bad input says what was wrong.
    for body in [
        json!({"path": repo, "name": "acme/app"}),
        json!({"path": repo, "name": "other"}),
    ] {
        let response = h
            .post("/api/repos", &h.admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        let (status, error) = error_of(response).await;
        assert_eq!(status, 409, "{body}: {error}");
    }
    let not_git = tempfile::tempdir().unwrap();
    for (body, expected) in [
        (json!({"path": not_git.path()}), 422),
        (json!({"path": "relative"}), 422),
        (json!({"path": repo, "name": "../escape"}), 422),
        (json!({"path": repo, "name": "-rf"}), 422),
        // A GitHub App's tokens are for HTTPS, and need its key.
        (
            json!({"path": "git@github.com:acme/app.git", "credential": "KEY", "github_app": "1"}),
            422,
        ),
        (
            json!({"path": "https://github.com/acme/app.git", "github_app": "1"}),
            422,
        ),
    ] {
        let response = h
            .post("/api/repos", &h.admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        let (status, error) = error_of(response).await;
        assert_eq!(status, expected, "{body}: {error}");
    }

    // Listed to any token; tasks name it by name or by path, and store its location.
    let response = h.get("/api/repos", &h.read).send().await.unwrap();
    let listed: Value = response.json().await.unwrap();
    assert_eq!(listed["repos"].as_array().unwrap().len(), 1, "{listed}");
    for name in [
        json!("acme/app"),
        json!(repo),
        json!(format!("{}/", repo.display())),
    ] {
        let response = submit(&h, &h.submit, name.clone()).await;
        assert_eq!(response.status(), 201, "{name}");
        let task: Value = response.json().await.unwrap();
        assert_eq!(task["spec"]["repo"], repo.to_str().unwrap());
    }

    // Forgotten, it takes no new tasks; its tasks stay.
    let response = h
        .client
        .delete(h.url("/api/repos/acme/app"))
        .bearer_auth(&h.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let response = h
        .client
        .delete(h.url("/api/repos/acme/app"))
        .bearer_auth(&h.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        error_of(submit(&h, &h.submit, json!("acme/app")).await)
            .await
            .0,
        403
    );
    assert_eq!(
        h.store.list_tasks(&Default::default()).await.unwrap().len(),
        3
    );
    h.stop().await;
}

#[tokio::test]
async fn a_token_limited_to_one_repository_neither_submits_to_nor_sees_another() {
    let h = Harness::start().await;
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mine = git_repo(one.path());
    let theirs = git_repo(two.path());
    for (path, name) in [(&mine, "mine"), (&theirs, "theirs")] {
        nightshift_runner::register_repo(
            h.store.as_ref(),
            path.to_str().unwrap(),
            Some(name),
            Default::default(),
        )
        .await
        .unwrap();
    }

    // Limits name registered repositories only.
    let response = h
        .post("/api/tokens", &h.admin)
        .json(&json!({"name": "x", "scope": "submit", "repos": ["nope"]}))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(status, 422, "{error}");
    let response = h
        .post("/api/tokens", &h.admin)
        .json(&json!({"name": "ci", "scope": "submit", "repos": ["mine"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["token"]["repos"], json!(["mine"]));
    let limited = created["secret"].as_str().unwrap().to_string();

    let response = submit(&h, &limited, json!("mine")).await;
    assert_eq!(response.status(), 201);
    let own: Value = response.json().await.unwrap();
    for other in [json!("theirs"), json!(theirs)] {
        let (status, error) = error_of(submit(&h, &limited, other.clone()).await).await;
        assert_eq!(status, 403, "{other}: {error}");
        assert!(
            error["message"].as_str().unwrap().contains("may not use"),
            "{error}"
        );
    }
    let response = submit(&h, &h.submit, json!("theirs")).await;
    let foreign: Value = response.json().await.unwrap();
    let foreign_id = foreign["id"].as_str().unwrap();

    // It lists and reads only its repository's tasks; another's is "not found", to every verb.
    let listed: Value = h
        .get("/api/tasks", &limited)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = listed["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [own["id"].as_str().unwrap()]);
    for path in [
        format!("/api/tasks/{foreign_id}"),
        format!("/api/tasks/{foreign_id}/events"),
        format!("/api/tasks/{foreign_id}/diff"),
    ] {
        let (status, _) = error_of(h.get(&path, &limited).send().await.unwrap()).await;
        assert_eq!(status, 404, "{path}");
    }
    for path in [
        format!("/api/tasks/{foreign_id}/cancel"),
        format!("/api/tasks/{foreign_id}/messages"),
    ] {
        let response = h
            .post(&path, &limited)
            .json(&json!({"text": "stop"}))
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(response).await.0, 404, "{path}");
    }
    let task = h
        .store
        .get_task(foreign_id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(
        !task.cancel_requested,
        "the other repository's task was not touched"
    );
    let repos: Value = h
        .get("/api/repos", &limited)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(repos["repos"].as_array().unwrap().len(), 1, "{repos}");

    // An unlimited token sees both.
    let listed: Value = h
        .get("/api/tasks", &h.read)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 2);
    h.stop().await;
}

#[tokio::test]
async fn a_review_names_an_ended_task_of_the_same_repository_or_a_base() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = h.serve_repo(git_repo(dir.path())).await;
    let elsewhere = h.queued_task("on another repository").await;
    let mut running = h.queued_task("still running").await;
    running.spec.repo = repo.to_str().unwrap().to_string();
    h.store.update_task(&running).await.unwrap();
    let review = |review: Value| json!({"repo": repo, "prompt": "look", "review": review});
    for (body, expected) in [
        (review(json!({"task": elsewhere.id})), "no task"),
        (review(json!({"task": "not-an-id"})), "no task"),
        (
            review(json!({"task": running.id, "base": "main"})),
            "not both",
        ),
        (review(json!({"task": running.id})), "once it has ended"),
        (
            json!({"repo": repo, "prompt": "look", "base": "main", "review": {"base": "nope"}}),
            "nope",
        ),
        (review(json!({"base": "main"})), "needs the branch"),
    ] {
        let response = h
            .post("/api/tasks", &h.submit)
            .json(&body)
            .send()
            .await
            .unwrap();
        let (status, error) = error_of(response).await;
        assert_eq!(status, 422, "{body}: {error}");
        assert!(
            error["message"].as_str().unwrap().contains(expected),
            "{expected:?} in {error}"
        );
    }
    // A branch against a base: queued, with what it reviews resolved to a commit.
    let response = h
        .post("/api/tasks", &h.submit)
        .json(&json!({"repo": repo, "prompt": "look", "base": "main", "review": {"base": "main"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let task: Value = response.json().await.unwrap();
    assert_eq!(task["spec"]["review"]["base"], "main", "{task}");
    assert_eq!(
        task["spec"]["review"]["base_commit"]
            .as_str()
            .unwrap()
            .len(),
        40
    );
    assert_eq!(
        h.store.list_tasks(&Default::default()).await.unwrap().len(),
        3
    );
}

#[tokio::test]
async fn best_of_n_takes_attempts_and_models_and_refuses_what_it_cannot_run() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = h.serve_repo(git_repo(dir.path())).await;
    let body = |extra: Value| {
        let mut body = json!({"repo": repo, "prompt": "fix it"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    for (extra, expected) in [
        (
            json!({"attempts": 9}),
            "9 attempts asked for; a task runs 2 to 8",
        ),
        (json!({"attempts": 0}), "asks for no attempt"),
        (
            json!({"attempts": 2, "models": ["openai:a", "openai:b", "openai:c"]}),
            "3 models for 2 attempt(s)",
        ),
        (json!({"models": ["openai:a", "nomodel"]}), "nomodel"),
    ] {
        let sent = body(extra);
        let response = h
            .post("/api/tasks", &h.submit)
            .json(&sent)
            .send()
            .await
            .unwrap();
        let (status, error) = error_of(response).await;
        assert_eq!(status, 422, "{sent}: {error}");
        assert!(
            error["message"].as_str().unwrap().contains(expected),
            "{expected:?} in {error}"
        );
    }
    assert!(
        h.store
            .list_tasks(&Default::default())
            .await
            .unwrap()
            .is_empty()
    );
    // Three attempts spread over two models, in turn.
    let response = h
        .post("/api/tasks", &h.submit)
        .json(&body(
            json!({"attempts": 3, "models": ["openai:a", "openai:b"]}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let task: Value = response.json().await.unwrap();
    assert_eq!(
        task["spec"]["attempts"],
        json!(["openai:a", "openai:b", "openai:a"]),
        "{task}"
    );
    assert_eq!(task["spec"]["model"], "openai:a");
}
