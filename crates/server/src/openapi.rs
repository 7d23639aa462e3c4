//! The OpenAPI document, generated from the handlers' annotations.
//!
//! The wire types live in `nightshift-protocol`, which stays free of HTTP concerns, so the
//! schemas of the task, the event and the token are spelled out here as documentation-only
//! structs. A test checks that they name exactly the fields the real types serialise.

#![allow(dead_code)] // the *Doc structs exist only for their schemas

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::error::{ErrorBody, ErrorDetail};
use crate::metrics::Health;
use crate::repos::{AddRepo, RepoList};
use crate::tokens::{CreateToken, CreatedToken, TokenList};
use crate::views::{CancelView, CreateTask, EventPage, SendMessage, TaskList};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "nightshift",
        description = "A self-hosted background coding agent: submit tasks, follow their event \
            logs live, fetch the result. Every endpoint but /healthz and /api/openapi.json needs \
            `Authorization: Bearer ns_...`. See docs/api.md."
    ),
    paths(
        crate::tasks::create,
        crate::tasks::list,
        crate::tasks::show,
        crate::events::events,
        crate::tasks::cancel,
        crate::tasks::message,
        crate::tasks::diff,
        crate::tasks::artifact,
        crate::plans::show,
        crate::plans::edit,
        crate::plans::approve,
        crate::tokens::list,
        crate::tokens::create,
        crate::tokens::revoke,
        crate::repos::list,
        crate::repos::add,
        crate::repos::remove,
        crate::webhooks::github,
        crate::metrics::healthz,
        crate::metrics::metrics,
    ),
    components(schemas(
        TaskDoc, TaskSpecDoc, TaskOriginDoc, ReviewSpecDoc, TaskStateDoc, UsageDoc, EventRecordDoc, ApiTokenDoc, TaskList,
        EventPage, CancelView, CreateTask, crate::views::ReviewRequest, SendMessage, CreateToken, CreatedToken, TokenList,
        ErrorBody, ErrorDetail, Health, RepositoryDoc, AddRepo, RepoList,
        crate::webhooks::WebhookOutcome, crate::plans::EditPlan, crate::plans::ApprovePlan,
        crate::plans::PlanVersionNumber,
    )),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The API's OpenAPI 3.1 document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Serves the document. Needs no token, so that clients can be generated from it.
pub(crate) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}

/// A task, as `nightshift show --json` prints it. Optional fields are absent until known.
#[derive(ToSchema)]
#[schema(as = Task)]
pub(crate) struct TaskDoc {
    /// The version of this shape; changes only when a field changes meaning or disappears.
    schema: u32,
    /// The last 8 characters of `id`, as branch names and listings show it.
    short_id: String,
    /// 26 lowercase characters of Crockford base 32 (a ULID).
    id: String,
    spec: TaskSpecDoc,
    state: TaskStateDoc,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    #[schema(format = DateTime)]
    started_at: Option<String>,
    #[schema(format = DateTime)]
    finished_at: Option<String>,
    /// The commit the task started from.
    base_commit: Option<String>,
    /// The branch created in the source repository, once handed off; for a follow-up that
    /// changed nothing, the branch it continued.
    branch: Option<String>,
    /// The commit of the result: the tip of `branch` as handed back, or, when the agent changed
    /// nothing, `base_commit`.
    head_commit: Option<String>,
    /// Present (true) when the agent finished without changing anything: no branch was handed
    /// back, and the declared checks ran on the tree the task started from.
    no_changes: Option<bool>,
    /// The agent's closing summary.
    summary: Option<String>,
    /// Why the task failed.
    error: Option<String>,
    turns: u32,
    usage: UsageDoc,
    cancel_requested: bool,
    /// The worker holding the task.
    worker: Option<String>,
    #[schema(format = DateTime)]
    lease_expires_at: Option<String>,
}

/// What was asked for.
#[derive(ToSchema)]
#[schema(as = TaskSpec)]
pub(crate) struct TaskSpecDoc {
    repo: String,
    base: Option<String>,
    prompt: String,
    model: String,
    max_turns: u32,
    max_tokens: Option<u64>,
    max_cost_usd: Option<f64>,
    max_duration_secs: Option<u64>,
    /// The id of the earlier task this one follows up on.
    follows: Option<String>,
    /// The image the task's sandbox starts from.
    image: Option<String>,
    /// The forge conversation that started the task (set by webhooks), where its outcome is
    /// reported.
    origin: Option<TaskOriginDoc>,
    /// Set for a review task: what it reviews (the changes of the branch `base` names).
    review: Option<ReviewSpecDoc>,
    /// Set for a best-of-N task: the model of each attempt, in order (absent otherwise).
    attempts: Option<Vec<String>>,
    /// Set for one attempt of a best-of-N task.
    attempt_of: Option<AttemptOfDoc>,
    /// Present (true) for a planning task: it hands back a plan instead of a branch.
    plan: Option<bool>,
    /// Set for the run of an approved plan.
    plan_run: Option<PlanRunDoc>,
    /// Set for one subtask of a plan's run.
    subtask_of: Option<SubtaskOfDoc>,
    /// Set for a plan run's resolution task: the branch whose merge it resolves.
    merge: Option<String>,
}

