//! What can go wrong talking to a model, with what to do about each.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A failed model call. Serializable so that a cassette can record a failure and replay it.
#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelError {
    /// No connection could be made, or it broke before the answer was complete.
    #[error("could not reach the model at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// The provider refused the credentials (401) or the permission (403).
    #[error("the model provider refused the credentials (HTTP {status}): {body}")]
    Unauthorized { status: u16, body: String },
    /// Too many requests; `retry_after` is the provider's own hint when it gave one.
    #[error("the model provider is rate limiting (HTTP 429): {body}")]
    RateLimited {
        retry_after: Option<Duration>,
        body: String,
    },
    /// The provider failed (5xx).
    #[error("the model provider failed (HTTP {status}): {body}")]
    Server { status: u16, body: String },
    /// The provider rejected the request (4xx other than the above).
    #[error("the model provider rejected the request (HTTP {status}): {body}")]
    Rejected { status: u16, body: String },
    /// The answer is not the protocol: bad JSON, an empty choice list, a stream cut short.
    #[error("the model's answer was malformed: {detail}")]
    Malformed { detail: String },
    /// The answer stopped arriving for longer than the idle timeout.
    #[error("the model stopped answering for {0:?}")]
    IdleTimeout(Duration),
    /// The model spec or its configuration is wrong.
    #[error("{0}")]
    Config(String),
    /// The task was cancelled while waiting for the model.
    #[error("cancelled")]
    Cancelled,
    /// A replayed cassette has no answer for this request (`index`, 0-based, is the request's
    /// place in the cassette), or, in strict mode, the request is not the recorded one.
    #[error("the replayed conversation diverged from the cassette at request {index}: {detail}")]
    ReplayDiverged { index: usize, detail: String },
}

impl ModelError {
    /// Whether the same request may succeed if sent again.
    pub fn is_retryable(&self) -> bool {
        match self {
            ModelError::Unreachable { .. }
            | ModelError::RateLimited { .. }
            | ModelError::Server { .. }
            | ModelError::IdleTimeout(_) => true,
            ModelError::Unauthorized { .. }
            | ModelError::Rejected { .. }
            | ModelError::Malformed { .. }
            | ModelError::Config(_)
            | ModelError::Cancelled
            | ModelError::ReplayDiverged { .. } => false,
        }
    }

    /// What the person should do about it.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            ModelError::Unreachable { .. } => Some(
                "check the provider's base URL (OPENAI_BASE_URL or ANTHROPIC_BASE_URL) and that the server is up",
            ),
            ModelError::Unauthorized { .. } => Some(
                "check the provider's key (OPENAI_API_KEY or ANTHROPIC_API_KEY) and its permissions",
            ),
            ModelError::RateLimited { .. } => {
                Some("wait and run the task again, or lower the number of concurrent tasks")
            }
            ModelError::Server { .. } | ModelError::IdleTimeout(_) => {
                Some("the provider is having trouble; run the task again later")
            }
            ModelError::Rejected { .. } => {
                Some("check the model name and that the provider supports tool calls")
            }
            ModelError::Malformed { .. } => Some(
                "the server may not speak the protocol of the model spec (openai: is Chat Completions, openai-responses: the Responses API, anthropic: the Messages API)",
            ),
            ModelError::Config(_) => Some(
                "model specs look like openai:MODEL, openai-responses:MODEL, anthropic:MODEL or replay:PATH",
            ),
            ModelError::Cancelled => None,
            ModelError::ReplayDiverged { .. } => Some(
                "the conversation no longer matches the recording: record a new cassette with NIGHTSHIFT_RECORD, or replay without ?strict to serve the answers in order regardless",
            ),
        }
    }
}
