//! The task endpoints over real HTTP: submit, show and list, and bad input. (api_task.rs: what
//! is done to a task; api_service.rs: health, metrics and the OpenAPI document.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Harness, error_of, git_repo};
use serde_json::{Value, json};

#[tokio::test]
async fn submitting_queues_a_task_that_reads_back_by_any_id_form() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = h.serve_repo(git_repo(dir.path())).await;
    let response = h
        .post("/api/tasks", &h.submit)
        .json(&json!({"repo": repo, "prompt": "  fix the bug  ", "max_turns": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let task: Value = response.json().await.unwrap();
    let id = task["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/api/tasks/{id}"));
    assert_eq!(task["state"], "queued");
    assert_eq!(task["schema"], 1);
    assert_eq!(task["short_id"], id[id.len() - 8..]);
    assert_eq!(task["spec"]["prompt"], "fix the bug");
    assert_eq!(task["spec"]["base"], "main");
    assert_eq!(
        task["spec"]["model"], "openai:test-model",
        "the server's default model"
    );
    assert_eq!(task["spec"]["max_turns"], 7);

    for reference in [
        id.clone(),
        id[id.len() - 8..].to_string(),
        id[..20].to_uppercase(),
    ] {
        let response = h
            .get(&format!("/api/tasks/{reference}"), &h.read)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{reference}");
        let shown: Value = response.json().await.unwrap();
        assert_eq!(shown["id"], id.as_str());
        assert_eq!(shown["state"], "queued");
    }

    // The runner's checks come back as 422 with its message and hint.
    let response = h
        .post("/api/tasks", &h.submit)
        .json(&json!({"repo": repo, "prompt": "  "}))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (422, Some("invalid_task"))
    );
    assert!(
        error["message"].as_str().unwrap().contains("prompt"),
        "{error}"
    );

    let response = h
        .post("/api/tasks", &h.submit)
        .json(&json!({"repo": repo, "prompt": "p", "base": "no-such-branch"}))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(status, 422, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("no-such-branch"),
        "{error}"
    );

    // A registered repository that is no longer a git repository.
    let gone = tempfile::tempdir().unwrap();
    let gone_repo = h.serve_repo(git_repo(gone.path())).await;
    std::fs::remove_dir_all(gone_repo.join(".git")).unwrap();
    let response = h
        .post("/api/tasks", &h.submit)
        .json(&json!({"repo": gone_repo, "prompt": "p"}))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(status, 422, "not a repository: {error}");

    // Repositories the server does not serve, by path (a real repository too) or name.
    let other = tempfile::tempdir().unwrap();
    let unregistered = git_repo(other.path());
    for repo in [
        json!(unregistered),
        json!(dir.path()),
        json!("relative/repo"),
        json!("/"),
    ] {
        let response = h
            .post("/api/tasks", &h.submit)
            .json(&json!({"repo": repo, "prompt": "p"}))
            .send()
            .await
            .unwrap();
        let (status, error) = error_of(response).await;
        assert_eq!(status, 403, "{repo}: {error}");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("does not serve"),
            "{error}"
        );
    }

    let response = h
        .post("/api/tasks", &h.submit)
        .json(&json!({"repo": repo, "prompt": "p", "model": "nope:x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await.0, 422);

    // An API client may not have the server read a file of its machine as an image.
    let queued = h.store.list_tasks(&Default::default()).await.unwrap().len();
    for image in [
        "oci-archive:/etc/passwd",
        "oci:/var/lib",
        "docker-archive:x.tar",
    ] {
        let response = h
            .post("/api/tasks", &h.submit)
            .json(&json!({"repo": repo, "prompt": "p", "image": image}))
            .send()
            .await
            .unwrap();
        let (status, error) = error_of(response).await;
        assert_eq!(status, 422, "{image}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains("names a path on the server"), "{error}");
    }
    let after = h.store.list_tasks(&Default::default()).await.unwrap().len();
    assert_eq!(after, queued, "nothing was queued");
    h.stop().await;
}

#[tokio::test]
async fn a_model_whose_key_the_workers_lack_is_refused_naming_the_variable() {
    let h = Harness::start_with(
        std::time::Duration::from_millis(50),
        nightshift_model::ProviderConfig::default(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let repo = h.serve_repo(git_repo(dir.path())).await;
    for (model, variable) in [
        ("openai:gpt-x", "OPENAI_API_KEY"),
        ("openai-responses:gpt-x", "OPENAI_API_KEY"),
        ("anthropic:claude-x", "ANTHROPIC_API_KEY"),
    ] {
        let response = h
            .post("/api/tasks", &h.submit)
            .json(&json!({"repo": repo, "prompt": "fix it", "model": model}))
            .send()
            .await
            .unwrap();
        let (status, error) = error_of(response).await;
        assert_eq!(status, 422, "{model}: {error}");
        assert_eq!(error["code"], "invalid_task", "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(variable), "{model}: {message}");
        assert!(message.contains("nothing was queued"), "{message}");
        assert!(
            error["hint"].as_str().unwrap().contains(variable),
            "{error}"
        );
    }
    // A cassette needs no key.
    let response = h
        .post("/api/tasks", &h.submit)
        .json(&json!({"repo": repo, "prompt": "fix it", "model": "replay:/tmp/c.jsonl"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let listed: Value = h
        .get("/api/tasks", &h.read)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["tasks"].as_array().unwrap().len(),
        1,
        "only the replay task was queued: {listed}"
    );
}

#[tokio::test]
async fn bad_input_gets_4xx_with_a_message() {
    let h = Harness::start().await;
    let send = |body: String| {
        h.post("/api/tasks", &h.submit)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let (status, error) = error_of(send("{\"repo\": ".into()).await.unwrap()).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (400, Some("invalid_json"))
    );

    let body = json!({"repo": "/r", "prompt": "p", "colour": "red"}).to_string();
    let (status, error) = error_of(send(body).await.unwrap()).await;
    assert_eq!(status, 422);
    assert!(
        error["message"].as_str().unwrap().contains("colour"),
        "{error}"
    );

    let body = json!({"repo": "/r", "prompt": "p", "max_turns": "many"}).to_string();
    let (status, error) = error_of(send(body).await.unwrap()).await;
    assert_eq!(status, 422);
    assert!(
        error["message"].as_str().unwrap().contains("max_turns"),
        "{error}"
    );

    let body = json!({"prompt": "p"}).to_string();
    let (status, error) = error_of(send(body).await.unwrap()).await;
    assert_eq!(status, 422);
    assert!(
        error["message"].as_str().unwrap().contains("repo"),
        "{error}"
    );

    let big = json!({"repo": "/r", "prompt": "x".repeat(2 * 1024 * 1024)}).to_string();
    let (status, error) = error_of(send(big).await.unwrap()).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (413, Some("body_too_large"))
    );

    let response = h
        .post("/api/tasks", &h.submit)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await.0, 415);

    for bad in ["ab", "not-an-id!", "ilouilou", &"z".repeat(27)] {
        let response = h
            .get(&format!("/api/tasks/{bad}"), &h.read)
            .send()
            .await
            .unwrap();
        let (status, error) = error_of(response).await;
        assert_eq!(
            (status, error["code"].as_str()),
            (400, Some("invalid_id")),
            "{bad}"
        );
    }
    let unknown = nightshift_protocol::TaskId::new();
    let response = h
        .get(&format!("/api/tasks/{unknown}"), &h.read)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await.0, 404);

    let response = h.get("/api/nothing-here", &h.read).send().await.unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!((status, error["code"].as_str()), (404, Some("not_found")));
    let response = h.client.put(h.url("/api/tasks")).send().await.unwrap();
    assert_eq!(error_of(response).await.0, 405);

    let response = h.get("/api/tasks?limit=0", &h.read).send().await.unwrap();
    assert_eq!(error_of(response).await.0, 400);
    let response = h.get("/api/tasks?limit=abc", &h.read).send().await.unwrap();
    assert_eq!(error_of(response).await.0, 400);
    let response = h
        .get("/api/tasks?state=done", &h.read)
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(status, 400);
    assert!(
        error["message"].as_str().unwrap().contains("done"),
        "{error}"
    );
    let response = h
        .get("/api/tasks?before=xyz", &h.read)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await.0, 400);
    h.stop().await;
}

#[tokio::test]
async fn listings_page_newest_first_and_filter_by_state() {
    let h = Harness::start().await;
    let mut ids = Vec::new();
    for n in 0..7 {
        ids.push(h.queued_task(&format!("task {n}")).await.id.to_string());
    }
    // Newest first is id order (ULIDs made within one millisecond sort by their random part).
    ids.sort();
    ids.reverse();
    let mut seen = Vec::new();
    let mut path = "/api/tasks?limit=3".to_string();
    loop {
        let page: Value = h
            .get(&path, &h.read)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for task in page["tasks"].as_array().unwrap() {
            seen.push(task["id"].as_str().unwrap().to_string());
        }
        match page["next_before"].as_str() {
            Some(cursor) => path = format!("/api/tasks?limit=3&before={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);

    let cancelled = &ids[2];
    h.post(&format!("/api/tasks/{cancelled}/cancel"), &h.submit)
        .send()
        .await
        .unwrap();
    let page: Value = h
        .get("/api/tasks?state=cancelled,failed", &h.read)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tasks = page["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["id"], cancelled.as_str());
    assert!(page.get("next_before").is_none());

    // By repository and prompt text, in the store.
    let count = |path: &'static str| {
        let request = h.get(path, &h.read);
        async move {
            let page: Value = request.send().await.unwrap().json().await.unwrap();
            page["tasks"].as_array().unwrap().len()
        }
    };
    assert_eq!(count("/api/tasks?q=TASK%205").await, 1);
    assert_eq!(
        count("/api/tasks?q=task&repo=%2Fnonexistent%2Frepo").await,
        7
    );
    assert_eq!(count("/api/tasks?repo=%2Felsewhere").await, 0);
    h.stop().await;
}
