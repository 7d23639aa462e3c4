//! The provider-neutral shapes of a conversation with a model.

use std::future::Future;

use futures::StreamExt;
use nightshift_protocol::Usage;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{ModelError, ResponseStream};

/// Everything one model call needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRequest {
    /// The model name as the provider knows it (the part after `openai:`).
    pub model: String,
    /// The system prompt. Kept byte-stable across turns so providers can cache the prefix.
    pub system: String,
    pub messages: Vec<Message>,
    pub tools: Vec<ToolSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
}

/// One message of the conversation after the system prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Message {
    User {
        content: String,
    },
    Assistant {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
        /// The reasoning that came with this answer ([`ModelResponse::reasoning`]), sent back
        /// as it came.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        reasoning: Vec<ReasoningBlock>,
    },
    /// The result of the assistant's tool call `call_id`.
    Tool {
        call_id: String,
        content: String,
    },
}

/// A tool call made by the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id for the call, echoed back with its result.
    pub id: String,
    pub name: String,
    /// The arguments exactly as the model sent them: a JSON text that may not parse.
    pub arguments: String,
}

/// Reasoning a model did before it answered, kept so that it goes back to the provider exactly
/// as it came. Anthropic rejects a tool-use turn whose signed thinking was altered or dropped,
/// and OpenAI's stateless Responses API only remembers the reasoning it is sent back. Each
/// provider sends its own kind and drops the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReasoningBlock {
    /// An Anthropic `thinking` block and the signature that vouches for it.
    AnthropicThinking { thinking: String, signature: String },
    /// An Anthropic `redacted_thinking` block: encrypted, unreadable.
    AnthropicRedactedThinking { data: String },
    /// An OpenAI Responses `reasoning` output item, whole (with its `encrypted_content`).
    OpenAiReasoning { item: Value },
}

impl ReasoningBlock {
    /// The readable part, for display: the thinking, or the reasoning summary.
    pub fn text(&self) -> String {
        match self {
            ReasoningBlock::AnthropicThinking { thinking, .. } => thinking.clone(),
            ReasoningBlock::AnthropicRedactedThinking { .. } => String::new(),
            ReasoningBlock::OpenAiReasoning { item } => item
                .get("summary")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|part| part.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n\n"),
        }
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: Value,
}

/// Why the model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// It finished its answer.
    EndTurn,
    /// It wants tool calls run.
    ToolUse,
    /// It hit the output token limit.
    MaxTokens,
    /// The provider's content filter stopped it.
    ContentFilter,
    /// The provider gave no reason or one we do not know.
    Other,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::EndTurn => "end_turn",
            StopReason::ToolUse => "tool_use",
            StopReason::MaxTokens => "max_tokens",
            StopReason::ContentFilter => "content_filter",
            StopReason::Other => "other",
        }
    }
}

/// One piece of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// More of the answer's text.
    TextDelta(String),
    /// The model started tool call number `index` of this answer.
    ToolCallStarted {
        index: usize,
        id: String,
        name: String,
    },
    /// More of tool call `index`'s arguments.
    ToolCallDelta { index: usize, arguments: String },
    /// More of the model's readable reasoning (thinking or its summary), for live progress.
    ReasoningDelta(String),
    /// A finished block of reasoning, to be sent back with the next request.
    Reasoning(ReasoningBlock),
    /// The answer is complete.
    Completed {
        usage: Usage,
        stop_reason: StopReason,
    },
}

/// A whole answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelResponse {
    pub text: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    pub usage: Usage,
    pub stop_reason: Option<StopReason>,
    /// Reasoning to carry into the next request: copy it into [`Message::Assistant`]'s
    /// `reasoning` along with `text` and `tool_calls`.
    pub reasoning: Vec<ReasoningBlock>,
}

/// Folds a stream into a response. Fails with [`ModelError::Malformed`] if the stream ends
/// without [`StreamEvent::Completed`], and with [`ModelError::Cancelled`] once `cancel` fires.
pub(crate) async fn collect(
    stream: impl Future<Output = Result<ResponseStream, ModelError>>,
    cancel: &CancellationToken,
    on_event: &mut (dyn FnMut(&StreamEvent) + Send),
) -> Result<ModelResponse, Interrupted> {
    let mut stream = tokio::select! {
        stream = stream => stream.map_err(Interrupted::before)?,
        _ = cancel.cancelled() => return Err(Interrupted::before(ModelError::Cancelled)),
    };
    collect_started(&mut stream, cancel, on_event)
        .await
        .map_err(Interrupted::during)
}

/// A failed [`collect`]: the error, and whether the answer had started arriving (the client's
/// own retries only cover failures before it did).
pub(crate) struct Interrupted {
    pub(crate) error: ModelError,
    pub(crate) mid_stream: bool,
}

impl Interrupted {
    fn before(error: ModelError) -> Self {
        Interrupted {
            error,
            mid_stream: false,
        }
    }

    fn during(error: ModelError) -> Self {
        Interrupted {
            error,
            mid_stream: true,
        }
    }
}

async fn collect_started(
    stream: &mut ResponseStream,
    cancel: &CancellationToken,
    on_event: &mut (dyn FnMut(&StreamEvent) + Send),
) -> Result<ModelResponse, ModelError> {
    let mut builder = ResponseBuilder::default();
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = cancel.cancelled() => return Err(ModelError::Cancelled),
        };
        let Some(event) = next else {
            return Err(ModelError::Malformed {
                detail: "the stream ended before the answer was complete".into(),
            });
        };
        let event = event?;
        on_event(&event);
        if let Some(response) = builder.push(event)? {
            return Ok(response);
        }
    }
}

/// A response being put together from its events.
#[derive(Debug, Default)]
pub(crate) struct ResponseBuilder {
    response: ModelResponse,
    text: String,
}

impl ResponseBuilder {
    /// Adds one event; returns the whole response once it is [`StreamEvent::Completed`].
    pub fn push(&mut self, event: StreamEvent) -> Result<Option<ModelResponse>, ModelError> {
        let response = &mut self.response;
        match event {
            StreamEvent::TextDelta(delta) => self.text.push_str(&delta),
            StreamEvent::ToolCallStarted { index, id, name } => {
                if index != response.tool_calls.len() {
                    return Err(ModelError::Malformed {
                        detail: format!(
                            "tool call {index} started, but {} were expected before it",
                            response.tool_calls.len()
                        ),
                    });
                }
                response.tool_calls.push(ToolCall {
                    id,
                    name,
                    arguments: String::new(),
                });
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                let Some(call) = response.tool_calls.get_mut(index) else {
                    return Err(ModelError::Malformed {
                        detail: format!("arguments for tool call {index}, which never started"),
                    });
                };
                call.arguments.push_str(&arguments);
            }
            StreamEvent::ReasoningDelta(_) => {}
            StreamEvent::Reasoning(block) => response.reasoning.push(block),
            StreamEvent::Completed { usage, stop_reason } => {
                response.usage = usage;
                response.stop_reason = Some(stop_reason);
                let mut response = std::mem::take(response);
                if !self.text.is_empty() {
                    response.text = Some(std::mem::take(&mut self.text));
                }
                return Ok(Some(response));
            }
        }
        Ok(None)
    }
}
