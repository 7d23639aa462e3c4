//! Registered repositories: which repositories a server serves, by name.
//!
//! A repository is registered by the machine's user (`nightshift repo add`, or an admin token
//! over the API) under a short name; its location is the absolute path of its top level, as
//! tasks store it. A server accepts tasks only for registered repositories, and an API token
//! can be limited to some of them.

use std::path::Path;

use jiff::Timestamp;
use nightshift_env::{RemoteCredential, SourceRepo};
use nightshift_protocol::{Repository, check_repo_name};
use nightshift_store::{Store, StoreError};

/// Why a repository was not registered. Nothing was stored.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("{0}")]
    Repository(#[from] nightshift_env::EnvError),
    #[error("{0}; nothing was registered")]
    Name(#[from] nightshift_protocol::InvalidRepoName),
    #[error("{0}; nothing was registered")]
    Credential(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl RegisterError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            RegisterError::Repository(err) => err.hint(),
            RegisterError::Name(_) => Some("give one with --name, e.g. `--name acme/app`".into()),
            RegisterError::Store(StoreError::AlreadyExists { .. }) => Some(
                "`nightshift repo ls` lists the registered repositories; `nightshift repo rm NAME` forgets one".into(),
            ),
            RegisterError::Store(_) | RegisterError::Credential(_) => None,
        }
    }
}

/// What a remote repository is registered with, besides its name.
#[derive(Debug, Clone, Copy, Default)]
pub struct RepoOptions<'a> {
    /// The stored secret host git (and the forge's API) reaches it with.
    pub credential: Option<&'a str>,
    /// Open pull requests on GitHub for its tasks' branches: through the API given, or
    /// (`Some(None)`) the one its URL implies.
    pub github: Option<Option<&'a str>>,
    /// Act on GitHub as this App (its id): `credential` is its private key.
    pub github_app: Option<&'a str>,
}

/// Registers a repository as `name` (by default, its directory's name): the git repository at
/// the path `repo` (any directory inside its work tree), or the remote repository at the URL
/// `repo` (`https://`, `ssh://`, `git@host:path`, `file://`; its mirror is made by the first
/// task on it).
///
/// `credential` names the stored secret host git reaches a remote repository with (an HTTPS
/// token, or an SSH private key); it must exist, and be granted to the repository for a task to
/// use it.
pub async fn register_repo(
    store: &dyn Store,
    repo: &str,
    name: Option<&str>,
    options: RepoOptions<'_>,
) -> Result<Repository, RegisterError> {
    let RepoOptions {
        credential,
        github,
        github_app,
    } = options;
    let github_app = github_app.map(str::trim).filter(|id| !id.is_empty());
    // An App acts through the API its URL implies unless one is given.
    let github = match (github, github_app) {
        (None, Some(_)) => Some(None),
        (github, _) => github,
    };
    if github_app.is_some()
        && !repo.trim().starts_with("https://")
        && !repo.trim().starts_with("http://")
    {
        return Err(RegisterError::Credential(format!(
            "a GitHub App's tokens reach a repository over HTTPS, and {repo} is not an https:// URL"
        )));
    }
    if let Some(secret) = credential {
        if !nightshift_env::is_remote(repo) {
            return Err(RegisterError::Credential(format!(
                "a credential is for a remote repository (a URL), and {repo} is a path"
            )));
        }
        if !store.secrets().await?.iter().any(|s| s.name == secret) {
            return Err(RegisterError::Credential(format!(
                "no secret is stored as `{secret}` (`nightshift secret set {secret} --repo URL` stores one)"
            )));
        }
    }
    let github_api = match github {
        None => None,
        Some(_) if !nightshift_env::is_remote(repo) => {
            return Err(RegisterError::Credential(format!(
                "pull requests are for a remote repository (a URL), and {repo} is a path"
            )));
        }
        Some(Some(api)) => Some(api.trim().trim_end_matches('/').to_string()),
        Some(None) => Some(nightshift_forge::default_api(repo).ok_or_else(|| {
            RegisterError::Credential(format!("{repo} names no host for a GitHub API"))
        })?),
    };
    if github_api.is_some() {
        if nightshift_forge::RepoRef::from_url(repo).is_none() {
            return Err(RegisterError::Credential(format!(
                "{repo} does not end in OWNER/NAME, as a GitHub repository's URL does"
            )));
        }
        if credential.is_none() {
            return Err(RegisterError::Credential(match github_app {
                Some(_) => "a GitHub App needs its private key: --credential SECRET, the secret holding the PEM file GitHub gave".into(),
                None => "pull requests need a credential: a token with access to the repository's pull requests (--credential SECRET)".into(),
            }));
        }
    }
    let location = match nightshift_env::is_remote(repo) {
        true => repo.trim().to_string(),
        false => SourceRepo::open(Path::new(repo))
            .await?
            .root()
            .display()
            .to_string(),
    };
    let name = match name {
        Some(name) => name.trim().to_string(),
        None => default_name(Path::new(
            location.trim_end_matches('/').trim_end_matches(".git"),
        )),
    };
    check_repo_name(&name)?;
    let repo = Repository {
        name,
        location,
        created_at: Timestamp::from_millisecond(Timestamp::now().as_millisecond())
            .unwrap_or_else(|_| Timestamp::now()),
        credential: credential.map(str::to_string),
        github_api,
        github_app: github_app.map(str::to_string),
    };
    store.add_repo(&repo).await?;
    Ok(repo)
}

