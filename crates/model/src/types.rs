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
}

/// Folds a stream into a response. Fails with [`ModelError::Malformed`] if the stream ends
/// without [`StreamEvent::Completed`], and with [`ModelError::Cancelled`] once `cancel` fires.
pub(crate) async fn collect(
    stream: impl Future<Output = Result<ResponseStream, ModelError>>,
    cancel: &CancellationToken,
    on_event: &mut (dyn FnMut(&StreamEvent) + Send),
) -> Result<ModelResponse, ModelError> {
    let mut stream = tokio::select! {
        stream = stream => stream?,
        _ = cancel.cancelled() => return Err(ModelError::Cancelled),
    };
    let mut response = ModelResponse::default();
    let mut text = String::new();
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
        match event {
            StreamEvent::TextDelta(delta) => text.push_str(&delta),
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
            StreamEvent::Completed { usage, stop_reason } => {
                response.usage = usage;
                response.stop_reason = Some(stop_reason);
                break;
            }
        }
    }
    if !text.is_empty() {
        response.text = Some(text);
    }
    Ok(response)
}
