//! GitHub's REST API: the pull request calls, with the retries GitHub asks clients for.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ForgeError;

/// A repository on a forge: `owner/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRef {
    pub owner: String,
    pub name: String,
}

impl RepoRef {
    /// The owner and name a clone URL ends with: `https://github.com/acme/app.git`,
    /// `git@github.com:acme/app.git`, `ssh://git@host/acme/app`.
    pub fn from_url(url: &str) -> Option<RepoRef> {
        let url = url.trim().trim_end_matches('/');
        let path = match url.split_once("://") {
            Some((_, rest)) => rest.split_once('/')?.1,
            None => url.split_once(':')?.1,
        };
        let path = path.strip_suffix(".git").unwrap_or(path);
        let mut parts = path.rsplit('/');
        let name = parts.next()?.to_string();
        let owner = parts.next()?.to_string();
        let valid = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        (valid(&owner) && valid(&name)).then_some(RepoRef { owner, name })
    }
}

/// The API of the forge a clone URL is on: `https://api.github.com` for github.com, and
/// GitHub Enterprise Server's `https://HOST/api/v3` for any other host.
pub fn default_api(url: &str) -> Option<String> {
    let url = url.trim();
    let host = match url.split_once("://") {
        Some((_, rest)) => rest.split('/').next()?,
        None => url.split_once(':')?.0,
    };
    let host = host
        .rsplit('@')
        .next()?
        .split(':')
        .next()?
        .to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    Some(match host.as_str() {
        "github.com" | "www.github.com" => "https://api.github.com".to_string(),
        _ => format!("https://{host}/api/v3"),
    })
}

/// A pull request as the calls here need it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PullRequest {
    pub number: u64,
    pub html_url: String,
}

/// What a new pull request says.
#[derive(Debug, Clone, Serialize)]
pub struct NewPullRequest<'a> {
    pub title: &'a str,
    /// The branch with the work.
    pub head: &'a str,
    /// The branch to merge into.
    pub base: &'a str,
    pub body: &'a str,
    pub draft: bool,
}

/// A GitHub API endpoint and the token that acts on it.
#[derive(Clone)]
pub struct GitHub {
    api: String,
    token: String,
    client: reqwest::Client,
    attempts: u32,
    longest_wait: Duration,
}

impl std::fmt::Debug for GitHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHub").field("api", &self.api).finish()
    }
}

impl GitHub {
    /// A client of the API at `api` (`https://api.github.com`, or a GitHub Enterprise
    /// Server's `https://HOST/api/v3`) acting with `token` (a personal access token or an
    /// installation token).
    pub fn new(api: &str, token: &str) -> Result<GitHub, ForgeError> {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("nightshift/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|err| ForgeError::Config(format!("making the HTTP client: {err}")))?;
        Ok(GitHub {
            api: api.trim().trim_end_matches('/').to_string(),
            token: token.trim().to_string(),
            client,
            attempts: 4,
            longest_wait: Duration::from_secs(60),
        })
    }

    /// At most `attempts` tries of each call, waiting at most `longest_wait` before one.
    pub fn with_retries(mut self, attempts: u32, longest_wait: Duration) -> GitHub {
        self.attempts = attempts.max(1);
        self.longest_wait = longest_wait;
        self
    }

    /// The open pull request whose head is `branch` of the repository itself, if any.
    pub async fn open_pull_for(
        &self,
        repo: &RepoRef,
        branch: &str,
    ) -> Result<Option<PullRequest>, ForgeError> {
        let path = format!(
            "/repos/{}/{}/pulls?state=open&head={}:{}",
            repo.owner,
            repo.name,
            repo.owner,
            query_escape(branch)
        );
        let found: Vec<PullRequest> = self.call(Method::GET, &path, None).await?;
        Ok(found.into_iter().next())
    }

    pub async fn create_pull(
        &self,
        repo: &RepoRef,
        pull: &NewPullRequest<'_>,
    ) -> Result<PullRequest, ForgeError> {
        let path = format!("/repos/{}/{}/pulls", repo.owner, repo.name);
        let body = serde_json::to_value(pull).map_err(|err| ForgeError::Config(err.to_string()))?;
        self.call(Method::POST, &path, Some(body)).await
    }

    /// Replaces the pull request's body.
    pub async fn update_pull_body(
        &self,
        repo: &RepoRef,
        number: u64,
        body: &str,
    ) -> Result<(), ForgeError> {
        let path = format!("/repos/{}/{}/pulls/{number}", repo.owner, repo.name);
        let _: Value = self
            .call(
                Method::PATCH,
                &path,
                Some(serde_json::json!({ "body": body })),
            )
            .await?;
        Ok(())
    }

    /// The head branch of pull request `number` (of this repository; `None` for one from a
    /// fork).
    pub async fn pull_head(
        &self,
        repo: &RepoRef,
        number: u64,
    ) -> Result<Option<String>, ForgeError> {
        let path = format!("/repos/{}/{}/pulls/{number}", repo.owner, repo.name);
        let pull: Value = self.call(Method::GET, &path, None).await?;
        let same_repo = pull["head"]["repo"]["full_name"]
            .as_str()
            .is_none_or(|full| full.eq_ignore_ascii_case(&format!("{}/{}", repo.owner, repo.name)));
        Ok(pull["head"]["ref"]
            .as_str()
            .filter(|_| same_repo)
            .map(str::to_string))
    }

    /// What `user` may do in the repository, as GitHub says: `admin`, `maintain`, `write`,
    /// `triage`, `read` or `none` (`role_name` where GitHub gives it, else `permission`).
    pub async fn permission(&self, repo: &RepoRef, user: &str) -> Result<String, ForgeError> {
        let path = format!(
            "/repos/{}/{}/collaborators/{}/permission",
            repo.owner,
            repo.name,
            query_escape(user)
        );
        let answer: Value = self.call(Method::GET, &path, None).await?;
        let role = answer["role_name"]
            .as_str()
            .or_else(|| answer["permission"].as_str())
            .unwrap_or("none");
        Ok(role.to_string())
    }

    /// Comments on the conversation of issue or pull request `number`.
    pub async fn comment(&self, repo: &RepoRef, number: u64, body: &str) -> Result<(), ForgeError> {
        let path = format!(
            "/repos/{}/{}/issues/{number}/comments",
            repo.owner, repo.name
        );
        let _: Value = self
            .call(
                Method::POST,
                &path,
                Some(serde_json::json!({ "body": body })),
            )
            .await?;
        Ok(())
    }

    /// One call, tried again on a 5xx, a 429 and GitHub's secondary rate limits (a 403 with
    /// `Retry-After` or no requests left), waiting what `Retry-After` or `x-ratelimit-reset`
    /// says (at most `longest_wait`), else 1, 2, 4... seconds.
    pub(crate) async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, ForgeError> {
        let url = format!("{}{path}", self.api);
        let shown_path = path.split('?').next().unwrap_or(path).to_string();
        let transport = |message: String| ForgeError::Transport {
            method: method.to_string(),
            path: shown_path.clone(),
            message,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self
                .client
                .request(method.clone(), &url)
                .bearer_auth(&self.token)
                .header("Accept", "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28");
            if let Some(body) = &body {
                request = request.json(body);
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(err) if attempt < self.attempts => {
                    tracing::warn!(%err, attempt, "forge call failed; trying again");
                    tokio::time::sleep(self.backoff(attempt, None)).await;
                    continue;
                }
                Err(err) => return Err(transport(err.to_string())),
            };
            let status = response.status();
            if status.is_success() {
                let text = response
                    .text()
                    .await
                    .map_err(|err| transport(err.to_string()))?;
                return serde_json::from_str(&text).map_err(|err| {
                    transport(format!("the answer is not what GitHub sends: {err}"))
                });
            }
            let wait = retry_wait(&response);
            let headers_say_limited = wait.is_some();
            let message = response
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string());
            let limited = status == StatusCode::TOO_MANY_REQUESTS
                || (status == StatusCode::FORBIDDEN
                    && (headers_say_limited
                        || message.to_ascii_lowercase().contains("rate limit")));
            if (status.is_server_error() || limited) && attempt < self.attempts {
                tracing::warn!(%status, attempt, %message, "forge call refused for now; trying again");
                tokio::time::sleep(self.backoff(attempt, wait)).await;
                continue;
            }
            return Err(ForgeError::Api {
                method: method.to_string(),
                path: shown_path,
                status: status.as_u16(),
                message,
            });
        }
    }

