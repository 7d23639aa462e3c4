//! Forges on loopback for the end-to-end tests: git's smart HTTP protocol behind a token check,
//! GitHub's REST API for pull requests as GitHub documents it, signed webhook deliveries.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;

use crate::common::*;

/// Git's smart HTTP protocol on loopback: `git http-backend` (as CGI) behind a check of one
/// token in an HTTP Basic `Authorization` header, as forges take tokens. Pushes are allowed to
/// the authenticated, and answered with a 503 while `pushes_down` is set, as in an outage.
pub struct GitHttp {
    pub url: String,
    pub root: tempfile::TempDir,
    pub pushes_down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    _server: tokio::task::JoinHandle<()>,
}

impl GitHttp {
    pub async fn start(token: &str) -> GitHttp {
        use axum::body::{Body, Bytes};
        use axum::http::{HeaderMap, Method, StatusCode, Uri};
        use axum::response::Response;
        use base64::Engine;

        let root = tempfile::tempdir().unwrap();
        let project_root = root.path().to_path_buf();
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"))
        );
        let pushes_down: std::sync::Arc<std::sync::atomic::AtomicBool> = Default::default();
        let down = pushes_down.clone();
        let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let project_root = project_root.clone();
            let expected = expected.clone();
            let down = down.clone();
            async move {
                let push = uri.path().ends_with("/git-receive-pack")
                    || uri
                        .query()
                        .unwrap_or("")
                        .contains("service=git-receive-pack");
                if push && down.load(std::sync::atomic::Ordering::SeqCst) {
                    return Response::builder()
                        .status(StatusCode::SERVICE_UNAVAILABLE)
                        .body(Body::from("down for maintenance"))
                        .unwrap();
                }
                let authorized = headers
                    .get("authorization")
                    .is_some_and(|v| v.to_str().unwrap_or("") == expected);
                if !authorized {
                    return Response::builder()
                        .status(StatusCode::UNAUTHORIZED)
                        .header("WWW-Authenticate", "Basic realm=\"git\"")
                        .body(Body::empty())
                        .unwrap();
                }
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                let mut child = tokio::process::Command::new("git")
                    .arg("http-backend")
                    .env_clear()
                    .env("PATH", std::env::var("PATH").unwrap())
                    .env("GIT_PROJECT_ROOT", &project_root)
                    .env("GIT_HTTP_EXPORT_ALL", "1")
                    .env("REQUEST_METHOD", method.as_str())
                    .env("PATH_INFO", uri.path())
                    .env("QUERY_STRING", uri.query().unwrap_or(""))
                    .env("CONTENT_TYPE", header("content-type"))
                    .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
                    .env("GIT_PROTOCOL", header("git-protocol"))
                    .env("REMOTE_USER", "x-access-token")
                    .env("REMOTE_ADDR", "127.0.0.1")
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                let mut stdin = child.stdin.take().unwrap();
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    let _ = stdin.write_all(&body).await;
                });
                let out = child.wait_with_output().await.unwrap();
                let split = out
                    .stdout
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map(|i| (i, 4))
                    .or_else(|| {
                        out.stdout
                            .windows(2)
                            .position(|w| w == b"\n\n")
                            .map(|i| (i, 2))
                    })
                    .unwrap();
                let head = String::from_utf8_lossy(&out.stdout[..split.0]).to_string();
                let mut response = Response::builder();
                for line in head.lines() {
                    let (name, value) = line.split_once(':').unwrap();
                    let value = value.trim();
                    if name.eq_ignore_ascii_case("status") {
                        let code: u16 = value.split_whitespace().next().unwrap().parse().unwrap();
                        response = response.status(code);
                    } else {
                        response = response.header(name, value);
                    }
                }
                response
                    .body(Body::from(out.stdout[split.0 + split.1..].to_vec()))
                    .unwrap()
            }
        };
        let app = axum::Router::new().fallback(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        GitHttp {
            url,
            root,
            pushes_down,
            _server: server,
        }
    }

    /// Serves a bare copy of `repo` as `NAME.git`; returns its URL.
    pub fn serve(&self, repo: &std::path::Path, name: &str) -> String {
        git(
            self.root.path(),
            &[
                "clone",
                "-q",
                "--bare",
                path_str(repo),
                &format!("{name}.git"),
            ],
        );
        format!("{}/{name}.git", self.url)
    }
}

