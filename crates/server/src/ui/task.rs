//! One task: its transcript (live over SSE, resumed with `Last-Event-ID`), its controls (cancel,
//! message or follow-up), its evidence (checks, usage, cost, branch) and its diff.

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use nightshift_protocol::{CommandPhase, Event, EventRecord, Task, TokenScope};
use serde::Deserialize;

use super::pages::{first_line, span};
use super::session::UiSession;
use super::{UiError, check_csrf, csrf_field, diff as diff_view, layout, transcript};
use crate::auth::check_scope;
use crate::events::stream_with;
use crate::hub::Frame;
use crate::tasks::{cancel_task, find, send_message, task_artifact, task_diff};
use crate::{ApiError, ServerState};

/// Events read for the first render of a task page, per store call.
const PAGE: u32 = 1000;

async fn all_events(state: &ServerState, task: &Task) -> Result<Vec<EventRecord>, ApiError> {
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let page = state
            .store()
            .events(task.id, after, PAGE)
            .await
            .map_err(|e| ApiError::store("reading a task's events", e))?;
        let full = page.len() as u32 == PAGE;
        if let Some(last) = page.last() {
            after = last.seq;
        }
        events.extend(page);
        if !full {
            return Ok(events);
        }
    }
}

fn header_block(task: &Task, live: bool) -> Markup {
    html! {
        h1 { "Task " (task.id.short()) }
        p.prompt { (first_line(&task.spec.prompt, 200)) }
        dl.facts {
            dt { "State" } dd { span #state class={ "badge state-" (task.state.as_str()) } aria-live="polite" { (task.state.as_str()) } }
            dt { "Time" } dd {
                span #clock data-started=[task.started_at.filter(|_| live).map(|t| t.as_second())] {
                    @if let Some(start) = task.started_at {
                        (span(task.finished_at.unwrap_or_else(jiff::Timestamp::now).as_second() - start.as_second()))
                    } @else { "not started" }
                }
            }
            dt { "Repository" } dd { code { (task.spec.repo) } }
            dt { "Base" } dd { code { (task.spec.base.as_deref().unwrap_or("(checked-out branch)")) } }
            dt { "Model" } dd { code { (task.spec.model) } }
            @if let Some(follows) = task.spec.follows {
                dt { "Follows" } dd { a href={ "/tasks/" (follows) } { "task " (follows.short()) } }
            }
        }
        @if task.spec.prompt.lines().count() > 1 {
            details { summary { "Whole prompt" } pre { (task.spec.prompt) } }
        }
    }
}

fn controls(session: &UiSession, task: &Task) -> Markup {
    let why = session.why_read_only();
    let ended = task.state.is_terminal();
    html! {
        section.controls aria-label="Controls" {
            @if let Some(why) = &why { p.help { "Read only: " (why) } }
            form.card method="post" action={ "/tasks/" (task.id) "/message" } {
                (csrf_field(session))
                label for="message" {
                    (match task.state {
                        _ if ended => "Follow up (starts a new task on this branch)",
                        nightshift_protocol::TaskState::Waiting => "Answer the agent's question",
                        _ => "Message the running task",
                    })
                }
                textarea id="message" name="text" rows="3" required disabled[why.is_some()] {}
                button type="submit" disabled[why.is_some()] { (if ended { "Start follow-up" } else { "Send" }) }
            }
            @if !ended {
                form.inline method="post" action={ "/tasks/" (task.id) "/cancel" } {
                    (csrf_field(session))
                    button.danger type="submit" disabled[why.is_some()] { "Cancel task" }
                }
            }
        }
    }
}

