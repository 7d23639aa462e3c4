//! Remote mode: the same task commands over the HTTP API of a `nightshift serve`
//! (docs/api.md), selected by `NIGHTSHIFT_SERVER`, authenticated by `NIGHTSHIFT_TOKEN`.
//!
//! The server's workers run what is submitted, so nothing here starts a process, and nothing
//! reads or writes NIGHTSHIFT_HOME. Answers are decoded into the same protocol types the local
//! store returns, so the commands print the same thing in both modes.

use std::time::Duration;

use nightshift_protocol::{EventRecord, Task, TaskId, TaskState};
use nightshift_server::{CancelView, EventPage, TaskList, TaskView};
use nightshift_store::CancelOutcome;
use reqwest::header::{ACCEPT, RETRY_AFTER};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Submission;
use crate::output::Failure;

/// Tries of a request the server answers with 503 (its store is busy or down).
const ATTEMPTS: u32 = 4;
/// The API's largest pages.
const MAX_TASK_PAGE: u32 = 1000;
const MAX_EVENT_PAGE: u32 = 10_000;
/// Non-streaming requests give up after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A nightshift server and the credentials to use it.
pub struct Remote {
    /// `http://host:8787`, without a trailing slash.
    base: String,
    token: Option<String>,
    pub(super) client: reqwest::Client,
}

/// Why a request to the server did not give the answer asked for.
#[derive(Debug)]
pub(super) enum RemoteError {
    /// No connection, or it broke: the server may be down or restarting.
    Unreachable { source: reqwest::Error },
    /// The server answered with one of the API's errors.
    Api {
        status: StatusCode,
        code: String,
        message: String,
        hint: Option<String>,
    },
    /// The server kept answering 503: its store is busy or down.
    Unavailable,
    /// An answer that is not what the API promises.
    Malformed { what: String, detail: String },
}

impl RemoteError {
    /// Whether trying again later may work (a follower reconnects on these).
    pub(super) fn is_retryable(&self) -> bool {
        match self {
            RemoteError::Unreachable { .. } | RemoteError::Unavailable => true,
            RemoteError::Api { status, .. } => status.is_server_error(),
            RemoteError::Malformed { .. } => false,
        }
    }

    /// One line for logs and for the reason a follower gave up.
    pub(super) fn describe(&self) -> String {
        match self {
            RemoteError::Unreachable { source } => error_chain(source),
            RemoteError::Unavailable => "the server's store is unavailable".into(),
            RemoteError::Api {
                status, message, ..
            } => format!("{status}: {message}"),
            RemoteError::Malformed { what, detail } => format!("{what}: {detail}"),
        }
    }
}

/// The API's error body: `{"error": {"code", "message", "hint"?}}`.
#[derive(serde::Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(serde::Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
    #[serde(default)]
    hint: Option<String>,
}

/// The body of `POST /api/tasks`.
#[derive(Serialize)]
struct CreateTask<'a> {
    repo: &'a str,
    prompt: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    base: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    max_turns: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_cost_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_duration_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    review: Option<ReviewBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<u32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    plan: bool,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    models: &'a [String],
}

/// `review` of the body of `POST /api/tasks`: the task whose result to review, or the branch
/// the `base` branch's changes are measured from.
#[derive(Serialize)]
struct ReviewBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    task: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    base: Option<String>,
}

