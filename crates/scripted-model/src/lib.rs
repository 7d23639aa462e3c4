//! A model server that answers from a script, over real HTTP on loopback.
//!
//! Tests, benchmarks and the offline demo need a model that says exactly what they want, fails
//! exactly how they want, and tells them afterwards what it was asked. [`ScriptedModel`] speaks
//! OpenAI Chat Completions (`POST /v1/chat/completions`), Anthropic Messages
//! (`POST /v1/messages`) and OpenAI Responses (`POST /v1/responses`) on `127.0.0.1`, streamed
//! and not: the path picks the protocol, and the same [`Script`] answers in each. Each request
//! gets the next [`Step`], and every request is recorded. Going through a real socket means the
//! client under test runs its real HTTP, SSE and retry code.

mod answer;
mod anthropic;
mod responses;
mod script;

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::answer::AnswerContext;
pub use crate::script::{
    BrokenStream, ErrorReply, Malformed, Reply, Route, Script, ScriptError, ScriptedToolCall,
    ScriptedUsage, Step,
};

/// A running scripted model. Dropping it stops the server.
#[derive(Debug)]
pub struct ScriptedModel {
    address: SocketAddr,
    state: Arc<Mutex<ServerState>>,
    stop: CancellationToken,
    server: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct ServerState {
    steps: Queue,
    /// The scripts of requests that name these models.
    models: BTreeMap<String, Queue>,
    /// The scripts of requests whose body contains a text, tried in order.
    routes: Vec<(String, Queue)>,
    chunk_size: usize,
    served: usize,
    requests: Vec<RecordedRequest>,
    /// The number of the next tool call id.
    next_call: u64,
}

/// A list of steps, and where it stands.
#[derive(Debug)]
struct Queue {
    steps: Vec<Step>,
    /// The step answering the next request, and how often it has answered already.
    position: usize,
    repeated: u32,
}

impl Queue {
    fn new(steps: Vec<Step>) -> Self {
        Queue {
            steps,
            position: 0,
            repeated: 0,
        }
    }

    fn next_step(&mut self) -> Option<Step> {
        loop {
            let step = self.steps.get(self.position)?;
            if self.repeated < step.times() {
                self.repeated += 1;
                return Some(step.clone());
            }
            self.position += 1;
            self.repeated = 0;
        }
    }
}

/// One request as the server received it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// The path it was posted to, e.g. `/v1/messages`.
    pub path: String,
    /// Its headers, names in lower case (only the first value of a repeated header).
    pub headers: BTreeMap<String, String>,
    /// Its body as JSON, or as a string when it is not JSON.
    pub body: Value,
}

/// Which protocol a request speaks, by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Chat,
    Anthropic,
    Responses,
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<ServerState>>,
    stop: CancellationToken,
}

impl ScriptedModel {
    /// Starts serving `script` on a free port of `127.0.0.1`.
    pub async fn start(script: Script) -> io::Result<ScriptedModel> {
        script
            .validate()
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let address = listener.local_addr()?;
        let state = Arc::new(Mutex::new(ServerState {
            steps: Queue::new(script.steps),
            models: script
                .models
                .into_iter()
                .map(|(model, steps)| (model, Queue::new(steps)))
                .collect(),
            routes: script
                .routes
                .into_iter()
                .map(|route| (route.contains, Queue::new(route.steps)))
                .collect(),
            chunk_size: script.chunk_size,
            served: 0,
            requests: Vec::new(),
            next_call: 1,
        }));
        let stop = CancellationToken::new();
        let shared = Shared {
            state: state.clone(),
            stop: stop.clone(),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .route("/chat/completions", post(chat_completions))
            .route("/v1/messages", post(anthropic_messages))
            .route("/v1/responses", post(openai_responses))
            .route("/responses", post(openai_responses))
            .fallback(not_found)
            .with_state(shared);
        let shutdown = stop.clone().cancelled_owned();
        let server = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::warn!(error = %err, "the scripted model server failed");
            }
        });
        tracing::debug!(%address, "scripted model listening");
        Ok(ScriptedModel {
            address,
            state,
            stop,
            server: Some(server),
        })
    }

    /// The base URL to configure an OpenAI client with (Chat Completions or Responses):
    /// `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.address)
    }

    /// The base URL to configure an Anthropic client with, which appends `/v1/messages`:
    /// `http://127.0.0.1:PORT`.
    pub fn anthropic_base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The socket the server listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Every request body received so far, in order (a body that is not JSON as a string).
    pub fn requests(&self) -> Vec<Value> {
        let state = lock(&self.state);
        state
            .requests
            .iter()
            .map(|request| request.body.clone())
            .collect()
    }

    /// Every request received so far, in order, with its path and headers.
    pub fn recorded(&self) -> Vec<RecordedRequest> {
        lock(&self.state).requests.clone()
    }

    /// How many requests were answered from the script (not counting "script exhausted").
    pub fn served(&self) -> usize {
        lock(&self.state).served
    }

    /// Stops the server and waits (briefly) for open connections to finish.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(mut server) = self.server.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut server)
                .await
                .is_err()
        {
            server.abort();
        }
    }
}

