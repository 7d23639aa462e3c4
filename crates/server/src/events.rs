//! `GET /api/tasks/{id}/events`: a task's log as JSON pages, or live as Server-Sent Events.
//!
//! The stream is resumable: every SSE event carries its `seq` as `id`, and a client that
//! reconnects with `Last-Event-ID: N` gets exactly the events after `N`. It closes after the
//! task's `ended` event, once nothing follows it (a follow-up run appends after `ended`, so
//! reading an old log from the start does not stop at the first one).

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::header::ACCEPT;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use nightshift_protocol::{Event, TaskId};
use nightshift_store::{Store, StoreError};
use tokio::sync::{broadcast, mpsc};

use crate::auth::{Auth, Read};
use crate::hub::Frame;
use crate::tasks::find;
use crate::views::{EventPage, EventsQuery};
use crate::{ApiError, ServerState};

/// Most events per JSON page.
const MAX_PAGE: u32 = 10_000;
/// Frames buffered between a stream's follower and the connection.
const CLIENT_BUFFER: usize = 64;

/// A task's events: SSE with `Accept: text/event-stream`, else one JSON page.
#[utoipa::path(
    get, path = "/api/tasks/{id}/events", tag = "tasks",
    params(
        ("id" = String, Path, description = "A full task id, a unique prefix (4+ characters) or a short id"),
        ("Last-Event-ID" = Option<u64>, Header, description = "SSE: resume after this seq"),
        EventsQuery,
    ),
    responses(
        (status = 200, description = "A page of events (JSON), or the live stream \
            (`text/event-stream`: `id: <seq>`, `event: <type>`, `data: <event JSON>`)",
            body = EventPage),
        (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn events(
    auth: Auth<Read>,
    State(state): State<ServerState>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<EventsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let Query(query) = query?;
    let task = find(&state, &auth.token, &id).await?;
    let wants_stream = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"));
    if wants_stream {
        let after = match headers.get("last-event-id") {
            Some(value) => value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_header",
                        "Last-Event-ID must be the seq (a whole number) of the last event received",
                    )
                })?,
            None => query.after.unwrap_or(0),
        };
        return Ok(stream(state, task.id, after).into_response());
    }
    let after = query.after.unwrap_or(0);
    let limit = match query.limit {
        None => 1000,
        Some(limit @ 1..=MAX_PAGE) => limit,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("limit must be between 1 and {MAX_PAGE}"),
            ));
        }
    };
    let events = state
        .store()
        .events(task.id, after, limit)
        .await
        .map_err(|e| ApiError::store("reading a task's events", e))?;
    let next_after = events.last().map_or(after, |r| r.seq);
    let ended = match events.last() {
        Some(record) => {
            matches!(record.event, Event::Ended { .. }) && (events.len() as u32) < limit
        }
        None => ends_at(state.store().as_ref(), task.id, after)
            .await
            .map_err(|e| ApiError::store("reading a task's events", e))?,
    };
    Ok(Json(EventPage {
        events,
        next_after,
        ended,
    })
    .into_response())
}

/// Whether the event numbered `seq` is the task's `ended`.
async fn ends_at(store: &dyn Store, id: TaskId, seq: u64) -> Result<bool, StoreError> {
    if seq == 0 {
        return Ok(false);
    }
    let records = store.events(id, seq - 1, 1).await?;
    Ok(records
        .first()
        .is_some_and(|r| r.seq == seq && matches!(r.event, Event::Ended { .. })))
}

/// Counts a connected SSE client for as long as its stream lives.
struct ClientGuard(ServerState);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.metrics().sse_disconnected();
    }
}

fn stream(
    state: ServerState,
    id: TaskId,
    after: u64,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    stream_with(state, id, after, |frame| {
        SseEvent::default()
            .id(frame.seq.to_string())
            .event(frame.kind)
            .data(&frame.json)
    })
}

