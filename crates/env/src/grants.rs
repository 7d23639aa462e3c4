//! Which repositories may use a stored secret. A repository's `.nightshift.toml` names the
//! secrets it wants, but it is untrusted: the person who stores a secret says which
//! repositories' tasks may have it, and a task of any other repository gets none.

/// In a secret's grants, stands for every repository.
pub const ALL_REPOS: &str = "*";

/// How a repository is compared in grants: a task's repository is the absolute path of its top
/// level (as `nightshift run` stores it), or a URL. Surrounding whitespace and trailing `/` are
/// never part of it; a URL (`scheme://host/path`, or git's `user@host:path`) is the same
/// without a trailing `.git`, and its scheme and host compare in lower case, so
/// `https://x/y.git` and `https://x/y` are one grant. A path keeps a `.git` ending: there it
/// names another directory.
pub fn repo_identity(repo: &str) -> String {
    let trimmed = repo.trim().trim_end_matches('/');
    if let Some((scheme, rest)) = trimmed.split_once("://") {
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut identity = format!(
            "{}://{}",
            scheme.to_ascii_lowercase(),
            host.to_ascii_lowercase()
        );
        let path = without_git_suffix(path);
        if !path.is_empty() {
            identity.push('/');
            identity.push_str(path);
        }
        return identity;
    }
    // git's scp-like form: `user@host:path`, with no `/` before the colon.
    if let Some((host, path)) = trimmed.split_once(':')
        && !host.is_empty()
        && !host.contains('/')
        && !path.is_empty()
    {
        return format!("{}:{}", host.to_ascii_lowercase(), without_git_suffix(path));
    }
    trimmed.to_string()
}

/// A URL's path without a trailing `.git` (or `/.git`) and the `/` left before it.
fn without_git_suffix(path: &str) -> &str {
    let path = path.trim_end_matches('/');
    path.strip_suffix(".git")
        .map_or(path, |rest| rest.trim_end_matches('/'))
}

/// Whether `repos` (a secret's grants) let a task of `repo` use the secret.
pub fn granted(repos: &[String], repo: &str) -> bool {
    let repo = repo_identity(repo);
    repos
        .iter()
        .any(|granted| granted == ALL_REPOS || repo_identity(granted) == repo)
}

/// How a secret's grants read for a person.
pub fn describe(repos: &[String]) -> String {
    if repos.iter().any(|r| r == ALL_REPOS) {
        "every repository".into()
    } else if repos.is_empty() {
        "no repository".into()
    } else {
        repos.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_names_a_repository_or_all_of_them() {
        let repos = vec![
            "/src/app".to_string(),
            "HTTPS://GitHub.com/Org/Repo.git".to_string(),
        ];
        assert!(granted(&repos, "/src/app"));
        assert!(granted(&repos, "/src/app/"));
        assert!(!granted(&repos, "/src/app2"));
        assert!(!granted(&repos, "/src"));
        assert!(granted(&repos, "https://github.com/Org/Repo"));
        assert!(
            !granted(&repos, "https://github.com/org/repo"),
            "paths keep their case"
        );
        assert!(!granted(&[], "/src/app"));
        for (a, b) in [
            ("https://x/y.git", "https://x/y"),
            (" https://x/y.git/ ", "https://x/y"),
            ("https://x/y/", "https://x/y"),
            ("HTTPS://X/y.git\n", "https://x/y"),
            ("git@GitHub.com:org/repo.git", "git@github.com:org/repo"),
            ("git@github.com:org/repo/", "git@github.com:org/repo"),
            ("/src/app/ ", "/src/app"),
        ] {
            assert_eq!(repo_identity(a), repo_identity(b), "{a:?} and {b:?}");
        }
        assert_ne!(repo_identity("/src/app.git"), repo_identity("/src/app"));
        assert_ne!(repo_identity("https://x/y"), repo_identity("https://x/z"));
        assert_ne!(
            repo_identity("git@x:org/repo"),
            repo_identity("git@x:org/other")
        );
        assert!(granted(&[ALL_REPOS.to_string()], "/anything"));
        assert_eq!(
            describe(&repos),
            "/src/app, HTTPS://GitHub.com/Org/Repo.git"
        );
        assert_eq!(describe(&[]), "no repository");
        assert_eq!(describe(&["*".into()]), "every repository");
    }
}
