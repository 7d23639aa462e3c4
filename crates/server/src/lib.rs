//! The HTTP edge of nightshift: a REST API over the store and the runner, live events over SSE,
//! API tokens, Prometheus metrics (docs/api.md), and the web UI (docs/web.md).
//!
//! This crate holds no task logic. Submitting goes through [`Runner::submit`], everything else is
//! a read of the store or one of its documented operations (cancel, append a message). What the
//! server adds is HTTP: authentication, validation of what arrives, one error shape, and the
//! fan-out of a task's event log to many live readers.

mod auth;
mod error;
mod events;
mod hub;
mod metrics;
mod openapi;
mod plans;
mod repos;
mod tasks;
mod tokens;
mod ui;
mod views;
mod webhooks;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use nightshift_runner::Runner;
use nightshift_store::Store;

pub use auth::{CreateTokenError, TOKEN_PREFIX, create_token, hash_secret};
pub use error::ApiError;
pub use openapi::openapi;
pub use views::{CancelView, EventPage, TaskList, TaskView};

/// Knobs of a server. [`ServerConfig::new`] gives the defaults; the CLI fills it from flags.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The model spec used when `POST /api/tasks` names none, e.g. `openai:gpt-4.1`.
    pub default_model: String,
    /// How often a task's event feed checks the store for new events while someone follows it.
    pub event_poll: Duration,
    /// The largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// How long a verified token is trusted before the store is asked again. Revoking a token
    /// through this server takes effect at once; through another process, within this time.
    pub token_cache: Duration,
    /// The secret GitHub signs webhook deliveries with (`X-Hub-Signature-256`); `None`:
    /// `POST /api/webhooks/github` answers 404.
    pub github_webhook_secret: Option<String>,
}

impl ServerConfig {
    pub fn new(default_model: impl Into<String>) -> Self {
        ServerConfig {
            default_model: default_model.into(),
            event_poll: Duration::from_millis(100),
            max_body_bytes: 1024 * 1024,
            token_cache: Duration::from_secs(5),
            github_webhook_secret: None,
        }
    }
}

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct ServerState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    runner: Arc<Runner>,
    config: ServerConfig,
    hub: hub::EventHub,
    metrics: metrics::Metrics,
    tokens: auth::TokenCache,
    sessions: ui::session::Sessions,
}

impl ServerState {
    /// A server over `runner` and the store it writes to (one store, so what the server reads is
    /// what the runner wrote).
    pub fn new(runner: Arc<Runner>, config: ServerConfig) -> Self {
        let store = runner.store().clone();
        ServerState {
            inner: Arc::new(Inner {
                hub: hub::EventHub::new(store.clone(), config.event_poll),
                store,
                runner,
                metrics: metrics::Metrics::default(),
                tokens: auth::TokenCache::new(config.token_cache),
                sessions: ui::session::Sessions::default(),
                config,
            }),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub(crate) fn runner(&self) -> &Runner {
        &self.inner.runner
    }

    pub(crate) fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    pub(crate) fn hub(&self) -> &hub::EventHub {
        &self.inner.hub
    }

    pub(crate) fn metrics(&self) -> &metrics::Metrics {
        &self.inner.metrics
    }

    pub(crate) fn tokens(&self) -> &auth::TokenCache {
        &self.inner.tokens
    }

    pub(crate) fn sessions(&self) -> &ui::session::Sessions {
        &self.inner.sessions
    }
}

/// Every route of the API and the web UI, with the body limit, the request metrics and the JSON 404/405.
pub fn router(state: ServerState) -> Router {
    let max_body = state.config().max_body_bytes;
    Router::new()
        .route("/api/tasks", post(tasks::create).get(tasks::list))
        .route("/api/tasks/{id}", get(tasks::show))
        .route("/api/tasks/{id}/events", get(events::events))
        .route("/api/tasks/{id}/cancel", post(tasks::cancel))
        .route("/api/tasks/{id}/messages", post(tasks::message))
        .route("/api/tasks/{id}/diff", get(tasks::diff))
        .route("/api/tasks/{id}/plan", get(plans::show).post(plans::edit))
        .route("/api/tasks/{id}/plan/approve", post(plans::approve))
        .route("/api/tasks/{id}/artifacts/{name}", get(tasks::artifact))
        .route("/api/tokens", get(tokens::list).post(tokens::create))
        .route("/api/tokens/{id}", delete(tokens::revoke))
        .route("/api/repos", get(repos::list).post(repos::add))
        .route("/api/webhooks/github", post(webhooks::github))
        .route("/api/repos/{*name}", delete(repos::remove))
        .route("/api/openapi.json", get(openapi::document))
        .route("/healthz", get(metrics::healthz))
        .route("/metrics", get(metrics::metrics))
        .merge(ui::routes())
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::count_requests,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes, then lets requests in flight finish.
/// Open event streams end with the shutdown (clients resume with `Last-Event-ID`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ServerState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let hub = state.hub().clone();
    let app = router(state);
    let shutdown = async move {
        shutdown.await;
        hub.shut_down();
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
