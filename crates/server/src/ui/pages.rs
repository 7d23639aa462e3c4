//! The task list (paged by the store's cursor, filtered by state, refreshed live by the script)
//! and the new-task form (one task, or one task per line of the prompt).

use std::collections::HashMap;

use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use jiff::Timestamp;
use maud::{Markup, html};
use nightshift_protocol::{TaskId, TaskState};
use nightshift_store::{TaskFilter, TaskOutcome};
use serde::Deserialize;

use super::session::UiSession;
use super::{UiError, check_csrf, csrf_field, error_box, layout};
use crate::tasks::{list_page, parse_states, submit};
use crate::views::{CreateTask, TaskView};
use crate::{ApiError, ServerState};

/// Tasks per page of the list.
const PAGE: u32 = 50;

const STATES: [TaskState; 9] = [
    TaskState::Queued,
    TaskState::Preparing,
    TaskState::Running,
    TaskState::Waiting,
    TaskState::Verifying,
    TaskState::HandingOff,
    TaskState::Succeeded,
    TaskState::Failed,
    TaskState::Cancelled,
];

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    state: Option<String>,
    /// Only this repository (its absolute path).
    repo: Option<String>,
    /// Only prompts containing this text.
    q: Option<String>,
    before: Option<String>,
    /// `rows`: only the table's body, for the live refresh.
    partial: Option<String>,
}

