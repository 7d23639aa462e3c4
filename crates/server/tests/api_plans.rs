//! A planning task's plan over real HTTP: every version, an edit as the next version, and one
//! approval; what cannot be done is refused with what was wrong.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Harness, error_of, git_repo};
use nightshift_protocol::{Event, Plan, TaskState};
use serde_json::{Value, json};

fn plan() -> Value {
    json!({
        "goal": "g",
        "subtasks": [
            {"name": "a", "prompt": "do a", "paths": ["a.txt"]},
            {"name": "b", "prompt": "do b", "depends_on": ["a"]}
        ]
    })
}

#[tokio::test]
async fn a_plan_is_read_edited_and_approved_once_over_the_api() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = h.serve_repo(git_repo(dir.path())).await;
    let mut task = h.queued_task("plan it").await;
    task.spec.plan = true;
    task.spec.repo = repo.to_str().unwrap().to_string();
    task.spec.base = None;
    h.store.update_task(&task).await.unwrap();
    let path = format!("/api/tasks/{}/plan", task.id.short());

    // No plan yet.
    let (status, error) = error_of(h.get(&path, &h.read).send().await.unwrap()).await;
    assert_eq!(status, 422, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("has no plan yet"),
        "{error}"
    );

    let first: Plan = serde_json::from_value(plan()).unwrap();
    h.append(
        task.id,
        Event::PlanSubmitted {
            version: 1,
            plan: first,
            author: "planner".into(),
        },
    )
    .await;
    h.finish(task.id, TaskState::Succeeded).await;
    let history: Value = h
        .get(&path, &h.read)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["versions"][0]["plan"], plan(), "{history}");
    assert_eq!(history["versions"][0]["version"], 1);

    // A read token cannot change it; a bad plan changes nothing.
    let mut edited = plan();
    edited["goal"] = json!("g2");
    let response = h
        .post(&path, &h.read)
        .json(&json!({"plan": edited}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let mut cyclic = plan();
    cyclic["subtasks"][0]["depends_on"] = json!(["b"]);
    let (status, error) = error_of(
        h.post(&path, &h.submit)
            .json(&json!({"plan": cyclic}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422, "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("circle"),
        "{error}"
    );

    let answer: Value = h
        .post(&path, &h.submit)
        .json(&json!({"plan": edited}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["version"], 2);
    let history: Value = h
        .get(&path, &h.read)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["versions"][1]["plan"]["goal"], "g2");
    assert_ne!(history["versions"][1]["author"], "planner");

    let approve = format!("{path}/approve");
    let (status, error) = error_of(
        h.post(&approve, &h.submit)
            .json(&json!({"version": 7}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422, "{error}");
    let answer: Value = h
        .post(&approve, &h.submit)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["version"], 2);
    // The plan's run is queued, to carry out version 2.
    let run: Value = h
        .get(
            &format!("/api/tasks/{}", answer["run"].as_str().unwrap()),
            &h.read,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(run["spec"]["plan_run"]["version"], 2, "{run}");
    assert_eq!(run["state"], "queued");
    let (status, error) = error_of(
        h.post(&approve, &h.submit)
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 409, "{error}");
    let history: Value = h
        .get(&path, &h.read)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["approved"], 2);

    // A task that is not a plan.
    let other = h.queued_task("build it").await;
    let (status, error) = error_of(
        h.get(&format!("/api/tasks/{}/plan", other.id), &h.read)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("not a planning task")
    );
    h.stop().await;
}
