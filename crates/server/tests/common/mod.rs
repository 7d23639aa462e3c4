//! A real server on loopback over a real SQLite store in a temp dir, with one token per scope.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use nightshift_model::ProviderConfig;
use nightshift_protocol::{
    Event, EventRecord, Task, TaskId, TaskSpec, TaskState, TokenScope, Usage,
};
use nightshift_runner::{Runner, RunnerConfig};
use nightshift_sandbox::Unisolated;
use nightshift_server::{ServerConfig, ServerState, create_token, serve};
use nightshift_store::{SqliteStore, Store};
use serde_json::Value;

use tokio::sync::oneshot;

pub struct Harness {
    pub base: String,
    pub store: Arc<dyn Store>,
    pub client: reqwest::Client,
    pub read: String,
    pub submit: String,
    pub admin: String,
    pub home: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with_poll(Duration::from_millis(50)).await
    }

    /// A server whose event feeds poll the store every `poll`.
    pub async fn start_with_poll(poll: Duration) -> Harness {
        let providers = ProviderConfig {
            openai_api_key: Some("test-key".into()),
            ..ProviderConfig::default()
        };
        Harness::start_with(poll, providers).await
    }

    /// A server whose runner has `providers` (keys and endpoints).
    pub async fn start_with(poll: Duration, providers: ProviderConfig) -> Harness {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let home = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(home.path()).await.unwrap());
        let runner = Runner::new(
            store.clone(),
            Arc::new(Unisolated),
            providers,
            RunnerConfig::new(home.path().join("work"), "test-worker".into()),
        );
        let mut config = ServerConfig::new("openai:test-model");
        config.event_poll = poll;
        let state = ServerState::new(Arc::new(runner), config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, state, async move {
            let _ = stopped.await;
        }));
        let (_, read) = create_token(store.as_ref(), "reader", TokenScope::Read, &[])
            .await
            .unwrap();
        let (_, submit) = create_token(store.as_ref(), "submitter", TokenScope::Submit, &[])
            .await
            .unwrap();
        let (_, admin) = create_token(store.as_ref(), "admin", TokenScope::Admin, &[])
            .await
            .unwrap();
        Harness {
            base,
            store,
            client: reqwest::Client::new(),
            read,
            submit,
            admin,
            home,
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// A well-formed id that no task has.
    pub fn unknown_id() -> TaskId {
        TaskId::new()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path)).bearer_auth(token)
    }

    pub fn post(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path)).bearer_auth(token)
    }

    /// Stops the server and waits for it, which also proves open streams do not hold it up.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .expect("the server stops")
                .unwrap()
                .unwrap();
        }
    }

    /// Registers the repository at `path` (as `nightshift repo add` does) under a name of its
    /// own, so that the server accepts tasks for it; returns `path`.
    pub async fn serve_repo(&self, path: PathBuf) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        nightshift_runner::register_repo(
            self.store.as_ref(),
            path.to_str().unwrap(),
            Some(&format!("repo{n}")),
            Default::default(),
        )
        .await
        .unwrap();
        path
    }

    /// A queued task stored directly, without a repository (no worker runs in these tests).
    pub async fn queued_task(&self, prompt: &str) -> Task {
        let spec = TaskSpec {
            repo: "/nonexistent/repo".into(),
            base: Some("main".into()),
            prompt: prompt.into(),
            model: "openai:test-model".into(),
            max_turns: 5,
            max_tokens: None,
            max_cost_usd: None,
            max_duration_secs: None,
            follows: None,
            image: None,
            origin: None,
            review: None,
            attempts: Vec::new(),
            attempt_of: None,
            plan: false,
            plan_run: None,
            subtask_of: None,
            merge: None,
        };
        let task = Task::queued(TaskId::new(), spec, jiff::Timestamp::now());
        self.store.create_task(&task).await.unwrap();
        task
    }

    pub async fn append(&self, id: TaskId, event: Event) -> EventRecord {
        self.store.append_event(id, &event).await.unwrap()
    }

    /// Plays the end of a run as a worker would: the terminal row, then the `ended` event.
    pub async fn finish(&self, id: TaskId, state: TaskState) -> EventRecord {
        let mut task = self.store.get_task(id).await.unwrap().unwrap();
        task.state = state;
        task.started_at.get_or_insert(jiff::Timestamp::now());
        task.finished_at = Some(jiff::Timestamp::now());
        self.store.update_task(&task).await.unwrap();
        self.append(
            id,
            Event::Ended {
                state,
                summary: Some("done".into()),
                usage: Usage::default(),
                cost_usd: None,
                cpu_seconds: None,
                turns: 1,
                duration_ms: 5,
                no_changes: false,
            },
        )
        .await
    }
}

pub fn warning(n: u64) -> Event {
    Event::Warning {
        message: format!("w{n}"),
    }
}

/// A git repository with one commit on `main`.
pub fn git_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str]| {
        let status = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(&repo)
            .output()
            .unwrap();
        assert!(status.status.success(), "git {args:?}: {status:?}");
    };
    git(&["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README.md"), "hello\n").unwrap();
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "init"]);
    repo
}

/// One received SSE event.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: u64,
    pub kind: String,
    pub data: Value,
}

/// Opens an event stream.
pub async fn open_stream(h: &Harness, task: &str, last_event_id: Option<u64>) -> reqwest::Response {
    let mut request = h
        .get(&format!("/api/tasks/{task}/events"), &h.read)
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id.to_string());
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    response
}

/// Reads a stream until the server closes it (or `timeout` passes, which fails the test).
pub async fn read_to_end(response: reqwest::Response, timeout: Duration) -> Vec<Received> {
    let mut events = response.bytes_stream().eventsource();
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap_or_else(|_| panic!("the stream did not close; got {received:?}"));
        match next {
            None => return received,
            Some(event) => {
                let event = event.unwrap();
                received.push(Received {
                    id: event.id.parse().unwrap(),
                    kind: event.event,
                    data: serde_json::from_str(&event.data).unwrap(),
                });
            }
        }
    }
}

/// The SSE stream as a channel of events, read in the background.
pub fn spawn_reader(response: reqwest::Response) -> tokio::task::JoinHandle<Vec<Received>> {
    tokio::spawn(read_to_end(response, Duration::from_secs(60)))
}

/// The status and the `error` object of an error response, checking its shape.
pub async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["code"].is_string(), "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    (status, body["error"].clone())
}