/// A task's live log after `after`, each frame turned into an SSE event by `to_sse`: the API
/// sends the JSON, the web UI the rendered HTML of the same events.
pub(crate) fn stream_with(
    state: ServerState,
    id: TaskId,
    after: u64,
    to_sse: fn(&Frame) -> SseEvent,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    state.metrics().sse_connected();
    let guard = ClientGuard(state.clone());
    let (tx, rx) = mpsc::channel::<Arc<Frame>>(CLIENT_BUFFER);
    tokio::spawn(async move {
        let mut follower = Follower {
            state,
            id,
            after,
            tx,
        };
        if let Err(error) = follower.run().await {
            // The client sees the stream end and resumes with Last-Event-ID.
            tracing::warn!(task = %id, %error, "an event stream ended early");
        }
    });
    let events = futures::stream::unfold((rx, guard), move |(mut rx, guard)| async move {
        let frame = rx.recv().await?;
        Some((Ok(to_sse(&frame)), (rx, guard)))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// Why a follower stopped before the task ended.
#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Feeds one client: the backlog from the store, then live frames from the hub, filling any gap
/// from the store so that the client sees every `seq` once, in order.
struct Follower {
    state: ServerState,
    id: TaskId,
    /// The last seq sent to the client.
    after: u64,
    tx: mpsc::Sender<Arc<Frame>>,
}

/// What a step of following left us with.
enum Next {
    Continue,
    /// The task ended (or the client or the server went away): close the stream.
    Stop,
}

impl Follower {
    async fn run(&mut self) -> Result<(), FollowError> {
        let store = self.state.store().clone();
        // A client resuming right after `ended` gets nothing more.
        if ends_at(store.as_ref(), self.id, self.after).await? {
            return Ok(());
        }
        if let Next::Stop = self.catch_up().await? {
            return Ok(());
        }
        let hub = self.state.hub().clone();
        let mut live = hub.subscribe(self.id, self.after);
        // Events appended between the read above and subscribing were not broadcast to us.
        if let Next::Stop = self.catch_up().await? {
            return Ok(());
        }
        let shutdown = hub.shutdown().clone();
        loop {
            let received = tokio::select! {
                received = live.recv() => received,
                () = self.tx.closed() => return Ok(()),
                () = shutdown.cancelled() => return Ok(()),
            };
            let next = match received {
                Ok(frame) if frame.seq <= self.after => Next::Continue,
                Ok(frame) if frame.seq == self.after + 1 => self.send(frame).await,
                // A gap (we joined between two polls) or a lag: the store has what we missed.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up().await?,
                Err(broadcast::error::RecvError::Closed) => {
                    if shutdown.is_cancelled() {
                        return Ok(());
                    }
                    live = hub.subscribe(self.id, self.after);
                    self.catch_up().await?
                }
            };
            if let Next::Stop = next {
                return Ok(());
            }
        }
    }

    /// Sends everything the store has after `self.after`. Stops if the last of it is `ended`.
    async fn catch_up(&mut self) -> Result<Next, FollowError> {
        let store = self.state.store().clone();
        let mut last_ended = false;
        loop {
            let records = store.events(self.id, self.after, 0).await?;
            let full_page = records.len() >= 1000;
            for record in &records {
                let Some(frame) = Frame::new(record) else {
                    self.after = record.seq;
                    continue;
                };
                last_ended = frame.ended;
                if let Next::Stop = self.send_unchecked(Arc::new(frame)).await {
                    return Ok(Next::Stop);
                }
            }
            if !full_page {
                break;
            }
        }
        Ok(if last_ended {
            Next::Stop
        } else {
            Next::Continue
        })
    }

    async fn send(&mut self, frame: Arc<Frame>) -> Next {
        let ended = frame.ended;
        match self.send_unchecked(frame).await {
            Next::Stop => Next::Stop,
            Next::Continue if ended => Next::Stop,
            Next::Continue => Next::Continue,
        }
    }

    async fn send_unchecked(&mut self, frame: Arc<Frame>) -> Next {
        let seq = frame.seq;
        if self.tx.send(frame).await.is_err() {
            return Next::Stop;
        }
        self.after = seq;
        Next::Continue
    }
}
