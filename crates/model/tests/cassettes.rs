//! Recording a conversation to a cassette, then replaying it: in order, and strictly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{ask, complete_request, config, serve};
use nightshift_model::{Message, ModelClient, ModelError, ModelResponse, ProviderConfig, connect};
use serde_json::{Value, json};

/// Two turns: the model calls a tool, gets its result, and answers.
async fn converse(client: &dyn ModelClient, question: &str) -> Vec<ModelResponse> {
    let mut request = ask(question);
    let (first, _) = complete_request(client, &request).await;
    let first = first.unwrap();
    request.messages.push(Message::Assistant {
        content: first.text.clone(),
        tool_calls: first.tool_calls.clone(),
        reasoning: first.reasoning.clone(),
    });
    request.messages.push(Message::Tool {
        call_id: first.tool_calls[0].id.clone(),
        content: "Cargo.toml".into(),
    });
    let (second, _) = complete_request(client, &request).await;
    vec![first, second.unwrap()]
}

fn replay(path: &Path, strict: bool) -> std::sync::Arc<dyn ModelClient> {
    let suffix = if strict { "?strict" } else { "" };
    let spec = format!("replay:{}{suffix}", path.display())
        .parse()
        .unwrap();
    connect(&spec, &ProviderConfig::default()).unwrap()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

async fn record(path: &Path) -> Vec<ModelResponse> {
    let server = serve(json!({"steps": [
        {"reply": {"text": "Looking.", "tool_calls": [{"name": "list_files", "arguments": {"path": "."}}],
                   "usage": {"prompt_tokens": 100, "completion_tokens": 10, "cached_tokens": 60}}},
        {"reply": {"text": "It is a Rust crate.", "usage": {"prompt_tokens": 130, "completion_tokens": 8}}}
    ]}))
    .await;
    let config = ProviderConfig {
        record: Some(path.to_path_buf()),
        ..config(&server)
    };
    let client = connect(&"openai:test-model".parse().unwrap(), &config).unwrap();
    assert_eq!(client.spec().to_string(), "openai:test-model");
    converse(&*client, "What is this?").await
}

#[tokio::test]
async fn records_every_call_then_replays_it_strictly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks").join("01TASK.jsonl");
    let recorded = record(&path).await;

    let cassette = lines(&path);
    assert_eq!(cassette.len(), 2);
    assert_eq!(cassette[0]["version"], 1);
    assert_eq!(
        cassette[0]["request"]["messages"][0]["content"],
        "What is this?"
    );
    assert_eq!(
        cassette[0]["response"]["tool_calls"][0]["name"],
        "list_files"
    );
    assert_eq!(cassette[0]["response"]["usage"]["cached_input_tokens"], 60);
    assert_eq!(cassette[1]["response"]["text"], "It is a Rust crate.");
    assert_eq!(cassette[1]["response"]["stop_reason"], "end_turn");

    for strict in [false, true] {
        let replayed = converse(&*replay(&path, strict), "What is this?").await;
        assert_eq!(replayed, recorded, "strict: {strict}");
    }
}

#[tokio::test]
async fn strict_replay_names_the_first_divergence() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cassette.jsonl");
    record(&path).await;

    let client = replay(&path, true);
    let (response, _) = complete_request(&*client, &ask("What is that?")).await;
    match response.unwrap_err() {
        ModelError::ReplayDiverged { index, detail } => {
            assert_eq!(index, 0);
            assert!(
                detail.starts_with(
                    r#"messages[0].content differs: recorded "What is this?", now "What is that?""#
                ),
                "{detail}"
            );
            assert!(detail.contains("cassette.jsonl"), "{detail}");
        }
        other => panic!("{other:?}"),
    }

    // Without ?strict the answers are served in order regardless.
    let lenient = replay(&path, false);
    let (response, _) = complete_request(&*lenient, &ask("What is that?")).await;
    assert_eq!(response.unwrap().tool_calls[0].name, "list_files");
}

