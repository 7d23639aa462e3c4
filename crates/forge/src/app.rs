//! GitHub Apps: nightshift acts on a repository as an App installed on it, with installation
//! tokens it mints from the App's private key (a JWT signed with RS256, exchanged for a token
//! limited to that one repository, valid for an hour).

use jiff::Timestamp;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ForgeError, GitHub, RepoRef};

/// A GitHub App: its id, and the private key it signs with.
#[derive(Clone)]
pub struct GitHubApp {
    app_id: String,
    key: jsonwebtoken::EncodingKey,
}

impl std::fmt::Debug for GitHubApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubApp")
            .field("app_id", &self.app_id)
            .finish()
    }
}

/// An installation token and when it stops working.
#[derive(Clone, Deserialize)]
pub struct InstallationToken {
    pub token: String,
    pub expires_at: Timestamp,
}

impl std::fmt::Debug for InstallationToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallationToken")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iat: i64,
    exp: i64,
    iss: &'a str,
}

impl GitHubApp {
    /// The App `app_id` (its numeric id, or its client id), signing with `private_key_pem`
    /// (the PEM file GitHub gives, PKCS#1 or PKCS#8).
    pub fn new(app_id: &str, private_key_pem: &str) -> Result<GitHubApp, ForgeError> {
        let app_id = app_id.trim();
        if app_id.is_empty() {
            return Err(ForgeError::Config("the GitHub App id is empty".into()));
        }
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(private_key_pem.trim().as_bytes())
            .map_err(|err| {
                ForgeError::Config(format!(
                    "the GitHub App's private key is not an RSA key in PEM form ({err})"
                ))
            })?;
        Ok(GitHubApp {
            app_id: app_id.to_string(),
            key,
        })
    }

    /// A JWT that authenticates as the App for ten minutes (issued a minute in the past, as
    /// GitHub advises against clock drift).
    pub fn jwt(&self) -> Result<String, ForgeError> {
        let now = Timestamp::now().as_second();
        let claims = Claims {
            iat: now - 60,
            exp: now + 540,
            iss: &self.app_id,
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &self.key,
        )
        .map_err(|err| ForgeError::Config(format!("signing the GitHub App's JWT: {err}")))
    }

    /// A token for the App's installation on `repo`, limited to that repository, from the
    /// API at `api`.
    pub async fn installation_token(
        &self,
        api: &str,
        repo: &RepoRef,
    ) -> Result<InstallationToken, ForgeError> {
        let as_app = GitHub::new(api, &self.jwt()?)?;
        let installation: Value = as_app
            .call(
                Method::GET,
                &format!("/repos/{}/{}/installation", repo.owner, repo.name),
                None,
            )
            .await
            .map_err(|err| match err {
                ForgeError::Api { status: 404, .. } => ForgeError::Config(format!(
                    "the GitHub App {} is not installed on {}/{} ({err})",
                    self.app_id, repo.owner, repo.name
                )),
                other => other,
            })?;
        let id = installation["id"]
            .as_u64()
            .ok_or_else(|| ForgeError::Config("GitHub's answer names no installation id".into()))?;
        as_app
            .call(
                Method::POST,
                &format!("/app/installations/{id}/access_tokens"),
                Some(serde_json::json!({ "repositories": [repo.name] })),
            )
            .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_key_that_is_not_an_rsa_pem_is_a_clear_error() {
        let err = GitHubApp::new("123", "not a key").unwrap_err();
        assert!(
            err.to_string().contains("not an RSA key in PEM form"),
            "{err}"
        );
        let err = GitHubApp::new(" ", "not a key").unwrap_err();
        assert!(err.to_string().contains("App id is empty"), "{err}");
    }
}
