//! The bytes of one scripted answer in the shapes Anthropic's Messages API uses: a stream of
//! named events (`message_start`, content blocks opened, filled and closed, `message_delta`,
//! `message_stop`), or one `message` document.

use serde_json::{Value, json};

use crate::answer::{AnswerContext, split_every, split_text};
use crate::script::Reply;

impl AnswerContext {
    fn anthropic_message_id(&self) -> String {
        format!("msg_scripted_{}", self.answer)
    }

    /// The made-up signature of this answer's thinking.
    fn signature(&self) -> String {
        format!("scripted-signature-{}", self.answer)
    }

    /// Input usage the Anthropic way: uncached input and cache reads apart.
    fn anthropic_usage(&self, reply: &Reply, output_tokens: u64) -> Value {
        let usage = self.counts(reply);
        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        json!({
            "input_tokens": usage.prompt_tokens - cached,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached,
            "output_tokens": output_tokens,
        })
    }

    fn message_start(&self, reply: &Reply) -> String {
        self.named_event(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": self.anthropic_message_id(),
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": self.anthropic_usage(reply, 1),
            }}),
        )
    }

    fn block(&self, index: usize, start: Value, deltas: Vec<Value>) -> Vec<String> {
        let mut events = vec![self.named_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": start}),
        )];
        events.extend(deltas.into_iter().map(|delta| {
            self.named_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index, "delta": delta}),
            )
        }));
        events.push(self.named_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        ));
        events
    }

    fn text_deltas(text: &str) -> Vec<Value> {
        split_text(text)
            .into_iter()
            .map(|piece| json!({"type": "text_delta", "text": piece}))
            .collect()
    }

    /// The server-sent events of a whole reply.
    pub fn anthropic_stream(&self, reply: &Reply) -> Vec<String> {
        let mut events = vec![
            self.message_start(reply),
            self.named_event("ping", &json!({"type": "ping"})),
        ];
        let mut index = 0;
        if let Some(reasoning) = &reply.reasoning {
            let mut deltas: Vec<Value> = split_text(reasoning)
                .into_iter()
                .map(|piece| json!({"type": "thinking_delta", "thinking": piece}))
                .collect();
            deltas.push(json!({"type": "signature_delta", "signature": self.signature()}));
            let start = json!({"type": "thinking", "thinking": "", "signature": ""});
            events.extend(self.block(index, start, deltas));
            index += 1;
        }
        if let Some(text) = &reply.text {
            let start = json!({"type": "text", "text": ""});
            events.extend(self.block(index, start, Self::text_deltas(text)));
            index += 1;
        }
        for (call, tool) in reply.tool_calls.iter().enumerate() {
            let start = json!({
                "type": "tool_use", "id": self.id_with("toolu_", call), "name": tool.name, "input": {},
            });
            let deltas = split_every(&tool.arguments.to_string(), self.chunk_size)
                .into_iter()
                .map(|piece| json!({"type": "input_json_delta", "partial_json": piece}))
                .collect();
            events.extend(self.block(index, start, deltas));
            index += 1;
        }
        let output = self.counts(reply).completion_tokens;
        events.push(self.named_event(
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason(reply), "stop_sequence": null},
                "usage": {"output_tokens": output},
            }),
        ));
        events.push(self.named_event("message_stop", &json!({"type": "message_stop"})));
        events
    }

    /// The events sent before a broken stream is cut.
    pub fn anthropic_broken_stream(&self, text: Option<&str>) -> Vec<String> {
        let mut events = vec![self.message_start(&Reply::default())];
        if let Some(text) = text {
            let mut block = self.block(
                0,
                json!({"type": "text", "text": ""}),
                Self::text_deltas(text),
            );
            block.pop();
            events.extend(block);
        }
        events
    }

    /// A whole reply as one `message`, for requests without `stream: true`.
    pub fn anthropic_whole(&self, reply: &Reply) -> Value {
        let mut content = Vec::new();
        if let Some(reasoning) = &reply.reasoning {
            content.push(
                json!({"type": "thinking", "thinking": reasoning, "signature": self.signature()}),
            );
        }
        if let Some(text) = &reply.text {
            content.push(json!({"type": "text", "text": text}));
        }
        for (call, tool) in reply.tool_calls.iter().enumerate() {
            content.push(json!({
                "type": "tool_use", "id": self.id_with("toolu_", call), "name": tool.name, "input": tool.arguments,
            }));
        }
        let output = self.counts(reply).completion_tokens;
        json!({
            "id": self.anthropic_message_id(),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop_reason(reply),
            "stop_sequence": null,
            "usage": self.anthropic_usage(reply, output),
        })
    }
}

fn stop_reason(reply: &Reply) -> &'static str {
    if reply.tool_calls.is_empty() {
        "end_turn"
    } else {
        "tool_use"
    }
}
