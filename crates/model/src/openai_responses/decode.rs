//! Turns OpenAI Responses events into [`StreamEvent`]s.
//!
//! Output items are numbered by `output_index`: text arrives as `output_text` deltas, a
//! function call is announced by `output_item.added` and filled by argument deltas, reasoning
//! is taken whole from `output_item.done`. `response.completed` carries the usage. It knows
//! nothing of HTTP so every case can be tested on plain strings.

use std::collections::BTreeMap;

use serde_json::Value;

use super::wire::{Event, Response, WireError, field};
use crate::http::{Decode, excerpt};
use crate::{ModelError, ReasoningBlock, StopReason, StreamEvent};

/// The state of one answer being decoded.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    /// Function calls by `output_index`.
    calls: BTreeMap<u64, Call>,
    refused: bool,
    completed: bool,
}

#[derive(Debug)]
struct Call {
    /// Our dense index.
    index: usize,
    /// Whether any arguments went out yet.
    streamed: bool,
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
            "response.output_text.delta" => {
                if let Some(text) = event.delta.filter(|text| !text.is_empty()) {
                    events.push(StreamEvent::TextDelta(text));
                }
            }
            "response.refusal.delta" => {
                self.refused = true;
                if let Some(text) = event.delta.filter(|text| !text.is_empty()) {
                    events.push(StreamEvent::TextDelta(text));
                }
            }
            "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
                if let Some(text) = event.delta.filter(|text| !text.is_empty()) {
                    events.push(StreamEvent::ReasoningDelta(text));
                }
            }
            "response.output_item.added" => {
                let item = event.item.unwrap_or_default();
                if field(&item, "type") == Some("function_call") {
                    let output_index = self.output_index(event.output_index, data)?;
                    self.start_call(output_index, &item, &mut events)?;
                }
            }
            "response.function_call_arguments.delta" => {
                let output_index = self.output_index(event.output_index, data)?;
                let Some(call) = self.calls.get_mut(&output_index) else {
                    return Err(malformed(format!(
                        "arguments for output item {output_index}, which is not a function call that started"
                    )));
                };
                if let Some(arguments) = event.delta.filter(|delta| !delta.is_empty()) {
                    call.streamed = true;
                    events.push(StreamEvent::ToolCallDelta {
                        index: call.index,
                        arguments,
                    });
                }
            }
            "response.function_call_arguments.done" => {
                let output_index = self.output_index(event.output_index, data)?;
                if let Some(arguments) = event.arguments {
                    self.finish_arguments(output_index, &arguments, &mut events);
                }
            }
            "response.output_item.done" => {
                let item = event.item.unwrap_or_default();
                match field(&item, "type") {
                    Some("function_call") => {
                        let output_index = self.output_index(event.output_index, data)?;
                        if !self.calls.contains_key(&output_index) {
                            self.start_call(output_index, &item, &mut events)?;
                        }
                        let arguments = field(&item, "arguments").unwrap_or_default();
                        self.finish_arguments(output_index, arguments, &mut events);
                    }
                    Some("reasoning") => {
                        events.push(StreamEvent::Reasoning(ReasoningBlock::OpenAiReasoning {
                            item,
                        }))
                    }
                    _ => {}
                }
            }
            "response.completed" | "response.incomplete" => {
                let response = event.response.unwrap_or_default();
                events.push(self.complete(&response));
            }
            "response.failed" => {
                let error = event.response.and_then(|r| r.error).unwrap_or_default();
                return Err(api_error(&error));
            }
            "error" => {
                let error = event.error.unwrap_or(WireError {
                    code: event.code,
                    message: event.message,
                });
                return Err(api_error(&error));
            }
            // `response.created`, `.in_progress`, `.content_part.*`, `.output_text.done`, and
            // events added to the protocol after this was written.
            _ => {}
        }
        Ok(events)
    }

    fn end_of_stream(&mut self) -> Result<Vec<StreamEvent>, ModelError> {
        Err(malformed(
            "the stream ended without response.completed: the answer may be cut short".into(),
        ))
    }

    fn is_completed(&self) -> bool {
        self.completed
    }

    fn whole(body: &str) -> Result<Vec<StreamEvent>, ModelError> {
        let response: Response = serde_json::from_str(body).map_err(|err| {
            malformed(format!(
                "the response is not valid JSON ({err}): {}",
                excerpt(body)
            ))
        })?;
        if let Some(error) = &response.error {
            return Err(api_error(error));
        }
        let Some(output) = &response.output else {
            return Err(malformed(format!(
                "the response has no output: {}",
                excerpt(body)
            )));
        };
        let mut decoder = Decoder::default();
        let mut events = Vec::new();
        for (output_index, item) in output.iter().enumerate() {
            match field(item, "type") {
                Some("message") => {
                    let parts = item.get("content").and_then(Value::as_array);
                    for part in parts.into_iter().flatten() {
                        let refusal = field(part, "type") == Some("refusal");
                        decoder.refused |= refusal;
                        let text = field(part, if refusal { "refusal" } else { "text" });
                        if let Some(text) = text.filter(|text| !text.is_empty()) {
                            events.push(StreamEvent::TextDelta(text.to_string()));
                        }
                    }
                }
                Some("function_call") => {
                    let output_index = output_index as u64;
                    decoder.start_call(output_index, item, &mut events)?;
                    let arguments = field(item, "arguments").unwrap_or_default();
                    decoder.finish_arguments(output_index, arguments, &mut events);
                }
                Some("reasoning") => {
                    events.push(StreamEvent::Reasoning(ReasoningBlock::OpenAiReasoning {
                        item: item.clone(),
                    }))
                }
                _ => {}
            }
        }
        events.push(decoder.complete(&response));
        Ok(events)
    }
}

