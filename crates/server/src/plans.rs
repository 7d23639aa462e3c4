//! A planning task's plan over the API: read every version, store an edit as the next
//! version, approve one.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use nightshift_protocol::{Plan, PlanHistory};
use nightshift_runner::PlanError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{Auth, Read, Submit};
use crate::error::ErrorBody;
use crate::tasks::find;
use crate::{ApiError, ServerState};

/// The body of `POST /api/tasks/{id}/plan`: the whole plan, as `GET` gives each version's.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EditPlan {
    /// `goal`, `constraints`?, `acceptance`? (`name`, `run`), `subtasks` (`name`, `prompt`,
    /// `paths`?, `depends_on`?).
    #[schema(value_type = Object)]
    pub plan: Plan,
}

/// The body of `POST /api/tasks/{id}/plan/approve`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApprovePlan {
    /// The version to approve; default: the newest.
    #[serde(default)]
    pub version: Option<u32>,
}

/// The version an edit or an approval came to; for an approval, the run that carries the
/// plan out.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PlanVersionNumber {
    pub version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

fn plan_error(err: PlanError) -> ApiError {
    match err {
        PlanError::Store(err) => ApiError::store("reading or writing the plan", err),
        PlanError::NoSuchTask(_) => ApiError::not_found(err.to_string()),
        PlanError::Approved { .. } | PlanError::Concurrent(_) => {
            ApiError::conflict(err.to_string())
        }
        PlanError::Submit(err) => err.into(),
        PlanError::NotAPlan(_)
        | PlanError::NoPlanYet(..)
        | PlanError::NoSuchVersion { .. }
        | PlanError::Invalid(_) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_plan",
            err.to_string(),
        ),
    }
}

/// Every version of a planning task's plan, oldest first, and the one approved.
#[utoipa::path(
    get, path = "/api/tasks/{id}/plan", tag = "plans",
    params(("id" = String, Path, description = "A task id, prefix or short id")),
    responses(
        (status = 200, description = "`versions` (`version`, `plan`, `author`), `approved`?", body = Object),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, description = "Not a planning task, or it has no plan yet", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn show(
    auth: Auth<Read>,
    State(state): State<ServerState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<PlanHistory>, ApiError> {
    let Path(id) = id?;
    let task = find(&state, &auth.token, &id).await?;
    let history = state
        .runner()
        .plan_history(task.id)
        .await
        .map_err(plan_error)?;
    Ok(Json(history))
}

/// Stores the plan as its next version (unless it is the newest already).
#[utoipa::path(
    post, path = "/api/tasks/{id}/plan", tag = "plans",
    params(("id" = String, Path, description = "A task id, prefix or short id")),
    request_body = EditPlan,
    responses(
        (status = 200, description = "The newest version now", body = PlanVersionNumber),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The plan was approved already", body = ErrorBody),
        (status = 422, description = "Not a valid plan, or not a planning task", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn edit(
    auth: Auth<Submit>,
    State(state): State<ServerState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<EditPlan>, JsonRejection>,
) -> Result<Json<PlanVersionNumber>, ApiError> {
    let Path(id) = id?;
    let Json(body) = body?;
    let task = find(&state, &auth.token, &id).await?;
    let version = state
        .runner()
        .edit_plan(task.id, body.plan, &auth.token.name)
        .await
        .map_err(plan_error)?;
    Ok(Json(PlanVersionNumber { version, run: None }))
}

/// Approves a version of the plan (default: the newest) and queues the run that carries it
/// out: its subtasks as tasks, merged into one plan branch. Approval is final.
#[utoipa::path(
    post, path = "/api/tasks/{id}/plan/approve", tag = "plans",
    params(("id" = String, Path, description = "A task id, prefix or short id")),
    request_body = ApprovePlan,
    responses(
        (status = 200, description = "The version approved", body = PlanVersionNumber),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "A version was approved already", body = ErrorBody),
        (status = 422, description = "No such version, or not a planning task", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn approve(
    auth: Auth<Submit>,
    State(state): State<ServerState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<ApprovePlan>, JsonRejection>,
) -> Result<Json<PlanVersionNumber>, ApiError> {
    let Path(id) = id?;
    let Json(body) = body?;
    let task = find(&state, &auth.token, &id).await?;
    let (version, run) = state
        .runner()
        .approve_plan(task.id, body.version, Some(&auth.token.name))
        .await
        .map_err(plan_error)?;
    Ok(Json(PlanVersionNumber {
        version,
        run: Some(run.id.to_string()),
    }))
}
