//! Pieces of the MCP end-to-end tests: the Python with the `mcp` SDK that the servers need,
//! the notes server, and what to look for in a task's events and the model's requests.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The virtual environment's directory and its python, when configured.
pub fn python() -> Option<(PathBuf, PathBuf)> {
    let Ok(python) = std::env::var("NIGHTSHIFT_TEST_MCP_PYTHON") else {
        eprintln!("skipped: NIGHTSHIFT_TEST_MCP_PYTHON is not set");
        return None;
    };
    let python = PathBuf::from(python);
    let venv = python.parent()?.parent()?.canonicalize().ok()?;
    Some((venv, python))
}

pub fn notes_server() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/notes_server.py"))
        .unwrap()
}

pub fn warnings(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .filter(|e| e["type"] == "warning")
        .filter_map(|e| e["message"].as_str())
        .collect()
}

pub fn call(name: &str, arguments: Value) -> Value {
    json!({"reply": {"tool_calls": [{"name": name, "arguments": arguments}]}})
}

pub fn tool_names(request: &Value) -> Vec<String> {
    request["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tool| tool["function"]["name"].as_str().unwrap().to_string())
        .collect()
}

pub fn finished<'a>(events: &'a [Value], tool: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"] == "tool_finished" && e["tool"] == tool)
        .collect()
}
