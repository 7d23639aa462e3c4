//! The team setup end to end: `nightshift serve` with its API and workers, `nightshift worker`
//! processes killed mid-task, many tasks at once, two workers sharing PostgreSQL, and blobs in
//! an S3-compatible bucket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::server::Server;
use common::*;
use nightshift_test_s3::LoopbackS3;
use serde_json::{Value, json};

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn token(ns: &Nightshift, scope: &str) -> String {
    let out = ns
        .run(&["token", "create", "--scope", scope, "--name", "test"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_takes_a_task_over_http_runs_it_and_streams_its_events() {
    let repo = buggy_repo();
    let (ns, _model) = Nightshift::with_script(fixing_script()).await;
    ns.serve_repo(repo.path()).await;
    let secret = token(&ns, "submit").await;
    let mut server = Server::start(&ns, 2);
    let client = http();

    let unauthorized = client
        .get(format!("{}/api/tasks", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);

    let created = client
        .post(format!("{}/api/tasks", server.url))
        .bearer_auth(&secret)
        .json(&json!({"repo": path_str(repo.path()), "prompt": "Fix the add function"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let task: Value = created.json().await.unwrap();
    let id = task["id"].as_str().unwrap().to_string();

    // The event stream closes by itself once the task has ended.
    let stream = client
        .get(format!("{}/api/tasks/{id}/events", server.url))
        .bearer_auth(&secret)
        .header("accept", "text/event-stream")
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let data: Vec<Value> = stream
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| serde_json::from_str(data.trim()).unwrap())
        .collect();
    let seqs: Vec<u64> = data.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=data.len() as u64).collect::<Vec<_>>());
    assert_eq!(data.last().unwrap()["type"], "ended");
    assert_eq!(data.last().unwrap()["state"], "succeeded");

    let task: Value = client
        .get(format!("{}/api/tasks/{id}", server.url))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(task["state"], "succeeded");
    let diff = client
        .get(format!("{}/api/tasks/{id}/diff", server.url))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert!(
        diff.text()
            .await
            .unwrap()
            .contains("+add() { echo $(($1 + $2)); }")
    );
    // The CLI sees the same store.
    assert_eq!(
        ns.json(&["show", &id, "--json"]).await["state"],
        "succeeded"
    );
    assert!(server.stop().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_task_leaves_no_task_running() {
    let repo = buggy_repo();
    let (ns, _model) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": "sleep 47"}}]}}
    ])))
    .await;
    ns.serve_repo(repo.path()).await;
    let out = ns.run(&["token", "create", "--scope", "read"]).await;
    assert!(out.status.success());
    // Queue the task without a worker, then start one with a short lease.
    let task = ns
        .json(&[
            "run",
            "--repo",
            path_str(repo.path()),
            "--model",
            "openai:m",
            "--json",
            "slow",
        ])
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    // `run` started its own detached worker: wait for it to be running, then kill it.
    let events_started = Instant::now();
    loop {
        let events = ns.events(&id).await;
        if events.iter().any(|e| e["type"] == "tool_started") {
            break;
        }
        assert!(
            events_started.elapsed() < Duration::from_secs(30),
            "never started: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pids = processes_with(&format!("__run-task {id}"));
    assert_eq!(pids.len(), 1, "{pids:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    // Any later command settles it: the worker's process is gone.
    let task = ns.wait_for(&id, |t| t["state"] == "failed").await;
    assert!(
        task["error"]
            .as_str()
            .unwrap()
            .contains("stopped before the task ended"),
        "{task}"
    );
    let events = ns.events(&id).await;
    assert_eq!(events.last().unwrap()["type"], "ended");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    // The dead worker's working copy is cleaned up with it.
    assert!(
        !ns.home.path().join("work").join(&id).exists(),
        "the abandoned working copy is left"
    );
    // Nothing of the sandbox survived its worker.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        processes_with("sleep 47").is_empty(),
        "the sandboxed command outlived its worker"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lapsed_lease_is_settled_by_another_worker() {
    let repo = buggy_repo();
    let (ns, _model) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": "sleep 60"}}]}}
    ])))
    .await;
    ns.serve_repo(repo.path()).await;
    // The task's worker holds a 2 s lease.
    let out = ns
        .command(&[
            "run",
            "--repo",
            path_str(repo.path()),
            "--model",
            "openai:m",
            "--json",
            "slow",
        ])
        .env("NIGHTSHIFT_LEASE", "2s")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let id = serde_json::from_slice::<Value>(&out.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ns
        .events(&id)
        .await
        .iter()
        .any(|e| e["type"] == "tool_started")
    {
        assert!(Instant::now() < deadline, "the task never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A hung worker: its process lives on, but it renews nothing.
    let pid = nix::unistd::Pid::from_raw(processes_with(&format!("__run-task {id}"))[0] as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Another worker, starting up, settles it.
    let mut worker = ns
        .command(&["worker", "--concurrency", "1"])
        .spawn()
        .unwrap();
    let task = ns.wait_for(&id, |t| t["state"] == "failed").await;
    assert!(
        task["error"]
            .as_str()
            .unwrap()
            .contains("stopped renewing its lease"),
        "{task}"
    );
    let events = ns.events(&id).await;
    assert_eq!(events.last().unwrap()["type"], "ended");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    assert!(worker.wait().unwrap().success());
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_tasks_at_once_all_end_with_gapless_logs() {
    let repo = buggy_repo();
    let (ns, model) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [
            {"name": "write_file", "arguments": {"path": "done.txt", "content": "done\n"}},
            {"name": "finish", "arguments": {"summary": "wrote done.txt"}}
        ], "repeat": 200}}
    ])))
    .await;
    ns.serve_repo(repo.path()).await;
    let secret = token(&ns, "submit").await;
    let mut server = Server::start(&ns, 8);
    let client = http();
    let submissions = (0..200).map(|n| {
        let client = client.clone();
        let url = format!("{}/api/tasks", server.url);
        let secret = secret.clone();
        let repo = path_str(repo.path()).to_string();
        async move {
            let response = client
                .post(url)
                .bearer_auth(secret)
                .json(&json!({"repo": repo, "prompt": format!("task {n}")}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
            response.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    });
    let ids: Vec<String> = futures::future::join_all(submissions).await;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let listed = ns.json(&["ls", "--json", "--limit", "1000"]).await;
        let done = listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["state"] == "succeeded")
            .count();
        let failed: Vec<&Value> = listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["state"] == "failed")
            .collect();
        assert!(failed.is_empty(), "{failed:#?}");
        if done == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{done} of 200 done");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for id in &ids {
        let events = ns.events(id).await;
        let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>(), "{id}");
        assert_eq!(
            events.iter().filter(|e| e["type"] == "claimed").count(),
            1,
            "{id}"
        );
    }
    assert_eq!(model.served(), 200);
    assert!(server.stop().success());
    let log = std::fs::read_dir(ns.home.path()).unwrap().count();
    assert!(log > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_on_postgresql_never_run_the_same_task_twice() {
    let Ok(admin_url) = std::env::var("NIGHTSHIFT_TEST_DATABASE_URL") else {
        eprintln!("skipped: NIGHTSHIFT_TEST_DATABASE_URL is not set");
        return;
    };
    use sqlx::Connection;
    let name = format!(
        "nightshift_e2e_{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    );
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = match admin_url.rfind('/') {
        Some(slash) => format!("{}/{name}", &admin_url[..slash]),
        None => panic!("unexpected URL {admin_url}"),
    };

    let repo = buggy_repo();
    let (ns, model) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [
            {"name": "write_file", "arguments": {"path": "done.txt", "content": "done\n"}},
            {"name": "finish", "arguments": {"summary": "wrote done.txt"}}
        ], "repeat": 30}}
    ])))
    .await;
    let out = ns
        .command(&["repo", "add", path_str(repo.path())])
        .env("NIGHTSHIFT_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // Queue 30 tasks through `nightshift run`... whose detached workers would run them: queue
    // them through the API of a serve without workers instead.
    let secret = {
        let out = ns
            .command(&["token", "create", "--scope", "submit"])
            .env("NIGHTSHIFT_DATABASE_URL", &url)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).trim().to_string()
    };
    let mut api = ns
        .command(&["serve", "--listen", "127.0.0.1:0", "--workers", "0"])
        .env("NIGHTSHIFT_DATABASE_URL", &url)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(api.stderr.take().unwrap()).lines();
    let banner = lines.next().unwrap().unwrap();
    std::thread::spawn(move || for _ in lines {});
    let api_url = banner
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();
    let client = http();
    for n in 0..30 {
        let response = client
            .post(format!("{api_url}/api/tasks"))
            .bearer_auth(&secret)
            .json(&json!({"repo": path_str(repo.path()), "prompt": format!("pg task {n}"), "model": "openai:m"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let workers: Vec<Child> = (0..2)
        .map(|_| {
            ns.command(&["worker", "--concurrency", "3"])
                .env("NIGHTSHIFT_DATABASE_URL", &url)
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    let listed = loop {
        let out = ns
            .command(&["ls", "--json", "--limit", "100"])
            .env("NIGHTSHIFT_DATABASE_URL", &url)
            .output()
            .unwrap();
        let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
        let done = listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["state"] == "succeeded")
            .count();
        if done == 30 {
            break listed;
        }
        assert!(Instant::now() < deadline, "{done} of 30 done");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut by_worker = std::collections::BTreeMap::<String, usize>::new();
    for task in listed.as_array().unwrap() {
        let id = task["id"].as_str().unwrap();
        let out = ns
            .command(&["logs", id, "--json"])
            .env("NIGHTSHIFT_DATABASE_URL", &url)
            .output()
            .unwrap();
        let claims: Vec<Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["type"] == "claimed")
            .collect();
        assert_eq!(claims.len(), 1, "{id} was claimed {} times", claims.len());
        *by_worker
            .entry(claims[0]["worker"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(model.served(), 30);
    assert_eq!(by_worker.len(), 2, "both workers took tasks: {by_worker:?}");
    for mut worker in workers {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(worker.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        assert!(worker.wait().unwrap().success());
    }
    let _ = api.kill();
    let _ = api.wait();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_and_its_workers_keep_blobs_in_an_s3_bucket() {
    let s3 = LoopbackS3::start().unwrap();
    let repo = buggy_repo();
    let (mut ns, _model) = Nightshift::with_script(fixing_script()).await;
    ns.env = s3.env();
    ns.env
        .push(("NIGHTSHIFT_BLOB_URL".into(), s3.url("nightshift/prod")));
    ns.serve_repo(repo.path()).await;
    let secret = token(&ns, "submit").await;
    let mut server = Server::start(&ns, 1);
    let client = http();
    let created = client
        .post(format!("{}/api/tasks", server.url))
        .bearer_auth(&secret)
        .json(&json!({"repo": path_str(repo.path()), "prompt": "Fix the add function"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let task = ns
        .wait_for(&id, |task| {
            ["succeeded", "failed", "cancelled"].contains(&task["state"].as_str().unwrap())
        })
        .await;
    assert_eq!(task["state"], "succeeded", "{task}");

    // The worker wrote the diff to the bucket, serve reads it from there: no blobs directory.
    let stored =
        std::fs::read_to_string(s3.object_file(&format!("nightshift/prod/tasks/{id}/diff.patch")))
            .unwrap();
    assert!(stored.contains("+add() { echo $(($1 + $2)); }"), "{stored}");
    let served = client
        .get(format!("{}/api/tasks/{id}/diff", server.url))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.text().await.unwrap(), stored);
    let out = ns.run(&["diff", &id]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), stored);
    assert!(!ns.home.path().join("blobs").exists());
    assert!(server.stop().success());

    // A wrong secret key stops a worker (and serve) at start, saying why.
    let wrong = "not-the-secret-key";
    for args in [&["worker"][..], &["serve", "--listen", "127.0.0.1:0"][..]] {
        let mut command = ns.command(args);
        command.env("AWS_SECRET_ACCESS_KEY", wrong);
        let out = tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        let text = stderr(&out);
        assert!(text.contains("refused the credentials"), "{args:?}: {text}");
        assert!(text.contains("s3://nightshift/nightshift/prod"), "{text}");
        assert!(!text.contains(wrong), "{text}");
    }

    // An unusable URL is refused before anything is opened, with the forms that work.
    let mut command = ns.command(&["ls"]);
    command.env("NIGHTSHIFT_BLOB_URL", "gs://bucket");
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("s3://BUCKET/PREFIX"),
        "{}",
        stderr(&out)
    );
}
