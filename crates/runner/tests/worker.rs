//! The runner against a real SQLite store, real git repositories and a scripted model over
//! loopback HTTP: the worker pool, shutdown, lapsed leases, steering messages and budgets; and a
//! task whose blobs go to a real S3-compatible server on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nightshift_model::ProviderConfig;
use nightshift_protocol::{Event, EventRecord, TaskId, TaskState};
use nightshift_runner::{Runner, RunnerConfig, TaskRequest, WorkerConfig};
use nightshift_sandbox::Unisolated;
use nightshift_scripted_model::{Script, ScriptedModel};
use nightshift_store::{Blobs, SqliteStore, Store};
use nightshift_test_s3::LoopbackS3;
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

struct World {
    _home: tempfile::TempDir,
    repo: tempfile::TempDir,
    store: Arc<dyn Store>,
    server: ScriptedModel,
    runner: Arc<Runner>,
}

async fn world(steps: serde_json::Value, tweak: impl FnOnce(&mut RunnerConfig)) -> World {
    world_with(steps, tweak, &[], None).await
}

/// A world whose repository also holds `files`, and whose store keeps its blobs in `blobs`
/// (else in the home directory).
async fn world_with(
    steps: serde_json::Value,
    tweak: impl FnOnce(&mut RunnerConfig),
    files: &[(&str, &str)],
    blobs: Option<Blobs>,
) -> World {
    let home = tempfile::tempdir().unwrap();
    let repo = tempfile::tempdir().unwrap();
    std::fs::write(repo.path().join("README"), "hello\n").unwrap();
    for (path, content) in files {
        std::fs::write(repo.path().join(path), content).unwrap();
    }
    git(repo.path(), &["init", "-q", "-b", "main"]);
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "init"]);
    let store: Arc<dyn Store> = Arc::new(match blobs {
        None => SqliteStore::open(home.path()).await.unwrap(),
        Some(blobs) => SqliteStore::open_with_blobs(home.path(), blobs)
            .await
            .unwrap(),
    });
    let server =
        ScriptedModel::start(Script::from_json(&json!({ "steps": steps }).to_string()).unwrap())
            .await
            .unwrap();
    let providers = ProviderConfig {
        openai_base_url: Some(server.base_url()),
        ..ProviderConfig::default()
    };
    let mut config = RunnerConfig::new(home.path().join("work"), "worker:test:1".into());
    config.cancel_poll = Duration::from_millis(50);
    tweak(&mut config);
    let runner = Arc::new(Runner::new(
        store.clone(),
        Arc::new(Unisolated),
        providers,
        config,
    ));
    World {
        _home: home,
        repo,
        store,
        server,
        runner,
    }
}

impl World {
    async fn submit(&self, prompt: &str, tweak: impl FnOnce(&mut TaskRequest)) -> TaskId {
        let mut request = TaskRequest::new(self.repo.path(), prompt, "openai:m");
        tweak(&mut request);
        self.runner.submit(request).await.unwrap().id
    }

    async fn events(&self, id: TaskId) -> Vec<EventRecord> {
        self.store.events(id, 0, 10_000).await.unwrap()
    }

