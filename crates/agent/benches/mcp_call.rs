//! What an MCP server's tools cost the agent: starting a stdio server (spawn, `initialize`,
//! `tools/list`) and one tool call's round trip through nightshift's client (arguments parsed,
//! JSON-RPC over the process's pipes, the result rendered). The server is
//! `tests/mcp/sprawling_server.py small`, which answers by hand with Python's standard library,
//! so most of the start is the interpreter's own; it runs on the unisolated sandbox.
//!
//! Run: `cargo bench -p nightshift-agent --bench mcp_call` (CALLS=N, STARTS=N to change the
//! counts).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use nightshift_agent::mcp::{McpServerSpec, McpTools};
use nightshift_sandbox::{Sandbox, SessionSpec, Unisolated};
use tokio_util::sync::CancellationToken;

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    println!(
        "| {what} | {} | {} | {} | {} | {} | {} |",
        samples.len(),
        ms(at(0.5)),
        ms(at(0.1)),
        ms(at(0.9)),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
    );
}

#[tokio::main]
async fn main() {
    let workspace = tempfile::tempdir().unwrap();
    let server = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/sprawling_server.py");
    std::fs::copy(server, workspace.path().join("server.py")).unwrap();
    let session = Unisolated
        .start(SessionSpec::new(workspace.path()))
        .await
        .unwrap();
    let spec = McpServerSpec::stdio(
        "bench",
        "/usr/bin/python3",
        vec!["server.py".into(), "small".into()],
    );
    let never = CancellationToken::new();
    let same = |text: &str| text.to_string();

    let mut starts = Vec::new();
    for _ in 0..count("STARTS", 20) {
        let started = Instant::now();
        let tools =
            McpTools::start(std::slice::from_ref(&spec), session.as_ref(), &never, &same).await;
        starts.push(started.elapsed());
        assert_eq!(tools.specs().len(), 3, "{:?}", tools.reports());
        tools.stop().await;
    }

    let tools = McpTools::start(std::slice::from_ref(&spec), session.as_ref(), &never, &same).await;
    let mut calls = Vec::new();
    for i in 0..count("CALLS", 500) + 1 {
        let arguments = format!(r#"{{"n": {i}}}"#);
        let started = Instant::now();
        let out = tools
            .call("bench__echo", &arguments, session.as_ref(), &never, None)
            .await;
        let took = started.elapsed();
        assert!(out.ok, "{out:?}");
        if i > 0 {
            calls.push(took);
        }
    }
    tools.stop().await;

    println!("| what | n | median | p10 | p90 | min | max |");
    println!("|---|---|---|---|---|---|---|");
    report("start: spawn, initialize, tools/list", starts);
    report("one tool call, round trip", calls);
}