fn evidence(task: &Task, events: &[EventRecord]) -> Markup {
    let checks: Vec<_> = events
        .iter()
        .filter_map(|r| match &r.event {
            Event::CommandFinished {
                phase: CommandPhase::Check,
                name,
                command,
                ok,
                exit_code,
                duration_ms,
                output_tail,
                artifact,
            } => Some((
                name,
                command,
                *ok,
                *exit_code,
                *duration_ms,
                output_tail,
                artifact,
            )),
            _ => None,
        })
        .collect();
    let ended = events.iter().rev().find_map(|r| match &r.event {
        Event::Ended {
            cost_usd,
            cpu_seconds,
            duration_ms,
            ..
        } => Some((*cost_usd, *cpu_seconds, *duration_ms)),
        _ => None,
    });
    html! {
        section.evidence aria-labelledby="evidence-h" {
            h2 #evidence-h { "Evidence" }
            h3 { "Checks" }
            @if checks.is_empty() { p { "No checks ran (yet)." } }
            ul.checks {
                @for (name, command, ok, exit, ms, tail, artifact) in &checks {
                    li {
                        span class=(if *ok { "pass" } else { "fail" }) { (if *ok { "✓ passed" } else { "✗ failed" }) }
                        " " strong { (name) } " " code { (command) } " — exit " (exit) ", " (format!("{:.1} s", *ms as f64 / 1000.0))
                        details { summary { "log" } pre { (tail) } }
                        @if let Some(file) = artifact {
                            a href={ "/tasks/" (task.id) "/artifacts/" (file) } { "Whole log" }
                        }
                    }
                }
            }
            h3 { "Usage" }
            dl.facts {
                dt { "Tokens in" } dd { (task.usage.input_tokens) }
                dt { "Cached" } dd { (task.usage.cached_input_tokens) }
                dt { "Tokens out" } dd { (task.usage.output_tokens) }
                dt { "Turns" } dd { (task.turns) }
                @if let Some((cost, cpu, ms)) = ended {
                    dt { "Model dollars" } dd { (cost.map(|c| format!("${c:.4}")).unwrap_or_else(|| "unknown price".into())) }
                    dt { "Machine time" } dd { (cpu.map(|c| format!("{c:.1} CPU s")).unwrap_or_else(|| "not measured".into())) ", " (format!("{:.1} s wall", ms as f64 / 1000.0)) }
                }
            }
            @if let Some(branch) = &task.branch {
                h3 { "Branch" }
                p { code { (branch) } }
                pre.commands { "git -C " (task.spec.repo) " log -p " (task.base_commit.as_deref().unwrap_or("HEAD")) ".." (branch) "\n"
                    "git fetch " (task.spec.repo) " " (branch) ":" (branch) "\n"
                    "git checkout " (branch) }
                p { a href={ "/tasks/" (task.id) "/diff" } { "View the diff" } " · " a href={ "/tasks/" (task.id) "/patch" } download { "Download the patch" } }
            }
        }
    }
}

pub(crate) async fn page(
    session: UiSession,
    State(state): State<ServerState>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let task = find(&state, &session.token, &id).await?;
    let events = all_events(&state, &task).await?;
    let last = events.last().map_or(0, |r| r.seq);
    let ended = events
        .iter()
        .any(|r| matches!(r.event, Event::Ended { .. }));
    let live = !ended || !task.state.is_terminal();
    let main = html! {
        (header_block(&task, live))
        (controls(&session, &task))
        div.columns {
            section.transcript aria-labelledby="transcript-h" {
                h2 #transcript-h { "Transcript" }
                ol #events data-live=[live.then(|| format!("/tasks/{}/live?after={last}", task.id))] {
                    @for record in &events { (transcript::event(record)) }
                }
                @if live { p.help #live-note { "Live: new events appear as they happen." } }
            }
            (evidence(&task, &events))
        }
    };
    Ok(layout(&format!("Task {}", task.id.short()), Some(&session), main).into_response())
}

#[derive(Deserialize)]
pub(crate) struct LiveQuery {
    after: Option<u64>,
}

/// One frame as the HTML of its event (the script appends it to the transcript).
fn html_frame(frame: &Frame) -> SseEvent {
    let html = match serde_json::from_str::<EventRecord>(&frame.json) {
        Ok(record) => transcript::event(&record).into_string(),
        Err(_) => String::new(),
    };
    // SSE data cannot hold a bare carriage return; in HTML text a reference means the same.
    SseEvent::default()
        .id(frame.seq.to_string())
        .data(html.replace('\r', "&#13;"))
}