impl Decoder {
    fn output_index(&self, output_index: Option<u64>, data: &str) -> Result<u64, ModelError> {
        output_index.ok_or_else(|| {
            malformed(format!(
                "an output item event without an output_index: {}",
                excerpt(data)
            ))
        })
    }

    fn start_call(
        &mut self,
        output_index: u64,
        item: &Value,
        events: &mut Vec<StreamEvent>,
    ) -> Result<(), ModelError> {
        let (Some(id), Some(name)) = (field(item, "call_id"), field(item, "name")) else {
            return Err(malformed(format!(
                "a function call without a call_id or a name: {}",
                excerpt(&item.to_string())
            )));
        };
        let index = self.calls.len();
        events.push(StreamEvent::ToolCallStarted {
            index,
            id: id.to_string(),
            name: name.to_string(),
        });
        self.calls.insert(
            output_index,
            Call {
                index,
                streamed: false,
            },
        );
        if let Some(arguments) = field(item, "arguments").filter(|a| !a.is_empty()) {
            self.finish_arguments(output_index, arguments, events);
        }
        Ok(())
    }

    /// The whole arguments are known: send them if no deltas did.
    fn finish_arguments(
        &mut self,
        output_index: u64,
        arguments: &str,
        events: &mut Vec<StreamEvent>,
    ) {
        if let Some(call) = self.calls.get_mut(&output_index)
            && !call.streamed
            && !arguments.is_empty()
        {
            call.streamed = true;
            events.push(StreamEvent::ToolCallDelta {
                index: call.index,
                arguments: arguments.to_string(),
            });
        }
    }

    fn complete(&mut self, response: &Response) -> StreamEvent {
        self.completed = true;
        let incomplete = response
            .incomplete_details
            .as_ref()
            .and_then(|details| details.reason.as_deref());
        let stop_reason = match (response.status.as_deref(), incomplete) {
            (_, Some("max_output_tokens")) => StopReason::MaxTokens,
            (_, Some("content_filter")) => StopReason::ContentFilter,
            (Some("incomplete"), _) => StopReason::Other,
            _ if self.refused => StopReason::ContentFilter,
            _ if !self.calls.is_empty() => StopReason::ToolUse,
            _ => StopReason::EndTurn,
        };
        StreamEvent::Completed {
            usage: response.usage.as_ref().map(Into::into).unwrap_or_default(),
            stop_reason,
        }
    }
}

/// A failure reported inside a 200 stream, as the HTTP error it stands for.
fn api_error(error: &WireError) -> ModelError {
    let code = error.code.as_deref().unwrap_or_default();
    let message = error.message.as_deref().unwrap_or("no message");
    let body = if code.is_empty() {
        message.to_string()
    } else {
        format!("{code}: {message}")
    };
    match code {
        "rate_limit_exceeded" => ModelError::RateLimited {
            retry_after: None,
            body,
        },
        "" | "server_error" | "server_is_overloaded" => ModelError::Server { status: 500, body },
        "insufficient_quota" => ModelError::Rejected { status: 429, body },
        _ => ModelError::Rejected { status: 400, body },
    }
}

