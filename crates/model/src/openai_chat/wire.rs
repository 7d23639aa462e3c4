//! The Chat Completions wire shapes, kept apart from the client so the translation from our
//! conversation to the provider's JSON can be read (and snapshot-tested) in one place.
//!
//! Requests are structs rather than `json!` so that equal requests serialize to equal bytes:
//! providers cache prompt prefixes byte by byte. Responses are lenient (everything optional)
//! because "compatible" servers differ in what they leave out; the decoder decides what is
//! missing for real.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Message, ModelRequest, ToolCall, ToolSpec};

#[derive(Debug, Serialize)]
pub(super) struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<ChatMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ChatTool<'a>>,
    stream: bool,
    stream_options: StreamOptions,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
}

#[derive(Debug, Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Debug, Serialize)]
#[serde(tag = "role", rename_all = "snake_case")]
enum ChatMessage<'a> {
    System {
        content: &'a str,
    },
    User {
        content: &'a str,
    },
    Assistant {
        /// `null` when the assistant only called tools: the protocol wants the key present.
        content: Option<&'a str>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ChatToolCall<'a>>,
    },
    Tool {
        tool_call_id: &'a str,
        content: &'a str,
    },
}

#[derive(Debug, Serialize)]
struct ChatToolCall<'a> {
    id: &'a str,
    r#type: &'static str,
    function: ChatFunctionCall<'a>,
}

#[derive(Debug, Serialize)]
struct ChatFunctionCall<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Debug, Serialize)]
struct ChatTool<'a> {
    r#type: &'static str,
    function: ChatFunction<'a>,
}

#[derive(Debug, Serialize)]
struct ChatFunction<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a Value,
}

impl<'a> ChatRequest<'a> {
    pub(super) fn new(request: &'a ModelRequest) -> Self {
        let mut messages = Vec::with_capacity(request.messages.len() + 1);
        messages.push(ChatMessage::System {
            content: &request.system,
        });
        messages.extend(request.messages.iter().map(ChatMessage::from));
        ChatRequest {
            model: &request.model,
            messages,
            tools: request.tools.iter().map(ChatTool::from).collect(),
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
            max_completion_tokens: request.max_output_tokens,
        }
    }
}

impl<'a> From<&'a Message> for ChatMessage<'a> {
    fn from(message: &'a Message) -> Self {
        match message {
            Message::User { content } => ChatMessage::User { content },
            // Chat Completions has no way to send reasoning back; it is dropped.
            Message::Assistant {
                content,
                tool_calls,
                reasoning: _,
            } => ChatMessage::Assistant {
                content: content.as_deref(),
                tool_calls: tool_calls.iter().map(ChatToolCall::from).collect(),
            },
            Message::Tool { call_id, content } => ChatMessage::Tool {
                tool_call_id: call_id,
                content,
            },
        }
    }
}

impl<'a> From<&'a ToolCall> for ChatToolCall<'a> {
    fn from(call: &'a ToolCall) -> Self {
        ChatToolCall {
            id: &call.id,
            r#type: "function",
            function: ChatFunctionCall {
                name: &call.name,
                arguments: &call.arguments,
            },
        }
    }
}

impl<'a> From<&'a ToolSpec> for ChatTool<'a> {
    fn from(tool: &'a ToolSpec) -> Self {
        ChatTool {
            r#type: "function",
            function: ChatFunction {
                name: &tool.name,
                description: &tool.description,
                parameters: &tool.parameters,
            },
        }
    }
}

/// One streamed chunk (`chat.completion.chunk`) or, with `message` instead of `delta` in its
/// choices, a whole non-streamed completion (`chat.completion`).
#[derive(Debug, Default, Deserialize)]
pub(super) struct Completion {
    #[serde(default)]
    pub choices: Option<Vec<Choice>>,
    #[serde(default)]
    pub usage: Option<WireUsage>,
    /// Some servers report failures inside a 200 stream.
    #[serde(default)]
    pub error: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Choice {
    #[serde(default)]
    pub index: Option<u64>,
    #[serde(default)]
    pub delta: Option<Delta>,
    #[serde(default)]
    pub message: Option<Delta>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// A streamed `delta` or a whole `message`: the same fields, whole or in pieces.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Delta {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct WireToolCall {
    #[serde(default)]
    pub index: Option<u64>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub function: Option<WireFunction>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct WireFunction {
    #[serde(default)]
    pub name: Option<String>,
    /// A string by the protocol; a few servers send the object itself.
    #[serde(default)]
    pub arguments: Option<Value>,
}

impl WireFunction {
    pub fn arguments_text(&self) -> Option<String> {
        match &self.arguments {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(text.clone()),
            Some(other) => Some(other.to_string()),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct WireUsage {
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    #[serde(default)]
    pub completion_tokens: Option<u64>,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct PromptTokensDetails {
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

impl From<&WireUsage> for nightshift_protocol::Usage {
    fn from(usage: &WireUsage) -> Self {
        nightshift_protocol::Usage {
            input_tokens: usage.prompt_tokens.unwrap_or(0),
            cached_input_tokens: usage
                .prompt_tokens_details
                .as_ref()
                .and_then(|details| details.cached_tokens)
                .unwrap_or(0),
            output_tokens: usage.completion_tokens.unwrap_or(0),
        }
    }
}

/// The message of an `error` object, or the object itself when it has none.
pub(super) fn error_message(error: &Value) -> String {
    error
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| error.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_serialize_in_a_fixed_order() {
        let request = ModelRequest {
            model: "m".into(),
            system: "s".into(),
            messages: vec![
                Message::User {
                    content: "u".into(),
                },
                Message::Assistant {
                    content: None,
                    tool_calls: vec![ToolCall {
                        id: "c".into(),
                        name: "t".into(),
                        arguments: "{}".into(),
                    }],
                    reasoning: vec![],
                },
                Message::Tool {
                    call_id: "c".into(),
                    content: "r".into(),
                },
            ],
            tools: vec![ToolSpec {
                name: "t".into(),
                description: "d".into(),
                parameters: json!({"type": "object", "properties": {}}),
            }],
            max_output_tokens: Some(7),
        };
        let bytes = serde_json::to_string(&ChatRequest::new(&request)).unwrap();
        assert_eq!(
            bytes,
            concat!(
                r#"{"model":"m","messages":[{"role":"system","content":"s"},"#,
                r#"{"role":"user","content":"u"},"#,
                r#"{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"t","arguments":"{}"}}]},"#,
                r#"{"role":"tool","tool_call_id":"c","content":"r"}],"#,
                r#""tools":[{"type":"function","function":{"name":"t","description":"d","parameters":{"properties":{},"type":"object"}}}],"#,
                r#""stream":true,"stream_options":{"include_usage":true},"max_completion_tokens":7}"#
            )
        );
        assert_eq!(
            bytes,
            serde_json::to_string(&ChatRequest::new(&request.clone())).unwrap()
        );
    }

    #[test]
    fn tools_and_the_token_limit_are_left_out_when_unset() {
        let request = ModelRequest {
            model: "m".into(),
            system: "s".into(),
            messages: vec![],
            tools: vec![],
            max_output_tokens: None,
        };
        let body = serde_json::to_value(ChatRequest::new(&request)).unwrap();
        assert!(body.get("tools").is_none());
        assert!(body.get("max_completion_tokens").is_none());
    }
}
