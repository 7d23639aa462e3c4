//! OpenAI Chat Completions, the protocol that OpenAI and most self-hosted servers (vLLM,
//! llama.cpp, Ollama, LM Studio, ...) speak.
//!
//! This file owns the HTTP side: one POST per answer, status codes to [`ModelError`]s, retries
//! with backoff, and timeouts. The JSON shapes live in `wire`, and the chunk-by-chunk decoding
//! of the answer in `decode`.

mod decode;
mod wire;

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::time::Duration;

use async_trait::async_trait;
use eventsource_stream::{EventStreamError, Eventsource};
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use rand::Rng;
use reqwest::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};

use self::decode::Decoder;
use crate::StreamEvent;
use crate::{ModelClient, ModelError, ModelRequest, ModelSpec, ProviderConfig, ResponseStream};

const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
const DEFAULT_MAX_RETRIES: u32 = 3;
const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(20);
/// A provider asking us to wait longer than this is told no: the task fails with the rate
/// limit error (whose hint says to try later) rather than sleeping on a worker slot.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// How much of an error body goes into a [`ModelError`].
const ERROR_BODY_LIMIT: usize = 2048;

/// A client for one model behind a Chat Completions endpoint.
#[derive(Debug, Clone)]
pub struct OpenAiChat {
    spec: ModelSpec,
    http: reqwest::Client,
    endpoint: String,
    api_key: Option<String>,
    idle_timeout: Duration,
    max_retries: u32,
    backoff_base: Duration,
}

impl OpenAiChat {
    /// A client for `spec` at `config.openai_base_url` (default `https://api.openai.com/v1`).
    /// No API key is fine: local servers need none.
    pub fn new(spec: ModelSpec, config: &ProviderConfig) -> Result<Self, ModelError> {
        let base_url = config
            .openai_base_url
            .as_deref()
            .unwrap_or(DEFAULT_BASE_URL)
            .trim();
        let endpoint = format!("{}/chat/completions", base_url.trim_end_matches('/'));
        let url = reqwest::Url::parse(&endpoint).map_err(|err| {
            ModelError::Config(format!(
                "the OpenAI base URL `{base_url}` is not a URL: {err}"
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ModelError::Config(format!(
                "the OpenAI base URL `{base_url}` must start with http:// or https://"
            )));
        }
        ensure_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // Following a redirect would turn the POST into a GET; say where it pointed instead.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("nightshift/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| {
                ModelError::Config(format!(
                    "could not set up the HTTP client: {}",
                    describe(&err)
                ))
            })?;
        let api_key = config
            .openai_api_key
            .as_deref()
            .map(str::trim)
            .filter(|key| !key.is_empty())
            .map(str::to_string);
        Ok(OpenAiChat {
            spec,
            http,
            endpoint,
            api_key,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
            backoff_base: DEFAULT_BACKOFF_BASE,
        })
    }

    /// How long the answer may go silent (before its headers, and between chunks) before the
    /// call fails with [`ModelError::IdleTimeout`]. Default 120 s.
    pub fn with_idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// The first retry waits about `base`, each next one twice as long (capped at 20 s), with
    /// jitter. Default 500 ms; tests make it small.
    pub fn with_retry_backoff(mut self, base: Duration) -> Self {
        self.backoff_base = base;
        self
    }

    /// How many times a retryable failure is retried before the answer starts. Default 3.
    pub fn with_max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// The URL requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// One try: the request, its status, and the answer up to its first event, so that a
    /// failure before anything reached the caller can still be retried.
    async fn attempt(&self, body: &[u8]) -> Result<ResponseStream, ModelError> {
        let response = self.send(body).await?;
        let mut answer = Answer::new(response, self.idle_timeout, &self.endpoint).await?;
        match answer.next().await {
            Some(Err(err)) => Err(err),
            Some(Ok(first)) => {
                let rest = stream::unfold(answer, |mut answer| async move {
                    answer.next().await.map(|item| (item, answer))
                });
                Ok(stream::iter([Ok(first)]).chain(rest).boxed())
            }
            None => Ok(stream::empty().boxed()),
        }
    }

