//! Token management over HTTP, for admins: list, create, revoke.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use nightshift_protocol::{ApiToken, TokenScope};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{Admin, Auth};
use crate::error::ErrorBody;
use crate::openapi::ApiTokenDoc;
use crate::{ApiError, CreateTokenError, ServerState, create_token};

/// The body of `POST /api/tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateToken {
    /// What the token is for, e.g. `ci` or a person's name.
    pub name: String,
    /// `read`, `submit` or `admin`.
    #[schema(value_type = String)]
    pub scope: TokenScope,
    /// Registered repositories (by name) the token is limited to; default: every repository
    /// the server serves.
    #[serde(default)]
    pub repos: Vec<String>,
}

/// A new token. `secret` is shown only here.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CreatedToken {
    #[schema(value_type = ApiTokenDoc)]
    pub token: ApiToken,
    /// The bearer token itself (`ns_...`); it cannot be shown again.
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenList {
    #[schema(value_type = Vec<ApiTokenDoc>)]
    pub tokens: Vec<ApiToken>,
}

/// Every token, revoked ones included, newest first. Secrets are never shown.
#[utoipa::path(
    get, path = "/api/tokens", tag = "tokens",
    responses(
        (status = 200, body = TokenList),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    _auth: Auth<Admin>,
    State(state): State<ServerState>,
) -> Result<Json<TokenList>, ApiError> {
    let tokens = state
        .store()
        .list_tokens()
        .await
        .map_err(|e| ApiError::store("listing tokens", e))?;
    Ok(Json(TokenList { tokens }))
}

/// Makes a token.
#[utoipa::path(
    post, path = "/api/tokens", tag = "tokens",
    request_body = CreateToken,
    responses(
        (status = 201, body = CreatedToken),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create(
    auth: Auth<Admin>,
    State(state): State<ServerState>,
    body: Result<Json<CreateToken>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let Json(body) = body?;
    let name = body.name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "name: give the token a name of 1 to 100 characters",
        ));
    }
    let (token, secret) = create_token(state.store().as_ref(), name, body.scope, &body.repos)
        .await
        .map_err(|e| match e {
            CreateTokenError::Store(e) => ApiError::store("creating a token", e),
            unknown @ CreateTokenError::UnknownRepo(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                unknown.to_string(),
            )
            .with_hint("GET /api/repos lists the registered repositories"),
        })?;
    tracing::info!(token = %token.id, scope = %token.scope, by = %auth.token.name, "token created");
    Ok((StatusCode::CREATED, Json(CreatedToken { token, secret })))
}

/// Revokes a token; requests with it fail with 401 from then on.
#[utoipa::path(
    delete, path = "/api/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "The token's id (`tok_...`)")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "No such unrevoked token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn revoke(
    auth: Auth<Admin>,
    State(state): State<ServerState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(id) = id?;
    let revoked = state
        .store()
        .revoke_token(&id)
        .await
        .map_err(|e| ApiError::store("revoking a token", e))?;
    if !revoked {
        return Err(ApiError::not_found(format!("no unrevoked token `{id}`"))
            .with_hint("GET /api/tokens lists tokens"));
    }
    state.tokens().forget(&id);
    tracing::info!(token = %id, by = %auth.token.name, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}
