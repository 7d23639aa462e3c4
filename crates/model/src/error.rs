//! What can go wrong talking to a model, with what to do about each.

use std::time::Duration;

/// A failed model call.
#[derive(Debug, thiserror::Error)]
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
            | ModelError::Cancelled => false,
        }
    }

    /// What the person should do about it.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            ModelError::Unreachable { .. } => {
                Some("check OPENAI_BASE_URL (or the provider's base URL) and that the server is up")
            }
            ModelError::Unauthorized { .. } => {
                Some("check OPENAI_API_KEY (or the provider's key) and its permissions")
            }
            ModelError::RateLimited { .. } => {
                Some("wait and run the task again, or lower the number of concurrent tasks")
            }
            ModelError::Server { .. } | ModelError::IdleTimeout(_) => {
                Some("the provider is having trouble; run the task again later")
            }
            ModelError::Rejected { .. } => {
                Some("check the model name and that the provider supports tool calls")
            }
            ModelError::Malformed { .. } => {
                Some("the server may not speak the OpenAI Chat Completions protocol")
            }
            ModelError::Config(_) => Some("model specs look like openai:MODEL"),
            ModelError::Cancelled => None,
        }
    }
}
