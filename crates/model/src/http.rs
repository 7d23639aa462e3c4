//! The HTTP side shared by every provider: one POST per answer, status codes to
//! [`ModelError`]s, retries with backoff and jitter, `Retry-After`, and connect and idle
//! timeouts. Providers bring a request body and a [`Decode`] for their server-sent events;
//! nothing here knows a wire format.

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::time::Duration;

use eventsource_stream::{EventStreamError, Eventsource};
use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt, TryStreamExt};
use rand::Rng;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION, RETRY_AFTER};

use crate::{ModelError, ModelSpec, ResponseStream, StreamEvent};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
pub(crate) const DEFAULT_MAX_RETRIES: u32 = 3;
pub(crate) const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(500);
pub(crate) const BACKOFF_CAP: Duration = Duration::from_secs(20);
/// A provider asking us to wait longer than this is told no: the task fails with the rate
/// limit error (whose hint says to try later) rather than sleeping on a worker slot.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// How much of an error body goes into a [`ModelError`].
const ERROR_BODY_LIMIT: usize = 2048;

/// Turns one provider's server-sent events into [`StreamEvent`]s. Implementations know
/// nothing of HTTP, so every protocol case can be tested on plain strings.
pub(crate) trait Decode: Default + Send + 'static {
    /// Decodes one event: its `event:` name (empty when the server sent none) and its `data`.
    fn event(&mut self, name: &str, data: &str) -> Result<Vec<StreamEvent>, ModelError>;

    /// The stream ended. Fine only if the protocol says the answer was complete.
    fn end_of_stream(&mut self) -> Result<Vec<StreamEvent>, ModelError>;

    /// Whether [`StreamEvent::Completed`] has been produced; nothing more may follow it.
    fn is_completed(&self) -> bool;

    /// Decodes a whole JSON answer, from a server that ignored `stream: true`.
    fn whole(body: &str) -> Result<Vec<StreamEvent>, ModelError>;
}

/// Where one model's requests go and how hard to try.
#[derive(Debug, Clone)]
pub(crate) struct Transport {
    http: reqwest::Client,
    endpoint: String,
    headers: HeaderMap,
    pub idle_timeout: Duration,
    pub max_retries: u32,
    pub backoff_base: Duration,
}

