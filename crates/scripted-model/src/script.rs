//! What a scripted model answers, one step per request, written as JSON:
//!
//! ```json
//! {
//!   "chunk_size": 8,
//!   "steps": [
//!     {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": "ls"}}]}},
//!     {"error": {"status": 429, "body": "slow down", "headers": {"retry-after": "1"}}},
//!     {"broken_stream": {"text": "I was about to"}},
//!     {"malformed": {"body": "{not json"}},
//!     {"reply": {"text": "Thinking...", "delay_ms": 500, "ignore_stream": true}},
//!     {"reply": {"reasoning": "The tests fail because...", "text": "Found it."}},
//!     {"reply": {"text": "Done.", "usage": {"prompt_tokens": 10, "completion_tokens": 2}}}
//!   ]
//! }
//! ```

use std::collections::BTreeMap;

use axum::http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A scripted conversation: the answers to successive requests, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    pub steps: Vec<Step>,
    /// Scripts of their own for requests that name these models (the request's `model`), so
    /// that conversations running at the same time each get theirs in order; any other
    /// request takes the next of `steps`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, Vec<Step>>,
    /// Scripts of their own for requests whose body contains a text (the first route that
    /// matches wins, before `models`): conversations of the same model running at the same
    /// time, told apart by their prompts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// How many characters of tool call arguments go in one streamed chunk.
    #[serde(default = "default_chunk_size")]
    pub chunk_size: usize,
}

/// A script for the requests whose body contains `contains`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub contains: String,
    pub steps: Vec<Step>,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// A well-formed answer: text, tool calls, or both.
    Reply(Reply),
    /// An HTTP error response.
    Error(ErrorReply),
    /// Some of a streamed answer, then the connection is dropped: no finish, no `[DONE]`.
    BrokenStream(BrokenStream),
    /// This raw text as the `data` of one server-sent event, then the stream ends.
    Malformed(Malformed),
}

/// A well-formed answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ScriptedToolCall>,
    /// Reasoning before the answer: a signed `thinking` block for Anthropic, an encrypted
    /// `reasoning` item for the Responses API (Chat Completions leaves it out). The signature
    /// and the encrypted content are made up, unique per answer, so a test can check they
    /// come back verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    /// Reported usage. Without it, tokens are estimated at four bytes each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<ScriptedUsage>,
    /// Serve this reply this many times in a row.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub repeat: u32,
    /// Wait this long before answering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Answer with one JSON completion even when a stream was asked for, as some servers do.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_stream: bool,
}

/// A tool call the model makes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedToolCall {
    pub name: String,
    /// Sent as its JSON text.
    pub arguments: Value,
}

/// Token counts to report. `prompt_tokens` counts all input, `cached_tokens` the part read from
/// the prompt cache; each protocol reports them its own way (Anthropic counts the uncached
/// input apart from cache reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    #[serde(default)]
    pub cached_tokens: u64,
}

/// An HTTP error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorReply {
    pub status: u16,
    pub body: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// A stream cut off mid-answer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokenStream {
    /// Text streamed before the cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A raw event payload that is not what the protocol says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Malformed {
    pub body: String,
}

/// A script that cannot be served.
#[derive(Debug, thiserror::Error)]
#[error("invalid model script: {0}")]
pub struct ScriptError(String);

impl Script {
    /// A script of `steps` with the default chunk size.
    pub fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Script {
            steps: steps.into_iter().collect(),
            models: BTreeMap::new(),
            routes: Vec::new(),
            chunk_size: default_chunk_size(),
        }
    }

    /// Parses and checks a script written as JSON.
    pub fn from_json(json: &str) -> Result<Self, ScriptError> {
        let script: Script =
            serde_json::from_str(json).map_err(|err| ScriptError(err.to_string()))?;
        script.validate()?;
        Ok(script)
    }

    /// Checks what the types cannot: sizes and statuses that make sense.
    pub fn validate(&self) -> Result<(), ScriptError> {
        if self.chunk_size == 0 {
            return Err(ScriptError("chunk_size must be at least 1".into()));
        }
        validate_steps(&self.steps, "")?;
        for (model, steps) in &self.models {
            validate_steps(steps, &format!("model {model}, "))?;
        }
        for route in &self.routes {
            if route.contains.is_empty() {
                return Err(ScriptError("a route needs a text to look for".into()));
            }
            validate_steps(&route.steps, &format!("route {:?}, ", route.contains))?;
        }
        Ok(())
    }
}

/// Checks one list of steps; `label` says which in errors.
fn validate_steps(steps: &[Step], label: &str) -> Result<(), ScriptError> {
    for (number, step) in steps.iter().enumerate() {
        match step {
            Step::Reply(reply) if reply.repeat == 0 => {
                return Err(ScriptError(format!(
                    "{label}step {number}: repeat must be at least 1"
                )));
            }
            Step::Error(error) if !(400..=599).contains(&error.status) => {
                return Err(ScriptError(format!(
                    "{label}step {number}: error status {} is not between 400 and 599",
                    error.status
                )));
            }
            Step::Error(error) => {
                for (name, value) in &error.headers {
                    if HeaderName::from_bytes(name.as_bytes()).is_err()
                        || HeaderValue::from_str(value).is_err()
                    {
                        return Err(ScriptError(format!(
                            "{label}step {number}: `{name}: {value}` is not a valid HTTP header"
                        )));
                    }
                }
            }
            Step::Reply(_) | Step::BrokenStream(_) | Step::Malformed(_) => {}
        }
    }
    Ok(())
}

