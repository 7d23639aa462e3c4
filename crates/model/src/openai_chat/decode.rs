//! Turns Chat Completions chunks into [`StreamEvent`]s.
//!
//! This is where the differences between "compatible" servers are absorbed: tool call ids and
//! names sent once or repeated, the first arguments in the name's chunk or after it, provider
//! indexes that are sparse or missing, usage in its own chunk or in the last one, or none at
//! all. It knows nothing of HTTP so every one of those cases can be tested on plain strings.

use nightshift_protocol::Usage;

use super::wire::{self, Choice, Completion, WireToolCall};
use crate::http::{Decode, excerpt};
use crate::{ModelError, StopReason, StreamEvent};

/// The state of one answer being decoded.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    calls: Vec<PendingCall>,
    /// How many tool calls have been announced: the next dense index.
    started: usize,
    stop_reason: Option<StopReason>,
    usage: Option<Usage>,
    completed: bool,
}

/// A tool call as the provider numbered it, until and after we announce it.
#[derive(Debug)]
struct PendingCall {
    provider_index: Option<u64>,
    id: Option<String>,
    name: Option<String>,
    /// Our dense index, once [`StreamEvent::ToolCallStarted`] went out.
    index: Option<usize>,
    /// Arguments that arrived before the name did.
    early_arguments: String,
}

impl Decoder {
    /// Decodes the `data` of one server-sent event.
    pub fn data(&mut self, data: &str) -> Result<Vec<StreamEvent>, ModelError> {
        if data.trim() == "[DONE]" {
            return Ok(vec![self.complete()?]);
        }
        let chunk: Completion = serde_json::from_str(data).map_err(|err| {
            malformed(format!(
                "a streamed chunk is not valid JSON ({err}): {}",
                excerpt(data)
            ))
        })?;
        if chunk.choices.as_ref().is_none_or(Vec::is_empty)
            && chunk.usage.is_none()
            && chunk.error.is_none()
        {
            return Err(malformed(format!(
                "a streamed chunk has no choices and no usage: {}",
                excerpt(data)
            )));
        }
        self.chunk(chunk)
    }

    /// The stream ended without `[DONE]`. That is fine only if the answer said why it stopped.
    pub fn end_of_stream(&mut self) -> Result<StreamEvent, ModelError> {
        if self.stop_reason.is_none() {
            return Err(malformed(
                "the stream ended without a finish_reason or [DONE]: the answer may be cut short"
                    .into(),
            ));
        }
        self.complete()
    }

    /// Decodes a whole non-streamed completion, for servers that ignore `stream: true`.
    pub fn whole(body: &str) -> Result<Vec<StreamEvent>, ModelError> {
        let mut completion: Completion = serde_json::from_str(body).map_err(|err| {
            malformed(format!(
                "the completion is not valid JSON ({err}): {}",
                excerpt(body)
            ))
        })?;
        if completion.choices.as_ref().is_none_or(Vec::is_empty) && completion.error.is_none() {
            return Err(malformed(format!(
                "the completion has no choices: {}",
                excerpt(body)
            )));
        }
        // A whole message lists its calls without indexes: their order is their index.
        for choice in completion.choices.iter_mut().flatten() {
            let calls = choice
                .message
                .iter_mut()
                .flat_map(|message| &mut message.tool_calls);
            for (position, call) in calls.flatten().enumerate() {
                call.index.get_or_insert(position as u64);
            }
        }
        let mut decoder = Decoder::default();
        let mut events = decoder.chunk(completion)?;
        events.push(decoder.complete()?);
        Ok(events)
    }

    fn chunk(&mut self, chunk: Completion) -> Result<Vec<StreamEvent>, ModelError> {
        if let Some(error) = &chunk.error {
            return Err(malformed(format!(
                "the server reported an error instead of an answer: {}",
                wire::error_message(error)
            )));
        }
        if let Some(usage) = &chunk.usage {
            self.usage = Some(usage.into());
        }
        let mut events = Vec::new();
        // We never ask for more than one choice; a server that sends others anyway is ignored.
        for choice in chunk.choices.unwrap_or_default() {
            if choice.index.unwrap_or(0) == 0 {
                self.choice(choice, &mut events);
            }
        }
        Ok(events)
    }

    fn choice(&mut self, choice: Choice, events: &mut Vec<StreamEvent>) {
        if let Some(delta) = choice.delta.or(choice.message) {
            if let Some(text) = delta.content.filter(|text| !text.is_empty()) {
                events.push(StreamEvent::TextDelta(text));
            }
            for call in delta.tool_calls.unwrap_or_default() {
                self.tool_call(call, events);
            }
        }
        if let Some(reason) = choice.finish_reason {
            self.stop_reason = Some(stop_reason(&reason));
        }
    }

