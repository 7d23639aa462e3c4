//! The bytes of one scripted answer, in the shapes OpenAI's Chat Completions uses: a stream of
//! `chat.completion.chunk` events, or one `chat.completion` document. The other protocols'
//! shapes are in `anthropic` and `responses`; what they share (ids, usage, splitting) is here.

use serde_json::{Value, json};

use crate::script::{Reply, ScriptedUsage};

/// What an answer needs to know about its request and its place in the conversation.
pub(crate) struct AnswerContext {
    /// Echoed back as the chunks' `model`.
    pub model: String,
    /// Whether the request asked for a stream.
    pub stream: bool,
    pub include_usage: bool,
    /// Characters of tool call arguments per chunk.
    pub chunk_size: usize,
    /// The size of the request body, for estimating prompt tokens.
    pub request_bytes: usize,
    /// The number of this answer's first tool call: ids are `call_<n>`, unique per server.
    pub first_call: u64,
    /// The number of this answer, for its `id`.
    pub answer: usize,
}

impl AnswerContext {
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> String {
        self.event(&json!({
            "id": format!("chatcmpl-scripted-{}", self.answer),
            "object": "chat.completion.chunk",
            "created": 0,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }))
    }

    fn event(&self, data: &Value) -> String {
        format!("data: {data}\n\n")
    }

    /// A server-sent event with a name, as Anthropic and the Responses API send them.
    pub fn named_event(&self, name: &str, data: &Value) -> String {
        format!("event: {name}\ndata: {data}\n\n")
    }

    fn role_chunk(&self) -> String {
        self.chunk(json!({"role": "assistant", "content": ""}), None)
    }

    fn text_chunks(&self, text: &str) -> Vec<String> {
        split_text(text)
            .into_iter()
            .map(|piece| self.chunk(json!({"content": piece}), None))
            .collect()
    }

    /// The server-sent events of a whole reply, `[DONE]` included.
    pub fn stream(&self, reply: &Reply) -> Vec<String> {
        let mut events = vec![self.role_chunk()];
        if let Some(text) = &reply.text {
            events.extend(self.text_chunks(text));
        }
        for (index, call) in reply.tool_calls.iter().enumerate() {
            let arguments = call.arguments.to_string();
            events.push(self.chunk(
                json!({"tool_calls": [{
                    "index": index,
                    "id": self.call_id(index),
                    "type": "function",
                    "function": {"name": call.name, "arguments": ""},
                }]}),
                None,
            ));
            for piece in split_every(&arguments, self.chunk_size) {
                events.push(self.chunk(
                    json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
                    None,
                ));
            }
        }
        events.push(self.chunk(json!({}), Some(finish_reason(reply))));
        if self.include_usage {
            events.push(self.event(&json!({
                "id": format!("chatcmpl-scripted-{}", self.answer),
                "object": "chat.completion.chunk",
                "created": 0,
                "model": self.model,
                "choices": [],
                "usage": self.usage(reply),
            })));
        }
        events.push("data: [DONE]\n\n".to_string());
        events
    }

    /// The events sent before a broken stream is cut.
    pub fn broken_stream(&self, text: Option<&str>) -> Vec<String> {
        let mut events = vec![self.role_chunk()];
        if let Some(text) = text {
            events.extend(self.text_chunks(text));
        }
        events
    }

    /// A whole reply as one `chat.completion`, for requests without `stream: true`.
    pub fn whole(&self, reply: &Reply) -> Value {
        let tool_calls: Vec<Value> = reply
            .tool_calls
            .iter()
            .enumerate()
            .map(|(index, call)| {
                json!({
                    "id": self.call_id(index),
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments.to_string()},
                })
            })
            .collect();
        let mut message = json!({"role": "assistant", "content": reply.text});
        if !tool_calls.is_empty() {
            message["tool_calls"] = Value::Array(tool_calls);
        }
        json!({
            "id": format!("chatcmpl-scripted-{}", self.answer),
            "object": "chat.completion",
            "created": 0,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(reply)}],
            "usage": self.usage(reply),
        })
    }

    /// The id of this answer's tool call `index`: `{prefix}{n}`, unique per server.
    pub fn call_id(&self, index: usize) -> String {
        self.id_with("call_", index)
    }

    pub fn id_with(&self, prefix: &str, index: usize) -> String {
        format!("{prefix}{}", self.first_call + index as u64)
    }

    fn usage(&self, reply: &Reply) -> Value {
        let usage = self.counts(reply);
        json!({
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        })
    }

    /// The scripted usage, or an estimate at four bytes a token.
    pub fn counts(&self, reply: &Reply) -> ScriptedUsage {
        reply.usage.unwrap_or_else(|| {
            let output = reply.text.as_deref().map_or(0, str::len)
                + reply.reasoning.as_deref().map_or(0, str::len)
                + reply
                    .tool_calls
                    .iter()
                    .map(|call| call.name.len() + call.arguments.to_string().len())
                    .sum::<usize>();
            ScriptedUsage {
                prompt_tokens: self.request_bytes.div_ceil(4) as u64,
                completion_tokens: output.div_ceil(4) as u64,
                cached_tokens: 0,
            }
        })
    }
}

pub(crate) fn finish_reason(reply: &Reply) -> &'static str {
    if reply.tool_calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    }
}

/// Text in up to three deltas, as a model would stream it.
pub(crate) fn split_text(text: &str) -> Vec<String> {
    let length = text.chars().count();
    split_every(text, length.div_ceil(3).max(1))
}

/// `text` in pieces of `size` characters (the last one shorter).
pub(crate) fn split_every(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(size.max(1))
        .map(|piece| piece.iter().collect())
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_characters() {
        assert_eq!(split_every("äbcde", 2), ["äb", "cd", "e"]);
        assert_eq!(split_text("hello"), ["he", "ll", "o"]);
        assert!(split_text("").is_empty());
    }
}
