//! The scripted model's wire format, checked with a plain HTTP client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use nightshift_scripted_model::{Script, ScriptedModel, Step};
use serde_json::{Value, json};

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn post(server: &ScriptedModel, path: &str, body: Value) -> reqwest::Response {
    let url = format!("http://{}{path}", server.address());
    http().post(url).json(&body).send().await.unwrap()
}

/// The `data` payloads of a server-sent event stream.
fn data_lines(body: &str) -> Vec<String> {
    assert!(body.ends_with("\n\n"), "{body:?}");
    body.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| event.strip_prefix("data: ").unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn streams_chunks_in_openai_shape() {
    let script = Script::from_json(
        r#"{"chunk_size": 4, "steps": [{"reply": {
            "text": "Hi there",
            "tool_calls": [{"name": "shell", "arguments": {"command": "ls -la"}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 4, "cached_tokens": 2}
        }}]}"#,
    )
    .unwrap();
    let server = ScriptedModel::start(script).await.unwrap();
    let request = json!({
        "model": "m", "messages": [], "stream": true, "stream_options": {"include_usage": true}
    });
    let response = post(&server, "/v1/chat/completions", request.clone()).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let lines = data_lines(&response.text().await.unwrap());
    assert_eq!(lines.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = lines[..lines.len() - 1]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hi there");
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(calls[0]["id"], "call_1");
    assert_eq!(calls[0]["function"]["name"], "shell");
    let arguments: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"command": "ls -la"})
    );
    assert!(
        calls.len() > 4,
        "arguments are split into chunk_size pieces"
    );
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
    assert_eq!(server.requests(), [request]);
    assert_eq!(server.served(), 1);
}

#[tokio::test]
async fn answers_unstreamed_requests_with_one_completion() {
    let script = Script::new([Step::tool_calls([("a", json!({})), ("b", json!([1]))])]);
    let server = ScriptedModel::start(script).await.unwrap();
    let response = post(&server, "/chat/completions", json!({"model": "m"})).await;
    let body: Value = response.json().await.unwrap();
    let message = &body["choices"][0]["message"];
    assert_eq!(message["content"], Value::Null);
    assert_eq!(message["tool_calls"][1]["id"], "call_2");
    assert_eq!(message["tool_calls"][1]["function"]["arguments"], "[1]");
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    assert!(
        body["usage"]["prompt_tokens"].as_u64().unwrap() > 0,
        "usage is estimated"
    );
}

#[tokio::test]
async fn repeats_steps_and_then_says_the_script_is_exhausted() {
    let script =
        Script::from_json(r#"{"steps": [{"reply": {"text": "again", "repeat": 2}}]}"#).unwrap();
    let server = ScriptedModel::start(script).await.unwrap();
    for _ in 0..2 {
        assert_eq!(
            post(&server, "/v1/chat/completions", json!({}))
                .await
                .status(),
            200
        );
    }
    let response = post(&server, "/v1/chat/completions", json!({})).await;
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["message"], "script exhausted after 2 steps");
    assert_eq!(server.served(), 2);
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn serves_scripted_errors_with_their_headers() {
    let script = Script::from_json(
        r#"{"steps": [{"error": {"status": 429, "body": "slow down", "headers": {"Retry-After": "3"}}}]}"#,
    )
    .unwrap();
    let server = ScriptedModel::start(script).await.unwrap();
    let response = post(&server, "/v1/chat/completions", json!({})).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "3");
    assert_eq!(response.text().await.unwrap(), "slow down");
}

#[tokio::test]
async fn records_bodies_that_are_not_json_and_names_the_right_path() {
    let server = ScriptedModel::start(Script::new([Step::text("unused")]))
        .await
        .unwrap();
    let url = format!("{}/chat/completions", server.base_url());
    let response = http().post(url).body("hello?").send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(server.requests(), [json!("hello?")]);
    assert_eq!(server.served(), 0, "a bad request does not use up a step");
    let response = post(&server, "/v1/completions", json!({})).await;
    assert_eq!(response.status(), 404);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("POST /v1/chat/completions")
    );
    server.shutdown().await;
}

