//! Every protocol (OpenAI Chat Completions, OpenAI Responses, Anthropic Messages) against the
//! same scripts, served by the scripted model over real HTTP on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{PROTOCOLS, Protocol, arguments, client, complete, complete_request, serve};
use nightshift_model::{Message, ModelError, ReasoningBlock, StopReason, StreamEvent};
use nightshift_protocol::Usage;
use serde_json::json;

#[tokio::test]
async fn streams_a_text_answer() {
    for protocol in PROTOCOLS {
        let server = serve(json!({"steps": [{"reply": {"text": "Hello there, world."}}]})).await;
        let (response, events) = complete(&*client(protocol, &server)).await;
        let response = response.unwrap();
        assert_eq!(
            response.text.as_deref(),
            Some("Hello there, world."),
            "{protocol:?}"
        );
        assert!(response.tool_calls.is_empty());
        assert_eq!(
            response.stop_reason,
            Some(StopReason::EndTurn),
            "{protocol:?}"
        );
        let deltas = events
            .iter()
            .filter(|e| matches!(e, StreamEvent::TextDelta(_)))
            .count();
        assert!(deltas > 1, "{protocol:?}: {events:?}");
        assert!(matches!(events.last(), Some(StreamEvent::Completed { .. })));
        assert_eq!(server.served(), 1);
    }
}

#[tokio::test]
async fn reassembles_a_tool_call_split_across_many_chunks() {
    let args = json!({"command": "cargo test --workspace -- --nocapture", "timeout_secs": 600});
    for protocol in PROTOCOLS {
        let server = serve(json!({
            "chunk_size": 3,
            "steps": [{"reply": {"tool_calls": [{"name": "shell", "arguments": args}]}}]
        }))
        .await;
        let (response, events) = complete(&*client(protocol, &server)).await;
        let response = response.unwrap();
        assert_eq!(
            response.stop_reason,
            Some(StopReason::ToolUse),
            "{protocol:?}"
        );
        assert_eq!(response.text, None);
        assert_eq!(response.tool_calls.len(), 1);
        assert_eq!(
            response.tool_calls[0].id,
            format!("{}1", protocol.call_id_prefix())
        );
        assert_eq!(response.tool_calls[0].name, "shell");
        assert_eq!(arguments(&response, 0), args, "{protocol:?}");
        let deltas = events
            .iter()
            .filter(|e| matches!(e, StreamEvent::ToolCallDelta { .. }))
            .count();
        assert!(deltas > 10, "{protocol:?}: {deltas} deltas");
    }
}