impl Drop for ScriptedModel {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl ServerState {
    /// Records a request and picks its answer, or says why there is none.
    fn turn(
        &mut self,
        uri: &Uri,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<(Step, AnswerContext), (StatusCode, String)> {
        let request = serde_json::from_slice::<Value>(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
        let mut recorded_headers = BTreeMap::new();
        for (name, value) in headers {
            if let Ok(value) = value.to_str() {
                recorded_headers
                    .entry(name.as_str().to_string())
                    .or_insert_with(|| value.to_string());
            }
        }
        self.requests.push(RecordedRequest {
            path: uri.path().to_string(),
            headers: recorded_headers,
            body: request.clone(),
        });
        if !request.is_object() {
            let message = "the request body is not a JSON object".to_string();
            return Err((StatusCode::BAD_REQUEST, message));
        }
        let model = request.get("model").and_then(Value::as_str);
        let text = String::from_utf8_lossy(body);
        let routed = self
            .routes
            .iter()
            .position(|(contains, _)| text.contains(contains.as_str()));
        let queue = match (routed, model.and_then(|model| self.models.get_mut(model))) {
            (Some(index), _) => &mut self.routes[index].1,
            (None, Some(queue)) => queue,
            (None, None) => &mut self.steps,
        };
        let Some(step) = queue.next_step() else {
            let message = format!("script exhausted after {} steps", self.served);
            return Err((StatusCode::INTERNAL_SERVER_ERROR, message));
        };
        self.served += 1;
        let context = AnswerContext {
            model: request
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("scripted")
                .to_string(),
            stream: request
                .get("stream")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            include_usage: request
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            chunk_size: self.chunk_size,
            request_bytes: body.len(),
            first_call: self.next_call,
            answer: self.served,
        };
        if let Step::Reply(reply) = &step {
            self.next_call += reply.tool_calls.len() as u64;
        }
        Ok((step, context))
    }
}

fn lock(state: &Mutex<ServerState>) -> MutexGuard<'_, ServerState> {
    // A panic elsewhere must not hide what was recorded.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn chat_completions(
    State(shared): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(Protocol::Chat, shared, uri, headers, body).await
}

async fn anthropic_messages(
    State(shared): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(Protocol::Anthropic, shared, uri, headers, body).await
}

async fn openai_responses(
    State(shared): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(Protocol::Responses, shared, uri, headers, body).await
}

async fn answer(
    protocol: Protocol,
    shared: Shared,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (step, context) = match lock(&shared.state).turn(&uri, &headers, &body) {
        Ok(turn) => turn,
        Err((status, message)) => return error_response(status, &message),
    };
    let stream = context.stream;
    tracing::debug!(step = ?step, stream, ?protocol, "scripted model answering");
    match step {
        Step::Reply(reply) => {
            if let Some(delay) = reply.delay_ms {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
                    _ = shared.stop.cancelled() => {
                        return error_response(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
                    }
                }
            }
            if stream && !reply.ignore_stream {
                let events = match protocol {
                    Protocol::Chat => context.stream(&reply),
                    Protocol::Anthropic => context.anthropic_stream(&reply),
                    Protocol::Responses => context.responses_stream(&reply),
                };
                event_stream(events, false)
            } else {
                let whole = match protocol {
                    Protocol::Chat => context.whole(&reply),
                    Protocol::Anthropic => context.anthropic_whole(&reply),
                    Protocol::Responses => context.responses_whole(&reply),
                };
                axum::Json(whole).into_response()
            }
        }
        Step::Error(error) => {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, content_type(&error.body));
            for (name, value) in &error.headers {
                // Checked by `Script::validate`.
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    headers.insert(name, value);
                }
            }
            let status =
                StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, headers, error.body).into_response()
        }
        Step::BrokenStream(broken) => {
            if stream {
                let text = broken.text.as_deref();
                let events = match protocol {
                    Protocol::Chat => context.broken_stream(text),
                    Protocol::Anthropic => context.anthropic_broken_stream(text),
                    Protocol::Responses => context.responses_broken_stream(text),
                };
                event_stream(events, true)
            } else {
                let start = r#"{"id":"scripted-broken","choices":[{"index":0,"message":{"#;
                body_then_cut(vec![start.to_string()], "application/json", true)
            }
        }
        Step::Malformed(malformed) => {
            if stream {
                event_stream(vec![format!("data: {}\n\n", malformed.body)], false)
            } else {
                ([(header::CONTENT_TYPE, "application/json")], malformed.body).into_response()
            }
        }
    }
}

fn event_stream(events: Vec<String>, cut: bool) -> Response {
    body_then_cut(events, "text/event-stream", cut)
}

/// A response streamed in `pieces`; with `cut`, the connection is then dropped mid-body.
fn body_then_cut(pieces: Vec<String>, content_type: &'static str, cut: bool) -> Response {
    use futures::StreamExt;
    let pieces = futures::stream::iter(pieces.into_iter().map(|piece| Ok(Bytes::from(piece))));
    let cut = futures::stream::iter(cut.then_some(())).then(|()| async {
        // Give hyper time to flush what came before: it drops unsent data on a body error.
        tokio::time::sleep(Duration::from_millis(50)).await;
        Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the script cuts the stream here",
        ))
    });
    let body = Body::from_stream(pieces.chain(cut));
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn content_type(body: &str) -> HeaderValue {
    if serde_json::from_str::<Value>(body).is_ok() {
        HeaderValue::from_static("application/json")
    } else {
        HeaderValue::from_static("text/plain; charset=utf-8")
    }
}

fn error_response(status: StatusCode, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "scripted_model"}});
    (status, axum::Json(body)).into_response()
}

async fn not_found(method: Method, uri: Uri) -> Response {
    let message = format!(
        "the scripted model serves POST /v1/chat/completions, /v1/messages and /v1/responses, not {method} {uri}"
    );
    error_response(StatusCode::NOT_FOUND, &message)
}
