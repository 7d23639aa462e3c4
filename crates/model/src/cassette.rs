//! Cassettes: every model call of a task, request and answer, as JSON lines, so that a run can
//! be served back without a model. A prompt or harness change is then tested
//! deterministically: replay the cassette in strict mode and the first request that differs
//! from the recorded one fails, naming what changed.
//!
//! One line per call, appended and flushed as the call completes, so a task that crashes keeps
//! the calls it made:
//!
//! ```json
//! {"version":1,"request":{...},"response":{"text":"...","tool_calls":[],"usage":{...},"stop_reason":"end_turn"}}
//! {"version":1,"request":{...},"error":"the model provider failed (HTTP 529): ...","failure":{"server":{...}}}
//! ```

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream;
use nightshift_protocol::Usage;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::http::excerpt;
use crate::types::ResponseBuilder;
use crate::{
    ModelClient, ModelError, ModelRequest, ModelResponse, ModelSpec, ReasoningBlock,
    ResponseStream, StopReason, StreamEvent, ToolCall,
};

const VERSION: u32 = 1;
/// How much text or arguments one replayed delta carries.
const REPLAY_DELTA: usize = 64;

/// One recorded call.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    version: u32,
    request: ModelRequest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response: Option<RecordedResponse>,
    /// What went wrong, for people reading the cassette.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// The same failure, for replaying it exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failure: Option<ModelError>,
}

/// A [`ModelResponse`] as a cassette keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordedResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCall>,
    #[serde(default)]
    usage: Usage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stop_reason: Option<StopReason>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    reasoning: Vec<ReasoningBlock>,
}

impl From<ModelResponse> for RecordedResponse {
    fn from(response: ModelResponse) -> Self {
        RecordedResponse {
            text: response.text,
            tool_calls: response.tool_calls,
            usage: response.usage,
            stop_reason: response.stop_reason,
            reasoning: response.reasoning,
        }
    }
}

/// What every string of a recorded call goes through before it is written: the runner passes
/// its secret redaction, so that a cassette (`NIGHTSHIFT_RECORD`) never holds a secret the
/// task's log would not.
#[derive(Clone)]
pub struct Redaction(Arc<dyn Fn(&str) -> String + Send + Sync>);

impl Redaction {
    pub fn new(redact: impl Fn(&str) -> String + Send + Sync + 'static) -> Redaction {
        Redaction(Arc::new(redact))
    }

    /// Redacts every string of `value`, object keys included.
    fn apply(&self, value: &mut Value) {
        match value {
            Value::String(text) => *text = (self.0)(text),
            Value::Array(items) => items.iter_mut().for_each(|item| self.apply(item)),
            Value::Object(map) => {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(key, mut item)| {
                        self.apply(&mut item);
                        ((self.0)(&key), item)
                    })
                    .collect();
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
}

impl std::fmt::Debug for Redaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redaction")
    }
}

/// A client that appends every call of the client it wraps to a cassette file.
pub(crate) struct Recorder {
    inner: Arc<dyn ModelClient>,
    tape: Arc<Tape>,
}

struct Tape {
    path: PathBuf,
    file: Mutex<File>,
    redaction: Option<Redaction>,
}

impl Recorder {
    /// Wraps `inner`, appending to `path` (created, with its directory, if missing), every
    /// string of each call through `redaction` when given.
    pub fn create(
        inner: Arc<dyn ModelClient>,
        path: &Path,
        redaction: Option<Redaction>,
    ) -> Result<Self, ModelError> {
        let cannot = |err: std::io::Error| {
            ModelError::Config(format!(
                "cannot record model calls to {}: {err}",
                path.display()
            ))
        };
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(cannot)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(cannot)?;
        Ok(Recorder {
            inner,
            tape: Arc::new(Tape {
                path: path.to_path_buf(),
                file: Mutex::new(file),
                redaction,
            }),
        })
    }
}

impl Tape {
    /// Appends one line, redacted. A cassette that cannot be written is worth a warning, not
    /// the task; a call that cannot be redacted is left out rather than written as it was.
    fn append(&self, request: ModelRequest, outcome: Result<ModelResponse, &ModelError>) {
        let entry = match outcome {
            Ok(response) => Entry {
                version: VERSION,
                request,
                response: Some(response.into()),
                error: None,
                failure: None,
            },
            Err(err) => Entry {
                version: VERSION,
                request,
                response: None,
                error: Some(err.to_string()),
                failure: Some(clone_error(err)),
            },
        };
        let line = match &self.redaction {
            None => serde_json::to_string(&entry),
            Some(redaction) => serde_json::to_value(&entry).map(|mut value| {
                redaction.apply(&mut value);
                value.to_string()
            }),
        };
        let written = line.map_err(std::io::Error::other).and_then(|mut line| {
            line.push('\n');
            // One write per line: appends from one task never interleave.
            let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
            file.write_all(line.as_bytes())?;
            file.flush()
        });
        if let Err(err) = written {
            tracing::warn!(path = %self.path.display(), error = %err, "could not record a model call");
        }
    }
}

