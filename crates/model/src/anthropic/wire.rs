//! The Anthropic Messages wire shapes, kept apart from the client so the translation from our
//! conversation to the provider's JSON can be read (and snapshot-tested) in one place.
//!
//! Requests are structs rather than `json!` so that equal requests serialize to equal bytes:
//! the prompt cache matches prefixes byte by byte. Three `cache_control` breakpoints mark what
//! stays the same from turn to turn: the tool definitions, the system prompt, and the
//! conversation so far (its last block), so each turn reads the previous turn's prefix from the
//! cache and writes only what is new.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Message, ModelRequest, ReasoningBlock, ToolCall, ToolSpec};

#[derive(Debug, Serialize)]
pub(super) struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<Block<'a>>,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Tool<'a>>,
    stream: bool,
}

#[derive(Debug, Serialize)]
struct WireMessage<'a> {
    role: Role,
    content: Vec<Block<'a>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Role {
    User,
    Assistant,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
    },
    Thinking {
        thinking: &'a str,
        signature: &'a str,
    },
    RedactedThinking {
        data: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
    },
    ToolResult {
        tool_use_id: &'a str,
        content: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
    },
}

#[derive(Debug, Clone, Copy, Serialize)]
struct CacheControl {
    r#type: &'static str,
}

const EPHEMERAL: CacheControl = CacheControl {
    r#type: "ephemeral",
};

#[derive(Debug, Serialize)]
struct Tool<'a> {
    name: &'a str,
    description: &'a str,
    input_schema: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_control: Option<CacheControl>,
}

impl<'a> MessagesRequest<'a> {
    pub(super) fn new(request: &'a ModelRequest, max_tokens: u32) -> Self {
        let mut tools: Vec<Tool<'a>> = request.tools.iter().map(Tool::from).collect();
        if let Some(last) = tools.last_mut() {
            last.cache_control = Some(EPHEMERAL);
        }
        // The API rejects empty text blocks.
        let system = if request.system.is_empty() {
            Vec::new()
        } else {
            vec![Block::Text {
                text: &request.system,
                cache_control: Some(EPHEMERAL),
            }]
        };
        let mut messages: Vec<WireMessage<'a>> = Vec::with_capacity(request.messages.len());
        for message in &request.messages {
            let (role, content) = blocks(message);
            if content.is_empty() {
                continue;
            }
            // Roles must alternate: tool results and a following user note become one message.
            match messages.last_mut() {
                Some(previous) if previous.role == role => previous.content.extend(content),
                _ => messages.push(WireMessage { role, content }),
            }
        }
        if let Some(last) = messages.last_mut().and_then(|m| m.content.last_mut()) {
            last.mark_cache_breakpoint();
        }
        MessagesRequest {
            model: &request.model,
            max_tokens,
            system,
            messages,
            tools,
            stream: true,
        }
    }
}

impl Block<'_> {
    fn mark_cache_breakpoint(&mut self) {
        match self {
            Block::Text { cache_control, .. }
            | Block::ToolUse { cache_control, .. }
            | Block::ToolResult { cache_control, .. } => *cache_control = Some(EPHEMERAL),
            // Thinking blocks cannot carry a breakpoint; a conversation never ends with one.
            Block::Thinking { .. } | Block::RedactedThinking { .. } => {}
        }
    }
}

fn blocks(message: &Message) -> (Role, Vec<Block<'_>>) {
    match message {
        Message::User { content } => (Role::User, text_block(content).into_iter().collect()),
        Message::Assistant {
            content,
            tool_calls,
            reasoning,
        } => {
            // Thinking comes first, exactly as it was received.
            let mut blocks: Vec<Block<'_>> = reasoning
                .iter()
                .filter_map(|block| match block {
                    ReasoningBlock::AnthropicThinking {
                        thinking,
                        signature,
                    } => Some(Block::Thinking {
                        thinking,
                        signature,
                    }),
                    ReasoningBlock::AnthropicRedactedThinking { data } => {
                        Some(Block::RedactedThinking { data })
                    }
                    ReasoningBlock::OpenAiReasoning { .. } => None,
                })
                .collect();
            blocks.extend(content.as_deref().and_then(text_block));
            blocks.extend(tool_calls.iter().map(tool_use));
            (Role::Assistant, blocks)
        }
        Message::Tool { call_id, content } => (
            Role::User,
            vec![Block::ToolResult {
                tool_use_id: call_id,
                content,
                cache_control: None,
            }],
        ),
    }
}