fn malformed(detail: String) -> ModelError {
    ModelError::Malformed { detail }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use nightshift_protocol::Usage;
    use serde_json::json;

    use super::*;

    fn decode(events: &[Value]) -> Result<Vec<StreamEvent>, ModelError> {
        let mut decoder = Decoder::default();
        let mut out = Vec::new();
        for event in events {
            let name = event["type"].as_str().unwrap_or_default().to_string();
            out.extend(decoder.event(&name, &event.to_string())?);
            if decoder.is_completed() {
                return Ok(out);
            }
        }
        out.extend(decoder.end_of_stream()?);
        Ok(out)
    }

    fn completed(usage: Value) -> Value {
        json!({"type": "response.completed", "response": {"status": "completed", "usage": usage}})
    }

    #[test]
    fn decodes_text_calls_reasoning_and_usage() {
        let reasoning = json!({"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Plan."}], "encrypted_content": "gAAA"});
        let events = decode(&[
            json!({"type": "response.created", "response": {}}),
            json!({"type": "response.output_item.added", "output_index": 0, "item": {"type": "reasoning", "id": "rs_1"}}),
            json!({"type": "response.reasoning_summary_text.delta", "output_index": 0, "delta": "Plan."}),
            json!({"type": "response.output_item.done", "output_index": 0, "item": reasoning}),
            json!({"type": "response.output_text.delta", "output_index": 1, "delta": "Hi"}),
            json!({"type": "response.output_item.added", "output_index": 2, "item": {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "shell", "arguments": ""}}),
            json!({"type": "response.function_call_arguments.delta", "output_index": 2, "delta": "{\"c\":"}),
            json!({"type": "response.function_call_arguments.delta", "output_index": 2, "delta": "1}"}),
            json!({"type": "response.function_call_arguments.done", "output_index": 2, "arguments": "{\"c\":1}"}),
            json!({"type": "response.output_item.done", "output_index": 2, "item": {"type": "function_call", "call_id": "call_a", "name": "shell", "arguments": "{\"c\":1}"}}),
            json!({"type": "response.output_item.done", "output_index": 3, "item": {"type": "function_call", "call_id": "call_b", "name": "list", "arguments": "{}"}}),
            completed(json!({"input_tokens": 50, "input_tokens_details": {"cached_tokens": 40}, "output_tokens": 7})),
        ])
        .unwrap();
        assert_eq!(
            events,
            [
                StreamEvent::ReasoningDelta("Plan.".into()),
                StreamEvent::Reasoning(ReasoningBlock::OpenAiReasoning { item: reasoning }),
                StreamEvent::TextDelta("Hi".into()),
                StreamEvent::ToolCallStarted {
                    index: 0,
                    id: "call_a".into(),
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
                    id: "call_b".into(),
                    name: "list".into()
                },
                StreamEvent::ToolCallDelta {
                    index: 1,
                    arguments: "{}".into()
                },
                StreamEvent::Completed {
                    usage: Usage {
                        input_tokens: 50,
                        cached_input_tokens: 40,
                        output_tokens: 7
                    },
                    stop_reason: StopReason::ToolUse
                }
            ]
        );
    }

    #[test]
    fn incomplete_answers_say_why() {
        let events = decode(&[json!({"type": "response.incomplete", "response": {
            "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}
        }})])
        .unwrap();
        assert!(
            matches!(
                events[..],
                [StreamEvent::Completed {
                    stop_reason: StopReason::MaxTokens,
                    ..
                }]
            ),
            "{events:?}"
        );
        let events = decode(&[
            json!({"type": "response.refusal.delta", "delta": "I can't."}),
            completed(json!({})),
        ])
        .unwrap();
        assert!(
            matches!(
                events[1],
                StreamEvent::Completed {
                    stop_reason: StopReason::ContentFilter,
                    ..
                }
            ),
            "{events:?}"
        );
    }

    #[test]
    fn failures_keep_their_meaning() {
        let limited = decode(&[
            json!({"type": "response.failed", "response": {"status": "failed",
            "error": {"code": "rate_limit_exceeded", "message": "slow down"}}}),
        ])
        .unwrap_err();
        assert!(
            matches!(limited, ModelError::RateLimited { .. }),
            "{limited:?}"
        );
        let server = decode(&[json!({"type": "error", "code": "server_error", "message": "oops"})])
            .unwrap_err();
        assert!(server.is_retryable(), "{server:?}");
        let context = decode(&[
            json!({"type": "error", "code": "context_length_exceeded", "message": "too long"}),
        ])
        .unwrap_err();
        assert!(
            matches!(context, ModelError::Rejected { status: 400, .. }),
            "{context:?}"
        );
    }

    #[test]
    fn explains_what_is_malformed() {
        let err =
            decode(&[json!({"type": "response.output_text.delta", "delta": "cut"})]).unwrap_err();
        assert!(
            err.to_string().contains("without response.completed"),
            "{err}"
        );
        let err = decode(&[json!({"type": "response.function_call_arguments.delta", "output_index": 4, "delta": "{"})])
            .unwrap_err();
        assert!(
            err.to_string().contains("not a function call that started"),
            "{err}"
        );
        let mut decoder = Decoder::default();
        let err = decoder.event("", "{oops").unwrap_err();
        assert!(err.to_string().contains("not valid JSON"), "{err}");
    }

    #[test]
    fn whole_responses_become_the_same_events() {
        let events = Decoder::whole(
            &json!({"status": "completed", "output": [
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
                {"type": "function_call", "call_id": "c", "name": "x", "arguments": "{}"}
            ], "usage": {"input_tokens": 3, "output_tokens": 2}})
            .to_string(),
        )
        .unwrap();
        assert_eq!(events.len(), 4, "{events:?}");
        assert!(matches!(
            events[3],
            StreamEvent::Completed {
                stop_reason: StopReason::ToolUse,
                ..
            }
        ));
    }
}
