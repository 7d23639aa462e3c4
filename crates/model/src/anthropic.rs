//! Anthropic's Messages API (`anthropic:MODEL`).
//!
//! The JSON shapes and prompt-cache breakpoints live in `wire`, the event-by-event decoding in
//! `decode`, and the HTTP side (retries, timeouts) in the shared transport.

mod decode;
mod wire;

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

pub(crate) use self::decode::Decoder;
use crate::http::{self, Transport};
use crate::openai_chat::encode;
use crate::{ModelClient, ModelError, ModelRequest, ModelSpec, ProviderConfig, ResponseStream};

pub(crate) const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
const API_VERSION: &str = "2023-06-01";
/// `max_tokens` when the request sets none: the model's own limit, but no more than this, so a
/// runaway answer stays affordable.
const DEFAULT_MAX_TOKENS: u32 = 16_384;

/// A client for one model behind the Anthropic Messages API.
#[derive(Debug, Clone)]
pub struct AnthropicMessages {
    spec: ModelSpec,
    transport: Transport,
    default_max_tokens: u32,
}

impl AnthropicMessages {
    /// A client for `spec` at `config.anthropic_base_url` (default `https://api.anthropic.com`;
    /// requests go to `{base}/v1/messages`). No API key is fine for proxies that add their own.
    pub fn new(spec: ModelSpec, config: &ProviderConfig) -> Result<Self, ModelError> {
        let base_url = config
            .anthropic_base_url
            .as_deref()
            .unwrap_or(DEFAULT_BASE_URL);
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(API_VERSION),
        );
        if let Some(key) = http::configured(config.anthropic_api_key.as_deref()) {
            let (name, value) = http::secret_header("x-api-key", key, "ANTHROPIC_API_KEY")?;
            headers.insert(name, value);
        }
        let transport =
            Transport::new(base_url, "/v1/messages", "the Anthropic base URL", headers)?;
        let default_max_tokens = crate::limits(&spec)
            .max_output_tokens
            .min(DEFAULT_MAX_TOKENS);
        Ok(AnthropicMessages {
            spec,
            transport,
            default_max_tokens,
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

    /// `max_tokens` for requests that do not set `max_output_tokens` (the API requires one).
    /// Default: the model's output limit, at most 16384.
    pub fn with_default_max_tokens(mut self, max_tokens: u32) -> Self {
        self.default_max_tokens = max_tokens;
        self
    }

    /// The URL requests go to.
    pub fn endpoint(&self) -> &str {
        self.transport.endpoint()
    }
}

#[async_trait]
impl ModelClient for AnthropicMessages {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    async fn stream(&self, request: &ModelRequest) -> Result<ResponseStream, ModelError> {
        let max_tokens = request.max_output_tokens.unwrap_or(self.default_max_tokens);
        let body = encode(&wire::MessagesRequest::new(request, max_tokens))?;
        self.transport.stream::<Decoder>(&self.spec, body).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_default_to_anthropic() {
        let client = |base: Option<&str>| {
            let config = ProviderConfig {
                anthropic_base_url: base.map(str::to_string),
                ..ProviderConfig::default()
            };
            AnthropicMessages::new("anthropic:claude-haiku-4-5".parse().unwrap(), &config)
        };
        assert_eq!(
            client(None).unwrap().endpoint(),
            "https://api.anthropic.com/v1/messages"
        );
        assert_eq!(
            client(Some("http://127.0.0.1:9/")).unwrap().endpoint(),
            "http://127.0.0.1:9/v1/messages"
        );
        let err = client(Some("api.anthropic.com")).unwrap_err();
        assert!(err.to_string().contains("Anthropic base URL"), "{err}");
    }

    #[test]
    fn max_tokens_defaults_to_the_model_limit_within_a_cap() {
        let client = |spec: &str| {
            AnthropicMessages::new(spec.parse().unwrap(), &ProviderConfig::default()).unwrap()
        };
        assert_eq!(
            client("anthropic:claude-3-5-haiku").default_max_tokens,
            8_192
        );
        assert_eq!(
            client("anthropic:claude-sonnet-4-5").default_max_tokens,
            16_384
        );
        assert_eq!(
            client("anthropic:claude-sonnet-4-5")
                .with_default_max_tokens(1000)
                .default_max_tokens,
            1000
        );
    }
}
