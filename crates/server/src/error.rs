//! The one error shape of the API: `{"error": {"code", "message", "hint"?}}` with a fitting
//! status. Every handler fails through [`ApiError`], so clients branch on `code` everywhere.
//!
//! Internal failures are logged here with their context and answered with a generic message:
//! paths, SQL and other internals never reach the client.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use nightshift_runner::SubmitError;
use nightshift_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// How long a client should wait before retrying when the store is busy or down.
const RETRY_AFTER_SECS: u64 = 1;

/// A failed request, as the client sees it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    hint: Option<String>,
    retry_after: Option<u64>,
    challenge: bool,
}

/// The JSON body of every error response.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// Stable, machine-readable: `unauthorized`, `forbidden`, `not_found`, `invalid_id`,
    /// `invalid_json`, `invalid_body`, `invalid_query`, `invalid_task`, `conflict`,
    /// `body_too_large`, `unsupported_media_type`, `method_not_allowed`, `unavailable`,
    /// `internal`.
    code: &'static str,
    /// What went wrong, for people.
    message: String,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<String>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            hint: None,
            retry_after: None,
            challenge: false,
        }
    }

    pub(crate) fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// No usable credentials: 401 with a `WWW-Authenticate: Bearer` challenge.
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        let mut error = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
            .with_hint("send `Authorization: Bearer ns_...`; `nightshift token create` makes one");
        error.challenge = true;
        error
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// The store could not answer now but may in a moment: 503 with `Retry-After`.
    pub(crate) fn unavailable(context: &str, error: &dyn std::fmt::Display) -> Self {
        tracing::warn!(%error, "{context}: the store is unavailable");
        let mut api = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the task store is busy or unavailable; nothing was changed",
        )
        .with_hint("retry after the number of seconds in the Retry-After header");
        api.retry_after = Some(RETRY_AFTER_SECS);
        api
    }

    /// A failure of the server itself. Logged in full; the client gets no internals.
    pub(crate) fn internal(context: &str, error: &dyn std::fmt::Display) -> Self {
        tracing::error!(%error, "{context}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to handle the request; the failure was logged",
        )
    }

    /// A store error, with `context` saying what the handler was doing (for the log).
    pub(crate) fn store(context: &str, error: StoreError) -> Self {
        if error.is_retryable() {
            return ApiError::unavailable(context, &error);
        }
        match error {
            StoreError::NotFound { reference } => {
                ApiError::not_found(format!("no task matches `{reference}`"))
                    .with_hint("GET /api/tasks lists tasks")
            }
            StoreError::Ambiguous { .. } => ApiError::bad_request("invalid_id", error.to_string()),
            StoreError::InvalidBlobName { .. }
            | StoreError::InvalidSecretName { .. }
            | StoreError::InvalidRepoName(_) => {
                ApiError::bad_request("invalid_name", error.to_string())
            }
            StoreError::AlreadyExists { .. } => ApiError::conflict(error.to_string()),
            StoreError::NotQueued { .. }
            | StoreError::Database { .. }
            | StoreError::Migrate { .. }
            | StoreError::Blob { .. }
            | StoreError::BlobUrl { .. }
            | StoreError::Serialize { .. }
            | StoreError::Corrupt { .. }
            | StoreError::Io { .. } => ApiError::internal(context, &error),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    /// What went wrong, for people (the web UI shows it).
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// What to do about it, when known.
    pub(crate) fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> Self {
        let hint = error.hint();
        match error {
            SubmitError::Store(error) => ApiError::store("storing a submitted task", error),
            SubmitError::EmptyPrompt
            | SubmitError::Budget(_)
            | SubmitError::Model(_)
            | SubmitError::MissingKey { .. }
            | SubmitError::Image(_)
            | SubmitError::Review(_)
            | SubmitError::Attempts(_)
            | SubmitError::Repository(_) => {
                let api = ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_task",
                    format!("{error}; nothing was queued"),
                );
                match hint {
                    Some(hint) => api.with_hint(hint),
                    None => api,
                }
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let text = rejection.body_text();
        match rejection {
            JsonRejection::JsonDataError(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", text)
                    .with_hint("GET /api/openapi.json describes the request bodies")
            }
            JsonRejection::JsonSyntaxError(_) => ApiError::bad_request("invalid_json", text),
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                text,
            )
            .with_hint("send `Content-Type: application/json`"),
            JsonRejection::BytesRejection(_)
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "the request body is larger than the server accepts (1 MiB by default)",
                )
            }
            _ => ApiError::new(rejection.status(), "invalid_body", text),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request("invalid_query", rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::bad_request("invalid_id", rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                hint: self.hint,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"nightshift\""),
            );
        }
        response
    }
}

/// Unknown routes answer JSON like every other error.
pub(crate) async fn no_route() -> ApiError {
    ApiError::not_found("no such endpoint").with_hint("GET /api/openapi.json lists the endpoints")
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method",
    )
    .with_hint("GET /api/openapi.json lists the endpoints and their methods")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    async fn body_of(error: ApiError) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, headers, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn a_busy_store_is_503_with_retry_after() {
        let error = StoreError::Database {
            context: "appending an event".into(),
            cause: sqlx::Error::PoolTimedOut,
        };
        let (status, headers, body) = body_of(ApiError::store("test", error)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "1");
        assert_eq!(body["error"]["code"], "unavailable");
    }

    #[tokio::test]
    async fn internal_errors_do_not_leak() {
        let error = StoreError::Corrupt {
            what: "row 7 of /secret/path/nightshift.db".into(),
        };
        let (status, _, body) = body_of(ApiError::store("test", error)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["code"], "internal");
        assert!(!body.to_string().contains("secret"), "{body}");
    }

    #[tokio::test]
    async fn not_found_and_ambiguous_are_client_errors() {
        let error = StoreError::NotFound {
            reference: "abcd".into(),
        };
        let (status, _, body) = body_of(ApiError::store("test", error)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body["error"]["message"].as_str().unwrap().contains("abcd"));
        let error = StoreError::Ambiguous {
            reference: "01jz".into(),
            matches: vec!["01jza".into(), "01jzb".into()],
        };
        let (status, _, body) = body_of(ApiError::store("test", error)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "invalid_id");
    }
}