/// The plan an approved plan's run carries out.
#[derive(ToSchema)]
#[schema(as = PlanRun)]
#[allow(dead_code)]
pub(crate) struct PlanRunDoc {
    /// The id of the planning task.
    plan: String,
    /// The approved version.
    version: u32,
}

/// The plan run a subtask belongs to.
#[derive(ToSchema)]
#[schema(as = SubtaskOf)]
#[allow(dead_code)]
pub(crate) struct SubtaskOfDoc {
    /// The id of the plan's run.
    run: String,
    /// The subtask's name in the plan.
    name: String,
}

/// Which best-of-N task an attempt belongs to.
#[derive(ToSchema)]
#[schema(as = AttemptOf)]
#[allow(dead_code)]
pub(crate) struct AttemptOfDoc {
    /// The id of the best-of-N task.
    task: String,
    /// Which attempt, from 0, in the order they were asked for.
    index: u32,
}

/// What a review task reviews: the changes of its `base` branch since it left `base` here.
#[derive(ToSchema)]
#[schema(as = ReviewSpec)]
#[allow(dead_code)]
pub(crate) struct ReviewSpecDoc {
    /// The id of the task whose result is reviewed, if a task's.
    task: Option<String>,
    /// What the changes are measured from: a branch, or the reviewed task's base.
    base: String,
    /// The commit `base` was when the review was asked for.
    base_commit: String,
}

/// Where on a forge a task was asked for: `{"kind": "github_issue", "number": 7}` or
/// `{"kind": "github_pull_request", "number": 9}`.
#[derive(ToSchema)]
#[schema(as = TaskOrigin)]
#[allow(dead_code)]
pub(crate) struct TaskOriginDoc {
    /// `github_issue` or `github_pull_request`.
    kind: String,
    number: u64,
}

/// Where a task stands; the last three are terminal.
#[derive(ToSchema)]
#[schema(as = TaskState)]
#[allow(clippy::enum_variant_names)]
pub(crate) enum TaskStateDoc {
    #[schema(rename = "queued")]
    Queued,
    #[schema(rename = "preparing")]
    Preparing,
    #[schema(rename = "running")]
    Running,
    /// A planning task waits for the person's answer to its question.
    #[schema(rename = "waiting")]
    Waiting,
    #[schema(rename = "verifying")]
    Verifying,
    #[schema(rename = "handing_off")]
    HandingOff,
    #[schema(rename = "succeeded")]
    Succeeded,
    #[schema(rename = "failed")]
    Failed,
    #[schema(rename = "cancelled")]
    Cancelled,
}

/// Token counts.
#[derive(ToSchema)]
#[schema(as = Usage)]
pub(crate) struct UsageDoc {
    input_tokens: u64,
    cached_input_tokens: u64,
    output_tokens: u64,
}

/// One entry of a task's log: these four fields, plus the fields of its `type` (docs/cli.md
/// lists them).
#[derive(ToSchema)]
#[schema(as = EventRecord)]
pub(crate) struct EventRecordDoc {
    task_id: String,
    /// 1-based, gapless within a task; the SSE `id`.
    seq: u64,
    #[schema(format = DateTime)]
    at: String,
    /// `queued`, `state_changed`, ..., `message_received`, ..., `ended`; the SSE `event`.
    #[schema(rename = "type")]
    kind: String,
}

/// An API token, without its secret.
#[derive(ToSchema)]
#[schema(as = ApiToken)]
pub(crate) struct ApiTokenDoc {
    /// `tok_...`: used to revoke it.
    id: String,
    name: String,
    /// `read`, `submit` or `admin`.
    scope: String,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    last_used_at: Option<String>,
    #[schema(format = DateTime)]
    revoked_at: Option<String>,
    /// The registered repositories (by name) the token may use; absent: every one the server
    /// serves.
    repos: Option<Vec<String>>,
}

