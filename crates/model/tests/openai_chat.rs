//! `OpenAiChat` against the scripted model server over real HTTP on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use nightshift_model::{
    Message, ModelClient, ModelError, ModelRequest, ModelResponse, OpenAiChat, ProviderConfig,
    StopReason, StreamEvent, ToolCall, ToolSpec,
};
use nightshift_protocol::Usage;
use nightshift_scripted_model::{Script, ScriptedModel};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

async fn serve(script: Value) -> ScriptedModel {
    let script = Script::from_json(&script.to_string()).unwrap();
    ScriptedModel::start(script).await.unwrap()
}

fn client_at(base_url: &str) -> OpenAiChat {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = ProviderConfig {
        openai_api_key: Some("sk-test".into()),
        openai_base_url: Some(base_url.into()),
        ..ProviderConfig::default()
    };
    OpenAiChat::new("openai:test-model".parse().unwrap(), &config)
        .unwrap()
        .with_retry_backoff(Duration::from_millis(1))
}

fn client(server: &ScriptedModel) -> OpenAiChat {
    client_at(&server.base_url())
}

fn ask(text: &str) -> ModelRequest {
    ModelRequest {
        model: "test-model".into(),
        system: "You are a careful engineer.".into(),
        messages: vec![Message::User {
            content: text.into(),
        }],
        tools: vec![],
        max_output_tokens: None,
    }
}

/// The answer and every event seen on the way.
async fn complete(client: &OpenAiChat) -> (Result<ModelResponse, ModelError>, Vec<StreamEvent>) {
    let mut events = Vec::new();
    let result = client
        .complete(&ask("hello"), &CancellationToken::new(), &mut |event| {
            events.push(event.clone())
        })
        .await;
    (result, events)
}

fn arguments(response: &ModelResponse, index: usize) -> Value {
    serde_json::from_str(&response.tool_calls[index].arguments).unwrap()
}

#[tokio::test]
async fn streams_a_text_answer() {
    let server = serve(json!({"steps": [{"reply": {"text": "Hello there, world."}}]})).await;
    let (response, events) = complete(&client(&server)).await;
    let response = response.unwrap();
    assert_eq!(response.text.as_deref(), Some("Hello there, world."));
    assert!(response.tool_calls.is_empty());
    assert_eq!(response.stop_reason, Some(StopReason::EndTurn));
    let deltas = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::TextDelta(_)))
        .count();
    assert!(deltas > 1, "{events:?}");
    assert!(matches!(events.last(), Some(StreamEvent::Completed { .. })));
    assert_eq!(server.served(), 1);
}

#[tokio::test]
async fn reassembles_a_tool_call_split_across_many_chunks() {
    let args = json!({"command": "cargo test --workspace -- --nocapture", "timeout_secs": 600});
    let server = serve(json!({
        "chunk_size": 3,
        "steps": [{"reply": {"tool_calls": [{"name": "shell", "arguments": args}]}}]
    }))
    .await;
    let (response, events) = complete(&client(&server)).await;
    let response = response.unwrap();
    assert_eq!(response.stop_reason, Some(StopReason::ToolUse));
    assert_eq!(response.text, None);
    assert_eq!(response.tool_calls.len(), 1);
    assert_eq!(response.tool_calls[0].id, "call_1");
    assert_eq!(response.tool_calls[0].name, "shell");
    assert_eq!(arguments(&response, 0), args);
    let deltas = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::ToolCallDelta { .. }))
        .count();
    assert!(deltas > 10, "{deltas} deltas");
}

