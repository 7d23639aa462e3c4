//! `nightshift repo`: registering, listing and forgetting the repositories a server serves;
//! `run --repo NAME` in local mode; tokens limited to registered repositories.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn repositories_are_registered_listed_named_by_run_and_forgotten() {
    let repo = buggy_repo();
    let ns = Nightshift::new("http://127.0.0.1:9/v1");

    let sub = repo.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let out = ns
        .run(&["repo", "add", path_str(&sub), "--name", "acme/app"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "acme/app");

    // Twice, or a bad name, or not a repository: exit 2, saying what was wrong.
    let plain = tempfile::tempdir().unwrap();
    for (args, says) in [
        (vec!["repo", "add", path_str(repo.path())], "already exists"),
        (
            vec!["repo", "add", path_str(repo.path()), "--name=../x"],
            "not a valid repository name",
        ),
        (
            vec!["repo", "add", path_str(plain.path())],
            "not a git repository",
        ),
    ] {
        let out = ns.run(&args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }

    let out = ns.run(&["repo", "ls", "--json"]).await;
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["name"], "acme/app");
    assert_eq!(listed[0]["location"], path_str(repo.path()));
    let out = ns.run(&["repo", "ls"]).await;
    assert!(stdout(&out).contains("acme/app"), "{}", stdout(&out));

    // `run --repo NAME` queues a task on its location (the model is unreachable: it fails
    // later, which does not matter here).
    let out = ns
        .run(&["run", "--repo", "acme/app", "--json", "fix it"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["spec"]["repo"], path_str(repo.path()));

    // Tokens may be limited to registered repositories only.
    let out = ns
        .run(&["token", "create", "--scope", "submit", "--repo", "nope"])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no repository is registered as `nope`"));
    let out = ns
        .run(&["token", "create", "--scope", "submit", "--repo", "acme/app"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("only for acme/app"),
        "{}",
        stderr(&out)
    );
    let out = ns.run(&["token", "ls", "--json"]).await;
    let tokens: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tokens[0]["repos"], serde_json::json!(["acme/app"]));

    let out = ns.run(&["repo", "rm", "acme/app"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ns.run(&["repo", "rm", "acme/app"]).await;
    assert_eq!(out.status.code(), Some(2));
    let out = ns.run(&["run", "--repo", "acme/app", "fix it"]).await;
    assert_eq!(out.status.code(), Some(2), "a name no longer resolves");
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_merges_a_finished_tasks_change_into_a_working_tree_or_changes_nothing() {
    let repo = buggy_repo();
    let (ns, _model) = Nightshift::with_script(fixing_script()).await;
    let (out, task) = ns.wait_task(repo.path(), "Fix add").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let id = task["id"].as_str().unwrap();

    // A clone with an unrelated uncommitted edit takes the change by a three-way merge.
    let clone = tempfile::tempdir().unwrap();
    git(clone.path(), &["clone", "-q", path_str(repo.path()), "."]);
    let test = clone.path().join("test.sh");
    let mine = format!("{}# my note\n", std::fs::read_to_string(&test).unwrap());
    std::fs::write(&test, &mine).unwrap();
    let out = ns
        .run(&["apply", id, "--repo", path_str(clone.path())])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "calc.sh");
    let merged = std::fs::read_to_string(clone.path().join("calc.sh")).unwrap();
    assert!(merged.contains("$(($1 + $2))"), "{merged}");
    assert_eq!(std::fs::read_to_string(&test).unwrap(), mine);
    assert_eq!(git(clone.path(), &["diff", "--cached", "--name-only"]), "");

    // Another whose edit touches the same line: nothing changes, the file is named.
    let other = tempfile::tempdir().unwrap();
    git(other.path(), &["clone", "-q", path_str(repo.path()), "."]);
    let calc = other.path().join("calc.sh");
    let conflicting = std::fs::read_to_string(&calc)
        .unwrap()
        .replace("$(($1 - $2))", "$(( $1 - $2 ))");
    std::fs::write(&calc, &conflicting).unwrap();
    let out = ns
        .run(&["apply", id, "--repo", path_str(other.path())])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("conflicts with the working tree in 1 file: calc.sh"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("nothing was changed"));
    assert_eq!(std::fs::read_to_string(&calc).unwrap(), conflicting);
}

/// A bare repository made from `repo`, as a remote to work on over `file://`.
fn bare_remote(repo: &std::path::Path) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    git(
        dir.path(),
        &["clone", "-q", "--bare", path_str(repo), "remote.git"],
    );
    let url = format!("file://{}/remote.git", dir.path().display());
    (dir, url)
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_on_a_remote_repository_pushes_its_branch_and_the_next_starts_from_what_was_pushed_since()
 {
    let repo = buggy_repo();
    let (remote, url) = bare_remote(repo.path());
    let bare = remote.path().join("remote.git");
    let (ns, _model) = Nightshift::with_script(fixing_script()).await;

    let out = ns
        .run(&["run", "--repo", &url, "--wait", "--json", "Fix add"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["spec"]["repo"], url.as_str());
    let branch = task["branch"].as_str().unwrap().to_string();
    let events = ns.events(task["id"].as_str().unwrap()).await;
    let pushed = of_type(&events, "branch_pushed");
    assert_eq!(pushed.len(), 1, "{events:#?}");
    assert_eq!(pushed[0]["branch"], branch.as_str());
    // The remote has the branch, with the fix.
    let fixed = git(&bare, &["show", &format!("{branch}:calc.sh")]);
    assert!(fixed.contains("$(($1 + $2))"), "{fixed}");
    // Nothing of nightshift's reached the person's own clone: the work went to the remote.
    assert_eq!(git(repo.path(), &["branch", "--list", "nightshift/*"]), "");

    // Someone pushes to main; the next task starts from that commit, fetched into the mirror.
    let work = tempfile::tempdir().unwrap();
    git(work.path(), &["clone", "-q", &url, "."]);
    std::fs::write(work.path().join("NEWS"), "news\n").unwrap();
    git(work.path(), &["add", "NEWS"]);
    git(
        work.path(),
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@e",
            "commit",
            "-q",
            "-m",
            "news",
        ],
    );
    git(work.path(), &["push", "-q", "origin", "main"]);
    let news = git(work.path(), &["rev-parse", "HEAD"]);
    let out = ns
        .run(&["run", "--repo", &url, "--wait", "--json", "Fix add again"])
        .await;
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["base_commit"], news.as_str(), "{task}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_that_fails_keeps_the_work_on_the_mirrors_branch_and_says_so() {
    let repo = buggy_repo();
    let (remote, url) = bare_remote(repo.path());
    let bare = remote.path().join("remote.git");
    let (ns, _model) = Nightshift::with_script(script(serde_json::json!([
        {"reply": {"tool_calls": [{"name": "shell", "arguments": {"command": "sleep 3"}}]}},
        {"reply": {"tool_calls": [{"name": "write_file", "arguments": {"path": "done.txt", "content": "done\n"}}]}},
        {"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "wrote done.txt"}}]}}
    ])))
    .await;
    let out = ns.run(&["run", "--repo", &url, "--json", "write it"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = task["id"].as_str().unwrap().to_string();
    // The remote goes away while the agent works.
    ns.wait_for(&id, |task| task["state"] == "running").await;
    let gone = remote.path().join("gone.git");
    std::fs::rename(&bare, &gone).unwrap();
    let task = ns
        .wait_for(&id, |task| {
            ["succeeded", "failed", "cancelled"].contains(&task["state"].as_str().unwrap())
        })
        .await;
    assert_eq!(task["state"], "succeeded", "{task}");
    let events = ns.events(&id).await;
    assert!(of_type(&events, "branch_pushed").is_empty());
    let warned = of_type(&events, "warning").into_iter().any(|e| {
        e["message"]
            .as_str()
            .unwrap()
            .contains("the work stays on that branch")
    });
    assert!(warned, "{events:#?}");
    // The work is in the mirror, on the task's branch.
    let branch = task["branch"].as_str().unwrap();
    let mirrors = ns.home.path().join("mirrors");
    let mirror = std::fs::read_dir(&mirrors)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "git"))
        .unwrap();
    assert_eq!(
        git(&mirror, &["show", &format!("{branch}:done.txt")]),
        "done"
    );
}

/// Git's smart HTTP protocol on loopback: `git http-backend` (as CGI) behind a check of one
/// token in an HTTP Basic `Authorization` header, as forges take tokens. Pushes are allowed to
/// the authenticated.
struct GitHttp {
    url: String,
    root: tempfile::TempDir,
    _server: tokio::task::JoinHandle<()>,
}

impl GitHttp {
    async fn start(token: &str) -> GitHttp {
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
        let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let project_root = project_root.clone();
            let expected = expected.clone();
            async move {
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
            _server: server,
        }
    }

    /// Serves a bare copy of `repo` as `NAME.git`; returns its URL.
    fn serve(&self, repo: &std::path::Path, name: &str) -> String {
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

fn set_secret(ns: &Nightshift, name: &str, value: &str, repo: &str) {
    use std::io::Write;
    let mut child = ns
        .command(&["secret", "set", name, "--repo", repo])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{value}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_over_smart_http_is_fetched_and_pushed_with_a_stored_token_only() {
    const TOKEN: &str = "ghp-t0ken-for-the-test-0123";
    let server = GitHttp::start(TOKEN).await;
    let repo = buggy_repo();
    let url = server.serve(repo.path(), "acme/app");
    let (ns, _model) = Nightshift::with_script(fixing_script()).await;

    // Without a credential the remote refuses, and nothing is queued.
    let out = ns.run(&["run", "--repo", &url, "Fix add"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot be used"), "{}", stderr(&out));
    assert!(stderr(&out).contains("--credential"), "{}", stderr(&out));

    // Registered with a stored token granted to it, the task fetches, works and pushes.
    set_secret(&ns, "GIT_TOKEN", TOKEN, &url);
    let out = ns
        .run(&[
            "repo",
            "add",
            &url,
            "--name",
            "acme/app",
            "--credential",
            "GIT_TOKEN",
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ns
        .run(&["run", "--repo", "acme/app", "--wait", "--json", "Fix add"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = task["id"].as_str().unwrap();
    let branch = task["branch"].as_str().unwrap();
    let events = ns.events(id).await;
    assert_eq!(of_type(&events, "branch_pushed").len(), 1, "{events:#?}");
    let bare = server.root.path().join("acme/app.git");
    let fixed = git(&bare, &["show", &format!("{branch}:calc.sh")]);
    assert!(fixed.contains("$(($1 + $2))"), "{fixed}");
    // The token is in no event, and not in the mirror's configuration.
    let log = serde_json::to_string(&events).unwrap();
    assert!(!log.contains(TOKEN));
    for entry in std::fs::read_dir(ns.home.path().join("mirrors")).unwrap() {
        let path = entry.unwrap().path();
        if path.join("config").exists() {
            let config = std::fs::read_to_string(path.join("config")).unwrap();
            assert!(
                !config.contains(TOKEN) && !config.contains("extraHeader"),
                "{config}"
            );
        }
    }
}

/// A request the GitHub-shaped API server received: method, path, JSON body.
type Recorded = std::sync::Arc<std::sync::Mutex<Vec<(String, String, Value)>>>;

/// GitHub's REST API for pull requests, as GitHub documents it (the shapes of the calls
/// nightshift makes), on loopback: pull requests kept in memory, one token accepted, and the
/// first creation answered with a 502 and `Retry-After`, as an outage would be.
async fn github_api(token: &str) -> (String, Recorded) {
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
        base: String,
    }
    fn authorized(api: &Api, headers: &HeaderMap) -> Option<Response> {
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
    let api = Api {
        token: token.to_string(),
        recorded: recorded.clone(),
        pulls: Default::default(),
        failed_once: Default::default(),
        base: base.clone(),
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
        .with_state(api);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, recorded)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_github_repository_gets_a_draft_pull_request_with_the_evidence_and_follow_ups_update_it()
{
    const TOKEN: &str = "ghs-installation-token-0123";
    let git_server = GitHttp::start(TOKEN).await;
    let repo = buggy_repo_with_config("[checks]\ntest = \"sh test.sh\"\n");
    let url = git_server.serve(repo.path(), "acme/app");
    let (api, recorded) = github_api(TOKEN).await;
    let mut steps = fixing_script_steps();
    steps.extend([
        serde_json::json!({"reply": {"tool_calls": [{"name": "write_file", "arguments": {"path": "NOTES.md", "content": "add adds\n"}}]}}),
        serde_json::json!({"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "Document add"}}]}}),
    ]);
    let (ns, _model) = Nightshift::with_script(script(Value::Array(steps))).await;
    set_secret(&ns, "GH_TOKEN", TOKEN, &url);
    let out = ns
        .run(&[
            "repo",
            "add",
            &url,
            "--name",
            "acme/app",
            "--credential",
            "GH_TOKEN",
            "--github-api",
            &api,
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));

    let out = ns
        .run(&["run", "--repo", "acme/app", "--wait", "--json", "Fix add"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = task["id"].as_str().unwrap().to_string();
    let branch = task["branch"].as_str().unwrap().to_string();
    let events = ns.events(&id).await;
    let opened = of_type(&events, "pull_request");
    assert_eq!(opened.len(), 1, "{events:#?}");
    assert_eq!(opened[0]["created"], true);
    assert_eq!(opened[0]["number"], 1);
    assert_eq!(
        opened[0]["url"].as_str().unwrap(),
        format!("{api}/acme/app/pull/1")
    );
    // The pull request: draft, from the task's branch to its base, the evidence in its body;
    // asked for twice (the first answer was a 502).
    let calls = recorded.lock().unwrap().clone();
    let creations: Vec<_> = calls
        .iter()
        .filter(|(m, p, _)| m == "POST" && p == "/repos/acme/app/pulls")
        .collect();
    assert_eq!(creations.len(), 2, "{calls:#?}");
    let created = &creations[1].2;
    assert_eq!(created["draft"], true);
    assert_eq!(created["head"], branch.as_str());
    assert_eq!(created["base"], "main");
    assert_eq!(created["title"], "Fix add: it subtracted");
    let body = created["body"].as_str().unwrap();
    for needed in [
        "sh test.sh passes now",
        "| test | `sh test.sh` | passed",
        "tokens in",
        &id,
    ] {
        assert!(body.contains(needed), "{needed:?} in {body}");
    }
    // Every commit on the branch names the task.
    let bare = git_server.root.path().join("acme/app.git");
    let message = git(&bare, &["log", "-1", "--format=%B", &branch]);
    assert!(
        message.contains(&format!("Nightshift-Task: {id}")),
        "{message}"
    );

    // A follow-up pushes the same branch forward, updates the body and comments.
    let said = ns.run(&["say", &id, "Also", "document", "add"]).await;
    assert!(said.status.success(), "{}", stderr(&said));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let follow_up = loop {
        let events = ns.events(&id).await;
        if let Some(started) = events.iter().find(|e| e["type"] == "follow_up_started") {
            break started["task_id"].as_str().unwrap().to_string();
        }
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let done = ns
        .wait_for(&follow_up, |t| {
            ["succeeded", "failed", "cancelled"].contains(&t["state"].as_str().unwrap())
        })
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let events = ns.events(&follow_up).await;
    let updated = of_type(&events, "pull_request");
    assert_eq!(updated.len(), 1, "{events:#?}");
    assert_eq!(
        (updated[0]["created"].clone(), updated[0]["number"].clone()),
        (Value::Bool(false), 1.into())
    );
    let calls = recorded.lock().unwrap().clone();
    assert!(calls.iter().any(|(m, p, b)| m == "PATCH"
        && p == "/repos/acme/app/pulls/1"
        && b["body"].as_str().unwrap().contains("Document add")));
    assert!(calls.iter().any(|(m, p, b)| m == "POST"
        && p == "/repos/acme/app/issues/1/comments"
        && b["body"].as_str().unwrap().contains(&follow_up)));
    assert_eq!(
        git(&bare, &["show", &format!("{branch}:NOTES.md")]),
        "add adds"
    );
    // Nothing approves or merges.
    assert!(
        calls
            .iter()
            .all(|(_, p, _)| !p.contains("merge") && !p.contains("reviews"))
    );
}

/// A delivery as GitHub signs it: `X-Hub-Signature-256: sha256=HMAC-SHA256(secret, body)`.
async fn deliver(
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

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_comment_from_a_writer_starts_a_task_once_and_a_review_comment_follows_up() {
    use std::io::BufRead;
    const TOKEN: &str = "ghs-installation-token-4567";
    const WEBHOOK_SECRET: &str = "It's a Secret to Everybody";
    let git_server = GitHttp::start(TOKEN).await;
    let repo = buggy_repo();
    let url = git_server.serve(repo.path(), "acme/app");
    let (api, recorded) = github_api(TOKEN).await;
    let mut steps = fixing_script_steps();
    steps.extend([
        serde_json::json!({"reply": {"tool_calls": [{"name": "write_file", "arguments": {"path": "NOTES.md", "content": "reviewed\n"}}]}}),
        serde_json::json!({"reply": {"tool_calls": [{"name": "finish", "arguments": {"summary": "Address the review"}}]}}),
    ]);
    let (mut ns, _model) = Nightshift::with_script(script(Value::Array(steps))).await;
    set_secret(&ns, "GH_TOKEN", TOKEN, &url);
    let out = ns
        .run(&[
            "repo",
            "add",
            &url,
            "--name",
            "acme/app",
            "--credential",
            "GH_TOKEN",
            "--github-api",
            &api,
        ])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    ns.env.push((
        "NIGHTSHIFT_GITHUB_WEBHOOK_SECRET".into(),
        WEBHOOK_SECRET.into(),
    ));
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

    let repository = serde_json::json!({
        "full_name": "acme/app",
        "clone_url": url,
        "html_url": format!("{}/acme/app", git_server.url),
    });
    let comment_by = |login: &str, repository: &Value| {
        serde_json::json!({
            "action": "created",
            "issue": {"number": 7, "title": "add subtracts", "body": "sh calc.sh 2 3 prints -1"},
            "comment": {"body": "@nightshift fix add please"},
            "repository": repository,
            "sender": {"login": login},
        })
    };

    // A bad signature, a reader, an unregistered repository: nothing starts.
    let (status, _) = deliver(
        &base,
        "wrong secret",
        "issue_comment",
        "d-0",
        &comment_by("alice", &repository),
    )
    .await;
    assert_eq!(status, 401);
    let (status, outcome) = deliver(
        &base,
        WEBHOOK_SECRET,
        "issue_comment",
        "d-1",
        &comment_by("mallory", &repository),
    )
    .await;
    assert_eq!(
        (status, outcome["outcome"].as_str()),
        (200, Some("refused")),
        "{outcome}"
    );
    assert!(
        outcome["reason"].as_str().unwrap().contains("needs write"),
        "{outcome}"
    );
    let elsewhere = serde_json::json!({"full_name": "evil/app", "clone_url": "https://github.com/evil/app.git"});
    let (_, outcome) = deliver(
        &base,
        WEBHOOK_SECRET,
        "issue_comment",
        "d-2",
        &comment_by("alice", &elsewhere),
    )
    .await;
    assert_eq!(outcome["outcome"], "refused", "{outcome}");
    let listed = ns.json(&["ls", "--json"]).await;
    assert_eq!(
        listed.as_array().unwrap().len(),
        0,
        "nothing started: {listed}"
    );

    // A writer's comment starts a task and is answered; its redelivery starts nothing.
    let (status, outcome) = deliver(
        &base,
        WEBHOOK_SECRET,
        "issue_comment",
        "d-3",
        &comment_by("alice", &repository),
    )
    .await;
    assert_eq!(
        (status, outcome["outcome"].as_str()),
        (201, Some("started")),
        "{outcome}"
    );
    let id = outcome["task"].as_str().unwrap().to_string();
    let (status, again) = deliver(
        &base,
        WEBHOOK_SECRET,
        "issue_comment",
        "d-3",
        &comment_by("alice", &repository),
    )
    .await;
    assert_eq!(
        (status, again["outcome"].as_str()),
        (200, Some("ignored")),
        "{again}"
    );
    let task = ns
        .wait_for(&id, |t| {
            ["succeeded", "failed", "cancelled"].contains(&t["state"].as_str().unwrap())
        })
        .await;
    assert_eq!(task["state"], "succeeded", "{task}");
    assert!(
        task["spec"]["prompt"]
            .as_str()
            .unwrap()
            .contains("fix add please")
    );
    assert_eq!(
        ns.json(&["ls", "--json"]).await.as_array().unwrap().len(),
        1
    );
    let calls = recorded.lock().unwrap().clone();
    assert!(
        calls.iter().any(|(m, p, b)| m == "POST"
            && p == "/repos/acme/app/issues/7/comments"
            && b["body"].as_str().unwrap().contains(&id)),
        "{calls:#?}"
    );
    assert!(
        calls
            .iter()
            .any(|(m, p, _)| m == "POST" && p == "/repos/acme/app/pulls")
    );

    // A review comment on its pull request starts a follow-up on the same branch.
    let review = serde_json::json!({
        "action": "created",
        "comment": {"body": "Please document add", "path": "calc.sh", "line": 3},
        "pull_request": {"number": 1, "head": {"ref": task["branch"]}},
        "repository": repository,
        "sender": {"login": "alice"},
    });
    let (status, outcome) = deliver(
        &base,
        WEBHOOK_SECRET,
        "pull_request_review_comment",
        "d-4",
        &review,
    )
    .await;
    assert_eq!(
        (status, outcome["outcome"].as_str()),
        (200, Some("follow_up")),
        "{outcome}"
    );
    let follow_up = outcome["task"].as_str().unwrap().to_string();
    assert_ne!(follow_up, id);
    let done = ns
        .wait_for(&follow_up, |t| {
            ["succeeded", "failed", "cancelled"].contains(&t["state"].as_str().unwrap())
        })
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["branch"], task["branch"]);
    // The review, with where it points, is the follow-up's instruction.
    let prompt = done["spec"]["prompt"].as_str().unwrap();
    assert!(
        prompt.contains("Please document add") && prompt.contains("calc.sh line 3"),
        "{prompt}"
    );
    let events = ns.events(&id).await;
    let received = of_type(&events, "message_received");
    assert_eq!(received[0]["from"], "alice on GitHub", "{received:?}");
}

/// `nightshift serve`, stopped when dropped (a failing test included).
struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}