/// A repository the server serves.
#[derive(ToSchema)]
#[schema(as = Repository)]
pub(crate) struct RepositoryDoc {
    /// What tasks and tokens call it.
    name: String,
    /// The absolute path of its top level on the server's machine.
    location: String,
    #[schema(format = DateTime)]
    created_at: String,
    /// For a remote repository: the stored secret host git reaches it with.
    credential: Option<String>,
    /// For a repository on GitHub: the API its tasks open pull requests through.
    github_api: Option<String>,
    /// For a repository on GitHub: the GitHub App nightshift acts as (its id), minting
    /// installation tokens with the private key in `credential`.
    github_app: Option<String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::BTreeSet;

    use jiff::Timestamp;
    use nightshift_protocol::{Task, TaskId, TaskSpec};

    use super::*;
    use crate::TaskView;

    fn properties(name: &str) -> BTreeSet<String> {
        let doc = serde_json::to_value(openapi()).unwrap();
        doc["components"]["schemas"][name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("no schema {name}"))
            .keys()
            .cloned()
            .collect()
    }

    #[test]
    fn the_task_schema_names_every_field_of_the_task_view() {
        let mut task = Task::queued(
            TaskId::new(),
            TaskSpec {
                repo: "/r".into(),
                base: Some("main".into()),
                prompt: "p".into(),
                model: "openai:m".into(),
                max_turns: 3,
                max_tokens: Some(1),
                max_cost_usd: Some(1.0),
                max_duration_secs: Some(1),
                follows: Some(TaskId::new()),
                image: Some("debian:12".into()),
                origin: Some(nightshift_protocol::TaskOrigin::GithubIssue { number: 7 }),
                review: Some(nightshift_protocol::ReviewSpec {
                    task: Some(TaskId::new()),
                    base: "main".into(),
                    base_commit: "a".into(),
                }),
                attempts: vec!["openai:m".into(), "openai:n".into()],
                attempt_of: Some(nightshift_protocol::AttemptOf {
                    task: TaskId::new(),
                    index: 1,
                }),
                plan: true,
                plan_run: Some(nightshift_protocol::PlanRun {
                    plan: TaskId::new(),
                    version: 2,
                }),
                subtask_of: Some(nightshift_protocol::SubtaskOf {
                    run: TaskId::new(),
                    name: "a".into(),
                }),
                merge: Some("b".into()),
            },
            Timestamp::UNIX_EPOCH,
        );
        task.started_at = Some(Timestamp::UNIX_EPOCH);
        task.finished_at = Some(Timestamp::UNIX_EPOCH);
        task.base_commit = Some("a".into());
        task.branch = Some("b".into());
        // The result is the base commit: the agent changed nothing.
        task.head_commit = Some("a".into());
        task.summary = Some("s".into());
        task.error = Some("e".into());
        task.worker = Some("w".into());
        task.lease_expires_at = Some(Timestamp::UNIX_EPOCH);
        let json = serde_json::to_value(TaskView::from(task.clone())).unwrap();
        let fields: BTreeSet<String> = json.as_object().unwrap().keys().cloned().collect();
        assert_eq!(fields, properties("Task"));
        let spec: BTreeSet<String> = json["spec"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(spec, properties("TaskSpec"));
        let origin: BTreeSet<String> = json["spec"]["origin"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(origin, properties("TaskOrigin"));
        let review: BTreeSet<String> = json["spec"]["review"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(review, properties("ReviewSpec"));
        let usage: BTreeSet<String> = json["usage"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(usage, properties("Usage"));
    }

    #[test]
    fn the_token_and_repository_schemas_name_every_field() {
        let token = nightshift_protocol::ApiToken {
            id: "tok_1".into(),
            name: "ci".into(),
            scope: nightshift_protocol::TokenScope::Submit,
            created_at: Timestamp::UNIX_EPOCH,
            last_used_at: Some(Timestamp::UNIX_EPOCH),
            revoked_at: Some(Timestamp::UNIX_EPOCH),
            repos: vec!["app".into()],
        };
        let json = serde_json::to_value(&token).unwrap();
        let fields: BTreeSet<String> = json.as_object().unwrap().keys().cloned().collect();
        assert_eq!(fields, properties("ApiToken"));
        let repo = nightshift_protocol::Repository {
            name: "app".into(),
            location: "/srv/app".into(),
            created_at: Timestamp::UNIX_EPOCH,
            credential: Some("GIT_TOKEN".into()),
            github_api: Some("https://api.github.com".into()),
            github_app: Some("123456".into()),
        };
        let json = serde_json::to_value(&repo).unwrap();
        let fields: BTreeSet<String> = json.as_object().unwrap().keys().cloned().collect();
        assert_eq!(fields, properties("Repository"));
    }
}