#[tokio::test]
async fn keeps_parallel_tool_calls_apart() {
    let server = serve(json!({"steps": [{"reply": {
        "text": "Looking around.",
        "tool_calls": [
            {"name": "list_files", "arguments": {"path": "src"}},
            {"name": "read_file", "arguments": {"path": "Cargo.toml", "limit": 40}}
        ]
    }}]}))
    .await;
    let (response, events) = complete(&client(&server)).await;
    let response = response.unwrap();
    assert_eq!(response.text.as_deref(), Some("Looking around."));
    let calls: Vec<_> = response
        .tool_calls
        .iter()
        .map(|c| (c.id.as_str(), c.name.as_str()))
        .collect();
    assert_eq!(calls, [("call_1", "list_files"), ("call_2", "read_file")]);
    assert_eq!(arguments(&response, 0), json!({"path": "src"}));
    assert_eq!(
        arguments(&response, 1),
        json!({"path": "Cargo.toml", "limit": 40})
    );
    let started: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolCallStarted { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    assert_eq!(started, [0, 1]);
}

#[tokio::test]
async fn understands_a_server_that_ignores_stream_true() {
    let server = serve(json!({"steps": [{"reply": {
        "text": "Plain JSON.",
        "tool_calls": [{"name": "finish", "arguments": {"summary": "done"}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3},
        "ignore_stream": true
    }}]}))
    .await;
    let (response, events) = complete(&client(&server)).await;
    let response = response.unwrap();
    assert_eq!(response.text.as_deref(), Some("Plain JSON."));
    assert_eq!(response.tool_calls[0].name, "finish");
    assert_eq!(arguments(&response, 0), json!({"summary": "done"}));
    assert_eq!(response.stop_reason, Some(StopReason::ToolUse));
    assert_eq!(
        response.usage,
        Usage {
            input_tokens: 12,
            cached_input_tokens: 0,
            output_tokens: 3
        }
    );
    assert_eq!(events.len(), 4, "{events:?}");
}

#[tokio::test]
async fn waits_out_a_rate_limit_then_succeeds() {
    let server = serve(json!({"steps": [
        {"error": {"status": 429, "body": "{\"error\":{\"message\":\"slow down\"}}",
                   "headers": {"retry-after": "1"}}},
        {"reply": {"text": "ok"}}
    ]}))
    .await;
    let started = Instant::now();
    let (response, _) = complete(&client(&server)).await;
    assert_eq!(response.unwrap().text.as_deref(), Some("ok"));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    assert_eq!(server.served(), 2);
}

#[tokio::test]
async fn retries_server_errors() {
    let server = serve(json!({"steps": [
        {"error": {"status": 500, "body": "boom"}},
        {"error": {"status": 503, "body": "overloaded"}},
        {"reply": {"text": "third time lucky"}}
    ]}))
    .await;
    let (response, _) = complete(&client(&server)).await;
    assert_eq!(response.unwrap().text.as_deref(), Some("third time lucky"));
    assert_eq!(server.served(), 3);
}

#[tokio::test]
async fn gives_up_after_three_retries() {
    let server = serve(json!({"steps": [
        {"error": {"status": 502, "body": "bad gateway"}},
        {"error": {"status": 502, "body": "bad gateway"}},
        {"error": {"status": 502, "body": "bad gateway"}},
        {"error": {"status": 502, "body": "still bad"}},
        {"reply": {"text": "too late"}}
    ]}))
    .await;
    let (response, _) = complete(&client(&server)).await;
    match response.unwrap_err() {
        ModelError::Server { status: 502, body } => assert_eq!(body, "still bad"),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.served(), 4);
}

#[tokio::test]
async fn does_not_retry_refused_credentials() {
    let server = serve(json!({"steps": [
        {"error": {"status": 401, "body": "{\"error\":{\"message\":\"Incorrect API key\"}}"}},
        {"reply": {"text": "never"}}
    ]}))
    .await;
    let (response, _) = complete(&client(&server)).await;
    match response.unwrap_err() {
        ModelError::Unauthorized { status: 401, body } => {
            assert!(body.contains("Incorrect API key"), "{body}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.served(), 1);
}

#[tokio::test]
async fn rejects_other_client_errors_with_a_cut_body() {
    let server =
        serve(json!({"steps": [{"error": {"status": 400, "body": "x".repeat(10_000)}}]})).await;
    let (response, _) = complete(&client(&server)).await;
    match response.unwrap_err() {
        ModelError::Rejected { status: 400, body } => {
            assert!(body.len() < 2100, "{} bytes", body.len());
            assert!(body.ends_with("(cut)"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.served(), 1);
}

async fn malformed_detail(body: &str) -> String {
    let server =
        serve(json!({"steps": [{"malformed": {"body": body}}, {"reply": {"text": "no"}}]})).await;
    let (response, _) = complete(&client(&server)).await;
    let detail = match response.unwrap_err() {
        ModelError::Malformed { detail } => detail,
        other => panic!("{other:?}"),
    };
    assert_eq!(server.served(), 1, "malformed answers are not retried");
    detail
}

#[tokio::test]
async fn reports_a_chunk_that_is_not_json() {
    let detail = malformed_detail("{\"choices\": [{\"delta\": ").await;
    assert!(detail.contains("not valid JSON"), "{detail}");
}

#[tokio::test]
async fn reports_a_chunk_without_choices() {
    let detail =
        malformed_detail(r#"{"id":"x","object":"chat.completion.chunk","choices":[]}"#).await;
    assert!(detail.contains("no choices and no usage"), "{detail}");
}

#[tokio::test]
async fn reports_an_error_inside_the_stream() {
    let detail = malformed_detail(r#"{"error":{"message":"model overloaded","code":529}}"#).await;
    assert!(detail.contains("model overloaded"), "{detail}");
}

#[tokio::test]
async fn reports_a_stream_that_ends_without_finishing() {
    let detail =
        malformed_detail(r#"{"choices":[{"index":0,"delta":{"content":"I was saying"}}]}"#).await;
    assert!(detail.contains("without a finish_reason"), "{detail}");
}

#[tokio::test]
async fn retries_a_stream_broken_before_the_answer_started() {
    let server = serve(json!({"steps": [
        {"broken_stream": {}},
        {"reply": {"text": "second try"}}
    ]}))
    .await;
    let (response, _) = complete(&client(&server)).await;
    assert_eq!(response.unwrap().text.as_deref(), Some("second try"));
    assert_eq!(server.served(), 2);
}

#[tokio::test]
async fn reports_an_unreachable_server_after_retrying() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    drop(listener);
    let client = client_at(&base_url);
    let (response, _) = complete(&client).await;
    match response.unwrap_err() {
        ModelError::Unreachable { url, .. } => {
            assert_eq!(url, format!("{base_url}/chat/completions"))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn maps_usage_including_cached_tokens() {
    let server = serve(json!({"steps": [{"reply": {
        "text": "cheap",
        "usage": {"prompt_tokens": 1200, "completion_tokens": 34, "cached_tokens": 1024}
    }}]}))
    .await;
    let (response, events) = complete(&client(&server)).await;
    let expected = Usage {
        input_tokens: 1200,
        cached_input_tokens: 1024,
        output_tokens: 34,
    };
    assert_eq!(response.unwrap().usage, expected);
    let completed = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::Completed { .. }))
        .count();
    assert_eq!(completed, 1);
}

#[tokio::test]
async fn times_out_a_silent_server() {
    let server = serve(json!({"steps": [{"reply": {"text": "late", "delay_ms": 3000}}]})).await;
    let client = client(&server)
        .with_idle_timeout(Duration::from_millis(200))
        .with_max_retries(0);
    let (response, _) = complete(&client).await;
    assert!(
        matches!(response, Err(ModelError::IdleTimeout(_))),
        "{response:?}"
    );
}

#[tokio::test]
async fn cancelling_drops_a_slow_request_at_once() {
    let server = serve(json!({"steps": [{"reply": {"text": "slow", "delay_ms": 10_000}}]})).await;
    let client = client(&server);
    let cancel = CancellationToken::new();
    let canceller = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        canceller.cancel();
    });
    let started = Instant::now();
    let response = client.complete(&ask("hello"), &cancel, &mut |_| {}).await;
    assert!(
        matches!(response, Err(ModelError::Cancelled)),
        "{response:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_exhausted_script_fails_clearly() {
    let server = serve(json!({"steps": [{"reply": {"text": "only one"}}]})).await;
    let client = client(&server);
    complete(&client).await.0.unwrap();
    let (response, _) = complete(&client).await;
    match response.unwrap_err() {
        ModelError::Server { status: 500, body } => {
            assert!(body.contains("script exhausted after 1 steps"), "{body}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.served(), 1);
    assert_eq!(
        server.requests().len(),
        5,
        "one answered, then the first try and 3 retries"
    );
}

#[tokio::test]
async fn sends_the_conversation_in_openai_shape() {
    let server = serve(json!({"steps": [{"reply": {"text": "ok"}}]})).await;
    let request = ModelRequest {
        model: "gpt-test".into(),
        system: "You are nightshift. Work in /workspace.".into(),
        messages: vec![
            Message::User {
                content: "List the files.".into(),
            },
            Message::Assistant {
                content: None,
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "list_files".into(),
                    arguments: r#"{"path":"."}"#.into(),
                }],
                reasoning: vec![],
            },
            Message::Tool {
                call_id: "call_1".into(),
                content: "Cargo.toml\nsrc/".into(),
            },
            Message::Assistant {
                content: Some("Reading it.".into()),
                tool_calls: vec![ToolCall {
                    id: "call_2".into(),
                    name: "read_file".into(),
                    arguments: r#"{"path":"Cargo.toml"}"#.into(),
                }],
                reasoning: vec![],
            },
            Message::Tool {
                call_id: "call_2".into(),
                content: "[package]".into(),
            },
            Message::Assistant {
                content: Some("It is a Rust crate.".into()),
                tool_calls: vec![],
                reasoning: vec![],
            },
            Message::User {
                content: "Thanks.".into(),
            },
        ],
        tools: vec![
            ToolSpec {
                name: "list_files".into(),
                description: "List files under a path.".into(),
                parameters: json!({
                    "type": "object",
                    "properties": {"path": {"type": "string"}},
                    "additionalProperties": false
                }),
            },
            ToolSpec {
                name: "read_file".into(),
                description: "Read a file.".into(),
                parameters: json!({
                    "type": "object",
                    "properties": {"path": {"type": "string"}},
                    "required": ["path"]
                }),
            },
        ],
        max_output_tokens: Some(4096),
    };
    client(&server)
        .complete(&request, &CancellationToken::new(), &mut |_| {})
        .await
        .unwrap();
    insta::assert_json_snapshot!(server.requests()[0]);
}

#[tokio::test]
async fn works_without_an_api_key() {
    let server = serve(json!({"steps": [{"reply": {"text": "local"}}]})).await;
    let config = ProviderConfig {
        openai_api_key: None,
        openai_base_url: Some(server.base_url()),
        ..ProviderConfig::default()
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = OpenAiChat::new("openai:qwen3:8b".parse().unwrap(), &config).unwrap();
    let response = client
        .complete(&ask("hi"), &CancellationToken::new(), &mut |_| {})
        .await;
    assert_eq!(response.unwrap().text.as_deref(), Some("local"));
    assert_eq!(server.requests()[0]["model"], "test-model");
}