impl Step {
    /// How many requests this step answers.
    pub fn times(&self) -> u32 {
        match self {
            Step::Reply(reply) => reply.repeat,
            Step::Error(_) | Step::BrokenStream(_) | Step::Malformed(_) => 1,
        }
    }

    /// A reply with only text.
    pub fn text(text: impl Into<String>) -> Self {
        Step::Reply(Reply {
            text: Some(text.into()),
            ..Reply::default()
        })
    }

    /// A reply with only tool calls, each a name and its arguments.
    pub fn tool_calls<N: Into<String>>(calls: impl IntoIterator<Item = (N, Value)>) -> Self {
        let tool_calls = calls
            .into_iter()
            .map(|(name, arguments)| ScriptedToolCall {
                name: name.into(),
                arguments,
            })
            .collect();
        Step::Reply(Reply {
            tool_calls,
            ..Reply::default()
        })
    }

    /// An HTTP error with a body and no extra headers.
    pub fn error(status: u16, body: impl Into<String>) -> Self {
        Step::Error(ErrorReply {
            status,
            body: body.into(),
            headers: BTreeMap::new(),
        })
    }
}

impl Default for Reply {
    fn default() -> Self {
        Reply {
            text: None,
            tool_calls: Vec::new(),
            reasoning: None,
            usage: None,
            repeat: 1,
            delay_ms: None,
            ignore_stream: false,
        }
    }
}

fn default_chunk_size() -> usize {
    8
}

fn one() -> u32 {
    1
}

fn is_one(value: &u32) -> bool {
    *value == 1
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_every_kind_of_step() {
        let script = Script::from_json(
            r#"{
                "chunk_size": 3,
                "steps": [
                    {"reply": {"text": "hi", "usage": {"prompt_tokens": 5, "completion_tokens": 1}}},
                    {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": "ls"}}],
                               "repeat": 2, "delay_ms": 10, "ignore_stream": true}},
                    {"error": {"status": 429, "body": "slow", "headers": {"retry-after": "1"}}},
                    {"broken_stream": {"text": "half"}},
                    {"broken_stream": {}},
                    {"malformed": {"body": "{oops"}}
                ]
            }"#,
        )
        .unwrap();
        assert_eq!(script.chunk_size, 3);
        assert_eq!(
            script.steps,
            vec![
                Step::Reply(Reply {
                    text: Some("hi".into()),
                    usage: Some(ScriptedUsage {
                        prompt_tokens: 5,
                        completion_tokens: 1,
                        cached_tokens: 0
                    }),
                    ..Reply::default()
                }),
                Step::Reply(Reply {
                    tool_calls: vec![ScriptedToolCall {
                        name: "shell".into(),
                        arguments: json!({"command": "ls"})
                    }],
                    repeat: 2,
                    delay_ms: Some(10),
                    ignore_stream: true,
                    ..Reply::default()
                }),
                Step::Error(ErrorReply {
                    status: 429,
                    body: "slow".into(),
                    headers: [("retry-after".to_string(), "1".to_string())].into()
                }),
                Step::BrokenStream(BrokenStream {
                    text: Some("half".into())
                }),
                Step::BrokenStream(BrokenStream { text: None }),
                Step::Malformed(Malformed {
                    body: "{oops".into()
                }),
            ]
        );
        assert_eq!(script.steps.iter().map(Step::times).sum::<u32>(), 7);
    }

    #[test]
    fn defaults_chunk_size_and_round_trips() {
        let script = Script::new([Step::text("a"), Step::tool_calls([("x", json!({}))])]);
        assert_eq!(script.chunk_size, 8);
        let json = serde_json::to_string(&script).unwrap();
        assert_eq!(Script::from_json(&json).unwrap(), script);
        assert_eq!(Script::from_json(r#"{"steps": []}"#).unwrap().chunk_size, 8);
    }

    #[test]
    fn explains_bad_scripts() {
        for (json, expected) in [
            (
                r#"{"steps": [{"reply": {"txt": "typo"}}]}"#,
                "unknown field `txt`",
            ),
            (r#"{"steps": [{"shout": {}}]}"#, "unknown variant `shout`"),
            (r#"{"steps": [], "chunk_size": 0}"#, "chunk_size"),
            (r#"{"steps": [{"reply": {"repeat": 0}}]}"#, "repeat"),
            (
                r#"{"steps": [{"error": {"status": 200, "body": ""}}]}"#,
                "status 200",
            ),
            (
                r#"{"steps": [{"error": {"status": 500, "body": "", "headers": {"a b": "c"}}}]}"#,
                "header",
            ),
        ] {
            let err = Script::from_json(json).unwrap_err().to_string();
            assert!(err.contains(expected), "{json}: {err}");
        }
    }
}