impl Transport {
    /// A transport posting to `base_url` + `path`. `what` names the setting in errors, e.g.
    /// "the OpenAI base URL".
    pub fn new(
        base_url: &str,
        path: &str,
        what: &str,
        headers: HeaderMap,
    ) -> Result<Self, ModelError> {
        let base_url = base_url.trim();
        let endpoint = format!("{}{path}", base_url.trim_end_matches('/'));
        let url = reqwest::Url::parse(&endpoint).map_err(|err| {
            ModelError::Config(format!("{what} `{base_url}` is not a URL: {err}"))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ModelError::Config(format!(
                "{what} `{base_url}` must start with http:// or https://"
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
        Ok(Transport {
            http,
            endpoint,
            headers,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
            backoff_base: DEFAULT_BACKOFF_BASE,
        })
    }

    /// The URL requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends `body` and streams the answer, retrying retryable failures that happen before
    /// the answer's first event: after that the caller has seen part of it.
    pub async fn stream<D: Decode>(
        &self,
        spec: &ModelSpec,
        body: Vec<u8>,
    ) -> Result<ResponseStream, ModelError> {
        let mut retry = 0;
        loop {
            let err = match self.attempt::<D>(&body).await {
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
                model = %spec,
                error = %err,
                retry,
                delay_ms = delay.as_millis() as u64,
                "model call failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// One try: the request, its status, and the answer up to its first event, so that a
    /// failure before anything reached the caller can still be retried.
    async fn attempt<D: Decode>(&self, body: &[u8]) -> Result<ResponseStream, ModelError> {
        let response = self.send(body).await?;
        let mut answer = Answer::<D>::new(response, self.idle_timeout, &self.endpoint).await?;
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
        let request = self
            .http
            .post(&self.endpoint)
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_vec());
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
            // 529 is Anthropic's "overloaded": a server error like any other 5xx.
            500..=599 => ModelError::Server { status, body },
            _ => ModelError::Rejected { status, body },
        })
    }

    /// How long to wait before retry number `retry` (0-based), or `None` to give up now.
    pub fn backoff(&self, retry: u32, err: &ModelError) -> Option<Duration> {
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

/// A header for a secret, marked so it never shows in debug output.
pub(crate) fn secret_header(
    name: &'static str,
    value: &str,
    what: &str,
) -> Result<(HeaderName, HeaderValue), ModelError> {
    let mut value = HeaderValue::from_str(value).map_err(|_| {
        ModelError::Config(format!(
            "{what} contains characters that cannot go in an HTTP header"
        ))
    })?;
    value.set_sensitive(true);
    Ok((HeaderName::from_static(name), value))
}

/// A configured secret, trimmed, or `None` when unset or blank.
pub(crate) fn configured(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|value| !value.is_empty())
}

type SseStream =
    BoxStream<'static, Result<eventsource_stream::Event, EventStreamError<reqwest::Error>>>;

/// One answer being read: the SSE stream (or a whole JSON answer already decoded) and the
/// events decoded but not yet handed out.
struct Answer<D> {
    events: Option<SseStream>,
    decoder: D,
    ready: VecDeque<StreamEvent>,
    idle_timeout: Duration,
    url: String,
}

impl<D: Decode> Answer<D> {
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
            decoder: D::default(),
            ready: VecDeque::new(),
            idle_timeout,
            url: url.to_string(),
        };
        if is_json {
            // The server ignored `stream: true`; its whole answer is one JSON document.
            let body = read_whole(response, idle_timeout, url).await?;
            answer.ready.extend(D::whole(&body)?);
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
                Ok(None) => self.decoder.end_of_stream(),
                Ok(Some(Err(err))) => Err(sse_error(err, |err| broken(&self.url, &err))),
                Ok(Some(Ok(event))) if event.data.is_empty() => Ok(Vec::new()),
                Ok(Some(Ok(event))) => self.decoder.event(&event.event, &event.data),
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
}

fn sse_error<E>(err: EventStreamError<E>, transport: impl FnOnce(E) -> ModelError) -> ModelError {
    match err {
        EventStreamError::Transport(err) => transport(err),
        EventStreamError::Utf8(err) => ModelError::Malformed {
            detail: format!("the stream is not UTF-8 text: {err}"),
        },
        EventStreamError::Parser(err) => ModelError::Malformed {
            detail: format!("the stream is not server-sent events: {err}"),
        },
    }
}

/// Decodes a whole body of server-sent events with the same parser and decoder a client uses,
/// without a network: for benchmarks and for reading captured streams.
pub(crate) async fn decode_body<D, S, B, E>(chunks: S) -> Result<Vec<StreamEvent>, ModelError>
where
    D: Decode,
    S: Stream<Item = Result<B, E>> + Send,
    B: AsRef<[u8]>,
    E: StdError,
{
    let mut decoder = D::default();
    let mut out = Vec::new();
    let mut events = std::pin::pin!(chunks.eventsource());
    while let Some(event) = events.next().await {
        let event = event.map_err(|err| {
            sse_error(err, |err| ModelError::Unreachable {
                url: "(body)".into(),
                detail: err.to_string(),
            })
        })?;
        if !event.data.is_empty() {
            out.extend(decoder.event(&event.event, &event.data)?);
        }
        if decoder.is_completed() {
            return Ok(out);
        }
    }
    out.extend(decoder.end_of_stream()?);
    Ok(out)
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
        detail: "the answer is not UTF-8 text".into(),
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
/// (tests, embedders, the agent's HTTP clients). Losing the race to another installer is fine:
/// one is installed.
pub fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// `Retry-After` in seconds. The HTTP-date form is rare from model APIs and is ignored.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
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
pub(crate) fn cut(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (cut)", &text[..end])
}

/// The start of a payload, for an error message.
pub(crate) fn excerpt(text: &str) -> String {
    cut(text, 200)
}

/// An error and its causes: reqwest's own message rarely says what actually failed.
pub(crate) fn describe(err: &dyn StdError) -> String {
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

    fn transport(base_url: &str) -> Result<Transport, ModelError> {
        Transport::new(
            base_url,
            "/chat/completions",
            "the base URL",
            HeaderMap::new(),
        )
    }

    #[test]
    fn endpoints_tolerate_a_trailing_slash() {
        assert_eq!(
            transport("http://localhost:11434/v1/").unwrap().endpoint(),
            "http://localhost:11434/v1/chat/completions"
        );
        for bad in ["localhost:11434", "not a url", "ftp://x/v1"] {
            let err = transport(bad).unwrap_err();
            assert!(matches!(err, ModelError::Config(_)), "{bad}");
            assert!(err.to_string().contains("the base URL"), "{err}");
        }
    }

    #[test]
    fn backoff_grows_to_a_cap_and_honours_retry_after() {
        let transport = transport("https://api.openai.com/v1").unwrap();
        let server = ModelError::Server {
            status: 500,
            body: String::new(),
        };
        for retry in 0..3 {
            let full = DEFAULT_BACKOFF_BASE * 2u32.pow(retry);
            let delay = transport.backoff(retry, &server).unwrap();
            assert!(delay >= full / 2 && delay <= full, "{retry}: {delay:?}");
        }
        assert!(transport.backoff(30, &server).unwrap() <= BACKOFF_CAP);
        let limited = |secs| ModelError::RateLimited {
            retry_after: Some(Duration::from_secs(secs)),
            body: String::new(),
        };
        assert!(transport.backoff(0, &limited(7)).unwrap() >= Duration::from_secs(7));
        assert_eq!(transport.backoff(0, &limited(3600)), None);
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

    #[test]
    fn secrets_are_hidden_and_checked() {
        let (_, value) = secret_header("x-api-key", "sk-1", "the key").unwrap();
        assert!(value.is_sensitive());
        assert!(secret_header("x-api-key", "a\nb", "the key").is_err());
        assert_eq!(configured(Some("  ")), None);
        assert_eq!(configured(Some(" k ")), Some("k"));
    }
}