    fn tool_call(&mut self, call: WireToolCall, events: &mut Vec<StreamEvent>) {
        let id = call.id.filter(|id| !id.is_empty());
        let slot = self.slot(call.index, id.as_deref());
        let pending = &mut self.calls[slot];
        if pending.id.is_none() {
            pending.id = id;
        }
        let arguments = call
            .function
            .as_ref()
            .and_then(|function| function.arguments_text());
        let name = call
            .function
            .and_then(|function| function.name)
            .filter(|n| !n.is_empty());
        if pending.name.is_none() {
            pending.name = name;
        }
        let arguments = arguments.unwrap_or_default();
        match (pending.index, &pending.name) {
            (Some(index), _) => {
                if !arguments.is_empty() {
                    events.push(StreamEvent::ToolCallDelta { index, arguments });
                }
            }
            (None, Some(name)) => {
                let index = self.started;
                self.started += 1;
                pending.index = Some(index);
                let id = pending.id.get_or_insert_with(made_up_call_id).clone();
                events.push(StreamEvent::ToolCallStarted {
                    index,
                    id,
                    name: name.clone(),
                });
                let mut arguments_so_far = std::mem::take(&mut pending.early_arguments);
                arguments_so_far.push_str(&arguments);
                if !arguments_so_far.is_empty() {
                    events.push(StreamEvent::ToolCallDelta {
                        index,
                        arguments: arguments_so_far,
                    });
                }
            }
            (None, None) => pending.early_arguments.push_str(&arguments),
        }
    }

    /// Which pending call a streamed tool call fragment belongs to.
    fn slot(&mut self, provider_index: Option<u64>, id: Option<&str>) -> usize {
        let found = match provider_index {
            Some(index) => self
                .calls
                .iter()
                .position(|call| call.provider_index == Some(index)),
            // Without an index, an unseen id starts a new call and anything else continues
            // the latest one.
            None => match id {
                Some(id) => self
                    .calls
                    .iter()
                    .position(|call| call.id.as_deref() == Some(id)),
                None if !self.calls.is_empty() => Some(self.calls.len() - 1),
                None => None,
            },
        };
        if let Some(slot) = found {
            return slot;
        }
        self.calls.push(PendingCall {
            provider_index,
            id: None,
            name: None,
            index: None,
            early_arguments: String::new(),
        });
        self.calls.len() - 1
    }

    fn complete(&mut self) -> Result<StreamEvent, ModelError> {
        if let Some(call) = self.calls.iter().find(|call| call.index.is_none()) {
            return Err(malformed(format!(
                "tool call {} never got a function name",
                call.id.as_deref().unwrap_or("without an id")
            )));
        }
        self.completed = true;
        Ok(StreamEvent::Completed {
            usage: self.usage.unwrap_or_default(),
            stop_reason: self.stop_reason.unwrap_or(StopReason::Other),
        })
    }
}

fn stop_reason(finish_reason: &str) -> StopReason {
    match finish_reason {
        "stop" => StopReason::EndTurn,
        "tool_calls" | "function_call" => StopReason::ToolUse,
        "length" => StopReason::MaxTokens,
        "content_filter" => StopReason::ContentFilter,
        _ => StopReason::Other,
    }
}

/// For servers that send no id: the id is echoed back with the result, so it must be unique
/// within the conversation, not just the answer.
fn made_up_call_id() -> String {
    format!("call_{:016x}", rand::random::<u64>())
}

impl Decode for Decoder {
    fn event(&mut self, _name: &str, data: &str) -> Result<Vec<StreamEvent>, ModelError> {
        self.data(data)
    }

    fn end_of_stream(&mut self) -> Result<Vec<StreamEvent>, ModelError> {
        Decoder::end_of_stream(self).map(|event| vec![event])
    }

    fn is_completed(&self) -> bool {
        self.completed
    }

    fn whole(body: &str) -> Result<Vec<StreamEvent>, ModelError> {
        Decoder::whole(body)
    }
}

