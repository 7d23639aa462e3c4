//! Remote mode end to end: the same commands with NIGHTSHIFT_SERVER and NIGHTSHIFT_TOKEN set go
//! through the HTTP API of a real `nightshift serve`, print what local mode prints for the same
//! task, and never touch the client's own NIGHTSHIFT_HOME.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::server::Server;
use common::*;
use serde_json::{Value, json};

/// The CLI in local mode on the server's home (whatever the developer's environment says).
fn local(ns: &Nightshift, args: &[&str]) -> Command {
    let mut command = ns.command(args);
    command
        .env_remove("NIGHTSHIFT_SERVER")
        .env_remove("NIGHTSHIFT_TOKEN");
    command
}

/// The CLI in remote mode, with a home directory of its own that must stay empty.
struct Client {
    home: tempfile::TempDir,
    url: String,
    token: Option<String>,
}

impl Client {
    fn new(server: &Server, token: &str) -> Client {
        Client {
            home: tempfile::tempdir().unwrap(),
            url: server.url.clone(),
            token: Some(token.to_string()),
        }
    }

    fn command(&self, ns: &Nightshift, args: &[&str]) -> Command {
        let mut command = local(ns, args);
        command
            .env("NIGHTSHIFT_HOME", self.home.path())
            .env("NIGHTSHIFT_SERVER", &self.url);
        if let Some(token) = &self.token {
            command.env("NIGHTSHIFT_TOKEN", token);
        }
        command
    }

    async fn run(&self, ns: &Nightshift, args: &[&str]) -> Output {
        output(self.command(ns, args)).await
    }

