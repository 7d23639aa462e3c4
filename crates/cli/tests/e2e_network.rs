//! The network a task gets: none unless the repository's configuration allows hosts, reached
//! only through the egress proxy, every request logged as an `egress` event.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;

use common::*;
use serde_json::{Value, json};

/// A tiny HTTP server on loopback answering every request with `hello from the host`.
fn host_service() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten().take(16) {
            let mut stream = stream;
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
            let body = "hello from the host";
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn allowlisted_hosts_are_reached_through_the_proxy_and_everything_is_logged() {
    let port = host_service();
    let repo = buggy_repo();
    std::fs::write(
        repo.path().join(".nightshift.toml"),
        format!("[network]\nagent = [\"127.0.0.1:{port}\"]\n"),
    )
    .unwrap();
    git(repo.path(), &["add", "."]);
    git(
        repo.path(),
        &["commit", "-q", "-m", "allow the host service"],
    );
    let (ns, _model) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": // NO_PROXY lists loopback inside the sandbox (its own); `--noproxy ''` sends this one
        // through the proxy to the host's service.
        format!("curl -s --noproxy '' --max-time 10 http://127.0.0.1:{port}/hello; echo; curl -s --max-time 10 -o /dev/null -w 'denied: %{{http_code}}\\n' http://example.org/")}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "checked the network"}}]}}
    ])))
    .await;
    ns.allow_loopback(&[port]);
    let (out, task) = ns.wait_task(repo.path(), "net").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let events = ns.events(task["id"].as_str().unwrap()).await;
    let output = shell_output(&events);
    assert!(output.contains("hello from the host"), "{output}");
    assert!(output.contains("denied: 403"), "{output}");
    let egress: Vec<&Value> = events.iter().filter(|e| e["type"] == "egress").collect();
    assert!(
        egress.iter().any(|e| e["host"] == "127.0.0.1"
            && e["allowed"] == true
            && e["bytes_down"].as_u64().unwrap() > 0),
        "{egress:#?}"
    );
    assert!(
        egress
            .iter()
            .any(|e| e["host"] == "example.org" && e["allowed"] == false),
        "{egress:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_allowlist_a_task_has_no_network() {
    let port = host_service();
    let repo = buggy_repo();
    let (ns, _model) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": format!("curl -s --max-time 5 http://127.0.0.1:{port}/hello || echo unreachable")}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "no network"}}]}}
    ])))
    .await;
    let (out, task) = ns.wait_task(repo.path(), "net").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let events = ns.events(task["id"].as_str().unwrap()).await;
    let shell = events
        .iter()
        .find(|e| e["type"] == "tool_finished" && e["tool"] == "shell")
        .unwrap();
    let output = shell["output"].as_str().unwrap();
    assert!(
        output.contains("unreachable") && !output.contains("hello from the host"),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repository_cannot_open_the_hosts_own_services_by_naming_them() {
    // The repository's allowlist names the host's loopback service; the installation's
    // config.toml does not allow it: the proxy refuses, saying why.
    let port = host_service();
    let repo = buggy_repo_with_config(&format!(
        "[network]\nagent = [\"127.0.0.1:{port}\", \"localhost:{port}\"]\n"
    ));
    let (ns, _model) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command":
            format!("curl -s --noproxy '' --max-time 10 http://127.0.0.1:{port}/; echo; curl -s --noproxy '' --max-time 10 http://localhost:{port}/")}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "tried"}}]}}
    ])))
    .await;
    let (out, task) = ns.wait_task(repo.path(), "net").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let events = ns.events(task["id"].as_str().unwrap()).await;
    let output = shell_output(&events);
    assert!(!output.contains("hello from the host"), "{output}");
    assert!(output.contains("allow_private"), "{output}");
    let egress: Vec<&Value> = events.iter().filter(|e| e["type"] == "egress").collect();
    assert_eq!(egress.len(), 2, "{egress:#?}");
    assert!(egress.iter().all(|e| e["allowed"] == false), "{egress:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_installation_caps_the_limits_a_repository_asks_for() {
    let repo = buggy_repo_with_config("[limits]\nmemory = \"512G\"\npids = 100000\n");
    let (ns, _model) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "nothing"}}]}}
    ])))
    .await;
    std::fs::write(
        ns.home.path().join("config.toml"),
        "[limits]\nmemory = \"2G\"\npids = 512\n",
    )
    .unwrap();
    let (_out, task) = ns.wait_task(repo.path(), "limits").await;
    let events = ns.events(task["id"].as_str().unwrap()).await;
    let warnings: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "warning")
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("limits.memory = 512") && w.contains("gets 2")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("limits.pids = 100000") && w.contains("gets 512")),
        "{warnings:?}"
    );
    // A ceiling that does not parse stops the command, naming the file and the key.
    std::fs::write(
        ns.home.path().join("config.toml"),
        "[limits]\nmemory = \"lots\"\n",
    )
    .unwrap();
    let out = ns
        .run(&[
            "run",
            "--repo",
            path_str(repo.path()),
            "--model",
            "openai:m",
            "limits",
        ])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("[limits] memory"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_looping_on_a_blocked_host_does_not_flood_the_log() {
    let repo = buggy_repo_with_config("[network]\nagent = [\"allowed.example\"]\n");
    let loop_ = "for i in $(seq 1 150); do curl -s --max-time 5 -o /dev/null -w '%{http_code} ' http://example.org/$i; done; echo";
    let (ns, _model) = Nightshift::with_script(script(json!([
        {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": loop_}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "tried hard"}}]}}
    ])))
    .await;
    let (out, task) = ns.wait_task(repo.path(), "net").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let events = ns.events(task["id"].as_str().unwrap()).await;
    assert_eq!(shell_output(&events).matches("403").count(), 150);
    let refused = events
        .iter()
        .filter(|e| e["type"] == "egress" && e["allowed"] == false)
        .count();
    assert!(
        (20..=30).contains(&refused),
        "{refused} refusals logged one by one"
    );
    let summaries: Vec<(usize, u64)> = events
        .iter()
        .enumerate()
        .filter_map(|(at, e)| {
            let message = e["message"].as_str()?;
            let (count, rest) = message.split_once(' ')?;
            rest.starts_with("more egress request(s) were refused")
                .then(|| (at, count.parse().unwrap()))
        })
        .collect();
    let counted: u64 = summaries.iter().map(|(_, count)| count).sum();
    assert_eq!(refused as u64 + counted, 150, "every refusal is counted");
    let message = events[summaries[0].0]["message"].as_str().unwrap();
    assert!(message.contains("example.org:80 ×"), "{message}");
    let ended = events.iter().position(|e| e["type"] == "ended").unwrap();
    assert!(
        summaries.iter().all(|(at, _)| *at < ended),
        "the summary comes before the end"
    );
}