/// `3m`, `2h`, `5d`: how long ago, or how long.
pub(crate) fn span(seconds: i64) -> String {
    match seconds.max(0) {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

pub(crate) fn first_line(text: &str, most: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    if line.chars().count() > most {
        format!("{}…", line.chars().take(most).collect::<String>())
    } else {
        line.to_string()
    }
}

/// `text` for a URL's query string.
fn encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn repo_name(repo: &str) -> &str {
    repo.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(repo)
}

fn row(view: &TaskView, outcome: Option<&TaskOutcome>, now: Timestamp) -> Markup {
    let task = &view.task;
    let age = span(now.as_second() - task.created_at.as_second());
    let duration = task.started_at.map(|start| {
        let end = task.finished_at.unwrap_or(now);
        span(end.as_second() - start.as_second())
    });
    html! {
        tr data-id=(task.id) {
            td { span class={ "badge state-" (task.state.as_str()) } { (task.state.as_str()) } }
            td { a href={ "/tasks/" (task.id) } { (first_line(&task.spec.prompt, 80)) } }
            td { a title=(task.spec.repo) href={ "/?repo=" (encode(&task.spec.repo)) } { (repo_name(&task.spec.repo)) } }
            td { @if let Some(b) = &task.branch { code { (b) } } @else { (task.spec.base.as_deref().unwrap_or("")) } }
            td { (age) }
            td { (duration.unwrap_or_default()) }
            td { (task.turns) }
            td { (task.usage.total()) }
            td { @if let Some(cost) = outcome.and_then(|o| o.cost_usd) { "$" (format!("{cost:.2}")) } }
            td {
                @if let Some(o) = outcome.filter(|o| o.checks_passed + o.checks_failed > 0) {
                    @if o.checks_failed > 0 { span.fail { "✗ " (o.checks_failed) " failed" } }
                    @else { span.pass { "✓ " (o.checks_passed) " passed" } }
                }
            }
        }
    }
}

fn rows(list: &[TaskView], outcomes: &HashMap<TaskId, TaskOutcome>) -> Markup {
    let now = Timestamp::now();
    html! {
        @for view in list { (row(view, outcomes.get(&view.task.id), now)) }
        @if list.is_empty() { tr { td colspan="10" { "No tasks." } } }
    }
}

pub(crate) async fn list(
    session: UiSession,
    State(state): State<ServerState>,
    Query(query): Query<ListQuery>,
) -> Result<Response, UiError> {
    let filter = query.state.clone().unwrap_or_default();
    let states = parse_states(Some(&filter))?;
    let before = match query.before.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            text.to_ascii_lowercase()
                .parse::<TaskId>()
                .map_err(|e| ApiError::bad_request("invalid_query", format!("before: {e}")))?,
        ),
    };
    let repo = query
        .repo
        .as_deref()
        .map(str::trim)
        .unwrap_or("")
        .to_string();
    let text = query.q.as_deref().map(str::trim).unwrap_or("").to_string();
    let filter_query = format!(
        "state={}&repo={}&q={}",
        encode(&filter),
        encode(&repo),
        encode(&text)
    );
    let task_filter = TaskFilter {
        states,
        before,
        limit: PAGE,
        repo: (!repo.is_empty()).then(|| repo.clone()),
        prompt_contains: (!text.is_empty()).then(|| text.clone()),
        ..TaskFilter::default()
    };
    let page = list_page(&state, &session.token, task_filter).await?;
    let ids: Vec<TaskId> = page.tasks.iter().map(|v| v.task.id).collect();
    let outcomes: HashMap<TaskId, TaskOutcome> = state
        .store()
        .task_outcomes(&ids)
        .await
        .map_err(|e| ApiError::store("reading task outcomes", e))?
        .into_iter()
        .map(|o| (o.id, o))
        .collect();
    if query.partial.as_deref() == Some("rows") {
        return Ok(rows(&page.tasks, &outcomes).into_response());
    }
    let live = before
        .is_none()
        .then(|| format!("/?partial=rows&{filter_query}"));
    let main = html! {
        h1 { "Tasks" }
        form.filters method="get" action="/" {
            label for="state" { "State" }
            select id="state" name="state" {
                option value="" selected[filter.is_empty()] { "all" }
                @for s in STATES {
                    option value=(s.as_str()) selected[filter == s.as_str()] { (s.as_str()) }
                }
            }
            label for="repo" { "Repository" }
            input id="repo" name="repo" value=(repo) placeholder="/path/to/repo";
            label for="q" { "Prompt contains" }
            input id="q" name="q" type="search" value=(text);
            button type="submit" { "Filter" }
            @if session.can_submit() { a.button href="/tasks/new" { "New task" } }
        }
        div.scroll {
            table.tasks {
                thead { tr {
                    th scope="col" { "State" } th scope="col" { "Prompt" } th scope="col" { "Repository" }
                    th scope="col" { "Branch" } th scope="col" { "Age" } th scope="col" { "Duration" }
                    th scope="col" { "Turns" } th scope="col" { "Tokens" }
                    th scope="col" { "Dollars" } th scope="col" { "Checks" }
                } }
                tbody id="task-rows" data-refresh=[live] { (rows(&page.tasks, &outcomes)) }
            }
        }
        nav.paging aria-label="Pages" {
            @if before.is_some() { a href={ "/?" (filter_query) } { "← Newest" } }
            @if let Some(next) = &page.next_before {
                a href={ "/?" (filter_query) "&before=" (next) } { "Older →" }
            }
        }
    };
    Ok(layout("Tasks", Some(&session), main).into_response())
}

#[derive(Deserialize, Default)]
pub(crate) struct NewTask {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    repo: String,
    #[serde(default)]
    base: String,
    #[serde(default)]
    prompt: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    max_turns: String,
    #[serde(default)]
    max_cost_usd: String,
    #[serde(default)]
    max_duration_secs: String,
    /// `on` when each line of the prompt is its own task.
    #[serde(default)]
    each_line: Option<String>,
}