pub(crate) async fn live(
    session: UiSession,
    State(state): State<ServerState>,
    Path(id): Path<String>,
    Query(query): Query<LiveQuery>,
    headers: HeaderMap,
) -> Result<Response, UiError> {
    let task = find(&state, &session.token, &id).await?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(query.after)
        .unwrap_or(0);
    Ok(stream_with(state, task.id, after, html_frame).into_response())
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    csrf: String,
}

#[derive(Deserialize)]
pub(crate) struct MessageForm {
    csrf: String,
    text: String,
}

pub(crate) async fn cancel(
    session: UiSession,
    State(state): State<ServerState>,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, UiError> {
    check_csrf(&session, &form.csrf)?;
    check_scope(&session.token, TokenScope::Submit)?;
    let task = find(&state, &session.token, &id).await?;
    let id = task.id;
    cancel_task(&state, task, &session.token.name).await?;
    Ok(Redirect::to(&format!("/tasks/{id}")).into_response())
}

pub(crate) async fn message(
    session: UiSession,
    State(state): State<ServerState>,
    Path(id): Path<String>,
    Form(form): Form<MessageForm>,
) -> Result<Response, UiError> {
    check_csrf(&session, &form.csrf)?;
    check_scope(&session.token, TokenScope::Submit)?;
    if form.text.trim().is_empty() {
        return Err(ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "the message is empty; nothing was sent",
        )
        .into());
    }
    let task = find(&state, &session.token, &id).await?;
    let outcome = send_message(&state, &task, &form.text, session.token.name.clone()).await?;
    let to = match outcome.follow_up {
        Some(follow_up) => format!("/tasks/{}", follow_up.id),
        None => format!("/tasks/{}", task.id),
    };
    Ok(Redirect::to(&to).into_response())
}

#[derive(Deserialize)]
pub(crate) struct DiffQuery {
    view: Option<String>,
}

pub(crate) async fn diff(
    session: UiSession,
    State(state): State<ServerState>,
    Path(id): Path<String>,
    Query(query): Query<DiffQuery>,
) -> Result<Response, UiError> {
    let task = find(&state, &session.token, &id).await?;
    let bytes = task_diff(&state, &task).await?;
    let patch = String::from_utf8_lossy(&bytes);
    let mut files = diff_view::parse(&patch);
    super::highlight::highlight(&mut files);
    let split = query.view.as_deref() == Some("split");
    let base = format!("/tasks/{}/diff", task.id);
    let main = html! {
        h1 { "Diff of task " a href={ "/tasks/" (task.id) } { (task.id.short()) } }
        p {
            @if let Some(branch) = &task.branch { code { (branch) } " against " }
            code { (task.spec.base.as_deref().unwrap_or("its base")) }
        }
        nav.views aria-label="Diff view" {
            a href=(base) aria-current=[(!split).then_some("page")] { "Unified" }
            a href={ (base) "?view=split" } aria-current=[split.then_some("page")] { "Side by side" }
            a href={ "/tasks/" (task.id) "/patch" } download { "Download the patch" }
        }
        (diff_view::tree(&files))
        (diff_view::files(&files, split))
    };
    Ok(layout(&format!("Diff {}", task.id.short()), Some(&session), main).into_response())
}

pub(crate) async fn patch(
    session: UiSession,
    State(state): State<ServerState>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let task = find(&state, &session.token, &id).await?;
    let bytes = task_diff(&state, &task).await?;
    let mut response = (
        [(header::CONTENT_TYPE, "text/x-diff; charset=utf-8")],
        bytes,
    )
        .into_response();
    let disposition = format!(
        "attachment; filename=\"nightshift-{}.patch\"",
        task.id.short()
    );
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// A task's stored file (a check's whole log, say) as plain text, never as HTML.
pub(crate) async fn artifact(
    session: UiSession,
    State(state): State<ServerState>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, UiError> {
    let task = find(&state, &session.token, &id).await?;
    let bytes = task_artifact(&state, &task, &name).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes).into_response())
}
