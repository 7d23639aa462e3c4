//! `/healthz` and the Prometheus `/metrics`, and the in-process counters behind them.
//!
//! Task counts come from the store at scrape time (so every server of a team reports the same
//! queue); request counts and connected SSE clients are this process's own.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use nightshift_protocol::TaskState;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{Auth, Read};
use crate::error::ErrorBody;
use crate::{ApiError, ServerState};

/// Counters kept by this process.
#[derive(Default)]
pub(crate) struct Metrics {
    /// Requests by (route template, method, status).
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    sse_clients: AtomicI64,
}

impl Metrics {
    fn count(&self, route: String, method: String, status: u16) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *requests.entry((route, method, status)).or_default() += 1;
    }

    pub(crate) fn sse_connected(&self) {
        self.sse_clients.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sse_disconnected(&self) {
        self.sse_clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts every request by its route template (never the raw path: ids would make every
/// request its own series).
pub(crate) async fn count_requests(
    State(state): State<ServerState>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().as_str().to_string();
    let response = next.run(request).await;
    state
        .metrics()
        .count(route, method, response.status().as_u16());
    response
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Health {
    /// `ok`
    status: &'static str,
}

/// Whether the server and its store answer. Needs no token.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses(
        (status = 200, body = Health),
        (status = 503, description = "The store does not answer", body = ErrorBody),
    )
)]
pub(crate) async fn healthz(State(state): State<ServerState>) -> Result<Json<Health>, ApiError> {
    match state.store().count_tasks().await {
        Ok(_) => Ok(Json(Health { status: "ok" })),
        Err(error) => Err(ApiError::unavailable("health check", &error)),
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 401, body = ErrorBody), (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn metrics(
    _auth: Auth<Read>,
    State(state): State<ServerState>,
) -> Result<Response, ApiError> {
    let counts = state
        .store()
        .count_tasks()
        .await
        .map_err(|e| ApiError::store("counting tasks for metrics", e))?;
    let count_of = |wanted: TaskState| {
        counts
            .iter()
            .find(|(state, _)| *state == wanted)
            .map_or(0, |(_, n)| *n)
    };
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(text, "# HELP nightshift_tasks Tasks by state.");
    let _ = writeln!(text, "# TYPE nightshift_tasks gauge");
    for task_state in TaskState::ALL {
        let _ = writeln!(
            text,
            "nightshift_tasks{{state=\"{task_state}\"}} {}",
            count_of(task_state)
        );
    }
    let _ = writeln!(
        text,
        "# HELP nightshift_queue_depth Tasks waiting for a worker."
    );
    let _ = writeln!(text, "# TYPE nightshift_queue_depth gauge");
    let _ = writeln!(
        text,
        "nightshift_queue_depth {}",
        count_of(TaskState::Queued)
    );
    let _ = writeln!(
        text,
        "# HELP nightshift_sse_clients Event streams open on this server."
    );
    let _ = writeln!(text, "# TYPE nightshift_sse_clients gauge");
    let _ = writeln!(
        text,
        "nightshift_sse_clients {}",
        state.metrics().sse_clients.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        text,
        "# HELP nightshift_event_feeds Tasks whose events this server is polling for live readers."
    );
    let _ = writeln!(text, "# TYPE nightshift_event_feeds gauge");
    let _ = writeln!(text, "nightshift_event_feeds {}", state.hub().feeds());
    let _ = writeln!(
        text,
        "# HELP nightshift_http_requests_total HTTP requests by route, method and status."
    );
    let _ = writeln!(text, "# TYPE nightshift_http_requests_total counter");
    {
        let requests = state
            .metrics()
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for ((route, method, status), n) in requests.iter() {
            let _ = writeln!(
                text,
                "nightshift_http_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {n}",
                escape_label(route)
            );
        }
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Escapes a Prometheus label value.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
