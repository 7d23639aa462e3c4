//! GitHub webhooks: an issue labelled `nightshift`, or a comment `@nightshift <instruction>` on
//! an issue, starts a task on that (registered) repository; a comment or review on a pull
//! request of a nightshift branch sends the branch's latest task a message, which starts a
//! follow-up on the same branch once it has ended. Each answers with a comment.
//!
//! Nothing in the payload is trusted but what its signature proves: the delivery must be signed
//! with the server's webhook secret (`X-Hub-Signature-256`, compared in constant time), the
//! repository must be one the server serves with GitHub set up, and the sender's permission
//! is asked of GitHub's API (write, maintain or admin), not read from the payload. A
//! redelivery (the same `X-GitHub-Delivery`) starts nothing twice. Anything refused is logged
//! and starts nothing.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use nightshift_env::grants::repo_identity;
use nightshift_protocol::{Repository, Task, TaskOrigin};
use nightshift_runner::{Forge, TaskRequest};
use nightshift_store::TaskFilter;
use serde::Serialize;
use serde_json::Value;
use sha2::Sha256;
use utoipa::ToSchema;

use crate::{ApiError, ServerState};

/// The label that starts a task on an issue.
pub const LABEL: &str = "nightshift";

/// What a comment starts with to speak to nightshift.
pub const MENTION: &str = "@nightshift";

/// What a delivery did.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WebhookOutcome {
    /// `started`, `follow_up`, `ignored` or `refused`.
    pub outcome: &'static str,
    /// Why, for `ignored` and `refused`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The task started or messaged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
}

fn answer(outcome: &'static str, reason: impl Into<String>) -> (StatusCode, Json<WebhookOutcome>) {
    let reason = reason.into();
    tracing::info!(outcome, %reason, "GitHub webhook delivery");
    (
        StatusCode::OK,
        Json(WebhookOutcome {
            outcome,
            reason: Some(reason),
            task: None,
        }),
    )
}

