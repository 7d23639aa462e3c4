//! Turns Anthropic Messages events into [`StreamEvent`]s.
//!
//! The stream opens content blocks by index (text, tool use, thinking), fills them with
//! deltas, and closes them; tool calls get our dense indexes, thinking is gathered whole with
//! its signature so it can be sent back verbatim. Usage comes in two halves: input in
//! `message_start`, output in `message_delta`. It knows nothing of HTTP so every case can be
//! tested on plain strings.

use std::collections::BTreeMap;

use serde_json::Value;

use super::wire::{ContentBlock, Delta, Event, WholeMessage, WireError, WireUsage};
use crate::http::{Decode, excerpt};
use crate::{ModelError, ReasoningBlock, StopReason, StreamEvent};

/// The state of one answer being decoded.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    /// Open and closed content blocks, by the provider's index.
    blocks: BTreeMap<usize, Block>,
    /// How many tool calls have been announced: the next dense index.
    tool_calls: usize,
    usage: WireUsage,
    stop_reason: Option<String>,
    completed: bool,
}

#[derive(Debug)]
enum Block {
    Text,
    Tool {
        index: usize,
        /// `input` as the start event gave it, used when no argument deltas follow.
        input: Option<Value>,
        streamed: bool,
    },
    Thinking {
        thinking: String,
        signature: String,
    },
    RedactedThinking {
        data: String,
    },
    /// A kind we do not use (server tools and their results).
    Other,
    Closed,
}

impl Decode for Decoder {
    fn event(&mut self, name: &str, data: &str) -> Result<Vec<StreamEvent>, ModelError> {
        let event: Event = serde_json::from_str(data).map_err(|err| {
            malformed(format!(
                "an event is not valid JSON ({err}): {}",
                excerpt(data)
            ))
        })?;
        let kind = if event.r#type.is_empty() {
            name
        } else {
            event.r#type.as_str()
        };
        let mut events = Vec::new();
        match kind {
            "message_start" => {
                if let Some(usage) = event.message.as_ref().and_then(|m| m.usage.as_ref()) {
                    self.usage.update(usage);
                }
            }
            "content_block_start" => {
                let index = self.index(&event, data)?;
                let Some(block) = event.content_block else {
                    return Err(malformed(format!(
                        "content_block_start without a content_block: {}",
                        excerpt(data)
                    )));
                };
                let block = self.start(block, &mut events)?;
                self.blocks.insert(index, block);
            }
            "content_block_delta" => {
                let index = self.index(&event, data)?;
                let delta = event.delta.unwrap_or_default();
                self.delta(index, delta, &mut events)?;
            }
            "content_block_stop" => {
                let index = self.index(&event, data)?;
                self.stop(index, &mut events)?;
            }
            "message_delta" => {
                if let Some(reason) = event.delta.and_then(|delta| delta.stop_reason) {
                    self.stop_reason = Some(reason);
                }
                if let Some(usage) = &event.usage {
                    self.usage.update(usage);
                }
            }
            "message_stop" => events.push(self.complete()),
            "error" => return Err(api_error(&event.error.unwrap_or_default())),
            // `ping`, and events added to the protocol after this was written.
            _ => {}
        }
        Ok(events)
    }

    fn end_of_stream(&mut self) -> Result<Vec<StreamEvent>, ModelError> {
        if self.stop_reason.is_none() {
            return Err(malformed(
                "the stream ended without a stop_reason or message_stop: the answer may be cut short"
                    .into(),
            ));
        }
        Ok(vec![self.complete()])
    }

    fn is_completed(&self) -> bool {
        self.completed
    }

    fn whole(body: &str) -> Result<Vec<StreamEvent>, ModelError> {
        let message: WholeMessage = serde_json::from_str(body).map_err(|err| {
            malformed(format!(
                "the message is not valid JSON ({err}): {}",
                excerpt(body)
            ))
        })?;
        if let Some(error) = &message.error {
            return Err(api_error(error));
        }
        let Some(content) = message.content.filter(|_| message.r#type != "error") else {
            return Err(malformed(format!(
                "the message has no content: {}",
                excerpt(body)
            )));
        };
        let mut decoder = Decoder::default();
        let mut events = Vec::new();
        for (index, block) in content.into_iter().enumerate() {
            let block = decoder.start(block, &mut events)?;
            decoder.blocks.insert(index, block);
            decoder.stop(index, &mut events)?;
        }
        if let Some(usage) = &message.usage {
            decoder.usage.update(usage);
        }
        decoder.stop_reason = message.stop_reason;
        events.push(decoder.complete());
        Ok(events)
    }
}