    async fn send(&self, body: &[u8]) -> Result<reqwest::Response, ModelError> {
        let mut request = self
            .http
            .post(&self.endpoint)
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = match tokio::time::timeout(self.idle_timeout, request.send()).await {
            Err(_) => return Err(ModelError::IdleTimeout(self.idle_timeout)),
            Ok(Err(err)) => {
                return Err(ModelError::Unreachable {
                    url: self.endpoint.clone(),
                    detail: describe(&err),
                });
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_retry_after);
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        let mut body = read_error_body(response, self.idle_timeout).await;
        if let Some(location) = location.filter(|_| status.is_redirection()) {
            body = format!("redirected to {location}: point the base URL there. {body}");
        }
        let status = status.as_u16();
        Err(match status {
            401 | 403 => ModelError::Unauthorized { status, body },
            429 => ModelError::RateLimited { retry_after, body },
            500..=599 => ModelError::Server { status, body },
            _ => ModelError::Rejected { status, body },
        })
    }

    /// How long to wait before retry number `retry` (0-based), or `None` to give up now.
    fn backoff(&self, retry: u32, err: &ModelError) -> Option<Duration> {
        let exponential = self
            .backoff_base
            .saturating_mul(1u32 << retry.min(16))
            .min(BACKOFF_CAP.max(self.backoff_base));
        let jittered = exponential.mul_f64(rand::rng().random_range(0.5..=1.0));
        match err {
            ModelError::RateLimited {
                retry_after: Some(after),
                ..
            } => (*after <= MAX_RETRY_AFTER).then(|| jittered.max(*after)),
            _ => Some(jittered),
        }
    }
}

#[async_trait]
impl ModelClient for OpenAiChat {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    async fn stream(&self, request: &ModelRequest) -> Result<ResponseStream, ModelError> {
        let body = serde_json::to_vec(&wire::ChatRequest::new(request)).map_err(|err| {
            ModelError::Config(format!("the request could not be encoded as JSON: {err}"))
        })?;
        let mut retry = 0;
        loop {
            let err = match self.attempt(&body).await {
                Ok(answer) => return Ok(answer),
                Err(err) => err,
            };
            if !err.is_retryable() || retry >= self.max_retries {
                return Err(err);
            }
            let Some(delay) = self.backoff(retry, &err) else {
                return Err(err);
            };
            retry += 1;
            tracing::warn!(
                model = %self.spec,
                error = %err,
                retry,
                delay_ms = delay.as_millis() as u64,
                "model call failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }
}

type SseStream =
    BoxStream<'static, Result<eventsource_stream::Event, EventStreamError<reqwest::Error>>>;

/// One answer being read: the SSE stream (or a whole JSON completion already decoded) and the
/// events decoded but not yet handed out.
struct Answer {
    events: Option<SseStream>,
    decoder: Decoder,
    ready: VecDeque<StreamEvent>,
    idle_timeout: Duration,
    url: String,
}

impl Answer {
    async fn new(
        response: reqwest::Response,
        idle_timeout: Duration,
        url: &str,
    ) -> Result<Self, ModelError> {
        let is_json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.contains("json") && !value.contains("event-stream"));
        let mut answer = Answer {
            events: None,
            decoder: Decoder::default(),
            ready: VecDeque::new(),
            idle_timeout,
            url: url.to_string(),
        };
        if is_json {
            // The server ignored `stream: true`; its whole answer is one JSON document.
            let body = read_whole(response, idle_timeout, url).await?;
            answer.ready.extend(Decoder::whole(&body)?);
        } else {
            answer.events = Some(response.bytes_stream().eventsource().boxed());
        }
        Ok(answer)
    }

    /// The next event, `None` after [`StreamEvent::Completed`] or an error.
    async fn next(&mut self) -> Option<Result<StreamEvent, ModelError>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(Ok(event));
            }
            let events = self.events.as_mut()?;
            let decoded = match tokio::time::timeout(self.idle_timeout, events.next()).await {
                Err(_) => Err(ModelError::IdleTimeout(self.idle_timeout)),
                Ok(None) => self.decoder.end_of_stream().map(|event| vec![event]),
                Ok(Some(Err(err))) => Err(self.sse_error(err)),
                Ok(Some(Ok(event))) if event.data.is_empty() => Ok(Vec::new()),
                Ok(Some(Ok(event))) => self.decoder.data(&event.data),
            };
            match decoded {
                Ok(events) => {
                    self.ready.extend(events);
                    if self.decoder.is_completed() {
                        // Done: let the connection go back to the pool without waiting for EOF.
                        self.events = None;
                    }
                }
                Err(err) => {
                    self.events = None;
                    self.ready.clear();
                    return Some(Err(err));
                }
            }
        }
    }