/// The `(event, data)` pairs of a stream of named server-sent events.
fn named_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            let (name, data) = event.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap().to_string();
            let data = data.strip_prefix("data: ").unwrap();
            (name, serde_json::from_str(data).unwrap())
        })
        .collect()
}

fn reply_with_everything() -> Script {
    Script::from_json(
        r#"{"chunk_size": 4, "steps": [{"reply": {
            "reasoning": "Hmm.",
            "text": "Hi there",
            "tool_calls": [{"name": "shell", "arguments": {"command": "ls -la"}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 4, "cached_tokens": 2}
        }}]}"#,
    )
    .unwrap()
}

#[tokio::test]
async fn streams_anthropic_messages_events() {
    let server = ScriptedModel::start(reply_with_everything()).await.unwrap();
    let response = post(
        &server,
        "/v1/messages",
        json!({"model": "m", "stream": true}),
    )
    .await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = named_events(&response.text().await.unwrap());
    for (name, data) in &events {
        assert_eq!(name, data["type"].as_str().unwrap());
    }
    let usage = &events[0].1["message"]["usage"];
    assert_eq!(usage["input_tokens"], 7, "uncached input apart");
    assert_eq!(usage["cache_read_input_tokens"], 2);
    let starts: Vec<&str> = events
        .iter()
        .filter(|(name, _)| name == "content_block_start")
        .map(|(_, data)| data["content_block"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(starts, ["thinking", "text", "tool_use"]);
    let partial_json: String = events
        .iter()
        .filter_map(|(_, data)| data["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(partial_json, r#"{"command":"ls -la"}"#);
    let signature = events
        .iter()
        .find_map(|(_, data)| data["delta"]["signature"].as_str())
        .unwrap();
    assert_eq!(signature, "scripted-signature-1");
    let (name, end) = &events[events.len() - 2];
    assert_eq!(name, "message_delta");
    assert_eq!(end["delta"]["stop_reason"], "tool_use");
    assert_eq!(events.last().unwrap().0, "message_stop");
}

#[tokio::test]
async fn streams_openai_responses_events() {
    let server = ScriptedModel::start(reply_with_everything()).await.unwrap();
    let response = post(
        &server,
        "/v1/responses",
        json!({"model": "m", "stream": true}),
    )
    .await;
    let events = named_events(&response.text().await.unwrap());
    let done: Vec<&Value> = events
        .iter()
        .filter(|(name, _)| name == "response.output_item.done")
        .map(|(_, data)| &data["item"])
        .collect();
    assert_eq!(done[0]["encrypted_content"], "scripted-encrypted-1");
    assert_eq!(done[1]["content"][0]["text"], "Hi there");
    assert_eq!(done[2]["call_id"], "call_1");
    let arguments: String = events
        .iter()
        .filter(|(name, _)| name == "response.function_call_arguments.delta")
        .map(|(_, data)| data["delta"].as_str().unwrap())
        .collect();
    assert_eq!(arguments, r#"{"command":"ls -la"}"#);
    let (name, completed) = events.last().unwrap();
    assert_eq!(name, "response.completed");
    let usage = &completed["response"]["usage"];
    assert_eq!(usage["input_tokens"], 9);
    assert_eq!(usage["input_tokens_details"]["cached_tokens"], 2);
    assert_eq!(completed["response"]["output"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn records_paths_and_headers() {
    let server = ScriptedModel::start(Script::new([Step::text("a")]))
        .await
        .unwrap();
    let url = format!("{}/v1/messages", server.anthropic_base_url());
    http()
        .post(url)
        .header("x-api-key", "k")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let recorded = server.recorded();
    assert_eq!(recorded[0].path, "/v1/messages");
    assert_eq!(recorded[0].headers["x-api-key"], "k");
    assert_eq!(recorded[0].body, json!({}));
}
