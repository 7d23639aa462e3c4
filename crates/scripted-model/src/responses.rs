//! The bytes of one scripted answer in the shapes OpenAI's Responses API uses: a stream of
//! typed events (output items added, filled by deltas, done; `response.completed` with the
//! usage), or one `response` document.

use serde_json::{Value, json};

use crate::answer::{AnswerContext, split_every, split_text};
use crate::script::Reply;

impl AnswerContext {
    fn response_id(&self) -> String {
        format!("resp_scripted_{}", self.answer)
    }

    fn typed_event(&self, data: Value) -> String {
        let name = data["type"].as_str().unwrap_or_default().to_string();
        self.named_event(&name, &data)
    }

    fn response(&self, status: &str, output: Vec<Value>, usage: Value) -> Value {
        json!({
            "id": self.response_id(),
            "object": "response",
            "created_at": 0,
            "status": status,
            "model": self.model,
            "output": output,
            "usage": usage,
        })
    }

    fn responses_usage(&self, reply: &Reply) -> Value {
        let usage = self.counts(reply);
        json!({
            "input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_tokens},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        })
    }

    /// The output items of a whole reply, in order.
    fn output_items(&self, reply: &Reply) -> Vec<Value> {
        let mut items = Vec::new();
        if let Some(reasoning) = &reply.reasoning {
            items.push(json!({
                "type": "reasoning",
                "id": format!("rs_scripted_{}", self.answer),
                "summary": [{"type": "summary_text", "text": reasoning}],
                "encrypted_content": format!("scripted-encrypted-{}", self.answer),
            }));
        }
        if let Some(text) = &reply.text {
            items.push(json!({
                "type": "message",
                "id": format!("msg_scripted_{}", self.answer),
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }));
        }
        for (call, tool) in reply.tool_calls.iter().enumerate() {
            items.push(json!({
                "type": "function_call",
                "id": self.id_with("fc_", call),
                "call_id": self.call_id(call),
                "name": tool.name,
                "arguments": tool.arguments.to_string(),
                "status": "completed",
            }));
        }
        items
    }

    /// The events that fill `item` (number `index`) between its `added` and `done`.
    fn item_deltas(&self, index: usize, item: &Value) -> Vec<String> {
        let id = item["id"].clone();
        match item["type"].as_str() {
            Some("reasoning") => {
                let text = item["summary"][0]["text"].as_str().unwrap_or_default();
                split_text(text)
                    .into_iter()
                    .map(|delta| {
                        self.typed_event(json!({
                            "type": "response.reasoning_summary_text.delta",
                            "item_id": id, "output_index": index, "summary_index": 0, "delta": delta,
                        }))
                    })
                    .collect()
            }
            Some("message") => {
                let text = item["content"][0]["text"].as_str().unwrap_or_default();
                let mut events: Vec<String> = split_text(text)
                    .into_iter()
                    .map(|delta| {
                        self.typed_event(json!({
                            "type": "response.output_text.delta",
                            "item_id": id, "output_index": index, "content_index": 0, "delta": delta,
                        }))
                    })
                    .collect();
                events.push(self.typed_event(json!({
                    "type": "response.output_text.done",
                    "item_id": id, "output_index": index, "content_index": 0, "text": text,
                })));
                events
            }
            _ => {
                let arguments = item["arguments"].as_str().unwrap_or_default();
                let mut events: Vec<String> = split_every(arguments, self.chunk_size)
                    .into_iter()
                    .map(|delta| {
                        self.typed_event(json!({
                            "type": "response.function_call_arguments.delta",
                            "item_id": id, "output_index": index, "delta": delta,
                        }))
                    })
                    .collect();
                events.push(self.typed_event(json!({
                    "type": "response.function_call_arguments.done",
                    "item_id": id, "output_index": index, "arguments": arguments,
                })));
                events
            }
        }
    }

    /// An item as `output_item.added` announces it: its content still to come.
    fn started(item: &Value) -> Value {
        let mut item = item.clone();
        match item["type"].as_str() {
            Some("reasoning") => item["summary"] = json!([]),
            Some("message") => item["content"] = json!([]),
            _ => item["arguments"] = json!(""),
        }
        if let Some(object) = item.as_object_mut() {
            object.remove("encrypted_content");
            object.insert("status".into(), json!("in_progress"));
        }
        item
    }

    fn created(&self) -> String {
        self.typed_event(json!({
            "type": "response.created",
            "response": self.response("in_progress", vec![], Value::Null),
        }))
    }

    /// The server-sent events of a whole reply.
    pub fn responses_stream(&self, reply: &Reply) -> Vec<String> {
        let mut events = vec![self.created()];
        let items = self.output_items(reply);
        for (index, item) in items.iter().enumerate() {
            events.push(self.typed_event(json!({
                "type": "response.output_item.added", "output_index": index, "item": Self::started(item),
            })));
            events.extend(self.item_deltas(index, item));
            events.push(self.typed_event(json!({
                "type": "response.output_item.done", "output_index": index, "item": item,
            })));
        }
        events.push(self.typed_event(json!({
            "type": "response.completed",
            "response": self.response("completed", items, self.responses_usage(reply)),
        })));
        events
    }

    /// The events sent before a broken stream is cut.
    pub fn responses_broken_stream(&self, text: Option<&str>) -> Vec<String> {
        let mut events = vec![self.created()];
        if let Some(text) = text {
            let reply = Reply {
                text: Some(text.to_string()),
                ..Reply::default()
            };
            let item = &self.output_items(&reply)[0];
            events.push(self.typed_event(json!({
                "type": "response.output_item.added", "output_index": 0, "item": Self::started(item),
            })));
            let mut deltas = self.item_deltas(0, item);
            deltas.pop();
            events.extend(deltas);
        }
        events
    }

    /// A whole reply as one `response`, for requests without `stream: true`.
    pub fn responses_whole(&self, reply: &Reply) -> Value {
        self.response(
            "completed",
            self.output_items(reply),
            self.responses_usage(reply),
        )
    }
}