/// [`ModelError`] is not `Clone` (it need not be elsewhere); a round trip through JSON is.
fn clone_error(err: &ModelError) -> ModelError {
    serde_json::to_value(err)
        .and_then(serde_json::from_value)
        .unwrap_or_else(|_| ModelError::Malformed {
            detail: err.to_string(),
        })
}

#[async_trait]
impl ModelClient for Recorder {
    fn spec(&self) -> &ModelSpec {
        self.inner.spec()
    }

    async fn stream(&self, request: &ModelRequest) -> Result<ResponseStream, ModelError> {
        let answer = match self.inner.stream(request).await {
            Ok(answer) => answer,
            Err(err) => {
                self.tape.append(request.clone(), Err(&err));
                return Err(err);
            }
        };
        let tape = self.tape.clone();
        let mut pending = Some((request.clone(), ResponseBuilder::default()));
        // A call dropped before it completed (cancelled) is not recorded: it has no answer.
        Ok(answer
            .map(move |event| {
                if let Some((request, mut builder)) = pending.take() {
                    match &event {
                        Ok(event) => match builder.push(event.clone()) {
                            Ok(Some(response)) => tape.append(request, Ok(response)),
                            Ok(None) => pending = Some((request, builder)),
                            Err(err) => tape.append(request, Err(&err)),
                        },
                        Err(err) => tape.append(request, Err(err)),
                    }
                }
                event
            })
            .boxed())
    }
}

/// A client that answers from a cassette, in order.
pub(crate) struct Replay {
    spec: ModelSpec,
    path: PathBuf,
    entries: Vec<Entry>,
    next: AtomicUsize,
    strict: bool,
}

impl Replay {
    /// Reads the cassette at `path`.
    pub fn open(spec: ModelSpec, path: &Path, strict: bool) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|err| {
            ModelError::Config(format!(
                "cannot read the cassette {}: {err}",
                path.display()
            ))
        })?;
        let mut entries = Vec::new();
        for (number, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let entry: Entry = serde_json::from_str(line).map_err(|err| {
                ModelError::Config(format!(
                    "line {} of the cassette {} is not a recorded call: {err}",
                    number + 1,
                    path.display()
                ))
            })?;
            if entry.version != VERSION {
                return Err(ModelError::Config(format!(
                    "line {} of the cassette {} is version {}; this nightshift reads version {VERSION}",
                    number + 1,
                    path.display(),
                    entry.version
                )));
            }
            entries.push(entry);
        }
        Ok(Replay {
            spec,
            path: path.to_path_buf(),
            entries,
            next: AtomicUsize::new(0),
            strict,
        })
    }
}

#[async_trait]
impl ModelClient for Replay {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    async fn stream(&self, request: &ModelRequest) -> Result<ResponseStream, ModelError> {
        let index = self.next.fetch_add(1, Ordering::SeqCst);
        let Some(entry) = self.entries.get(index) else {
            return Err(ModelError::ReplayDiverged {
                index,
                detail: format!(
                    "the cassette {} holds {} calls and this is call {}: the conversation went on longer than the recording",
                    self.path.display(),
                    self.entries.len(),
                    index + 1
                ),
            });
        };
        if self.strict
            && let Some(detail) = first_difference(&entry.request, request)
        {
            return Err(ModelError::ReplayDiverged {
                index,
                detail: format!(
                    "{detail} (call {}, line {} of {})",
                    index + 1,
                    index + 1,
                    self.path.display()
                ),
            });
        }
        match (&entry.response, &entry.failure, &entry.error) {
            (Some(response), _, _) => {
                Ok(stream::iter(events(response).into_iter().map(Ok)).boxed())
            }
            (None, Some(failure), _) => Err(clone_error(failure)),
            (None, None, error) => Err(ModelError::Malformed {
                detail: format!(
                    "call {} of the cassette {} recorded a failure: {}",
                    index + 1,
                    self.path.display(),
                    error.as_deref().unwrap_or("no answer and no error")
                ),
            }),
        }
    }
}