impl Decoder {
    fn index(&self, event: &Event, data: &str) -> Result<usize, ModelError> {
        event.index.ok_or_else(|| {
            malformed(format!(
                "a content block event without an index: {}",
                excerpt(data)
            ))
        })
    }

    fn start(
        &mut self,
        block: ContentBlock,
        events: &mut Vec<StreamEvent>,
    ) -> Result<Block, ModelError> {
        Ok(match block.r#type.as_str() {
            "text" => {
                if let Some(text) = block.text.filter(|text| !text.is_empty()) {
                    events.push(StreamEvent::TextDelta(text));
                }
                Block::Text
            }
            "tool_use" => {
                let (Some(id), Some(name)) = (block.id, block.name) else {
                    return Err(malformed("a tool_use block without an id or a name".into()));
                };
                let index = self.tool_calls;
                self.tool_calls += 1;
                events.push(StreamEvent::ToolCallStarted { index, id, name });
                let input = block
                    .input
                    .filter(|input| input.as_object().is_none_or(|object| !object.is_empty()));
                Block::Tool {
                    index,
                    input,
                    streamed: false,
                }
            }
            "thinking" => {
                let thinking = block.thinking.unwrap_or_default();
                if !thinking.is_empty() {
                    events.push(StreamEvent::ReasoningDelta(thinking.clone()));
                }
                Block::Thinking {
                    thinking,
                    signature: block.signature.unwrap_or_default(),
                }
            }
            "redacted_thinking" => Block::RedactedThinking {
                data: block.data.unwrap_or_default(),
            },
            _ => Block::Other,
        })
    }

    fn delta(
        &mut self,
        index: usize,
        delta: Delta,
        events: &mut Vec<StreamEvent>,
    ) -> Result<(), ModelError> {
        let Some(block) = self.blocks.get_mut(&index) else {
            return Err(malformed(format!(
                "a delta for content block {index}, which never started"
            )));
        };
        match (block, delta.r#type.as_deref().unwrap_or_default()) {
            (Block::Text, "text_delta") => {
                if let Some(text) = delta.text.filter(|text| !text.is_empty()) {
                    events.push(StreamEvent::TextDelta(text));
                }
            }
            (
                Block::Tool {
                    index, streamed, ..
                },
                "input_json_delta",
            ) => {
                if let Some(arguments) = delta.partial_json.filter(|json| !json.is_empty()) {
                    *streamed = true;
                    events.push(StreamEvent::ToolCallDelta {
                        index: *index,
                        arguments,
                    });
                }
            }
            (Block::Thinking { thinking, .. }, "thinking_delta") => {
                if let Some(more) = delta.thinking.filter(|more| !more.is_empty()) {
                    thinking.push_str(&more);
                    events.push(StreamEvent::ReasoningDelta(more));
                }
            }
            (Block::Thinking { signature, .. }, "signature_delta") => {
                signature.push_str(&delta.signature.unwrap_or_default());
            }
            (Block::Closed, kind) => {
                return Err(malformed(format!(
                    "a {kind} for content block {index} after it was closed"
                )));
            }
            // Citations and the deltas of blocks we do not use.
            _ => {}
        }
        Ok(())
    }

    fn stop(&mut self, index: usize, events: &mut Vec<StreamEvent>) -> Result<(), ModelError> {
        let Some(block) = self.blocks.get_mut(&index) else {
            return Err(malformed(format!(
                "content block {index} stopped, but it never started"
            )));
        };
        match std::mem::replace(block, Block::Closed) {
            Block::Tool {
                index,
                input,
                streamed: false,
            } => events.push(StreamEvent::ToolCallDelta {
                index,
                arguments: input.map_or_else(|| "{}".to_string(), |input| input.to_string()),
            }),
            Block::Thinking {
                thinking,
                signature,
            } => events.push(StreamEvent::Reasoning(ReasoningBlock::AnthropicThinking {
                thinking,
                signature,
            })),
            Block::RedactedThinking { data } => events.push(StreamEvent::Reasoning(
                ReasoningBlock::AnthropicRedactedThinking { data },
            )),
            Block::Tool { .. } | Block::Text | Block::Other | Block::Closed => {}
        }
        Ok(())
    }

    fn complete(&mut self) -> StreamEvent {
        self.completed = true;
        StreamEvent::Completed {
            usage: (&self.usage).into(),
            stop_reason: self
                .stop_reason
                .as_deref()
                .map_or(StopReason::Other, stop_reason),
        }
    }
}

