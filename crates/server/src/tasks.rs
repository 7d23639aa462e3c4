//! The task endpoints: submit, list, show, cancel, message, diff and artifacts.
//!
//! Each handler checks what arrived, then calls the runner (submit) or the store (everything
//! else); the decisions about a task's lifecycle stay in those crates.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use nightshift_protocol::{ApiToken, EventRecord, Task, TaskId, TaskSpec, TaskState};
use nightshift_runner::{DIFF_BLOB, MessageOutcome, MessageRefusal, ReviewOf, TaskRequest};
use nightshift_store::TaskFilter;

use crate::auth::{Auth, Read, Submit};
use crate::error::ErrorBody;
use crate::openapi::{EventRecordDoc, TaskDoc};
use crate::views::{
    CancelView, CreateTask, ListQuery, ReviewRequest, SendMessage, TaskList, TaskView,
};
use crate::{ApiError, ServerState, repos};

/// Default and largest page of a task listing.
const DEFAULT_LIST: u32 = 50;
const MAX_LIST: u32 = 1000;

/// Resolves a task reference from a URL: a full id, a unique prefix (4+ characters) or a short
/// id. Anything that cannot be one is a 400, so that typos do not read as "not found".
/// A token limited to some repositories finds only their tasks: any other is "not found", so
/// that it cannot learn which tasks exist.
pub(crate) async fn find(
    state: &ServerState,
    token: &ApiToken,
    reference: &str,
) -> Result<Task, ApiError> {
    let valid_length = (4..=26).contains(&reference.len());
    let crockford = reference.chars().all(|c| {
        c.is_ascii_alphanumeric() && !matches!(c, 'i' | 'I' | 'l' | 'L' | 'o' | 'O' | 'u' | 'U')
    });
    if !valid_length || !crockford {
        return Err(ApiError::bad_request(
            "invalid_id",
            format!(
                "`{reference}` is not a task id: expected a full id (26 characters of Crockford \
                 base 32), a unique prefix of at least 4 characters, or a short id (the last 8)"
            ),
        ));
    }
    let task = state
        .store()
        .find_task(reference)
        .await
        .map_err(|e| ApiError::store("looking up a task", e))?;
    if !repos::visible(&repos::visible_locations(state, token).await?, &task) {
        return Err(
            ApiError::not_found(format!("no task matches `{reference}`"))
                .with_hint("GET /api/tasks lists tasks"),
        );
    }
    Ok(task)
}

