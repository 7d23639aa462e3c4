//! Which repositories may use a stored secret. A repository's `.nightshift.toml` names the
//! secrets it wants, but it is untrusted: the person who stores a secret says which
//! repositories' tasks may have it, and a task of any other repository gets none.

/// In a secret's grants, stands for every repository.
pub const ALL_REPOS: &str = "*";

/// How a repository is compared in grants: a task's repository is the absolute path of its top
/// level (as `nightshift run` stores it), or a URL; a URL without a trailing `/` or `.git`, its
/// scheme and host in lower case.
pub fn repo_identity(repo: &str) -> String {
    let trimmed = repo.trim().trim_end_matches('/');
    let Some((scheme, rest)) = trimmed.split_once("://") else {
        return trimmed.to_string();
    };
    let rest = rest.strip_suffix(".git").unwrap_or(rest);
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut identity = format!(
        "{}://{}",
        scheme.to_ascii_lowercase(),
        host.to_ascii_lowercase()
    );
    if !path.is_empty() {
        identity.push('/');
        identity.push_str(path);
    }
    identity
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
        assert!(granted(&[ALL_REPOS.to_string()], "/anything"));
        assert_eq!(
            describe(&repos),
            "/src/app, HTTPS://GitHub.com/Org/Repo.git"
        );
        assert_eq!(describe(&[]), "no repository");
        assert_eq!(describe(&["*".into()]), "every repository");
    }
}