    fn backoff(&self, attempt: u32, said: Option<Duration>) -> Duration {
        let exponential = Duration::from_secs(1 << (attempt - 1).min(6));
        said.unwrap_or(exponential).min(self.longest_wait)
    }
}

/// How long GitHub asks to wait: `Retry-After` seconds, or until `x-ratelimit-reset` when no
/// requests are left.
fn retry_wait(response: &reqwest::Response) -> Option<Duration> {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    if let Some(seconds) = header("retry-after") {
        return Some(Duration::from_secs(seconds));
    }
    if header("x-ratelimit-remaining") == Some(0) {
        let reset = header("x-ratelimit-reset")?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        return Some(Duration::from_secs(reset.saturating_sub(now)));
    }
    None
}

/// A branch name as a query value: its `/` stay, what a query would misread is escaped.
fn query_escape(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' | b'~' => {
                out.push(byte as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn owner_and_name_come_from_any_clone_url() {
        for url in [
            "https://github.com/acme/app.git",
            "https://github.com/acme/app/",
            "git@github.com:acme/app.git",
            "ssh://git@ghe.corp:2222/acme/app",
            "http://127.0.0.1:8080/acme/app.git",
        ] {
            assert_eq!(
                RepoRef::from_url(url),
                Some(RepoRef {
                    owner: "acme".into(),
                    name: "app".into()
                }),
                "{url}"
            );
        }
        for url in [
            "https://github.com/app",
            "https://github.com",
            "git@host:app",
        ] {
            assert_eq!(RepoRef::from_url(url), None, "{url}");
        }
    }

    #[test]
    fn the_api_is_githubs_or_the_enterprise_servers() {
        assert_eq!(
            default_api("https://github.com/acme/app").unwrap(),
            "https://api.github.com"
        );
        assert_eq!(
            default_api("git@github.com:acme/app.git").unwrap(),
            "https://api.github.com"
        );
        assert_eq!(
            default_api("https://git.corp:8443/acme/app").unwrap(),
            "https://git.corp/api/v3"
        );
        assert_eq!(
            default_api("ssh://git@ghe.corp/acme/app").unwrap(),
            "https://ghe.corp/api/v3"
        );
    }

    #[test]
    fn branch_names_stay_readable_in_queries() {
        assert_eq!(query_escape("nightshift/ab12-fix"), "nightshift/ab12-fix");
        assert_eq!(query_escape("a b&c"), "a%20b%26c");
    }
}