/// A repository's name by default: its directory's name, with what a name may not hold
/// replaced by `-` and what it may not start with left out (`.dotfiles` is `dotfiles`).
fn default_name(root: &Path) -> String {
    let dir = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name: String = dir
        .chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                true => c,
                false => '-',
            },
        )
        .collect();
    let name = name.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    name.replace("..", "-")
        .chars()
        .take(nightshift_protocol::MAX_REPO_NAME)
        .collect()
}

/// The registered repository that `text` names: its name, or exactly its location (a path
/// with or without a trailing `/`). Nothing on disk is looked at, so an unregistered path is
/// never opened.
pub fn find_registered<'a>(repos: &'a [Repository], text: &str) -> Option<&'a Repository> {
    let text = text.trim();
    let as_path = text.trim_end_matches('/');
    repos
        .iter()
        .find(|repo| repo.name == text)
        .or_else(|| repos.iter().find(|repo| repo.location == as_path))
}

impl crate::Runner {
    /// What host git reaches the remote repository `url` with: the credential its registration
    /// names, unsealed, when that secret is granted to it (for a repository acting as a GitHub
    /// App, an installation token minted with the App's key in that secret); `None` for a
    /// remote registered without one, or not registered.
    pub(crate) async fn remote_credential(
        &self,
        url: &str,
    ) -> Result<Option<RemoteCredential>, String> {
        let url = url.trim();
        let repos = self.store.repos().await.map_err(|e| e.to_string())?;
        let Some(repo) = repos.into_iter().find(|repo| repo.location == url) else {
            return Ok(None);
        };
        let Some(secret) = repo.credential.as_deref() else {
            return Ok(None);
        };
        let value = self.unseal_credential(url, secret).await?;
        match repo.github_app.as_deref() {
            None => Ok(Some(RemoteCredential::for_url(url, value))),
            Some(app_id) => {
                let api = repo
                    .github_api
                    .clone()
                    .or_else(|| nightshift_forge::default_api(url))
                    .ok_or_else(|| format!("{url} names no host for a GitHub API"))?;
                let token = self.app_token(&api, url, app_id, secret, &value).await?;
                Ok(Some(RemoteCredential::Token(token)))
            }
        }
    }