/// A recorded answer as the events a live model would have streamed.
fn events(response: &RecordedResponse) -> Vec<StreamEvent> {
    let mut events = Vec::new();
    for block in &response.reasoning {
        let text = block.text();
        if !text.is_empty() {
            events.push(StreamEvent::ReasoningDelta(text));
        }
        events.push(StreamEvent::Reasoning(block.clone()));
    }
    if let Some(text) = &response.text {
        events.extend(pieces(text).map(StreamEvent::TextDelta));
    }
    for (index, call) in response.tool_calls.iter().enumerate() {
        events.push(StreamEvent::ToolCallStarted {
            index,
            id: call.id.clone(),
            name: call.name.clone(),
        });
        events.extend(
            pieces(&call.arguments)
                .map(|arguments| StreamEvent::ToolCallDelta { index, arguments }),
        );
    }
    events.push(StreamEvent::Completed {
        usage: response.usage,
        stop_reason: response.stop_reason.unwrap_or(StopReason::Other),
    });
    events
}

/// `text` in pieces of [`REPLAY_DELTA`] characters.
fn pieces(text: &str) -> impl Iterator<Item = String> + '_ {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest
            .char_indices()
            .nth(REPLAY_DELTA)
            .map_or(rest.len(), |(end, _)| end);
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece.to_string())
    })
}

/// Where `now` first differs from `recorded`, in words, or `None` when they match. The model
/// name is not compared: under replay it is the cassette's path.
fn first_difference(recorded: &ModelRequest, now: &ModelRequest) -> Option<String> {
    let as_json = |request: &ModelRequest| {
        serde_json::json!({
            "system": request.system,
            "tools": request.tools,
            "messages": request.messages,
            "max_output_tokens": request.max_output_tokens,
        })
    };
    let (recorded, now) = (as_json(recorded), as_json(now));
    for field in ["system", "tools", "messages", "max_output_tokens"] {
        if let Some(difference) = diff(&recorded[field], &now[field], field.to_string()) {
            return Some(difference);
        }
    }
    None
}

fn diff(recorded: &Value, now: &Value, path: String) -> Option<String> {
    match (recorded, now) {
        (Value::Object(recorded), Value::Object(now)) => {
            let keys: std::collections::BTreeSet<&String> =
                recorded.keys().chain(now.keys()).collect();
            keys.into_iter().find_map(|key| {
                diff(
                    recorded.get(key).unwrap_or(&Value::Null),
                    now.get(key).unwrap_or(&Value::Null),
                    format!("{path}.{key}"),
                )
            })
        }
        (Value::Array(recorded), Value::Array(now)) => recorded
            .iter()
            .zip(now)
            .enumerate()
            .find_map(|(index, (recorded, now))| diff(recorded, now, format!("{path}[{index}]")))
            .or_else(|| {
                (recorded.len() != now.len()).then(|| {
                    format!(
                        "{path} has {} entries; the recording has {}",
                        now.len(),
                        recorded.len()
                    )
                })
            }),
        _ if recorded == now => None,
        _ => Some(format!(
            "{path} differs: recorded {}, now {}",
            excerpt(&recorded.to_string()),
            excerpt(&now.to_string())
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::Message;

    fn request(messages: Vec<Message>) -> ModelRequest {
        ModelRequest {
            model: "m".into(),
            system: "s".into(),
            messages,
            tools: vec![],
            max_output_tokens: None,
        }
    }

    fn user(text: &str) -> Message {
        Message::User {
            content: text.into(),
        }
    }

    #[test]
    fn names_the_first_difference() {
        let recorded = request(vec![user("a"), user("b")]);
        assert_eq!(first_difference(&recorded, &recorded.clone()), None);
        let mut other_model = recorded.clone();
        other_model.model = "replay.jsonl".into();
        assert_eq!(first_difference(&recorded, &other_model), None);
        assert_eq!(
            first_difference(&recorded, &request(vec![user("a"), user("c")])).unwrap(),
            r#"messages[1].content differs: recorded "b", now "c""#
        );
        assert_eq!(
            first_difference(&recorded, &request(vec![user("a")])).unwrap(),
            "messages has 1 entries; the recording has 2"
        );
        let mut system = recorded.clone();
        system.system = "t".into();
        assert!(
            first_difference(&recorded, &system)
                .unwrap()
                .starts_with("system differs")
        );
    }

    #[test]
    fn replayed_answers_stream_in_pieces() {
        let response = RecordedResponse {
            text: Some("é".repeat(100)),
            tool_calls: vec![ToolCall {
                id: "c".into(),
                name: "x".into(),
                arguments: "{}".into(),
            }],
            usage: Usage::default(),
            stop_reason: Some(StopReason::ToolUse),
            reasoning: vec![],
        };
        let events = events(&response);
        assert_eq!(events.len(), 2 + 2 + 1, "{events:?}");
        let mut builder = ResponseBuilder::default();
        let mut rebuilt = None;
        for event in events {
            rebuilt = builder.push(event).unwrap();
        }
        assert_eq!(RecordedResponse::from(rebuilt.unwrap()), response);
    }
}
