//! What the protocol tests share: a client of each protocol pointed at a scripted server, and a
//! conversation that exercises every kind of message.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use nightshift_model::{
    AnthropicMessages, Message, ModelClient, ModelError, ModelRequest, ModelResponse, OpenAiChat,
    OpenAiResponses, ProviderConfig, StreamEvent, ToolCall, ToolSpec,
};
use nightshift_scripted_model::{Script, ScriptedModel};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The three wire protocols, each tested against the same scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Chat,
    Responses,
    Anthropic,
}

pub const PROTOCOLS: [Protocol; 3] = [Protocol::Chat, Protocol::Responses, Protocol::Anthropic];

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Chat => "openai_chat",
            Protocol::Responses => "openai_responses",
            Protocol::Anthropic => "anthropic",
        }
    }

    /// The spec a client of this protocol is made from. The Responses model is a reasoning one,
    /// so that its encrypted reasoning is asked for.
    pub fn spec(self) -> &'static str {
        match self {
            Protocol::Chat => "openai:test-model",
            Protocol::Responses => "openai-responses:gpt-5",
            Protocol::Anthropic => "anthropic:claude-sonnet-4-5",
        }
    }

    /// The prefix of the tool call ids the scripted server makes up.
    pub fn call_id_prefix(self) -> &'static str {
        match self {
            Protocol::Chat | Protocol::Responses => "call_",
            Protocol::Anthropic => "toolu_",
        }
    }
}

pub async fn serve(script: Value) -> ScriptedModel {
    let script = Script::from_json(&script.to_string()).unwrap();
    ScriptedModel::start(script).await.unwrap()
}

pub fn config(server: &ScriptedModel) -> ProviderConfig {
    ProviderConfig {
        openai_api_key: Some("sk-test".into()),
        openai_base_url: Some(server.base_url()),
        anthropic_api_key: Some("sk-ant-test".into()),
        anthropic_base_url: Some(server.anthropic_base_url()),
        record: None,
        record_redaction: None,
    }
}

/// A client of `protocol` for `server`, retrying quickly.
pub fn client(protocol: Protocol, server: &ScriptedModel) -> Box<dyn ModelClient> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = config(server);
    let spec = protocol.spec().parse().unwrap();
    let backoff = Duration::from_millis(1);
    match protocol {
        Protocol::Chat => Box::new(
            OpenAiChat::new(spec, &config)
                .unwrap()
                .with_retry_backoff(backoff),
        ),
        Protocol::Responses => Box::new(
            OpenAiResponses::new(spec, &config)
                .unwrap()
                .with_retry_backoff(backoff),
        ),
        Protocol::Anthropic => Box::new(
            AnthropicMessages::new(spec, &config)
                .unwrap()
                .with_retry_backoff(backoff),
        ),
    }
}

pub fn ask(text: &str) -> ModelRequest {
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

/// The answer to `request` and every event seen on the way.
pub async fn complete_request(
    client: &dyn ModelClient,
    request: &ModelRequest,
) -> (Result<ModelResponse, ModelError>, Vec<StreamEvent>) {
    let mut events = Vec::new();
    let result = client
        .complete(request, &CancellationToken::new(), &mut |event| {
            events.push(event.clone())
        })
        .await;
    (result, events)
}

pub async fn complete(
    client: &dyn ModelClient,
) -> (Result<ModelResponse, ModelError>, Vec<StreamEvent>) {
    complete_request(client, &ask("hello")).await
}

pub fn arguments(response: &ModelResponse, index: usize) -> Value {
    serde_json::from_str(&response.tool_calls[index].arguments).unwrap()
}

/// A conversation with every kind of message: user text, tool calls alone and with text,
/// consecutive tool results, a plain answer, and a follow-up.
pub fn conversation() -> ModelRequest {
    ModelRequest {
        model: "test-model".into(),
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
                content: Some("Reading both.".into()),
                tool_calls: vec![
                    ToolCall {
                        id: "call_2".into(),
                        name: "read_file".into(),
                        arguments: r#"{"path":"Cargo.toml"}"#.into(),
                    },
                    ToolCall {
                        id: "call_3".into(),
                        name: "read_file".into(),
                        arguments: r#"{"path":"src/lib.rs"}"#.into(),
                    },
                ],
                reasoning: vec![],
            },
            Message::Tool {
                call_id: "call_2".into(),
                content: "[package]".into(),
            },
            Message::Tool {
                call_id: "call_3".into(),
                content: "pub fn f() {}".into(),
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
    }
}
