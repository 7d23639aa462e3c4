//! OpenAI Chat Completions, the protocol that OpenAI and most self-hosted servers (vLLM,
//! llama.cpp, Ollama, LM Studio, OpenRouter, ...) speak.
//!
//! The JSON shapes live in `wire`, the chunk-by-chunk decoding of the answer in `decode`, and
//! the HTTP side (retries, timeouts) in the shared transport.

mod decode;
mod wire;

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::HeaderMap;

pub(crate) use self::decode::Decoder;
use crate::http::{self, Transport};
use crate::{ModelClient, ModelError, ModelRequest, ModelSpec, ProviderConfig, ResponseStream};

pub(crate) const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// A client for one model behind a Chat Completions endpoint.
#[derive(Debug, Clone)]
pub struct OpenAiChat {
    spec: ModelSpec,
    transport: Transport,
}

impl OpenAiChat {
    /// A client for `spec` at `config.openai_base_url` (default `https://api.openai.com/v1`).
    /// No API key is fine: local servers need none.
    pub fn new(spec: ModelSpec, config: &ProviderConfig) -> Result<Self, ModelError> {
        let transport = openai_transport(config, "/chat/completions")?;
        Ok(OpenAiChat { spec, transport })
    }

    /// How long the answer may go silent (before its headers, and between chunks) before the
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

    /// The URL requests go to.
    pub fn endpoint(&self) -> &str {
        self.transport.endpoint()
    }
}

/// A transport to `path` under the configured OpenAI base URL, with the bearer key if any.
pub(crate) fn openai_transport(
    config: &ProviderConfig,
    path: &str,
) -> Result<Transport, ModelError> {
    let base_url = config
        .openai_base_url
        .as_deref()
        .unwrap_or(DEFAULT_BASE_URL);
    let mut headers = HeaderMap::new();
    if let Some(key) = http::configured(config.openai_api_key.as_deref()) {
        let (name, value) =
            http::secret_header("authorization", &format!("Bearer {key}"), "OPENAI_API_KEY")?;
        headers.insert(name, value);
    }
    Transport::new(base_url, path, "the OpenAI base URL", headers)
}

/// The request as JSON bytes: equal requests give equal bytes, so prefixes cache.
pub(crate) fn encode(body: &impl serde::Serialize) -> Result<Vec<u8>, ModelError> {
    serde_json::to_vec(body).map_err(|err| {
        ModelError::Config(format!("the request could not be encoded as JSON: {err}"))
    })
}

#[async_trait]
impl ModelClient for OpenAiChat {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    async fn stream(&self, request: &ModelRequest) -> Result<ResponseStream, ModelError> {
        let body = encode(&wire::ChatRequest::new(request))?;
        self.transport.stream::<Decoder>(&self.spec, body).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn client(base_url: Option<&str>) -> Result<OpenAiChat, ModelError> {
        let config = ProviderConfig {
            openai_base_url: base_url.map(str::to_string),
            ..ProviderConfig::default()
        };
        OpenAiChat::new("openai:m".parse()?, &config)
    }

    #[test]
    fn endpoints_default_to_openai_and_tolerate_a_trailing_slash() {
        assert_eq!(
            client(None).unwrap().endpoint(),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(
            client(Some("http://localhost:11434/v1/"))
                .unwrap()
                .endpoint(),
            "http://localhost:11434/v1/chat/completions"
        );
        for bad in ["localhost:11434", "not a url", "ftp://x/v1"] {
            assert!(
                matches!(client(Some(bad)), Err(ModelError::Config(_))),
                "{bad}"
            );
        }
    }
}
