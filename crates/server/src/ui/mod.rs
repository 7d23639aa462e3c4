//! The web UI (docs/web.md): pages rendered on the server from Maud templates compiled into the
//! binary, one small script for live updates, and a strict Content-Security-Policy.
//!
//! The UI holds no task logic: every page and form calls the same functions as the API's
//! handlers (`tasks::submit`, `tasks::cancel_task`, `tasks::send_message`, `tasks::list_page`,
//! `tasks::task_diff`, `events::stream_with`). What it adds is sessions (a token exchanged for
//! a cookie), CSRF checks and HTML.

mod diff;
mod highlight;
mod markdown;
mod pages;
pub(crate) mod session;
mod task;
mod transcript;

use axum::Router;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use crate::auth::token_by_hash;
use crate::{ApiError, ServerState, TOKEN_PREFIX, hash_secret};
use session::UiSession;

/// No inline script or style, nothing from elsewhere, no framing, forms only to us.
pub(crate) const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

const APP_CSS: &str = include_str!("static/app.css");
const APP_JS: &str = include_str!("static/app.js");

/// The UI's routes, each answer with the security headers.
pub(crate) fn routes() -> Router<ServerState> {
    Router::new()
        .route("/", get(pages::list))
        .route("/signin", get(signin_page).post(signin))
        .route("/signout", post(signout))
        .route("/tasks/new", get(pages::new_task).post(pages::create))
        .route("/tasks/{id}", get(task::page))
        .route("/tasks/{id}/live", get(task::live))
        .route("/tasks/{id}/cancel", post(task::cancel))
        .route("/tasks/{id}/message", post(task::message))
        .route("/tasks/{id}/diff", get(task::diff))
        .route("/tasks/{id}/patch", get(task::patch))
        .route("/tasks/{id}/artifacts/{name}", get(task::artifact))
        .route("/static/app.css", get(css))
        .route("/static/app.js", get(js))
        .layer(axum::middleware::map_response(security_headers))
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        APP_CSS,
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        APP_JS,
    )
        .into_response()
}

/// A whole page: `session` is `None` only on the sign-in page.
pub(crate) fn layout(title: &str, session: Option<&UiSession>, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · nightshift" }
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "nightshift" }
                    @if let Some(session) = session {
                        nav aria-label="Main" {
                            a href="/" { "Tasks" }
                            a href="/tasks/new" { "New task" }
                        }
                        span.who { (session.token.name) " (" (session.token.scope) ")" }
                        form.inline method="post" action="/signout" {
                            (csrf_field(session))
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" { (main) }
            }
        }
    }
}

/// The hidden CSRF field every form of a signed-in page carries.
pub(crate) fn csrf_field(session: &UiSession) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// An error as a page: what went wrong and what to do.
pub(crate) struct UiError(pub ApiError);

impl From<ApiError> for UiError {
    fn from(error: ApiError) -> Self {
        UiError(error)
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let body = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { "Error · nightshift" }
                    link rel="stylesheet" href="/static/app.css";
                }
                body { main { (error_box(&self.0)) p { a href="/" { "Back to the tasks" } } } }
            }
        };
        (status, body).into_response()
    }
}

/// The message and hint of an error, for pages and forms.
pub(crate) fn error_box(error: &ApiError) -> Markup {
    html! {
        div.error role="alert" {
            p { strong { (error.message()) } }
            @if let Some(hint) = error.hint() { p.hint { (hint) } }
        }
    }
}

/// A 403 page unless the form's CSRF token is the session's.
pub(crate) fn check_csrf(session: &UiSession, sent: &str) -> Result<(), UiError> {
    if session.csrf_matches(sent) {
        return Ok(());
    }
    Err(UiError(
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this form is stale or did not come from this site; nothing was changed",
        )
        .with_hint("reload the page and send the form again"),
    ))
}

fn signin_form(error: Option<&ApiError>) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            @if let Some(error) = error { (error_box(error)) }
            form.card method="post" action="/signin" {
                label for="token" { "API token" }
                input id="token" name="token" type="password" autocomplete="off" required
                    placeholder="ns_…" aria-describedby="token-help";
                p.help id="token-help" { "A token made with " code { "nightshift token create" } ". It is exchanged for a session cookie and not stored in the browser." }
                button type="submit" { "Sign in" }
            }
        },
    )
}

async fn signin_page() -> Markup {
    signin_form(None)
}

/// Whether the browser says the request came from another site: `Sec-Fetch-Site: cross-site`,
/// or an `Origin` whose host is not the one the request was sent to.
fn cross_site(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if text("sec-fetch-site").is_some_and(|site| site.eq_ignore_ascii_case("cross-site")) {
        return true;
    }
    // `Origin: null` (a page with `Referrer-Policy: no-referrer` sends it) says nothing.
    match (text("origin").filter(|o| *o != "null"), text("host")) {
        (Some(origin), Some(host)) => {
            let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            !origin_host.eq_ignore_ascii_case(host)
        }
        (Some(_), None) => true,
        (None, _) => false,
    }
}

#[derive(Deserialize)]
pub(crate) struct SignIn {
    token: String,
}

async fn signin(
    State(state): State<ServerState>,
    headers: HeaderMap,
    Form(form): Form<SignIn>,
) -> Response {
    // The sign-in form has no session to carry a CSRF token yet: a sign-in posted from another
    // site (which would sign the browser in as someone else) is refused by where it came from.
    if cross_site(&headers) {
        let error = ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a sign-in from another site is refused",
        )
        .with_hint("open this server's own sign-in page");
        return (error.status(), signin_form(Some(&error))).into_response();
    }
    let secret = form.token.trim();
    let found = if secret.starts_with(TOKEN_PREFIX) {
        token_by_hash(&state, &hash_secret(secret)).await
    } else {
        Err(ApiError::unauthorized("that is not an API token (`ns_…`)"))
    };
    match found {
        Ok(token) => {
            let id = state.sessions().open(hash_secret(secret));
            tracing::info!(token = %token.id, "signed in to the web UI");
            let mut response = Redirect::to("/").into_response();
            if let Ok(value) = HeaderValue::from_str(&session::set_cookie(&id, &headers)) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        Err(error) => {
            let error = if error.status() == StatusCode::UNAUTHORIZED {
                ApiError::unauthorized("the token is unknown or revoked")
                    .with_hint("make one with `nightshift token create --scope submit`")
            } else {
                error
            };
            (error.status(), signin_form(Some(&error))).into_response()
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct CsrfOnly {
    csrf: String,
}

async fn signout(
    session: UiSession,
    State(state): State<ServerState>,
    headers: HeaderMap,
    Form(form): Form<CsrfOnly>,
) -> Result<Response, UiError> {
    check_csrf(&session, &form.csrf)?;
    state.sessions().close(&session.id);
    let mut response = Redirect::to("/signin").into_response();
    if let Ok(value) = HeaderValue::from_str(&session::clear_cookie(&headers)) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}