/// Submits a task: checks the request and queues it.
#[utoipa::path(
    post, path = "/api/tasks", tag = "tasks",
    request_body = CreateTask,
    responses(
        (status = 201, description = "Queued", body = TaskDoc),
        (status = 400, description = "Not JSON", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, description = "Wrong fields, or a request the runner rejects \
            (empty prompt, unknown model, a model whose API key the workers lack, not a \
            repository, unknown branch)", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create(
    auth: Auth<Submit>,
    State(state): State<ServerState>,
    body: Result<Json<CreateTask>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let task = submit(&state, &auth.token, body).await?;
    tracing::info!(task = %task.id, repo = %task.spec.repo, token = %auth.token.name, "task submitted over the API");
    let location = format!("/api/tasks/{}", task.id);
    let mut response = (StatusCode::CREATED, Json(TaskView::from(task))).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// Checks a submission and queues it through the runner: what `POST /api/tasks` and the web
/// UI's new-task form both do. The repository must be one the server serves and `token` may
/// use (a 403 otherwise, before anything is read from disk).
pub(crate) async fn submit(
    state: &ServerState,
    token: &ApiToken,
    body: CreateTask,
) -> Result<Task, ApiError> {
    let repo = repos::served(state, token, &body.repo).await?;
    if let Some(text) = body.image.as_deref()
        && let Ok(reference) = nightshift_image::Reference::parse(text)
        && reference.host_path().is_some()
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_task",
            format!(
                "image `{text}` names a path on the server's machine, which an API client may not read; nothing was queued"
            ),
        )
        .with_hint("name an image in a registry (`REGISTRY/NAME[:TAG][@DIGEST]`)"));
    }
    let model = body
        .model
        .unwrap_or_else(|| state.config().default_model.clone());
    let attempts = nightshift_runner::attempt_models(
        body.models.as_deref().unwrap_or_default(),
        body.attempts,
        &model,
    )?;
    let mut request = TaskRequest::new(&repo.location, body.prompt, model);
    request.attempts = attempts;
    request.plan = body.plan.unwrap_or(false);
    request.base = body.base;
    request.max_turns = body.max_turns.unwrap_or(TaskSpec::DEFAULT_MAX_TURNS);
    request.max_tokens = body.max_tokens;
    request.max_cost_usd = body.max_cost_usd;
    request.max_duration_secs = body.max_duration_secs;
    request.image = body.image;
    request.review = match body.review {
        None => None,
        Some(ReviewRequest {
            task: Some(_),
            base: Some(_),
        }) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_task",
                "review: give `task` or `base`, not both; nothing was queued".to_string(),
            ));
        }
        Some(ReviewRequest { task: Some(id), .. }) => {
            // The reviewed task must be on the repository this token may use.
            let id = id.trim().to_ascii_lowercase();
            let reviewed = match id.parse::<TaskId>() {
                Ok(id) => state
                    .store()
                    .get_task(id)
                    .await
                    .map_err(|err| ApiError::store("reading the task to review", err))?,
                Err(_) => None,
            };
            match reviewed {
                Some(task) if task.spec.repo == repo.location => Some(ReviewOf::Task(task.id)),
                _ => {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_task",
                        format!(
                            "review: there is no task {id} on {}; nothing was queued",
                            body.repo
                        ),
                    )
                    .with_hint("give a task's full id, and its repository as `repo`"));
                }
            }
        }
        Some(ReviewRequest { task: None, base }) => Some(ReviewOf::Base(base)),
    };
    Ok(state.runner().submit(request).await?)
}

/// Lists tasks, newest first.
#[utoipa::path(
    get, path = "/api/tasks", tag = "tasks",
    params(ListQuery),
    responses(
        (status = 200, body = TaskList),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    auth: Auth<Read>,
    State(state): State<ServerState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<TaskList>, ApiError> {
    let Query(query) = query?;
    let states = parse_states(query.state.as_deref())?;
    let before = query
        .before
        .as_deref()
        .map(|text| {
            text.to_ascii_lowercase().parse::<TaskId>().map_err(|e| {
                ApiError::bad_request("invalid_query", format!("before: {e}"))
                    .with_hint("pass the `next_before` of the previous page")
            })
        })
        .transpose()?;
    let limit = match query.limit {
        None => DEFAULT_LIST,
        Some(limit @ 1..=MAX_LIST) => limit,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("limit must be between 1 and {MAX_LIST}"),
            ));
        }
    };
    let filter = TaskFilter {
        states,
        before,
        limit,
        repo: query.repo.filter(|r| !r.is_empty()),
        prompt_contains: query.q.filter(|q| !q.is_empty()),
        ..TaskFilter::default()
    };
    Ok(Json(list_page(&state, &auth.token, filter).await?))
}

/// `queued,running` as states; empty or absent is every state.
pub(crate) fn parse_states(text: Option<&str>) -> Result<Vec<TaskState>, ApiError> {
    match text {
        None | Some("") => Ok(Vec::new()),
        Some(text) => text
            .split(',')
            .map(|s| s.trim().parse::<TaskState>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApiError::bad_request("invalid_query", e.to_string())),
    }
}