    /// The stored secret `secret`, unsealed, when it is granted to the repository at `url`.
    async fn unseal_credential(&self, url: &str, secret: &str) -> Result<String, String> {
        let sealed = self.store.secrets().await.map_err(|e| e.to_string())?;
        let Some(stored) = sealed.into_iter().find(|s| s.name == secret) else {
            return Err(format!(
                "its credential, the secret `{secret}`, is not stored (`nightshift secret set {secret} --repo {url}`)"
            ));
        };
        if !nightshift_env::grants::granted(&stored.repos, url) {
            return Err(format!(
                "its credential, the secret `{secret}`, is not granted to it (`nightshift secret grant {secret} --repo {url}`)"
            ));
        }
        let Some(key) = &self.secret_key else {
            return Err(format!(
                "its credential, the secret `{secret}`, cannot be unsealed: this process has no secret key (NIGHTSHIFT_SECRET_KEY or the key file)"
            ));
        };
        key.unseal(&stored.name, &stored.sealed)
            .map_err(|err| format!("unsealing its credential `{secret}`: {err}"))
    }

    /// An installation token of the GitHub App `app_id` for the repository at `url`: the one
    /// minted before while it has more than five minutes left, else a new one from `api`.
    async fn app_token(
        &self,
        api: &str,
        url: &str,
        app_id: &str,
        secret: &str,
        pem: &str,
    ) -> Result<String, String> {
        // The key says which App, key and API minted it, so a re-registration mints anew.
        let key = format!("{app_id}\n{secret}\n{api}\n{url}");
        let fresh_until = Timestamp::now() + jiff::SignedDuration::from_mins(5);
        if let Some(token) = self.app_tokens.lock().map_err(|e| e.to_string())?.get(&key)
            && token.expires_at > fresh_until
        {
            return Ok(token.token.clone());
        }
        let repo = nightshift_forge::RepoRef::from_url(url)
            .ok_or_else(|| format!("{url} does not end in OWNER/NAME"))?;
        let app = nightshift_forge::GitHubApp::new(app_id, pem)
            .map_err(|err| format!("its credential `{secret}`: {err}"))?;
        let minted = app
            .installation_token(api, &repo)
            .await
            .map_err(|err| format!("minting a token as the GitHub App {app_id}: {err}"))?;
        let token = minted.token.clone();
        self.app_tokens
            .lock()
            .map_err(|e| e.to_string())?
            .insert(key, minted);
        Ok(token)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn repo(name: &str, location: &str) -> Repository {
        Repository {
            name: name.into(),
            location: location.into(),
            created_at: Timestamp::UNIX_EPOCH,
            credential: None,
            github_api: None,
            github_app: None,
        }
    }

    #[test]
    fn default_names_are_the_directory_made_valid() {
        for (dir, name) in [
            ("/srv/app", "app"),
            ("/tmp/.tmpXR1Wst", "tmpXR1Wst"),
            ("/x/my app (copy)", "my-app--copy-"),
            ("/x/a..b", "a-b"),
        ] {
            assert_eq!(default_name(Path::new(dir)), name);
            assert_eq!(check_repo_name(name), Ok(()), "{name}");
        }
        assert_eq!(default_name(Path::new("/")), "");
    }

    #[test]
    fn a_repository_is_found_by_name_or_exact_location_only() {
        let repos = [repo("app", "/srv/app"), repo("acme/lib", "/srv/lib")];
        assert_eq!(find_registered(&repos, "app").unwrap().location, "/srv/app");
        assert_eq!(
            find_registered(&repos, " acme/lib ").unwrap().name,
            "acme/lib"
        );
        assert_eq!(
            find_registered(&repos, "/srv/lib/").unwrap().name,
            "acme/lib"
        );
        for other in ["/srv", "/srv/app/sub", "/srv/./app", "srv/app", "ap", ""] {
            assert!(find_registered(&repos, other).is_none(), "{other}");
        }
    }
}
