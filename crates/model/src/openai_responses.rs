//! OpenAI's Responses API (`openai-responses:MODEL`), stateless: every request carries the
//! whole conversation, reasoning included, so nothing is stored at OpenAI.
//!
//! The JSON shapes live in `wire`, the event-by-event decoding in `decode`, and the HTTP side
//! (retries, timeouts) in the shared transport. Keys and base URL are OpenAI's.

mod decode;
mod wire;

use std::time::Duration;

use async_trait::async_trait;

pub(crate) use self::decode::Decoder;
use crate::http::Transport;
use crate::openai_chat::{encode, openai_transport};
use crate::{ModelClient, ModelError, ModelRequest, ModelSpec, ProviderConfig, ResponseStream};

/// A client for one model behind a Responses endpoint.
#[derive(Debug, Clone)]
pub struct OpenAiResponses {
    spec: ModelSpec,
    transport: Transport,
    reasoning: bool,
}

impl OpenAiResponses {
    /// A client for `spec` at `config.openai_base_url` (default `https://api.openai.com/v1`;
    /// requests go to `{base}/responses`).
    pub fn new(spec: ModelSpec, config: &ProviderConfig) -> Result<Self, ModelError> {
        let transport = openai_transport(config, "/responses")?;
        let reasoning = crate::catalog::is_reasoning(&spec);
        Ok(OpenAiResponses {
            spec,
            transport,
            reasoning,
        })
    }

    /// How long the answer may go silent (before its headers, and between events) before the
    /// call fails with [`ModelError::IdleTimeout`]. Default 120 s.
    pub fn with_idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.transport.idle_timeout = idle_timeout;
        self
    }

    /// The first retry waits about `base`, each next one twice as long (capped at 20 s), with
    /// jitter. Default 500 ms; tests make it small.
    pub fn with_retry_backoff(mut self, base: Duration) -> Self {
        self.transport.backoff_base = base;
        self
    }

    /// How many times a retryable failure is retried before the answer starts. Default 3.
    pub fn with_max_retries(mut self, max_retries: u32) -> Self {
        self.transport.max_retries = max_retries;
        self
    }

    /// Whether to ask for the model's encrypted reasoning, to send it back next turn. On by
    /// default for known reasoning models (o-series, gpt-5); other models reject the request.
    pub fn with_reasoning(mut self, reasoning: bool) -> Self {
        self.reasoning = reasoning;
        self
    }

    /// The URL requests go to.
    pub fn endpoint(&self) -> &str {
        self.transport.endpoint()
    }
}

#[async_trait]
impl ModelClient for OpenAiResponses {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    async fn stream(&self, request: &ModelRequest) -> Result<ResponseStream, ModelError> {
        let body = encode(&wire::ResponsesRequest::new(request, self.reasoning))?;
        self.transport.stream::<Decoder>(&self.spec, body).await
    }
}