fn malformed(detail: String) -> ModelError {
    ModelError::Malformed { detail }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::http::Decode;

    fn decode(chunks: &[&str]) -> Result<Vec<StreamEvent>, ModelError> {
        let mut decoder = Decoder::default();
        let mut events = Vec::new();
        for chunk in chunks {
            events.extend(decoder.data(chunk)?);
            if decoder.is_completed() {
                return Ok(events);
            }
        }
        events.push(decoder.end_of_stream()?);
        Ok(events)
    }

    fn started(index: usize, id: &str, name: &str) -> StreamEvent {
        StreamEvent::ToolCallStarted {
            index,
            id: id.into(),
            name: name.into(),
        }
    }

    fn delta(index: usize, arguments: &str) -> StreamEvent {
        StreamEvent::ToolCallDelta {
            index,
            arguments: arguments.into(),
        }
    }

    fn completed(stop_reason: StopReason) -> StreamEvent {
        StreamEvent::Completed {
            usage: Usage::default(),
            stop_reason,
        }
    }

    #[test]
    fn repeated_ids_and_names_start_a_call_once() {
        let events = decode(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"shell","arguments":"{\"c"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"shell","arguments":"\":1}"}}]}}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#,
            "[DONE]",
        ])
        .unwrap();
        assert_eq!(
            events,
            [
                started(0, "a", "shell"),
                delta(0, "{\"c"),
                delta(0, "\":1}"),
                completed(StopReason::ToolUse)
            ]
        );
    }

    #[test]
    fn sparse_provider_indexes_become_dense() {
        let events = decode(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"index":3,"id":"a","function":{"name":"x"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":7,"id":"b","function":{"name":"y"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":3,"function":{"arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#,
        ])
        .unwrap();
        assert_eq!(
            events,
            [
                started(0, "a", "x"),
                started(1, "b", "y"),
                delta(0, "{}"),
                completed(StopReason::ToolUse)
            ]
        );
    }

    #[test]
    fn arguments_before_the_name_are_held_back() {
        let events = decode(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","function":{"arguments":"{\"k\""}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"x","arguments":":2}"}}]}}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#,
        ])
        .unwrap();
        assert_eq!(
            events,
            [
                started(0, "a", "x"),
                delta(0, "{\"k\":2}"),
                completed(StopReason::ToolUse)
            ]
        );
    }

    #[test]
    fn calls_without_indexes_are_told_apart_by_id() {
        let events = decode(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"a","function":{"name":"x","arguments":{"n":1}}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"b","function":{"name":"y","arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#,
        ])
        .unwrap();
        assert_eq!(
            events,
            [
                started(0, "a", "x"),
                delta(0, r#"{"n":1}"#),
                started(1, "b", "y"),
                delta(1, "{}"),
                completed(StopReason::ToolUse)
            ]
        );
    }

    #[test]
    fn calls_without_ids_get_unique_ones() {
        let events = decode(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"x"}},{"index":1,"function":{"name":"y"}}]}}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#,
        ])
        .unwrap();
        let ids: Vec<_> = events
            .iter()
            .filter_map(|event| match event {
                StreamEvent::ToolCallStarted { id, .. } => Some(id.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(ids.len(), 2);
        assert_ne!(ids[0], ids[1]);
        assert!(ids.iter().all(|id| id.starts_with("call_")));
    }

    #[test]
    fn finish_reasons_map_to_stop_reasons() {
        for (reason, expected) in [
            ("stop", StopReason::EndTurn),
            ("tool_calls", StopReason::ToolUse),
            ("function_call", StopReason::ToolUse),
            ("length", StopReason::MaxTokens),
            ("content_filter", StopReason::ContentFilter),
            ("eos", StopReason::Other),
        ] {
            let chunk = format!(r#"{{"choices":[{{"delta":{{}},"finish_reason":"{reason}"}}]}}"#);
            assert_eq!(decode(&[&chunk]).unwrap(), [completed(expected)]);
        }
    }

    #[test]
    fn usage_may_come_with_the_last_choice() {
        let events = decode(&[
            r#"{"choices":[{"delta":{"content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"prompt_tokens_details":null}}"#,
        ])
        .unwrap();
        let usage = Usage {
            input_tokens: 5,
            cached_input_tokens: 0,
            output_tokens: 1,
        };
        assert_eq!(
            events,
            [
                StreamEvent::TextDelta("hi".into()),
                StreamEvent::Completed {
                    usage,
                    stop_reason: StopReason::EndTurn
                }
            ]
        );
    }

    #[test]
    fn a_call_that_never_gets_a_name_is_malformed() {
        let err = decode(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","function":{"arguments":"{}"}}]},"finish_reason":"tool_calls"}]}"#,
        ])
        .unwrap_err();
        assert!(
            err.to_string().contains("never got a function name"),
            "{err}"
        );
    }

    #[test]
    fn whole_completions_become_the_same_events() {
        let events = Decoder::whole(
            r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"ok","tool_calls":[{"id":"a","type":"function","function":{"name":"x","arguments":"{}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
        )
        .unwrap();
        let usage = Usage {
            input_tokens: 3,
            cached_input_tokens: 0,
            output_tokens: 2,
        };
        assert_eq!(
            events,
            [
                StreamEvent::TextDelta("ok".into()),
                started(0, "a", "x"),
                delta(0, "{}"),
                StreamEvent::Completed {
                    usage,
                    stop_reason: StopReason::ToolUse
                }
            ]
        );
    }

    #[test]
    fn explains_what_is_malformed() {
        for (chunks, expected) in [
            (&["{not json"][..], "not valid JSON"),
            (&[r#"{"choices":[]}"#][..], "no choices and no usage"),
            (&[r#"{"error":{"message":"overloaded"}}"#][..], "overloaded"),
            (
                &[r#"{"choices":[{"delta":{"content":"hi"}}]}"#][..],
                "without a finish_reason",
            ),
        ] {
            let err = decode(chunks).unwrap_err();
            assert!(matches!(err, ModelError::Malformed { .. }), "{err:?}");
            assert!(err.to_string().contains(expected), "{err}");
        }
    }
}