/// Checks `X-Hub-Signature-256` (`sha256=<hex of HMAC-SHA256(secret, body)>`) in constant time.
pub(crate) fn signature_matches(secret: &str, body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_mac) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_mac) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// Receives a GitHub webhook delivery.
#[utoipa::path(
    post, path = "/api/webhooks/github", tag = "webhooks",
    request_body(content = String, description = "A GitHub webhook payload, signed", content_type = "application/json"),
    responses(
        (status = 200, description = "Received: what it did (or why it did nothing)", body = WebhookOutcome),
        (status = 201, description = "A task was started", body = WebhookOutcome),
        (status = 400, body = crate::error::ErrorBody),
        (status = 401, description = "Bad or missing signature", body = crate::error::ErrorBody),
        (status = 404, description = "This server takes no GitHub webhooks", body = crate::error::ErrorBody),
    ),
)]
pub(crate) async fn github(
    State(state): State<ServerState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<WebhookOutcome>), ApiError> {
    let Some(secret) = state.config().github_webhook_secret.clone() else {
        return Err(ApiError::not_found(
            "this server takes no GitHub webhooks (NIGHTSHIFT_GITHUB_WEBHOOK_SECRET is not set)",
        ));
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if !signature_matches(&secret, &body, header("x-hub-signature-256")) {
        tracing::warn!(delivery = ?header("x-github-delivery"), "GitHub webhook with a bad signature refused");
        return Err(ApiError::unauthorized(
            "the delivery's X-Hub-Signature-256 does not match the webhook secret",
        ));
    }
    let Some(delivery) = header("x-github-delivery").filter(|d| !d.is_empty() && d.len() <= 100)
    else {
        return Err(ApiError::bad_request(
            "invalid_header",
            "X-GitHub-Delivery is missing",
        ));
    };
    let event = header("x-github-event").unwrap_or("").to_string();
    let payload: Value = serde_json::from_slice(&body)
        .map_err(|err| ApiError::bad_request("invalid_body", format!("not JSON: {err}")))?;
    let first = state
        .store()
        .record_delivery(delivery)
        .await
        .map_err(|e| ApiError::store("recording a webhook delivery", e))?;
    if !first {
        return Ok(answer(
            "ignored",
            format!("delivery {delivery} was received before"),
        ));
    }
    let Some(request) = Request::read(&event, &payload) else {
        return Ok(answer(
            "ignored",
            format!("nothing to do for a `{event}` event"),
        ));
    };
    let Some(repo) = served(&state, &payload).await? else {
        let name = payload["repository"]["full_name"].as_str().unwrap_or("?");
        return Ok(answer(
            "refused",
            format!("this server does not serve {name} with GitHub set up"),
        ));
    };
    let forge = match state.runner().forge_for(&repo.location).await {
        Ok(Some(forge)) => forge,
        Ok(None) => {
            return Ok(answer(
                "refused",
                format!("{} has no GitHub API set up", repo.name),
            ));
        }
        Err(err) => return Ok(answer("refused", err)),
    };
    let sender = payload["sender"]["login"]
        .as_str()
        .unwrap_or("")
        .to_string();
    match forge.github.permission(&forge.repo, &sender).await {
        Ok(role) if matches!(role.as_str(), "admin" | "maintain" | "write") => {}
        Ok(role) => {
            return Ok(answer(
                "refused",
                format!(
                    "{sender} has `{role}` on {}, and starting a task needs write",
                    repo.name
                ),
            ));
        }
        Err(err) => {
            return Ok(answer(
                "refused",
                format!("asking GitHub what {sender} may do failed: {err}"),
            ));
        }
    }
    match request {
        Request::Start { issue, prompt } => {
            start(&state, &repo, &forge, issue, prompt, &sender).await
        }
        Request::Message { pull, text } => {
            follow_up(&state, &repo, &forge, pull, text, &sender).await
        }
    }
}

/// What a delivery asks for.
enum Request {
    /// A new task, from issue `issue`.
    Start { issue: u64, prompt: String },
    /// A message to the task of pull request `pull`'s branch.
    Message { pull: u64, text: String },
}

impl Request {
    fn read(event: &str, payload: &Value) -> Option<Request> {
        let action = payload["action"].as_str().unwrap_or("");
        let issue_prompt = |issue: &Value, instruction: Option<&str>| {
            let mut prompt = format!(
                "{}\n\n{}",
                issue["title"].as_str().unwrap_or("").trim(),
                issue["body"].as_str().unwrap_or("").trim()
            );
            if let Some(instruction) = instruction.filter(|i| !i.is_empty()) {
                prompt.push_str(&format!("\n\n{instruction}"));
            }
            format!(
                "{}\n\n(GitHub issue #{})",
                prompt.trim(),
                issue["number"].as_u64().unwrap_or(0)
            )
        };
        match (event, action) {
            ("issues", "labeled") if payload["label"]["name"].as_str() == Some(LABEL) => {
                let issue = &payload["issue"];
                Some(Request::Start {
                    issue: issue["number"].as_u64()?,
                    prompt: issue_prompt(issue, None),
                })
            }
            ("issue_comment", "created") => {
                let instruction = mention(payload["comment"]["body"].as_str()?)?;
                let issue = &payload["issue"];
                let number = issue["number"].as_u64()?;
                match issue.get("pull_request").is_some_and(|p| !p.is_null()) {
                    true => Some(Request::Message {
                        pull: number,
                        text: instruction,
                    }),
                    false => Some(Request::Start {
                        issue: number,
                        prompt: issue_prompt(issue, Some(&instruction)),
                    }),
                }
            }
            ("pull_request_review_comment", "created") => {
                let comment = &payload["comment"];
                let body = comment["body"].as_str()?.trim();
                let text = format!(
                    "Review comment on {} line {}:\n\n{body}",
                    comment["path"].as_str().unwrap_or("?"),
                    comment["line"]
                        .as_u64()
                        .map_or("?".to_string(), |l| l.to_string())
                );
                Some(Request::Message {
                    pull: payload["pull_request"]["number"].as_u64()?,
                    text,
                })
            }
            ("pull_request_review", "submitted") => {
                let body = payload["review"]["body"].as_str()?.trim();
                (!body.is_empty()).then(|| Request::Message {
                    pull: payload["pull_request"]["number"].as_u64().unwrap_or(0),
                    text: format!("Review:\n\n{body}"),
                })
            }
            _ => None,
        }
    }
}

/// The instruction after `@nightshift` in a comment, if the comment speaks to nightshift.
fn mention(body: &str) -> Option<String> {
    let at = body.find(MENTION)?;
    let rest = &body[at + MENTION.len()..];
    // `@nightshiftbot` is someone else.
    if rest.starts_with(|c: char| c.is_alphanumeric() || c == '-' || c == '_') {
        return None;
    }
    Some(rest.trim().to_string())
}

/// The registered repository the payload is about: its clone, SSH or web URL, as the
/// repository's location.
async fn served(state: &ServerState, payload: &Value) -> Result<Option<Repository>, ApiError> {
    let repository = &payload["repository"];
    let urls: Vec<String> = ["clone_url", "ssh_url", "html_url", "git_url"]
        .iter()
        .filter_map(|field| repository[field].as_str())
        .map(repo_identity)
        .collect();
    let repos = state
        .store()
        .repos()
        .await
        .map_err(|e| ApiError::store("listing the repositories", e))?;
    Ok(repos
        .into_iter()
        .find(|repo| repo.github_api.is_some() && urls.contains(&repo_identity(&repo.location))))
}

async fn start(
    state: &ServerState,
    repo: &Repository,
    forge: &Forge,
    issue: u64,
    prompt: String,
    sender: &str,
) -> Result<(StatusCode, Json<WebhookOutcome>), ApiError> {
    let request = TaskRequest {
        origin: Some(TaskOrigin::GithubIssue { number: issue }),
        ..TaskRequest::new(&repo.location, prompt, state.config().default_model.clone())
    };
    let task = match state.runner().submit(request).await {
        Ok(task) => task,
        Err(err) => {
            let _ = forge
                .github
                .comment(
                    &forge.repo,
                    issue,
                    &format!("nightshift could not start a task: {err}"),
                )
                .await;
            return Ok(answer("refused", err.to_string()));
        }
    };
    tracing::info!(task = %task.id, repo = %repo.name, issue, %sender, "task started from a GitHub issue");
    let comment = format!(
        "nightshift started task `{}` for @{sender}; its branch gets a draft pull request when it hands back (`nightshift logs --follow {}`).",
        task.id,
        task.id.short()
    );
    if let Err(err) = forge.github.comment(&forge.repo, issue, &comment).await {
        tracing::warn!(%err, task = %task.id, "could not comment on the issue");
    }
    Ok((
        StatusCode::CREATED,
        Json(WebhookOutcome {
            outcome: "started",
            reason: None,
            task: Some(task.id.to_string()),
        }),
    ))
}

async fn follow_up(
    state: &ServerState,
    repo: &Repository,
    forge: &Forge,
    pull: u64,
    text: String,
    sender: &str,
) -> Result<(StatusCode, Json<WebhookOutcome>), ApiError> {
    let head = match forge.github.pull_head(&forge.repo, pull).await {
        Ok(Some(head)) => head,
        Ok(None) => {
            return Ok(answer(
                "ignored",
                format!("pull request #{pull} is from a fork"),
            ));
        }
        Err(err) => {
            return Ok(answer(
                "refused",
                format!("reading pull request #{pull}: {err}"),
            ));
        }
    };
    let Some(task) = latest_on_branch(state, &repo.location, &head).await? else {
        return Ok(answer(
            "ignored",
            format!("no task of {} has the branch {head}", repo.name),
        ));
    };
    let outcome = match state
        .runner()
        .message_from(
            task.id,
            &text,
            Some(format!("{sender} on GitHub")),
            Some(TaskOrigin::GithubPullRequest { number: pull }),
        )
        .await
    {
        Ok(outcome) => outcome,
        Err(err) => return Ok(answer("refused", err.to_string())),
    };
    let (reply, id) = match (&outcome.follow_up, &outcome.follow_up_error) {
        (Some(follow_up), _) => (
            format!(
                "nightshift started follow-up task `{}` on this branch.",
                follow_up.id
            ),
            follow_up.id,
        ),
        (None, Some(err)) => (
            format!("nightshift could not start a follow-up: {err}"),
            task.id,
        ),
        (None, None) => (
            format!(
                "nightshift passed this to task `{}`, which is still working.",
                task.id
            ),
            task.id,
        ),
    };
    if let Err(err) = forge.github.comment(&forge.repo, pull, &reply).await {
        tracing::warn!(%err, task = %id, "could not comment on the pull request");
    }
    state.hub().nudge(task.id);
    Ok((
        StatusCode::OK,
        Json(WebhookOutcome {
            outcome: "follow_up",
            reason: None,
            task: Some(id.to_string()),
        }),
    ))
}

/// The newest task of the repository at `location` whose branch is `branch`.
async fn latest_on_branch(
    state: &ServerState,
    location: &str,
    branch: &str,
) -> Result<Option<Task>, ApiError> {
    let tasks = state
        .store()
        .list_tasks(&TaskFilter {
            limit: 1,
            repos: Some(vec![location.to_string()]),
            branch: Some(branch.to_string()),
            ..TaskFilter::default()
        })
        .await
        .map_err(|e| ApiError::store("looking for the branch's task", e))?;
    Ok(tasks.into_iter().next())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_the_body() {
        // The example from GitHub's documentation on validating deliveries.
        let secret = "It's a Secret to Everybody";
        let body = b"Hello, World!";
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(signature_matches(secret, body, Some(good)));
        assert!(!signature_matches(secret, b"Hello, World?", Some(good)));
        assert!(!signature_matches("another secret", body, Some(good)));
        assert!(!signature_matches(secret, body, None));
        assert!(!signature_matches(secret, body, Some("sha1=757107ea")));
        assert!(!signature_matches(secret, body, Some("sha256=zz")));
    }

    #[test]
    fn a_mention_is_nightshift_and_nobody_else() {
        assert_eq!(
            mention("@nightshift fix the test").as_deref(),
            Some("fix the test")
        );
        assert_eq!(
            mention("hey @nightshift, please").as_deref(),
            Some(", please")
        );
        assert_eq!(mention("@nightshiftbot do it"), None);
        assert_eq!(mention("nothing here"), None);
    }
}
