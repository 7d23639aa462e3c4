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
