//! The repositories a server serves: listing them, and for admins registering and forgetting
//! them; and the checks that a task's repository is served and that the caller's token may use
//! it.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use nightshift_protocol::{ApiToken, Repository, Task};
use nightshift_runner::{RegisterError, RepoOptions, find_registered, register_repo};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{Admin, Auth, Read};
use crate::error::ErrorBody;
use crate::openapi::RepositoryDoc;
use crate::{ApiError, ServerState};

/// The body of `POST /api/repos`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddRepo {
    /// The absolute path of a git repository on the server's machine (any directory in its
    /// work tree), or the URL of a remote repository (`https://`, `ssh://`, `git@host:path`,
    /// `file://`), which tasks work on through a mirror and push their branches to.
    pub path: String,
    /// What tasks and tokens call it (`acme/app`); default: its top level's directory name.
    #[serde(default)]
    pub name: Option<String>,
    /// For a URL: the stored secret host git reaches it with (an HTTPS token, or an SSH
    /// private key).
    #[serde(default)]
    pub credential: Option<String>,
    /// For a repository on GitHub: open pull requests for its tasks' branches through this
    /// API (`"default"`: the one its URL implies, `https://api.github.com` for github.com).
    #[serde(default)]
    pub github_api: Option<String>,
    /// For a repository on GitHub: act as this GitHub App (its id), whose private key is the
    /// `credential`, minting installation tokens; implies `github_api` (`"default"` if unset).
    #[serde(default)]
    pub github_app: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RepoList {
    #[schema(value_type = Vec<RepositoryDoc>)]
    pub repos: Vec<Repository>,
}

async fn registered(state: &ServerState) -> Result<Vec<Repository>, ApiError> {
    state
        .store()
        .repos()
        .await
        .map_err(|e| ApiError::store("listing the repositories", e))
}

/// The registered repository a task request names (by name or by location), if the server
/// serves it and `token` may use it; a 403 saying which, otherwise. Nothing on disk is looked
/// at for a repository that is not registered.
pub(crate) async fn served(
    state: &ServerState,
    token: &ApiToken,
    text: &str,
) -> Result<Repository, ApiError> {
    let repos = registered(state).await?;
    let Some(repo) = find_registered(&repos, text) else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "repository_not_served",
            format!(
                "this server does not serve the repository `{}`; nothing was queued",
                text.trim()
            ),
        )
        .with_hint(
            "name a registered repository (GET /api/repos lists them); an admin registers one with `nightshift repo add PATH --name NAME`",
        ));
    };
    if !token.may_use_repo(&repo.name) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "repository_not_allowed",
            format!(
                "the token `{}` may not use the repository `{}`; nothing was done",
                token.name, repo.name
            ),
        )
        .with_hint(format!(
            "this token is limited to: {}",
            token.repos.join(", ")
        )));
    }
    Ok(repo.clone())
}

/// The locations of the repositories whose tasks `token` may see and act on: `None` for an
/// unlimited token (every task); for a token limited to some repositories, theirs.
pub(crate) async fn visible_locations(
    state: &ServerState,
    token: &ApiToken,
) -> Result<Option<Vec<String>>, ApiError> {
    if token.repos.is_empty() {
        return Ok(None);
    }
    let repos = registered(state).await?;
    Ok(Some(
        repos
            .into_iter()
            .filter(|repo| token.may_use_repo(&repo.name))
            .map(|repo| repo.location)
            .collect(),
    ))
}

/// Whether a task is among those [`visible_locations`] allows.
pub(crate) fn visible(locations: &Option<Vec<String>>, task: &Task) -> bool {
    match locations {
        None => true,
        Some(locations) => locations.contains(&task.spec.repo),
    }
}

/// The registered repositories (for a token limited to some, those), by name.
#[utoipa::path(
    get, path = "/api/repos", tag = "repos",
    responses(
        (status = 200, body = RepoList),
        (status = 401, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    auth: Auth<Read>,
    State(state): State<ServerState>,
) -> Result<Json<RepoList>, ApiError> {
    let mut repos = registered(&state).await?;
    repos.retain(|repo| auth.token.may_use_repo(&repo.name));
    Ok(Json(RepoList { repos }))
}

/// Registers a repository of the server's machine, so that tasks may run on it.
#[utoipa::path(
    post, path = "/api/repos", tag = "repos",
    request_body = AddRepo,
    responses(
        (status = 201, body = RepositoryDoc),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, description = "The name or the location is registered already", body = ErrorBody),
        (status = 422, description = "Not a git repository, or not a valid name", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn add(
    auth: Auth<Admin>,
    State(state): State<ServerState>,
    body: Result<Json<AddRepo>, JsonRejection>,
) -> Result<(StatusCode, Json<Repository>), ApiError> {
    let Json(body) = body?;
    let path = body.path.trim();
    if !nightshift_runner::is_remote(path) && !std::path::Path::new(path).is_absolute() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_repo",
            format!(
                "path `{}` is not absolute; nothing was registered",
                body.path
            ),
        ));
    }
    let repo = register_repo(
        state.store().as_ref(),
        path,
        body.name.as_deref(),
        RepoOptions {
            credential: body.credential.as_deref(),
            github: body.github_api.as_deref().map(|api| match api {
                "" | "default" => None,
                api => Some(api),
            }),
            github_app: body.github_app.as_deref(),
        },
    )
    .await
    .map_err(|err| {
        let hint = err.hint();
        let error = match err {
            RegisterError::Store(e) => return ApiError::store("registering a repository", e),
            other => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_repo",
                other.to_string(),
            ),
        };
        match hint {
            Some(hint) => error.with_hint(hint),
            None => error,
        }
    })?;
    tracing::info!(repo = %repo.name, location = %repo.location, by = %auth.token.name, "repository registered");
    Ok((StatusCode::CREATED, Json(repo)))
}

/// Forgets a repository: no new task may run on it; its tasks and their branches stay.
#[utoipa::path(
    delete, path = "/api/repos/{name}", tag = "repos",
    params(("name" = String, Path, description = "The repository's name, `/` and all (`acme/app`)")),
    responses(
        (status = 204, description = "Forgotten"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn remove(
    auth: Auth<Admin>,
    State(state): State<ServerState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(name) = name?;
    let removed = state
        .store()
        .remove_repo(&name)
        .await
        .map_err(|e| ApiError::store("removing a repository", e))?;
    if !removed {
        return Err(
            ApiError::not_found(format!("no repository is registered as `{name}`"))
                .with_hint("GET /api/repos lists them"),
        );
    }
    tracing::info!(repo = %name, by = %auth.token.name, "repository forgotten");
    Ok(StatusCode::NO_CONTENT)
}