#[tokio::test]
async fn replaying_past_the_end_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cassette.jsonl");
    record(&path).await;
    let client = replay(&path, false);
    converse(&*client, "What is this?").await;
    let (response, _) = complete_request(&*client, &ask("And then?")).await;
    let err = response.unwrap_err();
    assert!(
        matches!(err, ModelError::ReplayDiverged { index: 2, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("holds 2 calls and this is call 3"),
        "{err}"
    );
    assert!(!err.is_retryable());
    assert!(err.hint().unwrap().contains("NIGHTSHIFT_RECORD"));
}

#[tokio::test]
async fn failures_are_recorded_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cassette.jsonl");
    let server = serve(json!({"steps": [{"error": {"status": 401, "body": "bad key"}}]})).await;
    let config = ProviderConfig {
        record: Some(path.clone()),
        ..config(&server)
    };
    let client = connect(&"anthropic:claude-haiku-4-5".parse().unwrap(), &config).unwrap();
    let (response, _) = complete_request(&*client, &ask("hi")).await;
    assert!(matches!(response, Err(ModelError::Unauthorized { .. })));
    let cassette = lines(&path);
    assert_eq!(
        cassette[0]["error"],
        "the model provider refused the credentials (HTTP 401): bad key"
    );
    let (replayed, _) = complete_request(&*replay(&path, true), &ask("hi")).await;
    match replayed.unwrap_err() {
        ModelError::Unauthorized { status: 401, body } => assert_eq!(body, "bad key"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_cassettes_and_specs_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.jsonl");
    let spec = format!("replay:{}", missing.display()).parse().unwrap();
    let err = connect(&spec, &ProviderConfig::default()).err().unwrap();
    assert!(
        err.to_string().contains("cannot read the cassette"),
        "{err}"
    );

    let garbage = dir.path().join("garbage.jsonl");
    std::fs::write(&garbage, "{\"version\":1,\"request\":{}}\n").unwrap();
    let spec = format!("replay:{}", garbage.display()).parse().unwrap();
    let err = connect(&spec, &ProviderConfig::default()).err().unwrap();
    assert!(err.to_string().contains("line 1"), "{err}");

    for (spec, expected) in [
        ("claude-sonnet-4-5", "has no provider"),
        ("anthropics:claude", "unknown model provider `anthropics`"),
        ("openai-responses:", "names no model"),
        ("replay:?strict", "names no cassette file"),
    ] {
        let err = spec.parse::<nightshift_model::ModelSpec>().unwrap_err();
        assert!(err.to_string().contains(expected), "{spec}: {err}");
        assert!(err.hint().unwrap().contains("anthropic:MODEL"));
    }
}

#[tokio::test]
async fn a_recording_with_a_redaction_holds_no_secret_anywhere() {
    const TOKEN: &str = "tok-5ecr3t-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("task.jsonl");
    // The secret is in the question, in the model's answer and in a tool call's argument key.
    let server = serve(json!({"steps": [
        {"reply": {"text": format!("The token is {TOKEN}."),
                   "tool_calls": [{"name": "list_files", "arguments": {TOKEN: "."}}]}},
        {"reply": {"text": "done"}}
    ]}))
    .await;
    let config = ProviderConfig {
        record: Some(path.clone()),
        record_redaction: Some(nightshift_model::Redaction::new(|text: &str| {
            text.replace(TOKEN, "[secret:TOKEN]")
        })),
        ..config(&server)
    };
    let client = connect(&"openai:test-model".parse().unwrap(), &config).unwrap();
    let answers = converse(&*client, &format!("Is {TOKEN} valid?")).await;
    assert!(
        answers[0].text.as_deref().unwrap().contains(TOKEN),
        "the caller gets the answer as it was"
    );
    let cassette = std::fs::read_to_string(&path).unwrap();
    assert!(!cassette.contains(TOKEN), "{cassette}");
    let cassette = lines(&path);
    assert_eq!(cassette.len(), 2);
    assert_eq!(
        cassette[0]["request"]["messages"][0]["content"],
        "Is [secret:TOKEN] valid?"
    );
    assert_eq!(
        cassette[0]["response"]["text"],
        "The token is [secret:TOKEN]."
    );
}