    async fn wait_until(
        &self,
        id: TaskId,
        done: impl Fn(&[EventRecord]) -> bool,
    ) -> Vec<EventRecord> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let events = self.events(id).await;
            if done(&events) {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting; events: {events:#?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

fn ended(events: &[EventRecord]) -> bool {
    events
        .iter()
        .any(|e| matches!(e.event, Event::Ended { .. }))
}

fn write_and_finish(repeat: u32) -> serde_json::Value {
    json!([{"reply": {"tool_calls": [
        {"name": "write_file", "arguments": {"path": "done.txt", "content": "done\n"}},
        {"name": "finish", "arguments": {"summary": "Wrote done.txt"}}
    ], "repeat": repeat}}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_runs_many_tasks_at_once_to_the_end() {
    let w = world(write_and_finish(24), |_| {}).await;
    let mut ids = Vec::new();
    for n in 0..24 {
        ids.push(w.submit(&format!("task number {n}"), |_| {}).await);
    }
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(w.runner.clone().run_worker(
        WorkerConfig {
            concurrency: 6,
            ..WorkerConfig::default()
        },
        shutdown.clone(),
    ));
    for id in &ids {
        let events = w.wait_until(*id, ended).await;
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=events.len() as u64).collect::<Vec<_>>(),
            "gap in {id}"
        );
        let task = w.store.get_task(*id).await.unwrap().unwrap();
        assert_eq!(task.state, TaskState::Succeeded, "{id}: {events:#?}");
        let branch = task.branch.unwrap();
        assert_eq!(
            git(w.repo.path(), &["show", &format!("{branch}:done.txt")]),
            "done"
        );
    }
    assert_eq!(w.server.served(), 24);
    shutdown.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_hands_running_tasks_back_to_the_queue() {
    let w = world(json!([{"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": "sleep 30"}}]}}]), |_| {}).await;
    let id = w.submit("slow", |_| {}).await;
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(w.runner.clone().run_worker(
        WorkerConfig {
            concurrency: 1,
            grace: Duration::from_millis(300),
            ..WorkerConfig::default()
        },
        shutdown.clone(),
    ));
    w.wait_until(id, |events| {
        events
            .iter()
            .any(|e| matches!(&e.event, Event::ToolStarted { tool, .. } if tool == "shell"))
    })
    .await;
    let started = Instant::now();
    shutdown.cancel();
    worker.await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let task = w.store.get_task(id).await.unwrap().unwrap();
    assert_eq!(
        task.state,
        TaskState::Queued,
        "the task goes back to the queue"
    );
    assert_eq!(task.worker, None);
    let events = w.events(id).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e.event, Event::Released { .. })),
        "{events:#?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.event, Event::Ended { .. }))
    );
    assert_eq!(
        git(
            w.repo.path(),
            &[
                "for-each-ref",
                "--format=%(refname)",
                "refs/heads/nightshift"
            ]
        ),
        ""
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_whose_worker_stopped_renewing_is_failed_with_the_reason() {
    let w = world(json!([]), |_| {}).await;
    let id = w.submit("abandoned", |_| {}).await;
    // Another worker claims it with a short lease and dies.
    assert!(
        w.store
            .claim_task(id, "worker:elsewhere:42", Duration::from_millis(100))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    let settled = w.runner.settle_expired().await.unwrap();
    assert_eq!(settled, vec![id]);
    let task = w.store.get_task(id).await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Failed);
    assert!(task.error.unwrap().contains("worker:elsewhere:42"));
    let events = w.events(id).await;
    assert!(matches!(
        events.last().unwrap().event,
        Event::Ended {
            state: TaskState::Failed,
            ..
        }
    ));
    assert!(
        w.runner.settle_expired().await.unwrap().is_empty(),
        "settled once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_steers_a_running_task() {
    let w = world(
        json!([
            {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": "sleep 1"}}]}},
            {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "ok"}}]}}
        ]),
        |_| {},
    )
    .await;
    let id = w.submit("steerable", |_| {}).await;
    let runner = w.runner.clone();
    let run = tokio::spawn(async move { runner.run_task(id, CancellationToken::new()).await });
    w.wait_until(id, |events| {
        events
            .iter()
            .any(|e| matches!(e.event, Event::ToolStarted { .. }))
    })
    .await;
    w.store
        .append_event(
            id,
            &Event::MessageReceived {
                text: "Please also update the README.".into(),
                from: None,
            },
        )
        .await
        .unwrap();
    let task = run.await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Succeeded);
    let requests = w.server.requests();
    let last = requests.last().unwrap()["messages"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        last.iter().any(|m| m["role"] == "user"
            && m["content"]
                .as_str()
                .unwrap()
                .contains("Please also update the README.")),
        "{last:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_budget_gives_one_wrap_up_turn_then_stops_with_the_work_saved() {
    let w = world(
        json!([
            {"reply": {"tool_calls": [{"name": "write_file", "arguments": {"path": "a.txt", "content": "a\n"}}],
                       "usage": {"prompt_tokens": 900, "completion_tokens": 200}}},
            {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "Half done: wrote a.txt; b.txt remains"}}],
                       "usage": {"prompt_tokens": 1000, "completion_tokens": 20}}}
        ]),
        |_| {},
    )
    .await;
    let id = w.submit("two files", |r| r.max_tokens = Some(1000)).await;
    let task = w
        .runner
        .run_task(id, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(task.state, TaskState::Failed);
    assert_eq!(task.turns, 2);
    assert_eq!(
        task.summary.as_deref(),
        Some("Half done: wrote a.txt; b.txt remains")
    );
    let requests = w.server.requests();
    let notice = requests[1]["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert!(
        notice["content"].as_str().unwrap().contains("last turn"),
        "{notice}"
    );
    let branch = task.branch.unwrap();
    assert_eq!(
        git(w.repo.path(), &["show", &format!("{branch}:a.txt")]),
        "a"
    );
    assert!(git(w.repo.path(), &["log", "-1", "--format=%B", &branch]).contains("incomplete"));
    let events = w.events(id).await;
    assert!(events.iter().any(|e| matches!(
        &e.event,
        Event::Error {
            kind: nightshift_protocol::ErrorKind::Budget,
            ..
        }
    )));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_looping_agent_is_stopped_with_its_work_on_the_branch() {
    let w = world(
        json!([
            {"reply": {"tool_calls": [{"name": "write_file", "arguments": {"path": "progress.txt", "content": "1\n"}}]}},
            {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": "echo same"}}], "repeat": 10}}
        ]),
        |_| {},
    )
    .await;
    let id = w.submit("loop", |_| {}).await;
    let task = w
        .runner
        .run_task(id, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(task.state, TaskState::Failed);
    assert!(
        task.error.as_deref().unwrap().contains("loop"),
        "{:?}",
        task.error
    );
    // Three identical calls trip the limit, and one more turn wraps up.
    assert_eq!(task.turns, 5);
    let branch = task.branch.unwrap();
    assert_eq!(
        git(w.repo.path(), &["show", &format!("{branch}:progress.txt")]),
        "1"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_context_length_error_is_answered_by_compaction_then_a_retry() {
    let overflow = json!({"error": {"code": "context_length_exceeded", "message": "This model's maximum context length is 8192 tokens."}});
    let w = world(
        json!([
            {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": "head -c 6000 /dev/zero | tr '\\0' x"}}]}},
            {"reply": {"tool_calls": [{"name": "write_file", "arguments": {"path": "a.txt", "content": "a\n"}}]}},
            {"error": {"status": 400, "body": overflow.to_string()}},
            {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "done"}}]}}
        ]),
        |_| {},
    )
    .await;
    let id = w.submit("big outputs", |_| {}).await;
    let task = w
        .runner
        .run_task(id, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(task.state, TaskState::Succeeded, "{:?}", task.error);
    let requests = w.server.requests();
    assert_eq!(requests.len(), 4);
    let retried = requests[3]["messages"].to_string();
    assert!(
        retried.contains("output removed to save context"),
        "{retried}"
    );
    assert!(
        !retried.contains("xxxxxxxxxx"),
        "the big output was sent again"
    );
    let events = w.events(id).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e.event, Event::ContextCompacted { masked: 1, .. })),
        "{events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_hands_its_diff_and_check_logs_to_an_s3_bucket() {
    let s3 = LoopbackS3::start().unwrap();
    let blobs = Blobs::from_url(&s3.url("nightshift"), s3.env()).unwrap();
    let w = world_with(
        write_and_finish(1),
        |_| {},
        &[(".nightshift.toml", "[checks]\nproof = \"cat done.txt\"\n")],
        Some(blobs.clone()),
    )
    .await;
    let id = w.submit("write done.txt", |_| {}).await;
    let task = w
        .runner
        .run_task(id, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(task.state, TaskState::Succeeded, "{:?}", task.error);

    assert_eq!(
        blobs.list(id).await.unwrap(),
        [
            "check-proof.log".to_string(),
            nightshift_runner::DIFF_BLOB.to_string()
        ]
    );
    let on_server = |name: &str| {
        std::fs::read_to_string(s3.object_file(&format!("nightshift/tasks/{id}/{name}"))).unwrap()
    };
    let diff = on_server(nightshift_runner::DIFF_BLOB);
    assert!(diff.contains("+++ b/done.txt"), "{diff}");
    assert_eq!(
        w.store
            .get_blob(id, nightshift_runner::DIFF_BLOB)
            .await
            .unwrap()
            .unwrap(),
        diff.as_bytes()
    );
    assert!(on_server("check-proof.log").contains("done"));
    let events = w.events(id).await;
    assert!(
        events.iter().any(|e| matches!(
            &e.event,
            Event::CommandFinished { artifact: Some(artifact), ok: true, .. }
                if artifact == "check-proof.log"
        )),
        "{events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_store_that_is_down_costs_the_diff_copy_not_the_work() {
    // Nothing listens there: every put fails.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let env = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ];
    let blobs = Blobs::from_url("s3://nowhere", env).unwrap();
    let w = world_with(
        write_and_finish(1),
        |_| {},
        &[(".nightshift.toml", "[checks]\nproof = \"cat done.txt\"\n")],
        Some(blobs),
    )
    .await;
    let id = w.submit("write done.txt", |_| {}).await;
    let task = w
        .runner
        .run_task(id, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(task.state, TaskState::Succeeded, "{:?}", task.error);
    let branch = task.branch.clone().unwrap();
    assert_eq!(
        git(w.repo.path(), &["show", &format!("{branch}:done.txt")]).trim(),
        "done"
    );
    let warnings: Vec<String> = w
        .events(id)
        .await
        .into_iter()
        .filter_map(|e| match e.event {
            Event::Warning { message } => Some(message),
            _ => None,
        })
        .collect();
    assert!(
        warnings
            .iter()
            .any(|m| m.starts_with("the diff could not be stored")
                && m.contains(&format!("the branch {branch} has the work"))),
        "{warnings:#?}"
    );
    assert!(
        warnings
            .iter()
            .any(|m| m.starts_with("check-proof.log could not be stored")),
        "{warnings:#?}"
    );
}