impl Remote {
    /// The server `NIGHTSHIFT_SERVER` names, if it names one.
    pub fn from_env() -> Result<Option<Remote>, Failure> {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|value| value.trim().to_string())
                .filter(|value| !value.is_empty())
        };
        let Some(server) = var("NIGHTSHIFT_SERVER") else {
            return Ok(None);
        };
        Remote::new(&server, var("NIGHTSHIFT_TOKEN")).map(Some)
    }

    pub fn new(server: &str, token: Option<String>) -> Result<Remote, Failure> {
        let base = server.trim_end_matches('/');
        let valid = reqwest::Url::parse(base)
            .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.has_host());
        if !valid {
            return Err(Failure::usage(format!(
                "NIGHTSHIFT_SERVER={server} is not a server URL; set it like http://host:8787, or unset it to use the local store"
            )));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Event streams carry a keep-alive comment every 15 s: longer silence is a dead
            // connection, which a follower resumes.
            .read_timeout(Duration::from_secs(45))
            .user_agent(concat!("nightshift/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| Failure::error(format!("cannot set up an HTTP client: {err}")))?;
        Ok(Remote {
            base: base.to_string(),
            token,
            client,
        })
    }

    pub(super) fn base(&self) -> &str {
        &self.base
    }

    pub(super) async fn submit(&self, submission: Submission) -> Result<Task, Failure> {
        // A directory here is sent as its absolute path, which the server matches against
        // the locations of its registered repositories; anything else is sent as it was
        // written, a registered repository's name.
        let repo = match submission.repo.exists() {
            true => std::path::absolute(&submission.repo).map_err(|err| {
                Failure::usage(format!("--repo {}: {err}", submission.repo.display()))
            })?,
            false => submission.repo.clone(),
        };
        let repo = repo.to_str().ok_or_else(|| {
            Failure::usage(format!(
                "--repo {} is not valid UTF-8, which the API cannot carry",
                repo.display()
            ))
        })?;
        let body = CreateTask {
            repo,
            prompt: &submission.prompt,
            base: submission.base.as_deref(),
            model: submission.model.as_deref(),
            max_turns: submission.max_turns,
            max_tokens: submission.max_tokens,
            max_cost_usd: submission.max_cost_usd,
            max_duration_secs: submission.max_duration_secs,
            image: submission.image.as_deref(),
            attempts: submission.attempts,
            plan: submission.plan,
            models: &submission.models,
            review: submission.review.as_ref().map(|review| match review {
                nightshift_runner::ReviewOf::Task(id) => ReviewBody {
                    task: Some(id.to_string()),
                    base: None,
                },
                nightshift_runner::ReviewOf::Base(base) => ReviewBody {
                    task: None,
                    base: base.clone(),
                },
            }),
        };
        let url = format!("{}/api/tasks", self.base);
        let result = self
            .json::<TaskView>("submitting the task", || self.client.post(&url).json(&body))
            .await;
        match result {
            Ok(view) => Ok(view.task),
            Err(RemoteError::Api {
                status,
                code,
                message,
                hint,
            }) if code == "invalid_task" => {
                let shared = format!(
                    "in remote mode the server's workers open the repository: {repo} must be a git repository at that path on the server's machines too"
                );
                let hint = match hint {
                    Some(hint) => format!("{hint}; {shared}"),
                    None => shared,
                };
                Err(self.failure(RemoteError::Api {
                    status,
                    code,
                    message,
                    hint: Some(hint),
                }))
            }
            Err(err) => Err(self.failure(err)),
        }
    }

    pub(super) async fn list(
        &self,
        states: &[TaskState],
        limit: u32,
    ) -> Result<Vec<Task>, Failure> {
        let states = states
            .iter()
            .map(|state| state.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let mut tasks = Vec::new();
        let mut before: Option<String> = None;
        while (tasks.len() as u32) < limit {
            let page = (limit - tasks.len() as u32).min(MAX_TASK_PAGE);
            let mut query = vec![("limit", page.to_string())];
            if !states.is_empty() {
                query.push(("state", states.clone()));
            }
            if let Some(before) = &before {
                query.push(("before", before.clone()));
            }
            let url = self.url_with_query("/api/tasks", &query)?;
            let list: TaskList = self
                .json("listing tasks", || self.client.get(url.clone()))
                .await
                .map_err(|err| self.failure(err))?;
            tasks.extend(list.tasks.into_iter().map(|view| view.task));
            match list.next_before {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        Ok(tasks)
    }

    pub(super) async fn find(&self, reference: &str) -> Result<Task, Failure> {
        let url = format!("{}/api/tasks/{}", self.base, path_segment(reference));
        match self
            .json::<TaskView>("looking up the task", || self.client.get(&url))
            .await
        {
            Ok(view) => Ok(view.task),
            // The same words as the local store, so that scripts see one message.
            Err(RemoteError::Api { code, message, .. }) if code == "not_found" => Err(
                Failure::usage(format!("{message}; `nightshift ls` lists tasks")),
            ),
            Err(err) => Err(self.failure(err)),
        }
    }

    pub(super) async fn events(
        &self,
        id: TaskId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<EventRecord>, Failure> {
        let query = [
            ("after", after.to_string()),
            ("limit", limit.clamp(1, MAX_EVENT_PAGE).to_string()),
        ];
        let url = self.url_with_query(&format!("/api/tasks/{id}/events"), &query)?;
        let page: EventPage = self
            .json("reading the task's events", || {
                self.client
                    .get(url.clone())
                    .header(ACCEPT, "application/json")
            })
            .await
            .map_err(|err| self.failure(err))?;
        Ok(page.events)
    }

    /// The live event stream after `after` (docs/api.md: resumable with `Last-Event-ID`).
    pub(super) async fn event_stream(
        &self,
        id: TaskId,
        after: u64,
    ) -> Result<Response, RemoteError> {
        let url = format!("{}/api/tasks/{id}/events", self.base);
        self.send(|| {
            let request = self.client.get(&url).header(ACCEPT, "text/event-stream");
            if after > 0 {
                request.header("Last-Event-ID", after.to_string())
            } else {
                request
            }
        })
        .await
    }

    pub(super) async fn diff(&self, task: &Task) -> Result<Option<Vec<u8>>, Failure> {
        let url = format!("{}/api/tasks/{}/diff", self.base, task.id);
        let response = match self
            .send(|| self.client.get(&url).timeout(REQUEST_TIMEOUT))
            .await
        {
            Ok(response) => response,
            // The task exists (it was just found): a 404 here means it has no diff.
            Err(RemoteError::Api { status, .. }) if status == StatusCode::NOT_FOUND => {
                return Ok(None);
            }
            Err(err) => return Err(self.failure(err)),
        };
        let bytes = response
            .bytes()
            .await
            .map_err(|source| self.failure(RemoteError::Unreachable { source }))?;
        Ok(Some(bytes.to_vec()))
    }

    pub(super) async fn cancel(&self, task: &Task) -> Result<CancelOutcome, Failure> {
        let url = format!("{}/api/tasks/{}/cancel", self.base, task.id);
        let view: CancelView = self
            .json("cancelling the task", || self.client.post(&url))
            .await
            .map_err(|err| self.failure(err))?;
        match view.outcome.as_str() {
            "cancelled" => Ok(CancelOutcome::CancelledWhileQueued),
            "requested" => Ok(CancelOutcome::Requested),
            "already_ended" => Ok(CancelOutcome::AlreadyEnded(view.task.task.state)),
            other => Err(self.failure(RemoteError::Malformed {
                what: "cancelling the task".into(),
                detail: format!("unknown outcome `{other}`"),
            })),
        }
    }

    pub(super) async fn say(&self, task: &Task, text: &str) -> Result<EventRecord, Failure> {
        let url = format!("{}/api/tasks/{}/messages", self.base, task.id);
        let body = serde_json::json!({ "text": text });
        self.json("sending the message", || self.client.post(&url).json(&body))
            .await
            .map_err(|err| self.failure(err))
    }

    /// `base` + `path` + `?query`, escaped.
    fn url_with_query(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<reqwest::Url, Failure> {
        let mut url = reqwest::Url::parse(&format!("{}{path}", self.base))
            .map_err(|err| Failure::usage(format!("NIGHTSHIFT_SERVER={}: {err}", self.base)))?;
        url.query_pairs_mut()
            .extend_pairs(query.iter().map(|(key, value)| (*key, value.as_str())));
        Ok(url)
    }

    /// Sends a request (built afresh for each try) and decodes its JSON answer.
    pub(super) async fn json<T: DeserializeOwned>(
        &self,
        what: &str,
        request: impl Fn() -> RequestBuilder,
    ) -> Result<T, RemoteError> {
        let response = self.send(|| request().timeout(REQUEST_TIMEOUT)).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|source| RemoteError::Unreachable { source })?;
        serde_json::from_slice(&bytes).map_err(|err| RemoteError::Malformed {
            what: what.to_string(),
            detail: err.to_string(),
        })
    }

    /// Sends a request with the token, retrying while the server answers 503, and turns an
    /// error answer into [`RemoteError::Api`].
    pub(super) async fn send(
        &self,
        request: impl Fn() -> RequestBuilder,
    ) -> Result<Response, RemoteError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut builder = request();
            if let Some(token) = &self.token {
                builder = builder.bearer_auth(token);
            }
            let response = builder
                .send()
                .await
                .map_err(|source| RemoteError::Unreachable { source })?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            if status == StatusCode::SERVICE_UNAVAILABLE {
                if attempt >= ATTEMPTS {
                    return Err(RemoteError::Unavailable);
                }
                // Backoff of 0.5, 1, 2 s, or longer when the server asks for it.
                let asked = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.trim().parse::<u64>().ok())
                    .map(|secs| Duration::from_secs(secs.min(10)))
                    .unwrap_or_default();
                let backoff = Duration::from_millis(500 << (attempt - 1));
                tracing::info!(attempt, "the server's store is unavailable; retrying");
                tokio::time::sleep(backoff.max(asked)).await;
                continue;
            }
            let bytes = response.bytes().await.unwrap_or_default();
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => RemoteError::Api {
                    status,
                    code: body.error.code,
                    message: body.error.message,
                    hint: body.error.hint,
                },
                Err(_) => RemoteError::Api {
                    status,
                    code: String::new(),
                    message: format!(
                        "{status}: {}",
                        String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).trim()
                    ),
                    hint: None,
                },
            });
        }
    }

    /// What to tell the person: what went wrong, and which setting to change.
    pub(super) fn failure(&self, error: RemoteError) -> Failure {
        let server = &self.base;
        match error {
            RemoteError::Unreachable { source } => Failure::error(format!(
                "cannot reach the nightshift server at {server}: {}",
                error_chain(&source)
            ))
            .with_hint(Some(
                "check that `nightshift serve` runs there and NIGHTSHIFT_SERVER is right; unset NIGHTSHIFT_SERVER to use the local store".into(),
            )),
            RemoteError::Unavailable => Failure::error(format!(
                "the server at {server} says its task store is unavailable, {ATTEMPTS} times in a row; nothing was changed"
            ))
            .with_hint(Some(
                "try again in a minute; the server's log says why its database is down".into(),
            )),
            RemoteError::Api {
                status, message, ..
            } if status == StatusCode::UNAUTHORIZED => {
                let message = match self.token {
                    None => format!(
                        "the server at {server} needs a token and NIGHTSHIFT_TOKEN is not set ({message})"
                    ),
                    Some(_) => format!(
                        "the server at {server} refused the token in NIGHTSHIFT_TOKEN: {message}"
                    ),
                };
                Failure::usage(message).with_hint(Some(
                    "set NIGHTSHIFT_TOKEN to a token from `nightshift token create --scope submit` run on the server's host (scope read is enough for ls, show, logs and diff)".into(),
                ))
            }
            RemoteError::Api {
                status,
                message,
                code,
                ..
            } if status == StatusCode::FORBIDDEN && code == "forbidden" => Failure::usage(format!(
                "the token in NIGHTSHIFT_TOKEN may not do this: {message}"
            ))
            .with_hint(Some(
                "run, cancel and say need a token of scope submit: set NIGHTSHIFT_TOKEN to one (`nightshift token create --scope submit` on the server's host)".into(),
            )),
            RemoteError::Api {
                status,
                message,
                hint,
                ..
            } if status.is_client_error() => Failure::usage(message).with_hint(hint),
            RemoteError::Api {
                status,
                message,
                hint,
                ..
            } => Failure::error(format!("the server at {server} failed ({status}): {message}"))
                .with_hint(hint),
            RemoteError::Malformed { what, detail } => Failure::error(format!(
                "the server at {server} gave an answer nightshift cannot read while {what}: {detail}"
            ))
            .with_hint(Some(
                "check that NIGHTSHIFT_SERVER names a nightshift server of the same version as this CLI".into(),
            )),
        }
    }
}

/// `err: cause: cause`, since reqwest's own message leaves out why a connection failed.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// A task reference as one URL path segment: ids are letters and digits; anything else is
/// escaped so that the server answers "not an id" rather than some other route.
fn path_segment(reference: &str) -> String {
    let mut out = String::with_capacity(reference.len());
    for byte in reference.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