/// Registers the GitHub repository `url` as `acme/app`, reached with `token` (stored as the
/// secret GH_TOKEN) and its API at `api`.
pub async fn add_github_repo(ns: &Nightshift, url: &str, token: &str, api: &str) {
    set_secret_with(ns, "GH_TOKEN", token, &["--repo", url]);
    let out = ns
        .run(&[
            "repo",
            "add",
            url,
            "--name",
            "acme/app",
            "--credential",
            "GH_TOKEN",
            "--github-api",
            api,
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A request the GitHub-shaped API server received: method, path, JSON body.
pub type Recorded = std::sync::Arc<std::sync::Mutex<Vec<(String, String, Value)>>>;

/// The GitHub-shaped API of [`github_api`]: its base URL, the calls it received, and a switch
/// that makes it answer every call with a 503, as an outage would.
pub struct GitHubApi {
    pub url: String,
    pub recorded: Recorded,
    pub down: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// GitHub's REST API for pull requests, as GitHub documents it (the shapes of the calls
/// nightshift makes), on loopback: pull requests kept in memory, one token accepted, and the
/// first creation answered with a 502 and `Retry-After`, as a short outage would be.
pub async fn github_api(token: &str) -> GitHubApi {
    github_api_with_app(token, None).await
}

/// A GitHub App as GitHub knows it: its id and the public half of its key.
pub struct App {
    pub id: String,
    pub public_pem: String,
}

/// [`github_api`], where `token` is also the installation token `app` mints: the App's calls
/// (finding its installation on a repository, minting a token for it) take only a JWT that
/// `app`'s key signed, issued by its id, for at most ten minutes, as GitHub checks them.
pub async fn github_api_with_app(token: &str, app: Option<App>) -> GitHubApi {
    use axum::extract::{Path, Query, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, patch, post};

    #[derive(Clone)]
    struct Api {
        token: String,
        recorded: Recorded,
        pulls: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
        failed_once: std::sync::Arc<std::sync::atomic::AtomicBool>,
        down: std::sync::Arc<std::sync::atomic::AtomicBool>,
        base: String,
        app: std::sync::Arc<Option<App>>,
    }
    /// Refuses a call not made as the App, with a JWT as GitHub takes it.
    fn as_app(api: &Api, headers: &HeaderMap) -> Option<Response> {
        let refuse = |why: String| {
            Some(
                (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(serde_json::json!({"message": why})),
                )
                    .into_response(),
            )
        };
        let Some(app) = api.app.as_ref() else {
            return refuse("no App here".into());
        };
        let Some(jwt) = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return refuse("no bearer JWT".into());
        };
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(app.public_pem.as_bytes()).unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_issuer(&[&app.id]);
        validation.set_required_spec_claims(&["exp", "iat", "iss"]);
        let claims = match jsonwebtoken::decode::<Value>(jwt, &key, &validation) {
            Ok(data) => data.claims,
            Err(err) => return refuse(format!("A JSON web token could not be decoded: {err}")),
        };
        let (iat, exp) = (
            claims["iat"].as_i64().unwrap(),
            claims["exp"].as_i64().unwrap(),
        );
        if exp - iat > 600 {
            return refuse("'Expiration time' claim ('exp') is too far in the future".into());
        }
        None
    }
    async fn installation(
        State(api): State<Api>,
        Path((owner, repo)): Path<(String, String)>,
        headers: HeaderMap,
    ) -> Response {
        if let Some(refused) = as_app(&api, &headers) {
            return refused;
        }
        api.recorded.lock().unwrap().push((
            "GET".into(),
            format!("/repos/{owner}/{repo}/installation"),
            Value::Null,
        ));
        match (owner.as_str(), repo.as_str()) {
            ("acme", "app") => {
                axum::Json(serde_json::json!({"id": 42, "account": {"login": owner}, "app_id": 1}))
                    .into_response()
            }
            _ => (
                StatusCode::NOT_FOUND,
                axum::Json(serde_json::json!({"message": "Not Found"})),
            )
                .into_response(),
        }
    }
    async fn access_token(
        State(api): State<Api>,
        Path(id): Path<u64>,
        headers: HeaderMap,
        axum::Json(body): axum::Json<Value>,
    ) -> Response {
        if let Some(refused) = as_app(&api, &headers) {
            return refused;
        }
        api.recorded.lock().unwrap().push((
            "POST".into(),
            format!("/app/installations/{id}/access_tokens"),
            body.clone(),
        ));
        let expires_at = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
        (
            StatusCode::CREATED,
            axum::Json(serde_json::json!({
                "token": api.token,
                "expires_at": expires_at.round(jiff::Unit::Second).unwrap().to_string(),
                "permissions": {"contents": "write", "pull_requests": "write"},
                "repository_selection": "selected",
            })),
        )
            .into_response()
    }
    fn authorized(api: &Api, headers: &HeaderMap) -> Option<Response> {
        if api.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Some(
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(serde_json::json!({"message": "Service Unavailable"})),
                )
                    .into_response(),
            );
        }
        let ok = headers
            .get("authorization")
            .is_some_and(|v| v.to_str().unwrap() == format!("Bearer {}", api.token));
        let versioned = headers.get("x-github-api-version").is_some();
        match ok && versioned {
            true => None,
            false => Some(
                (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(serde_json::json!({"message": "Bad credentials"})),
                )
                    .into_response(),
            ),
        }
    }
    async fn list(
        State(api): State<Api>,
        Path((owner, repo)): Path<(String, String)>,
        Query(query): Query<std::collections::HashMap<String, String>>,
        headers: HeaderMap,
    ) -> Response {
        if let Some(refused) = authorized(&api, &headers) {
            return refused;
        }
        api.recorded.lock().unwrap().push((
            "GET".into(),
            format!("/repos/{owner}/{repo}/pulls"),
            serde_json::json!(query),
        ));
        let head = query.get("head").cloned().unwrap_or_default();
        let found: Vec<Value> = api
            .pulls
            .lock()
            .unwrap()
            .iter()
            .filter(|p| format!("{owner}:{}", p["head"]["ref"].as_str().unwrap()) == head)
            .cloned()
            .collect();
        axum::Json(Value::Array(found)).into_response()
    }
    async fn create(
        State(api): State<Api>,
        Path((owner, repo)): Path<(String, String)>,
        headers: HeaderMap,
        axum::Json(body): axum::Json<Value>,
    ) -> Response {
        if let Some(refused) = authorized(&api, &headers) {
            return refused;
        }
        api.recorded.lock().unwrap().push((
            "POST".into(),
            format!("/repos/{owner}/{repo}/pulls"),
            body.clone(),
        ));
        if !api
            .failed_once
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return (
                StatusCode::BAD_GATEWAY,
                [("retry-after", "1")],
                axum::Json(serde_json::json!({"message": "Server Error"})),
            )
                .into_response();
        }
        let mut pulls = api.pulls.lock().unwrap();
        let number = pulls.len() as u64 + 1;
        let pull = serde_json::json!({
            "number": number,
            "html_url": format!("{}/{owner}/{repo}/pull/{number}", api.base),
            "state": "open",
            "draft": body["draft"],
            "title": body["title"],
            "body": body["body"],
            "head": {"ref": body["head"]},
            "base": {"ref": body["base"]},
        });
        pulls.push(pull.clone());
        (StatusCode::CREATED, axum::Json(pull)).into_response()
    }
    async fn update(
        State(api): State<Api>,
        Path((owner, repo, number)): Path<(String, String, u64)>,
        headers: HeaderMap,
        axum::Json(body): axum::Json<Value>,
    ) -> Response {
        if let Some(refused) = authorized(&api, &headers) {
            return refused;
        }
        api.recorded.lock().unwrap().push((
            "PATCH".into(),
            format!("/repos/{owner}/{repo}/pulls/{number}"),
            body.clone(),
        ));
        let mut pulls = api.pulls.lock().unwrap();
        let pull = &mut pulls[number as usize - 1];
        pull["body"] = body["body"].clone();
        axum::Json(pull.clone()).into_response()
    }
    async fn permission(
        State(api): State<Api>,
        Path((owner, repo, user)): Path<(String, String, String)>,
        headers: HeaderMap,
    ) -> Response {
        if let Some(refused) = authorized(&api, &headers) {
            return refused;
        }
        api.recorded.lock().unwrap().push((
            "GET".into(),
            format!("/repos/{owner}/{repo}/collaborators/{user}/permission"),
            Value::Null,
        ));
        let role = match user.as_str() {
            "alice" => "write",
            _ => "read",
        };
        axum::Json(
            serde_json::json!({"permission": role, "role_name": role, "user": {"login": user}}),
        )
        .into_response()
    }
    async fn show(
        State(api): State<Api>,
        Path((owner, repo, number)): Path<(String, String, u64)>,
        headers: HeaderMap,
    ) -> Response {
        if let Some(refused) = authorized(&api, &headers) {
            return refused;
        }
        let pulls = api.pulls.lock().unwrap();
        match pulls.get(number as usize - 1) {
            Some(pull) => {
                let mut pull = pull.clone();
                pull["head"]["repo"] = serde_json::json!({"full_name": format!("{owner}/{repo}")});
                axum::Json(pull).into_response()
            }
            None => (
                StatusCode::NOT_FOUND,
                axum::Json(serde_json::json!({"message": "Not Found"})),
            )
                .into_response(),
        }
    }
    async fn comment(
        State(api): State<Api>,
        Path((owner, repo, number)): Path<(String, String, u64)>,
        headers: HeaderMap,
        axum::Json(body): axum::Json<Value>,
    ) -> Response {
        if let Some(refused) = authorized(&api, &headers) {
            return refused;
        }
        api.recorded.lock().unwrap().push((
            "POST".into(),
            format!("/repos/{owner}/{repo}/issues/{number}/comments"),
            body.clone(),
        ));
        (
            StatusCode::CREATED,
            axum::Json(serde_json::json!({"id": 1, "body": body["body"]})),
        )
            .into_response()
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let recorded: Recorded = Default::default();
    let down: std::sync::Arc<std::sync::atomic::AtomicBool> = Default::default();
    let api = Api {
        token: token.to_string(),
        recorded: recorded.clone(),
        pulls: Default::default(),
        failed_once: Default::default(),
        down: down.clone(),
        base: base.clone(),
        app: std::sync::Arc::new(app),
    };
    let app = axum::Router::new()
        .route("/repos/{owner}/{repo}/pulls", get(list).post(create))
        .route(
            "/repos/{owner}/{repo}/pulls/{number}",
            patch(update).get(show),
        )
        .route(
            "/repos/{owner}/{repo}/collaborators/{user}/permission",
            get(permission),
        )
        .route(
            "/repos/{owner}/{repo}/issues/{number}/comments",
            post(comment),
        )
        .route("/repos/{owner}/{repo}/installation", get(installation))
        .route("/app/installations/{id}/access_tokens", post(access_token))
        .with_state(api);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    GitHubApi {
        url: base,
        recorded,
        down,
    }
}

/// A delivery as GitHub signs it: `X-Hub-Signature-256: sha256=HMAC-SHA256(secret, body)`.
pub async fn deliver(
    url: &str,
    secret: &str,
    event: &str,
    delivery: &str,
    payload: &Value,
) -> (u16, Value) {
    use hmac::{Hmac, Mac};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let body = serde_json::to_vec(payload).unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&body);
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let response = reqwest::Client::new()
        .post(format!("{url}/api/webhooks/github"))
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", signature)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `nightshift serve`, stopped when dropped (a failing test included).
pub struct Serve(pub std::process::Child);

impl Serve {
    /// `nightshift serve` on a free loopback port with one worker; returns it and its URL.
    pub fn start(ns: &Nightshift) -> (Serve, String) {
        use std::io::BufRead;
        let mut server = Serve(
            ns.command(&[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "1",
                "--model",
                "openai:m",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        );
        let mut lines = std::io::BufReader::new(server.0.stderr.take().unwrap()).lines();
        let banner = lines.next().unwrap().unwrap();
        std::thread::spawn(move || for _ in lines {});
        let base = banner
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap()
            .to_string();
        (server, base)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

pub fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}