fn form(session: &UiSession, values: &NewTask, error: Option<&ApiError>) -> Markup {
    let why = session.why_read_only();
    let main = html! {
        h1 { "New task" }
        @if let Some(why) = &why { div.error role="alert" { p { "You cannot submit tasks: " (why) } } }
        @if let Some(error) = error { (error_box(error)) }
        form.card method="post" action="/tasks/new" {
            (csrf_field(session))
            fieldset disabled[why.is_some()] {
                label for="repo" { "Repository (absolute path on the server)" }
                input id="repo" name="repo" required value=(values.repo) placeholder="/srv/git/project";
                label for="base" { "Base branch (default: the checked-out branch)" }
                input id="base" name="base" value=(values.base);
                label for="prompt" { "Prompt" }
                textarea id="prompt" name="prompt" rows="8" required { (values.prompt) }
                label.check {
                    input type="checkbox" name="each_line" checked[values.each_line.is_some()];
                    " Several tasks: one prompt per line"
                }
                label for="model" { "Model (default: the server's)" }
                input id="model" name="model" value=(values.model) placeholder="openai:gpt-4.1";
                div.budgets {
                    div { label for="max_turns" { "Most turns" } input id="max_turns" name="max_turns" inputmode="numeric" value=(values.max_turns); }
                    div { label for="max_cost_usd" { "Most dollars" } input id="max_cost_usd" name="max_cost_usd" inputmode="decimal" value=(values.max_cost_usd); }
                    div { label for="max_duration_secs" { "Most seconds" } input id="max_duration_secs" name="max_duration_secs" inputmode="numeric" value=(values.max_duration_secs); }
                }
                button type="submit" { "Submit" }
            }
        }
    };
    layout("New task", Some(session), main)
}

pub(crate) async fn new_task(session: UiSession) -> Markup {
    form(&session, &NewTask::default(), None)
}

fn number<T: std::str::FromStr>(text: &str, field: &str) -> Result<Option<T>, ApiError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("{field}: `{text}` is not a number; nothing was queued"),
        )
    })
}

fn optional(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

pub(crate) async fn create(
    session: UiSession,
    State(state): State<ServerState>,
    Form(values): Form<NewTask>,
) -> Result<Response, UiError> {
    check_csrf(&session, &values.csrf)?;
    let refuse =
        |error: ApiError| (error.status(), form(&session, &values, Some(&error))).into_response();
    if let Err(error) =
        crate::auth::check_scope(&session.token, nightshift_protocol::TokenScope::Submit)
    {
        return Ok(refuse(error));
    }
    let budgets = (|| {
        Ok::<_, ApiError>((
            number::<u32>(&values.max_turns, "most turns")?,
            number::<f64>(&values.max_cost_usd, "most dollars")?,
            number::<u64>(&values.max_duration_secs, "most seconds")?,
        ))
    })();
    let (max_turns, max_cost_usd, max_duration_secs) = match budgets {
        Ok(budgets) => budgets,
        Err(error) => return Ok(refuse(error)),
    };
    let prompts: Vec<String> = if values.each_line.is_some() {
        values
            .prompt
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    } else {
        vec![values.prompt.clone()]
    };
    let mut created = Vec::new();
    for prompt in prompts {
        let body = CreateTask {
            repo: values.repo.trim().to_string(),
            prompt,
            base: optional(&values.base),
            model: optional(&values.model),
            max_turns,
            max_tokens: None,
            max_cost_usd,
            max_duration_secs,
            image: None,
            review: None,
            attempts: None,
            models: None,
            plan: None,
        };
        match submit(&state, &session.token, body).await {
            Ok(task) => {
                tracing::info!(task = %task.id, token = %session.token.name, "task submitted in the web UI");
                created.push(task.id);
            }
            // Tasks queued before a bad line stay queued; the form says so.
            Err(error) if created.is_empty() => return Ok(refuse(error)),
            Err(error) => {
                let message = format!(
                    "{} task(s) were queued, then: {}",
                    created.len(),
                    error.message()
                );
                return Ok(refuse(ApiError::new(error.status(), error.code(), message)));
            }
        }
    }
    Ok(match created.as_slice() {
        [one] => Redirect::to(&format!("/tasks/{one}")).into_response(),
        _ => Redirect::to("/").into_response(),
    })
}
