//! The OpenAI Responses wire shapes, kept apart from the client so the translation from our
//! conversation to the provider's JSON can be read (and snapshot-tested) in one place.
//!
//! Requests are stateless (`store: false`): the whole conversation goes every turn, and the
//! model's reasoning comes back encrypted so it can be handed back verbatim. Requests are
//! structs so that equal requests serialize to equal bytes, which the prompt cache needs.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Message, ModelRequest, ReasoningBlock, ToolSpec};

#[derive(Debug, Serialize)]
pub(super) struct ResponsesRequest<'a> {
    model: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    instructions: &'a str,
    input: Vec<InputItem<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<FunctionTool<'a>>,
    stream: bool,
    store: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    include: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u32>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum InputItem<'a> {
    Item(Item<'a>),
    /// A reasoning item exactly as the model produced it.
    Verbatim(&'a Value),
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Item<'a> {
    Message {
        role: &'static str,
        content: Vec<Content<'a>>,
    },
    FunctionCall {
        call_id: &'a str,
        name: &'a str,
        arguments: &'a str,
    },
    FunctionCallOutput {
        call_id: &'a str,
        output: &'a str,
    },
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Content<'a> {
    InputText { text: &'a str },
    OutputText { text: &'a str },
}

#[derive(Debug, Serialize)]
struct FunctionTool<'a> {
    r#type: &'static str,
    name: &'a str,
    description: &'a str,
    parameters: &'a Value,
    /// Our schemas have optional properties, which strict mode forbids.
    strict: bool,
}

impl<'a> ResponsesRequest<'a> {
    /// `reasoning`: whether the model is one whose encrypted reasoning to ask for (other models
    /// reject the `include`).
    pub(super) fn new(request: &'a ModelRequest, reasoning: bool) -> Self {
        let mut input = Vec::with_capacity(request.messages.len());
        for message in &request.messages {
            push_items(message, &mut input);
        }
        ResponsesRequest {
            model: &request.model,
            instructions: &request.system,
            input,
            tools: request.tools.iter().map(FunctionTool::from).collect(),
            stream: true,
            store: false,
            include: if reasoning {
                vec!["reasoning.encrypted_content"]
            } else {
                Vec::new()
            },
            max_output_tokens: request.max_output_tokens,
        }
    }
}

fn push_items<'a>(message: &'a Message, input: &mut Vec<InputItem<'a>>) {
    match message {
        Message::User { content } => input.push(InputItem::Item(Item::Message {
            role: "user",
            content: vec![Content::InputText { text: content }],
        })),
        Message::Assistant {
            content,
            tool_calls,
            reasoning,
        } => {
            input.extend(reasoning.iter().filter_map(|block| match block {
                ReasoningBlock::OpenAiReasoning { item } => Some(InputItem::Verbatim(item)),
                ReasoningBlock::AnthropicThinking { .. }
                | ReasoningBlock::AnthropicRedactedThinking { .. } => None,
            }));
            if let Some(text) = content.as_deref().filter(|text| !text.is_empty()) {
                input.push(InputItem::Item(Item::Message {
                    role: "assistant",
                    content: vec![Content::OutputText { text }],
                }));
            }
            input.extend(tool_calls.iter().map(|call| {
                InputItem::Item(Item::FunctionCall {
                    call_id: &call.id,
                    name: &call.name,
                    arguments: &call.arguments,
                })
            }));
        }
        Message::Tool { call_id, content } => {
            input.push(InputItem::Item(Item::FunctionCallOutput {
                call_id,
                output: content,
            }))
        }
    }
}

impl<'a> From<&'a ToolSpec> for FunctionTool<'a> {
    fn from(tool: &'a ToolSpec) -> Self {
        FunctionTool {
            r#type: "function",
            name: &tool.name,
            description: &tool.description,
            parameters: &tool.parameters,
            strict: false,
        }
    }
}

/// One streamed event's `data`. Everything is optional: the decoder decides what is missing.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Event {
    #[serde(default)]
    pub r#type: String,
    #[serde(default)]
    pub output_index: Option<u64>,
    #[serde(default)]
    pub delta: Option<String>,
    #[serde(default)]
    pub arguments: Option<String>,
    /// `response.output_item.added` / `.done`'s item.
    #[serde(default)]
    pub item: Option<Value>,
    /// `response.completed` / `.incomplete` / `.failed`'s response.
    #[serde(default)]
    pub response: Option<Response>,
    /// A top-level `error` event's fields.
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub error: Option<WireError>,
}

/// A string field of an output item (kept as JSON: reasoning items go back verbatim).
pub(super) fn field<'v>(item: &'v Value, name: &str) -> Option<&'v str> {
    item.get(name).and_then(Value::as_str)
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Response {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub output: Option<Vec<Value>>,
    #[serde(default)]
    pub usage: Option<WireUsage>,
    #[serde(default)]
    pub error: Option<WireError>,
    #[serde(default)]
    pub incomplete_details: Option<IncompleteDetails>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct IncompleteDetails {
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct WireError {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct WireUsage {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub input_tokens_details: Option<InputTokensDetails>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct InputTokensDetails {
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

impl From<&WireUsage> for nightshift_protocol::Usage {
    fn from(usage: &WireUsage) -> Self {
        nightshift_protocol::Usage {
            input_tokens: usage.input_tokens.unwrap_or(0),
            cached_input_tokens: usage
                .input_tokens_details
                .as_ref()
                .and_then(|details| details.cached_tokens)
                .unwrap_or(0),
            output_tokens: usage.output_tokens.unwrap_or(0),
        }
    }
}
