//! The JSON shapes the API answers with. A task is the same object `nightshift show --json`
//! prints (docs/cli.md): `schema`, `short_id` and the task's own fields.

use nightshift_protocol::{EventRecord, SCHEMA_VERSION, Task};
use nightshift_store::CancelOutcome;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::openapi::{EventRecordDoc, TaskDoc};

/// A task as the API shows it.
/// Its OpenAPI schema is [`TaskDoc`], which spells out the flattened fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskView {
    pub schema: u32,
    pub short_id: String,
    /// The agent finished without changing anything ([`Task::no_changes`]); absent otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_changes: bool,
    #[serde(flatten)]
    pub task: Task,
}

impl From<Task> for TaskView {
    fn from(task: Task) -> Self {
        TaskView {
            schema: SCHEMA_VERSION,
            short_id: task.id.short(),
            no_changes: task.no_changes(),
            task,
        }
    }
}

/// One page of a task listing, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskList {
    #[schema(value_type = Vec<TaskDoc>)]
    pub tasks: Vec<TaskView>,
    /// Pass as `before` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before: Option<String>,
}

/// One page of a task's event log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    #[schema(value_type = Vec<EventRecordDoc>)]
    pub events: Vec<EventRecord>,
    /// Pass as `after` to get the next page: the last `seq` returned (or the `after` given,
    /// when there was nothing new).
    pub next_after: u64,
    /// True once the log holds the task's `ended` event and this page reached it.
    pub ended: bool,
}

/// What asking to cancel did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CancelView {
    /// `cancelled` (it was queued and is now cancelled), `requested` (a worker has it and stops
    /// at its next check) or `already_ended` (nothing changed).
    pub outcome: String,
    #[schema(value_type = TaskDoc)]
    pub task: TaskView,
}

impl CancelView {
    pub(crate) fn new(outcome: CancelOutcome, task: Task) -> Self {
        let outcome = match outcome {
            CancelOutcome::CancelledWhileQueued => "cancelled",
            CancelOutcome::Requested => "requested",
            CancelOutcome::AlreadyEnded(_) => "already_ended",
        };
        CancelView {
            outcome: outcome.to_string(),
            task: task.into(),
        }
    }
}

/// The body of `POST /api/tasks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTask {
    /// An absolute path to a git repository on the machine the workers run on.
    pub repo: String,
    /// What to do.
    pub prompt: String,
    /// The branch to start from; default: the branch the repository has checked out.
    #[serde(default)]
    pub base: Option<String>,
    /// A model spec such as `openai:gpt-4.1`; default: the server's.
    #[serde(default)]
    pub model: Option<String>,
    /// The most model turns; default 50.
    #[serde(default)]
    pub max_turns: Option<u32>,
    /// The most tokens (input plus output, over all turns); default: no limit.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// The most dollars of model usage (needs a known price); default: no limit.
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
    /// The longest the agent may work, in seconds; default: the worker's limit.
    #[serde(default)]
    pub max_duration_secs: Option<u64>,
    /// The image the sandbox starts from, in a registry (`REGISTRY/NAME[:TAG][@DIGEST]`; the
    /// local forms `oci:`, `oci-archive:` and `docker-archive:` are refused over the API);
    /// default: the repository's `[environment] image`, else the host's system.
    #[serde(default)]
    pub image: Option<String>,
    /// Make it a review task: a read-only agent reviews a task's result or the changes of
    /// `base`, reports findings (event `review_submitted`) and changes nothing. `prompt` then
    /// says what to look at besides the changes.
    #[serde(default)]
    pub review: Option<ReviewRequest>,
    /// Run this many independent attempts and keep the best (best-of-N, 2 to 8): each is a task
    /// of its own, verified by the checks; they are ranked by checks passed, then a review of
    /// each, then the smaller diff. Default: one, an ordinary task.
    #[serde(default)]
    pub attempts: Option<u32>,
    /// The models to spread the attempts over, in turn (instead of `model`); giving more
    /// than one asks for one attempt per model unless `attempts` says more.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Make it a planning task ([cli.md](../docs/cli.md)): a read-only agent that may ask
    /// questions (answered with messages) and hands back a plan instead of a branch.
    #[serde(default)]
    pub plan: Option<bool>,
}

/// What a review task reviews: `{"task": ID}`, an ended task's branch (the request's `repo` must
/// be the task's), or `{"base": BRANCH}`, the changes of the request's `base` branch since it left
/// BRANCH (`{}`: since it left the checked-out branch).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReviewRequest {
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default)]
    pub base: Option<String>,
}

/// The body of `POST /api/tasks/{id}/messages`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendMessage {
    pub text: String,
}

/// Filters of `GET /api/tasks`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Comma-separated states, e.g. `queued,running`; default: all.
    pub state: Option<String>,
    /// At most this many tasks (1 to 1000, default 50).
    pub limit: Option<u32>,
    /// Only tasks older than this full task id: the `next_before` of the previous page.
    pub before: Option<String>,
    /// Only tasks on exactly this repository (the absolute path they were submitted with).
    pub repo: Option<String>,
    /// Only tasks whose prompt contains this text (case-insensitive for ASCII).
    pub q: Option<String>,
}

/// Paging of `GET /api/tasks/{id}/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// Only events with a larger `seq` (default 0: from the start). For SSE, `Last-Event-ID`
    /// takes precedence.
    pub after: Option<u64>,
    /// At most this many events per JSON page (1 to 10000, default 1000). Ignored for SSE.
    pub limit: Option<u32>,
}