/// One page of the store's task listing, newest first, with the cursor of the next page. A
/// token limited to some repositories sees only their tasks (filtered in the store, so pages
/// stay full).
pub(crate) async fn list_page(
    state: &ServerState,
    token: &ApiToken,
    filter: TaskFilter,
) -> Result<TaskList, ApiError> {
    let limit = filter.limit;
    let filter = TaskFilter {
        repos: repos::visible_locations(state, token).await?,
        ..filter
    };
    let tasks = state
        .store()
        .list_tasks(&filter)
        .await
        .map_err(|e| ApiError::store("listing tasks", e))?;
    let next_before = (tasks.len() as u32 == limit)
        .then(|| tasks.last().map(|t| t.id.to_string()))
        .flatten();
    Ok(TaskList {
        tasks: tasks.into_iter().map(TaskView::from).collect(),
        next_before,
    })
}

/// One task.
#[utoipa::path(
    get, path = "/api/tasks/{id}", tag = "tasks",
    params(("id" = String, Path, description = "A full task id, a unique prefix (4+ characters) or a short id")),
    responses(
        (status = 200, body = TaskDoc),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn show(
    auth: Auth<Read>,
    State(state): State<ServerState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<TaskView>, ApiError> {
    let Path(id) = id?;
    Ok(Json(find(&state, &auth.token, &id).await?.into()))
}

/// Asks a task to stop: a queued task is cancelled at once, a running one at its next check.
#[utoipa::path(
    post, path = "/api/tasks/{id}/cancel", tag = "tasks",
    params(("id" = String, Path, description = "A task id, prefix or short id")),
    responses(
        (status = 200, body = CancelView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn cancel(
    auth: Auth<Submit>,
    State(state): State<ServerState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<CancelView>, ApiError> {
    let Path(id) = id?;
    let task = find(&state, &auth.token, &id).await?;
    Ok(Json(cancel_task(&state, task, &auth.token.name).await?))
}

/// Asks `task` to stop, on behalf of the token called `by`: the API's cancel and the web UI's.
pub(crate) async fn cancel_task(
    state: &ServerState,
    task: Task,
    by: &str,
) -> Result<CancelView, ApiError> {
    let outcome = state
        .store()
        .request_cancel(task.id)
        .await
        .map_err(|e| ApiError::store("cancelling a task", e))?;
    tracing::info!(task = %task.id, token = %by, ?outcome, "cancel requested");
    state.hub().nudge(task.id);
    let task = state
        .store()
        .get_task(task.id)
        .await
        .map_err(|e| ApiError::store("reading a cancelled task", e))?
        .unwrap_or(task);
    Ok(CancelView::new(outcome, task))
}

/// Sends a task a message: read by a running task between turns; for a task that has ended,
/// the start of a follow-up run on the same branch.
#[utoipa::path(
    post, path = "/api/tasks/{id}/messages", tag = "tasks",
    params(("id" = String, Path, description = "A task id, prefix or short id")),
    request_body = SendMessage,
    responses(
        (status = 202, description = "Appended to the task's log as `message_received`", body = EventRecordDoc),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The task is being cancelled, or was cancelled before it ever ran", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn message(
    auth: Auth<Submit>,
    State(state): State<ServerState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<SendMessage>, JsonRejection>,
) -> Result<(StatusCode, Json<EventRecord>), ApiError> {
    let Path(id) = id?;
    let Json(body) = body?;
    if body.text.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "text: the message is empty",
        ));
    }
    let task = find(&state, &auth.token, &id).await?;
    let outcome = send_message(&state, &task, &body.text, auth.token.name).await?;
    Ok((StatusCode::ACCEPTED, Json(outcome.record)))
}

/// Sends `task` a message from the token called `from`: the API's messages and the web UI's.
pub(crate) async fn send_message(
    state: &ServerState,
    task: &Task,
    text: &str,
    from: String,
) -> Result<MessageOutcome, ApiError> {
    // A message to a task that ended with a result starts a follow-up task on its branch,
    // recorded in its log as `follow_up_started`; the workers pick it up like any task.
    let outcome = state
        .runner()
        .message(task.id, text, Some(from))
        .await
        .map_err(|e| match e {
            nightshift_runner::RunnerError::Store(e) => ApiError::store("appending a message", e),
            nightshift_runner::RunnerError::MessageRefused(refusal) => {
                let hint = match refusal {
                    MessageRefusal::NeverRan { .. } => "submit a new task with POST /api/tasks",
                    MessageRefusal::BeingCancelled { .. } => {
                        "wait for it to end, then send the message as a follow-up"
                    }
                };
                ApiError::conflict(refusal.to_string()).with_hint(hint)
            }
            other => ApiError::internal("appending a message", &other),
        })?;
    state.hub().nudge(task.id);
    Ok(outcome)
}

/// The change the task handed back, as a patch `git apply` takes.
#[utoipa::path(
    get, path = "/api/tasks/{id}/diff", tag = "tasks",
    params(("id" = String, Path, description = "A task id, prefix or short id")),
    responses(
        (status = 200, description = "The patch", content_type = "text/x-diff", body = String),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, description = "No such task, or no diff (yet)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn diff(
    auth: Auth<Read>,
    State(state): State<ServerState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let task = find(&state, &auth.token, &id).await?;
    let bytes = task_diff(&state, &task).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/x-diff; charset=utf-8")],
        Body::from(bytes),
    )
        .into_response())
}