    fn sse_error(&self, err: EventStreamError<reqwest::Error>) -> ModelError {
        match err {
            EventStreamError::Transport(err) => broken(&self.url, &err),
            EventStreamError::Utf8(err) => ModelError::Malformed {
                detail: format!("the stream is not UTF-8 text: {err}"),
            },
            EventStreamError::Parser(err) => ModelError::Malformed {
                detail: format!("the stream is not server-sent events: {err}"),
            },
        }
    }
}

async fn read_whole(
    response: reqwest::Response,
    idle_timeout: Duration,
    url: &str,
) -> Result<String, ModelError> {
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    loop {
        match tokio::time::timeout(idle_timeout, chunks.try_next()).await {
            Err(_) => return Err(ModelError::IdleTimeout(idle_timeout)),
            Ok(Err(err)) => return Err(broken(url, &err)),
            Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
            Ok(Ok(None)) => break,
        }
    }
    String::from_utf8(body).map_err(|_| ModelError::Malformed {
        detail: "the completion is not UTF-8 text".into(),
    })
}

fn broken(url: &str, err: &reqwest::Error) -> ModelError {
    ModelError::Unreachable {
        url: url.to_string(),
        detail: format!(
            "the connection broke while the answer was arriving: {}",
            describe(err)
        ),
    }
}

/// reqwest only builds its TLS configuration with a rustls crypto provider installed, and
/// panics without one. The binary installs ring at start-up; this covers every other caller
/// (tests, embedders). Losing the race to another installer is fine: one is installed.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// `Retry-After` in seconds. The HTTP-date form is rare from model APIs and is ignored.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

/// The start of an error response's body; the rest is not read.
async fn read_error_body(response: reqwest::Response, idle_timeout: Duration) -> String {
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while body.len() <= ERROR_BODY_LIMIT {
        match tokio::time::timeout(idle_timeout, chunks.next()).await {
            Ok(Some(Ok(chunk))) => body.extend_from_slice(&chunk),
            Ok(Some(Err(_)) | None) | Err(_) => break,
        }
    }
    cut(String::from_utf8_lossy(&body).trim(), ERROR_BODY_LIMIT)
}

/// `text` cut to at most `limit` bytes at a character boundary, marked when cut.
fn cut(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (cut)", &text[..end])
}

/// An error and its causes: reqwest's own message rarely says what actually failed.
fn describe(err: &dyn StdError) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn client(base_url: Option<&str>) -> Result<OpenAiChat, ModelError> {
        let config = ProviderConfig {
            openai_api_key: None,
            openai_base_url: base_url.map(str::to_string),
        };
        OpenAiChat::new("openai:m".parse()?, &config)
    }

    #[test]
    fn endpoints_tolerate_a_trailing_slash() {
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

    #[test]
    fn backoff_grows_to_a_cap_and_honours_retry_after() {
        let client = client(None).unwrap();
        let server = ModelError::Server {
            status: 500,
            body: String::new(),
        };
        for retry in 0..3 {
            let full = DEFAULT_BACKOFF_BASE * 2u32.pow(retry);
            let delay = client.backoff(retry, &server).unwrap();
            assert!(delay >= full / 2 && delay <= full, "{retry}: {delay:?}");
        }
        assert!(client.backoff(30, &server).unwrap() <= BACKOFF_CAP);
        let limited = |secs| ModelError::RateLimited {
            retry_after: Some(Duration::from_secs(secs)),
            body: String::new(),
        };
        assert!(client.backoff(0, &limited(7)).unwrap() >= Duration::from_secs(7));
        assert_eq!(client.backoff(0, &limited(3600)), None);
    }

    #[test]
    fn parses_retry_after_seconds() {
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn cuts_at_character_boundaries() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("ééé", 3), "é… (cut)");
    }
}