fn stop_reason(reason: &str) -> StopReason {
    match reason {
        // We set no stop sequences; a server that stops at one has finished its answer.
        "end_turn" | "stop_sequence" => StopReason::EndTurn,
        "tool_use" => StopReason::ToolUse,
        "max_tokens" | "model_context_window_exceeded" => StopReason::MaxTokens,
        "refusal" => StopReason::ContentFilter,
        // `pause_turn` is for server-side tools, which we do not use.
        _ => StopReason::Other,
    }
}

/// An error the API reported in a 200 stream (or body), as the HTTP error it stands for.
fn api_error(error: &WireError) -> ModelError {
    let body = format!("{}: {}", error.r#type, error.message);
    match error.r#type.as_str() {
        "overloaded_error" => ModelError::Server { status: 529, body },
        "api_error" => ModelError::Server { status: 500, body },
        "rate_limit_error" => ModelError::RateLimited {
            retry_after: None,
            body,
        },
        "authentication_error" => ModelError::Unauthorized { status: 401, body },
        "permission_error" => ModelError::Unauthorized { status: 403, body },
        "not_found_error" => ModelError::Rejected { status: 404, body },
        "request_too_large" => ModelError::Rejected { status: 413, body },
        "invalid_request_error" => ModelError::Rejected { status: 400, body },
        _ => malformed(format!(
            "the server reported an error instead of an answer: {body}"
        )),
    }
}