    async fn json(&self, ns: &Nightshift, args: &[&str]) -> Value {
        let out = self.run(ns, args).await;
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    async fn events(&self, ns: &Nightshift, id: &str) -> Vec<Value> {
        let out = self.run(ns, &["logs", id, "--json"]).await;
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Polls the log until an event of type `kind` is in it.
    async fn wait_for_event(&self, ns: &Nightshift, id: &str, kind: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.events(ns, id).await.iter().any(|e| e["type"] == kind) {
            assert!(Instant::now() < deadline, "no {kind} event in {id}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn assert_home_untouched(&self) {
        let entries: Vec<_> = std::fs::read_dir(self.home.path()).unwrap().collect();
        assert!(
            entries.is_empty(),
            "remote mode wrote to NIGHTSHIFT_HOME: {entries:?}"
        );
    }
}

async fn output(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

async fn token(ns: &Nightshift, scope: &str) -> String {
    let out = output(local(
        ns,
        &["token", "create", "--scope", scope, "--name", "test"],
    ))
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_string()
}

async fn local_out(ns: &Nightshift, args: &[&str]) -> Output {
    let out = output(local(ns, args)).await;
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn remote_mode_prints_what_local_mode_prints() {
    let repo = buggy_repo();
    let (ns, model) = Nightshift::with_script(fixing_script()).await;
    ns.serve_repo(repo.path()).await;
    let secret = token(&ns, "submit").await;
    let server = Server::start(&ns, 2);
    let client = Client::new(&server, &secret);

    // No --model: the server's default applies.
    let out = client
        .run(
            &ns,
            &[
                "run",
                "--repo",
                path_str(repo.path()),
                "--wait",
                "--json",
                "Fix the add function",
            ],
        )
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(task["spec"]["model"], "openai:m");
    let branch = task["branch"].as_str().unwrap();
    assert!(branch.starts_with("nightshift/"), "{branch}");
    assert!(task["cost"]["machine_seconds"].is_number(), "{task}");
    assert_eq!(model.served(), 5);
    assert!(git(repo.path(), &["show", branch, "--", "calc.sh"]).contains("$(($1 + $2))"));
    let id = task["id"].as_str().unwrap();
    let short = task["short_id"].as_str().unwrap();

    // The same task, read both ways.
    for args in [
        vec!["ls", "--json"],
        vec!["ls"],
        vec!["show", short, "--json"],
        vec!["show", short],
        vec!["logs", short, "--json"],
        vec!["logs", short],
        vec!["logs", short, "--follow"],
        vec!["diff", short],
    ] {
        let remote = client.run(&ns, &args).await;
        assert!(remote.status.success(), "{args:?}: {}", stderr(&remote));
        let here = local_out(&ns, &args).await;
        assert_eq!(stdout(&remote), stdout(&here), "{args:?}");
    }
    let shown = client.json(&ns, &["show", id, "--json"]).await;
    assert_eq!(
        shown, task,
        "run --wait --json prints the final task, as show does"
    );
    let diff = client.run(&ns, &["diff", short]).await;
    assert!(stdout(&diff).contains("+add() { echo $(($1 + $2)); }"));

    let missing = client.run(&ns, &["show", "zzzzzzzz"]).await;
    assert_eq!(missing.status.code(), Some(2), "{}", stderr(&missing));
    assert!(stderr(&missing).contains("no task matches `zzzzzzzz`"));
    client.assert_home_untouched();
}

#[tokio::test(flavor = "multi_thread")]
async fn say_reaches_a_running_task_and_follow_streams_it_to_the_end() {
    let repo = buggy_repo();
    let (ns, model) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": "sleep 4"}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "done, changelog too"}}]}}
    ])))
    .await;
    ns.serve_repo(repo.path()).await;
    let secret = token(&ns, "submit").await;
    let server = Server::start(&ns, 2);
    let client = Client::new(&server, &secret);

    let task = client
        .json(
            &ns,
            &[
                "run",
                "--repo",
                path_str(repo.path()),
                "--json",
                "slow work",
            ],
        )
        .await;
    assert_eq!(task["state"], "queued");
    let id = task["short_id"].as_str().unwrap().to_string();
    client.wait_for_event(&ns, &id, "tool_started").await;

    let said = client
        .run(&ns, &["say", &id, "--json", "Also", "update the changelog"])
        .await;
    assert!(said.status.success(), "{}", stderr(&said));
    let record: Value = serde_json::from_slice(&said.stdout).unwrap();
    assert_eq!(record["type"], "message_received");
    assert_eq!(record["text"], "Also update the changelog");
    assert_eq!(record["from"], "test", "the server names the token");

    // Follows the live task over SSE until its end.
    let followed = client.run(&ns, &["logs", &id, "--follow"]).await;
    assert!(followed.status.success(), "{}", stderr(&followed));
    let text = stdout(&followed);
    assert!(text.lines().any(|l| l.contains(" message ")), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains(" ended     succeeded after")),
        "{text}"
    );
    assert!(text.contains("Also update the changelog"), "{text}");

    let requests = model.requests();
    assert_eq!(requests.len(), 2);
    assert!(!requests[0].to_string().contains("update the changelog"));
    assert!(
        requests[1]
            .to_string()
            .contains("Also update the changelog"),
        "the next model request carries the message: {}",
        requests[1]
    );
    client.assert_home_untouched();
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_a_slow_task_and_run_wait_exits_3() {
    let repo = buggy_repo();
    let (ns, _model) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": "sleep 60"}}]}}
    ])))
    .await;
    ns.serve_repo(repo.path()).await;
    let secret = token(&ns, "submit").await;
    let server = Server::start(&ns, 2);
    let client = Client::new(&server, &secret);

    let waiting = client
        .command(
            &ns,
            &["run", "--repo", path_str(repo.path()), "--wait", "slow"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        let listed = client.json(&ns, &["ls", "--json"]).await;
        if let Some(task) = listed.as_array().unwrap().first() {
            break task["short_id"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "the task never showed up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    client.wait_for_event(&ns, &id, "tool_started").await;

    let cancelled = client.run(&ns, &["cancel", &id]).await;
    assert!(cancelled.status.success(), "{}", stderr(&cancelled));
    assert!(
        stdout(&cancelled).contains("cancellation requested"),
        "{}",
        stdout(&cancelled)
    );

    let waited = tokio::task::spawn_blocking(move || waiting.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(waited.status.code(), Some(3), "{}", stderr(&waited));
    assert!(
        stdout(&waited).contains("cancelled after"),
        "{}",
        stdout(&waited)
    );
    let task = client.json(&ns, &["show", &id, "--json"]).await;
    assert_eq!(task["state"], "cancelled");

    // Once ended, cancelling again changes nothing; a message to a task cancelled before it
    // ran is refused the same way as locally (not the case here: it ran, so it is accepted).
    let again = client.run(&ns, &["cancel", &id]).await;
    assert!(
        stdout(&again).contains("already cancelled"),
        "{}",
        stdout(&again)
    );
    client.assert_home_untouched();
}

#[tokio::test(flavor = "multi_thread")]
async fn remote_errors_say_what_to_set() {
    let repo = buggy_repo();
    let (ns, model) = Nightshift::with_script(fixing_script()).await;
    ns.serve_repo(repo.path()).await;
    let reader = token(&ns, "read").await;
    let server = Server::start(&ns, 0);

    let bad = Client::new(&server, "ns_0000");
    let out = bad.run(&ns, &["ls"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused the token in NIGHTSHIFT_TOKEN"),
        "{}",
        stderr(&out)
    );

    let anonymous = Client {
        token: None,
        ..Client::new(&server, "")
    };
    let out = anonymous.run(&ns, &["ls"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("NIGHTSHIFT_TOKEN is not set"),
        "{}",
        stderr(&out)
    );

    let read_only = Client::new(&server, &reader);
    let out = read_only
        .run(&ns, &["run", "--repo", path_str(repo.path()), "fix it"])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("may not do this"), "{}", stderr(&out));
    assert!(stderr(&out).contains("scope submit"), "{}", stderr(&out));

    // A repository the server does not serve, by path or by name: the error says how one is
    // registered.
    let submitter = Client::new(&server, &token(&ns, "submit").await);
    let elsewhere = buggy_repo();
    for repo in [path_str(elsewhere.path()), "no-such-name"] {
        let out = submitter.run(&ns, &["run", "--repo", repo, "fix it"]).await;
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("does not serve") && stderr(&out).contains("nightshift repo add"),
            "{}",
            stderr(&out)
        );
    }

    // A registered repository named by its name.
    let named = buggy_repo();
    let out = ns
        .run(&[
            "repo",
            "add",
            path_str(named.path()),
            "--name",
            "team/named",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = submitter
        .run(&ns, &["run", "--repo", "team/named", "--json", "fix it"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let task: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["spec"]["repo"], path_str(named.path()));

    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let gone = Client {
        url: format!("http://127.0.0.1:{port}"),
        ..Client::new(&server, &reader)
    };
    let out = gone.run(&ns, &["show", "abcd1234"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot reach the nightshift server at http://127.0.0.1:"));
    assert!(
        stderr(&out).contains("NIGHTSHIFT_SERVER"),
        "{}",
        stderr(&out)
    );

    let out = gone.run(&ns, &["ls"]).await;
    assert_eq!(out.status.code(), Some(1));
    let nonsense = Client {
        url: "not a url".into(),
        ..Client::new(&server, &reader)
    };
    let out = nonsense.run(&ns, &["ls"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("NIGHTSHIFT_SERVER=not a url"),
        "{}",
        stderr(&out)
    );
    assert_eq!(model.served(), 0);
    for client in [bad, anonymous, read_only, submitter, gone, nonsense] {
        client.assert_home_untouched();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn say_works_in_local_mode_too() {
    let repo = buggy_repo();
    let (ns, model) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": "sleep 4"}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "done"}}]}}
    ])))
    .await;
    ns.serve_repo(repo.path()).await;
    let task: Value = serde_json::from_slice(
        &local_out(
            &ns,
            &[
                "run",
                "--repo",
                path_str(repo.path()),
                "--model",
                "openai:m",
                "--json",
                "slow work",
            ],
        )
        .await
        .stdout,
    )
    .unwrap();
    let id = task["short_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ns
        .events(&id)
        .await
        .iter()
        .any(|e| e["type"] == "tool_started")
    {
        assert!(Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let said = local_out(&ns, &["say", &id, "Use", "saturating", "math"]).await;
    assert!(
        stdout(&said).contains("reads it before its next turn"),
        "{}",
        stdout(&said)
    );
    let task = ns.wait_for(&id, |t| t["state"] == "succeeded").await;
    assert_eq!(task["summary"], "done");
    let requests = model.requests();
    assert!(
        requests[1].to_string().contains("Use saturating math"),
        "{}",
        requests[1]
    );
    let empty = output(local(&ns, &["say", &id, " "])).await;
    assert_eq!(empty.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn follow_resumes_where_it_was_when_the_server_restarts() {
    let repo = buggy_repo();
    let (ns, _model) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": "sleep 4"}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "done"}}]}}
    ])))
    .await;
    ns.serve_repo(repo.path()).await;
    let secret = token(&ns, "submit").await;
    // One server runs the task; the client follows it through another, API-only one on the
    // same store, which restarts in the middle.
    let _runs = Server::start(&ns, 2);
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = free.local_addr().unwrap().to_string();
    drop(free);
    let mut api = Server::start_on(&ns, 0, &listen);
    let client = Client::new(&api, &secret);

    let task = client
        .json(
            &ns,
            &[
                "run",
                "--repo",
                path_str(repo.path()),
                "--json",
                "slow work",
            ],
        )
        .await;
    let id = task["short_id"].as_str().unwrap().to_string();
    let follower = client
        .command(&ns, &["logs", &id, "--follow", "--json", "--verbose"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    client.wait_for_event(&ns, &id, "tool_started").await;
    let _ = api.child.kill();
    let _ = api.child.wait();
    tokio::time::sleep(Duration::from_millis(700)).await;
    api = Server::start_on(&ns, 0, &listen);

    let followed = tokio::task::spawn_blocking(move || follower.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(followed.status.success(), "{}", stderr(&followed));
    assert!(
        stderr(&followed).contains("event stream interrupted"),
        "{}",
        stderr(&followed)
    );
    let events: Vec<Value> = stdout(&followed)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    assert_eq!(events.last().unwrap()["type"], "ended");
    let here = local_out(&ns, &["logs", &id, "--json"]).await;
    assert_eq!(stdout(&followed), stdout(&here));
    drop(api);
    client.assert_home_untouched();
}