#[tokio::test]
async fn keeps_parallel_tool_calls_apart() {
    for protocol in PROTOCOLS {
        let server = serve(json!({"steps": [{"reply": {
            "text": "Looking around.",
            "tool_calls": [
                {"name": "list_files", "arguments": {"path": "src"}},
                {"name": "read_file", "arguments": {"path": "Cargo.toml", "limit": 40}}
            ]
        }}]}))
        .await;
        let (response, events) = complete(&*client(protocol, &server)).await;
        let response = response.unwrap();
        assert_eq!(response.text.as_deref(), Some("Looking around."));
        let prefix = protocol.call_id_prefix();
        let calls: Vec<_> = response
            .tool_calls
            .iter()
            .map(|c| (c.id.clone(), c.name.as_str()))
            .collect();
        assert_eq!(
            calls,
            [
                (format!("{prefix}1"), "list_files"),
                (format!("{prefix}2"), "read_file")
            ],
            "{protocol:?}"
        );
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
}

#[tokio::test]
async fn understands_a_server_that_ignores_stream_true() {
    for protocol in PROTOCOLS {
        let server = serve(json!({"steps": [{"reply": {
            "text": "Plain JSON.",
            "tool_calls": [{"name": "finish", "arguments": {"summary": "done"}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "cached_tokens": 4},
            "ignore_stream": true
        }}]}))
        .await;
        let (response, _) = complete(&*client(protocol, &server)).await;
        let response = response.unwrap();
        assert_eq!(
            response.text.as_deref(),
            Some("Plain JSON."),
            "{protocol:?}"
        );
        assert_eq!(arguments(&response, 0), json!({"summary": "done"}));
        assert_eq!(response.stop_reason, Some(StopReason::ToolUse));
        let expected = Usage {
            input_tokens: 12,
            cached_input_tokens: 4,
            output_tokens: 3,
        };
        assert_eq!(response.usage, expected, "{protocol:?}");
    }
}

#[tokio::test]
async fn maps_usage_including_cached_tokens() {
    for protocol in PROTOCOLS {
        let server = serve(json!({"steps": [{"reply": {
            "text": "cheap",
            "usage": {"prompt_tokens": 1200, "completion_tokens": 34, "cached_tokens": 1024}
        }}]}))
        .await;
        let (response, _) = complete(&*client(protocol, &server)).await;
        let expected = Usage {
            input_tokens: 1200,
            cached_input_tokens: 1024,
            output_tokens: 34,
        };
        assert_eq!(response.unwrap().usage, expected, "{protocol:?}");
    }
}

#[tokio::test]
async fn waits_out_a_rate_limit_then_succeeds() {
    for protocol in PROTOCOLS {
        let server = serve(json!({"steps": [
            {"error": {"status": 429, "body": "{\"error\":{\"message\":\"slow down\"}}",
                       "headers": {"retry-after": "1"}}},
            {"reply": {"text": "ok"}}
        ]}))
        .await;
        let started = Instant::now();
        let (response, _) = complete(&*client(protocol, &server)).await;
        assert_eq!(
            response.unwrap().text.as_deref(),
            Some("ok"),
            "{protocol:?}"
        );
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "{protocol:?}: Retry-After was not honoured"
        );
        assert_eq!(server.served(), 2);
    }
}

#[tokio::test]
async fn retries_overload_and_server_errors() {
    for protocol in PROTOCOLS {
        let server = serve(json!({"steps": [
            {"error": {"status": 529, "body": "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}"}},
            {"error": {"status": 503, "body": "unavailable"}},
            {"reply": {"text": "third time lucky"}}
        ]}))
        .await;
        let (response, _) = complete(&*client(protocol, &server)).await;
        assert_eq!(
            response.unwrap().text.as_deref(),
            Some("third time lucky"),
            "{protocol:?}"
        );
        assert_eq!(server.served(), 3);
    }
}

#[tokio::test]
async fn retries_a_stream_broken_before_the_answer_started() {
    for protocol in PROTOCOLS {
        let server = serve(json!({"steps": [
            {"broken_stream": {}},
            {"reply": {"text": "second try"}}
        ]}))
        .await;
        let (response, _) = complete(&*client(protocol, &server)).await;
        assert_eq!(
            response.unwrap().text.as_deref(),
            Some("second try"),
            "{protocol:?}"
        );
        assert_eq!(server.served(), 2);
    }
}

#[tokio::test]
async fn asks_again_when_a_stream_breaks_mid_answer() {
    for protocol in PROTOCOLS {
        let server = serve(json!({"steps": [
            {"broken_stream": {"text": "I will now"}},
            {"reply": {"text": "the whole answer"}}
        ]}))
        .await;
        let (response, events) = complete(&*client(protocol, &server)).await;
        let response = response.unwrap();
        assert_eq!(
            response.text.as_deref(),
            Some("the whole answer"),
            "{protocol:?}"
        );
        assert!(!events.is_empty(), "the text before the cut was streamed");
        assert_eq!(server.served(), 2);
    }
}

#[tokio::test]
async fn gives_up_when_every_answer_breaks_mid_way() {
    for protocol in PROTOCOLS {
        let server = serve(json!({"steps": [
            {"broken_stream": {"text": "I will now"}},
            {"broken_stream": {"text": "I will now"}},
            {"broken_stream": {"text": "I will now"}},
            {"reply": {"text": "never"}}
        ]}))
        .await;
        let (response, _) = complete(&*client(protocol, &server)).await;
        let err = response.unwrap_err();
        assert!(
            matches!(err, ModelError::Unreachable { .. }),
            "{protocol:?}: {err:?}"
        );
        assert_eq!(server.served(), 3);
    }
}

#[tokio::test]
async fn does_not_retry_refused_credentials() {
    for protocol in PROTOCOLS {
        let server = serve(json!({"steps": [
            {"error": {"status": 401, "body": "{\"error\":{\"message\":\"invalid x-api-key\"}}"}},
            {"reply": {"text": "never"}}
        ]}))
        .await;
        let (response, _) = complete(&*client(protocol, &server)).await;
        match response.unwrap_err() {
            ModelError::Unauthorized { status: 401, body } => {
                assert!(body.contains("invalid x-api-key"), "{body}")
            }
            other => panic!("{protocol:?}: {other:?}"),
        }
        assert_eq!(server.served(), 1);
    }
}

#[tokio::test]
async fn reports_malformed_json_without_retrying() {
    for protocol in PROTOCOLS {
        let server = serve(json!({"steps": [
            {"malformed": {"body": "{\"type\": \"content_block_delta\", "}},
            {"reply": {"text": "no"}}
        ]}))
        .await;
        let (response, _) = complete(&*client(protocol, &server)).await;
        match response.unwrap_err() {
            ModelError::Malformed { detail } => {
                assert!(detail.contains("not valid JSON"), "{protocol:?}: {detail}")
            }
            other => panic!("{protocol:?}: {other:?}"),
        }
        assert_eq!(server.served(), 1, "malformed answers are not retried");
    }
}

#[tokio::test]
async fn reports_a_stream_that_ends_without_finishing() {
    for (protocol, body, expected) in [
        (
            Protocol::Chat,
            r#"{"choices":[{"index":0,"delta":{"content":"I was saying"}}]}"#,
            "without a finish_reason",
        ),
        (
            Protocol::Responses,
            r#"{"type":"response.output_text.delta","output_index":0,"delta":"I was"}"#,
            "without response.completed",
        ),
        (
            Protocol::Anthropic,
            r#"{"type":"message_start","message":{"usage":{"input_tokens":1}}}"#,
            "without a stop_reason",
        ),
    ] {
        let server = serve(json!({"steps": [{"malformed": {"body": body}}]})).await;
        let (response, _) = complete(&*client(protocol, &server)).await;
        let err = response.unwrap_err();
        assert!(err.to_string().contains(expected), "{protocol:?}: {err}");
    }
}

#[tokio::test]
async fn an_empty_answer_is_an_answer() {
    for protocol in PROTOCOLS {
        let server = serve(json!({"steps": [{"reply": {}}]})).await;
        let (response, _) = complete(&*client(protocol, &server)).await;
        let response = response.unwrap();
        assert_eq!(response.text, None, "{protocol:?}");
        assert!(response.tool_calls.is_empty());
        assert_eq!(
            response.stop_reason,
            Some(StopReason::EndTurn),
            "{protocol:?}"
        );
    }
}

#[tokio::test]
async fn an_empty_choice_list_is_malformed() {
    let server =
        serve(json!({"steps": [{"malformed": {"body": r#"{"id":"x","choices":[]}"#}}]})).await;
    let (response, _) = complete(&*client(Protocol::Chat, &server)).await;
    let err = response.unwrap_err();
    assert!(err.to_string().contains("no choices"), "{err}");
}

#[tokio::test]
async fn sends_the_conversation_in_each_protocols_shape() {
    for protocol in PROTOCOLS {
        let server = serve(json!({"steps": [{"reply": {"text": "ok"}}]})).await;
        complete_request(&*client(protocol, &server), &common::conversation())
            .await
            .0
            .unwrap();
        let recorded = server.recorded().remove(0);
        insta::assert_json_snapshot!(format!("request_{}", protocol.name()), recorded.body);
        let headers = &recorded.headers;
        match protocol {
            Protocol::Chat | Protocol::Responses => {
                assert_eq!(headers["authorization"], "Bearer sk-test")
            }
            Protocol::Anthropic => {
                assert_eq!(headers["x-api-key"], "sk-ant-test");
                assert_eq!(headers["anthropic-version"], "2023-06-01");
                assert!(!headers.contains_key("authorization"));
            }
        }
        let path = match protocol {
            Protocol::Chat => "/v1/chat/completions",
            Protocol::Responses => "/v1/responses",
            Protocol::Anthropic => "/v1/messages",
        };
        assert_eq!(recorded.path, path);
    }
}

#[tokio::test]
async fn equal_requests_are_equal_bytes() {
    for protocol in PROTOCOLS {
        let server = serve(json!({"steps": [{"reply": {"text": "ok", "repeat": 2}}]})).await;
        let client = client(protocol, &server);
        for _ in 0..2 {
            complete_request(&*client, &common::conversation())
                .await
                .0
                .unwrap();
        }
        let requests = server.requests();
        assert_eq!(
            requests[0].to_string(),
            requests[1].to_string(),
            "{protocol:?}"
        );
    }
}

#[tokio::test]
async fn reasoning_goes_back_verbatim() {
    for protocol in [Protocol::Anthropic, Protocol::Responses] {
        let server = serve(json!({"steps": [
            {"reply": {"reasoning": "The listing will show the layout.",
                       "tool_calls": [{"name": "list_files", "arguments": {"path": "."}}]}},
            {"reply": {"text": "Done."}}
        ]}))
        .await;
        let client = client(protocol, &server);
        let mut request = common::ask("Look around.");
        let (first, events) = complete_request(&*client, &request).await;
        let first = first.unwrap();
        assert_eq!(first.reasoning.len(), 1, "{protocol:?}");
        assert_eq!(
            first.reasoning[0].text(),
            "The listing will show the layout."
        );
        let thought: String = events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::ReasoningDelta(text) => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(thought, "The listing will show the layout.", "{protocol:?}");
        // What the agent does: the whole response becomes the next assistant message.
        request.messages.push(Message::Assistant {
            content: first.text.clone(),
            tool_calls: first.tool_calls.clone(),
            reasoning: first.reasoning.clone(),
        });
        request.messages.push(Message::Tool {
            call_id: first.tool_calls[0].id.clone(),
            content: "src/".into(),
        });
        let (second, _) = complete_request(&*client, &request).await;
        assert_eq!(second.unwrap().text.as_deref(), Some("Done."));
        let sent = &server.requests()[1];
        match protocol {
            Protocol::Anthropic => {
                assert!(matches!(
                    &first.reasoning[0],
                    ReasoningBlock::AnthropicThinking { .. }
                ));
                assert_eq!(
                    sent["messages"][1]["content"][0],
                    json!({"type": "thinking", "thinking": "The listing will show the layout.",
                           "signature": "scripted-signature-1"})
                );
                assert_eq!(sent["messages"][1]["content"][1]["type"], "tool_use");
            }
            Protocol::Responses => {
                assert_eq!(
                    sent["input"][1],
                    json!({"type": "reasoning", "id": "rs_scripted_1",
                           "summary": [{"type": "summary_text", "text": "The listing will show the layout."}],
                           "encrypted_content": "scripted-encrypted-1"})
                );
                assert_eq!(sent["input"][2]["type"], "function_call");
                assert_eq!(sent["include"], json!(["reasoning.encrypted_content"]));
            }
            Protocol::Chat => unreachable!(),
        }
    }
}
