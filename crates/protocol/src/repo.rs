//! Repositories a server serves: each has a short name that people and tokens use, and a
//! location (the absolute path of a git repository on the server's machine).

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// A repository registered with `nightshift repo add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repository {
    /// What tasks, tokens and people call it: see [`check_repo_name`].
    pub name: String,
    /// Where it is: the absolute path of its top level on the machine that registered it,
    /// or the URL of a remote repository.
    pub location: String,
    pub created_at: Timestamp,
    /// The stored secret (by name) whose value host git uses to reach a remote repository:
    /// an HTTPS token, or an SSH private key for `ssh://` and `user@host:path` URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// For a repository on GitHub: the API its tasks open pull requests through
    /// (`https://api.github.com`, or a GitHub Enterprise Server's `https://HOST/api/v3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github_api: Option<String>,
    /// For a repository on GitHub: the GitHub App (its id) nightshift acts as, minting
    /// installation tokens with the private key in `credential`; `None`: `credential` is the
    /// token itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github_app: Option<String>,
}

/// The longest repository name.
pub const MAX_REPO_NAME: usize = 100;

/// The name was not one a repository can have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidRepoName(pub String);

impl fmt::Display for InvalidRepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a valid repository name: use 1 to {MAX_REPO_NAME} ASCII letters, \
             digits, `-`, `_`, `.` or `/`, starting with a letter or digit, with no `..` and \
             no `/` at either end",
            self.0
        )
    }
}

/// Checks a repository name: like a forge's `owner/name`, so that names can be typed in a
/// URL path and a shell without quoting, and never read as a path (`/x`, `../x`) or an option
/// (`-x`).
pub fn check_repo_name(name: &str) -> Result<(), InvalidRepoName> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/');
    let ok = !name.is_empty()
        && name.len() <= MAX_REPO_NAME
        && name.chars().all(valid_char)
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && !name.ends_with('/')
        && !name.contains("..")
        && !name.contains("//");
    if ok {
        Ok(())
    } else {
        Err(InvalidRepoName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_forge_like_and_never_paths_or_options() {
        for good in ["app", "acme/app", "a.b-c_d", "9lives", "team/sub/app"] {
            assert_eq!(check_repo_name(good), Ok(()), "{good}");
        }
        let long = "a".repeat(MAX_REPO_NAME + 1);
        for bad in [
            "", "/abs", "-x", ".hidden", "a/", "a/../b", "a//b", "a b", "ä", "a\n", &long,
        ] {
            assert!(check_repo_name(bad).is_err(), "{bad:?}");
        }
    }
}