fn text_block(text: &str) -> Option<Block<'_>> {
    (!text.is_empty()).then_some(Block::Text {
        text,
        cache_control: None,
    })
}

fn tool_use(call: &ToolCall) -> Block<'_> {
    // The API wants the arguments as an object. Arguments that were not one already got an
    // error as their tool result, which tells the model what it sent.
    let input = match serde_json::from_str::<Value>(&call.arguments) {
        Ok(Value::Object(object)) => Value::Object(object),
        _ => Value::Object(Map::new()),
    };
    Block::ToolUse {
        id: &call.id,
        name: &call.name,
        input,
        cache_control: None,
    }
}

impl<'a> From<&'a ToolSpec> for Tool<'a> {
    fn from(tool: &'a ToolSpec) -> Self {
        Tool {
            name: &tool.name,
            description: &tool.description,
            input_schema: &tool.parameters,
            cache_control: None,
        }
    }
}

/// One streamed event's `data`. Everything is optional: the decoder decides what is missing.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Event {
    #[serde(default)]
    pub r#type: String,
    #[serde(default)]
    pub index: Option<usize>,
    /// `message_start`'s message.
    #[serde(default)]
    pub message: Option<StartedMessage>,
    /// `content_block_start`'s block.
    #[serde(default)]
    pub content_block: Option<ContentBlock>,
    /// `content_block_delta`'s and `message_delta`'s delta.
    #[serde(default)]
    pub delta: Option<Delta>,
    /// `message_delta`'s usage.
    #[serde(default)]
    pub usage: Option<WireUsage>,
    /// An `error` event's error.
    #[serde(default)]
    pub error: Option<WireError>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct StartedMessage {
    #[serde(default)]
    pub usage: Option<WireUsage>,
}

/// A content block as `content_block_start` opens it, or as a whole message lists it.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ContentBlock {
    #[serde(default)]
    pub r#type: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub input: Option<Value>,
    #[serde(default)]
    pub thinking: Option<String>,
    #[serde(default)]
    pub signature: Option<String>,
    #[serde(default)]
    pub data: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Delta {
    #[serde(default)]
    pub r#type: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub partial_json: Option<String>,
    #[serde(default)]
    pub thinking: Option<String>,
    #[serde(default)]
    pub signature: Option<String>,
    #[serde(default)]
    pub stop_reason: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub(super) struct WireUsage {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
}

impl WireUsage {
    /// Later counts replace earlier ones: `message_delta` repeats what changed, cumulatively.
    pub fn update(&mut self, newer: &WireUsage) {
        let fields = [
            (&mut self.input_tokens, newer.input_tokens),
            (
                &mut self.cache_creation_input_tokens,
                newer.cache_creation_input_tokens,
            ),
            (
                &mut self.cache_read_input_tokens,
                newer.cache_read_input_tokens,
            ),
            (&mut self.output_tokens, newer.output_tokens),
        ];
        for (field, newer) in fields {
            if newer.is_some() {
                *field = newer;
            }
        }
    }
}

/// Anthropic counts uncached, cache-written and cache-read input apart; our input is all of it.
impl From<&WireUsage> for nightshift_protocol::Usage {
    fn from(usage: &WireUsage) -> Self {
        let read = usage.cache_read_input_tokens.unwrap_or(0);
        nightshift_protocol::Usage {
            input_tokens: usage.input_tokens.unwrap_or(0)
                + usage.cache_creation_input_tokens.unwrap_or(0)
                + read,
            cached_input_tokens: read,
            output_tokens: usage.output_tokens.unwrap_or(0),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct WireError {
    #[serde(default)]
    pub r#type: String,
    #[serde(default)]
    pub message: String,
}

/// A whole, non-streamed message.
#[derive(Debug, Default, Deserialize)]
pub(super) struct WholeMessage {
    #[serde(default)]
    pub r#type: String,
    #[serde(default)]
    pub content: Option<Vec<ContentBlock>>,
    #[serde(default)]
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub usage: Option<WireUsage>,
    #[serde(default)]
    pub error: Option<WireError>,
}