fn malformed(detail: String) -> ModelError {
    ModelError::Malformed { detail }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use nightshift_protocol::Usage;

    use super::*;

    fn decode(events: &[&str]) -> Result<Vec<StreamEvent>, ModelError> {
        let mut decoder = Decoder::default();
        let mut out = Vec::new();
        for event in events {
            out.extend(decoder.event("", event)?);
            if decoder.is_completed() {
                return Ok(out);
            }
        }
        out.extend(decoder.end_of_stream()?);
        Ok(out)
    }

    const START: &str = r#"{"type":"message_start","message":{"usage":{"input_tokens":10,"cache_creation_input_tokens":100,"cache_read_input_tokens":1000,"output_tokens":1}}}"#;
    const STOP: &str = r#"{"type":"message_stop"}"#;

    fn end(reason: &str) -> String {
        format!(
            r#"{{"type":"message_delta","delta":{{"stop_reason":"{reason}"}},"usage":{{"output_tokens":42}}}}"#
        )
    }

    #[test]
    fn decodes_text_tools_and_usage() {
        let end = end("tool_use");
        let events = decode(&[
            START,
            r#"{"type":"ping"}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"shell","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"c\":"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"1}"}}"#,
            r#"{"type":"content_block_stop","index":1}"#,
            r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_2","name":"list","input":{}}}"#,
            r#"{"type":"content_block_stop","index":2}"#,
            &end,
            STOP,
        ])
        .unwrap();
        assert_eq!(
            events,
            [
                StreamEvent::TextDelta("Hi".into()),
                StreamEvent::ToolCallStarted {
                    index: 0,
                    id: "toolu_1".into(),
                    name: "shell".into()
                },
                StreamEvent::ToolCallDelta {
                    index: 0,
                    arguments: "{\"c\":".into()
                },
                StreamEvent::ToolCallDelta {
                    index: 0,
                    arguments: "1}".into()
                },
                StreamEvent::ToolCallStarted {
                    index: 1,
                    id: "toolu_2".into(),
                    name: "list".into()
                },
                StreamEvent::ToolCallDelta {
                    index: 1,
                    arguments: "{}".into()
                },
                StreamEvent::Completed {
                    usage: Usage {
                        input_tokens: 1110,
                        cached_input_tokens: 1000,
                        output_tokens: 42
                    },
                    stop_reason: StopReason::ToolUse
                }
            ]
        );
    }

    #[test]
    fn gathers_thinking_with_its_signature() {
        let end = end("end_turn");
        let events = decode(&[
            START,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me "}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"see."}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQB"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"Zz=="}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"redacted_thinking","data":"opaque"}}"#,
            r#"{"type":"content_block_stop","index":1}"#,
            &end,
            STOP,
        ])
        .unwrap();
        assert_eq!(
            events[..4],
            [
                StreamEvent::ReasoningDelta("Let me ".into()),
                StreamEvent::ReasoningDelta("see.".into()),
                StreamEvent::Reasoning(ReasoningBlock::AnthropicThinking {
                    thinking: "Let me see.".into(),
                    signature: "EqQBZz==".into()
                }),
                StreamEvent::Reasoning(ReasoningBlock::AnthropicRedactedThinking {
                    data: "opaque".into()
                }),
            ]
        );
    }

    #[test]
    fn stop_reasons_map() {
        for (reason, expected) in [
            ("end_turn", StopReason::EndTurn),
            ("stop_sequence", StopReason::EndTurn),
            ("tool_use", StopReason::ToolUse),
            ("max_tokens", StopReason::MaxTokens),
            ("refusal", StopReason::ContentFilter),
            ("pause_turn", StopReason::Other),
        ] {
            let events = decode(&[START, &end(reason), STOP]).unwrap();
            assert!(
                matches!(events[..], [StreamEvent::Completed { stop_reason, .. }] if stop_reason == expected),
                "{reason}: {events:?}"
            );
        }
    }

    #[test]
    fn errors_in_the_stream_keep_their_meaning() {
        let overloaded = decode(&[
            START,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        ])
        .unwrap_err();
        assert!(
            matches!(overloaded, ModelError::Server { status: 529, .. }),
            "{overloaded:?}"
        );
        assert!(overloaded.is_retryable());
        let invalid = decode(&[
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}"#,
        ])
        .unwrap_err();
        assert!(!invalid.is_retryable(), "{invalid:?}");
    }

    #[test]
    fn explains_what_is_malformed() {
        for (events, expected) in [
            (&["{nope"][..], "not valid JSON"),
            (
                &[
                    r#"{"type":"content_block_delta","index":3,"delta":{"type":"text_delta","text":"x"}}"#,
                ][..],
                "never started",
            ),
            (
                &[
                    r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","input":{}}}"#,
                ][..],
                "without an id",
            ),
            (&[START][..], "without a stop_reason"),
        ] {
            let err = decode(events).unwrap_err();
            assert!(matches!(err, ModelError::Malformed { .. }), "{err:?}");
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    #[test]
    fn whole_messages_become_the_same_events() {
        let events = Decoder::whole(
            r#"{"type":"message","content":[{"type":"text","text":"ok"},{"type":"tool_use","id":"t","name":"x","input":{"a":1}}],"stop_reason":"tool_use","usage":{"input_tokens":3,"output_tokens":2}}"#,
        )
        .unwrap();
        assert_eq!(events.len(), 4, "{events:?}");
        assert_eq!(
            events[2],
            StreamEvent::ToolCallDelta {
                index: 0,
                arguments: r#"{"a":1}"#.into()
            }
        );
    }
}