/// The patch `task` handed back, or a 404 that says why there is none.
pub(crate) async fn task_diff(state: &ServerState, task: &Task) -> Result<Vec<u8>, ApiError> {
    let Some(bytes) = state
        .store()
        .get_blob(task.id, DIFF_BLOB)
        .await
        .map_err(|e| ApiError::store("reading a diff", e))?
    else {
        let why = if task.state.is_terminal() {
            format!(
                "task {} ended {} without a diff",
                task.id.short(),
                task.state
            )
        } else {
            format!(
                "task {} is {}: it has no diff yet",
                task.id.short(),
                task.state
            )
        };
        return Err(ApiError::not_found(why));
    };
    Ok(bytes.to_vec())
}

/// A file the task stored (logs, reports), byte for byte.
#[utoipa::path(
    get, path = "/api/tasks/{id}/artifacts/{name}", tag = "tasks",
    params(
        ("id" = String, Path, description = "A task id, prefix or short id"),
        ("name" = String, Path, description = "1 to 200 letters, digits, `.`, `_` or `-`, not starting with `.`"),
    ),
    responses(
        (status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn artifact(
    auth: Auth<Read>,
    State(state): State<ServerState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((id, name)) = path?;
    let task = find(&state, &auth.token, &id).await?;
    let bytes = task_artifact(&state, &task, &name).await?;
    let disposition = format!("attachment; filename=\"{name}\"");
    let mut response = (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from(bytes),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// The artifact `name` of `task`: what the API's artifact route and the web UI's check logs
/// serve. A name that could not be a blob is a 400 before any lookup.
pub(crate) async fn task_artifact(
    state: &ServerState,
    task: &Task,
    name: &str,
) -> Result<Vec<u8>, ApiError> {
    if !valid_artifact_name(name) {
        return Err(ApiError::bad_request(
            "invalid_name",
            format!(
                "`{name}` is not an artifact name: use 1 to 200 letters, digits, `.`, `_` or `-`, \
                 not starting with `.`"
            ),
        ));
    }
    let Some(bytes) = state
        .store()
        .get_blob(task.id, name)
        .await
        .map_err(|e| ApiError::store("reading an artifact", e))?
    else {
        return Err(ApiError::not_found(format!(
            "task {} has no artifact `{name}`",
            task.id.short()
        )));
    };
    Ok(bytes.to_vec())
}

/// The store's rule for blob names, checked here so a bad name is a 400 before any lookup.
fn valid_artifact_name(name: &str) -> bool {
    (1..=200).contains(&name.len())
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_names_cannot_escape() {
        assert!(valid_artifact_name("diff.patch"));
        assert!(valid_artifact_name("check-1_log.txt"));
        for bad in ["", ".env", "..", "a/b", "a\\b", "a b", &"x".repeat(201)] {
            assert!(!valid_artifact_name(bad), "{bad:?}");
        }
    }
}
