//! `/healthz` and the Prometheus `/metrics`, and the in-process counters behind them.
//!
//! Task counts and the totals over tasks (tokens, turns, run time, model dollars, sandbox
//! failures) come from the store at scrape time, so every server of a team reports the same
//! numbers whichever process or machine ran the tasks; request counts and connected SSE clients
//! are this process's own.

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
    let totals = state
        .store()
        .task_totals()
        .await
        .map_err(|e| ApiError::store("totalling tasks for metrics", e))?;
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
        "# HELP nightshift_tokens_total Model tokens used by every task, by kind (cached_input is the part of input served from the provider's prompt cache)."
    );
    let _ = writeln!(text, "# TYPE nightshift_tokens_total counter");
    for (kind, n) in [
        ("input", totals.input_tokens),
        ("cached_input", totals.cached_input_tokens),
        ("output", totals.output_tokens),
    ] {
        let _ = writeln!(text, "nightshift_tokens_total{{kind=\"{kind}\"}} {n}");
    }
    let _ = writeln!(
        text,
        "# HELP nightshift_turns_total Model turns taken by every task."
    );
    let _ = writeln!(text, "# TYPE nightshift_turns_total counter");
    let _ = writeln!(text, "nightshift_turns_total {}", totals.turns);
    let _ = writeln!(
        text,
        "# HELP nightshift_model_cost_usd_total Dollars spent on models by ended tasks whose model's price is known."
    );
    let _ = writeln!(text, "# TYPE nightshift_model_cost_usd_total counter");
    let _ = writeln!(text, "nightshift_model_cost_usd_total {}", totals.model_usd);
    let _ = writeln!(
        text,
        "# HELP nightshift_task_run_seconds Time from claim to end of the tasks that ran and ended."
    );
    let _ = writeln!(text, "# TYPE nightshift_task_run_seconds summary");
    let _ = writeln!(
        text,
        "nightshift_task_run_seconds_sum {}",
        totals.run_seconds_sum
    );
    let _ = writeln!(
        text,
        "nightshift_task_run_seconds_count {}",
        totals.finished
    );
    let _ = writeln!(
        text,
        "# HELP nightshift_sandbox_failures_total Tasks' errors of kind sandbox (the sandbox could not run a command)."
    );
    let _ = writeln!(text, "# TYPE nightshift_sandbox_failures_total counter");
    let _ = writeln!(
        text,
        "nightshift_sandbox_failures_total {}",
        totals.sandbox_failures
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
