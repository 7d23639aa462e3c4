//! Checks shared by `.nightshift.toml` and the importers. Each returns the normalised value or a
//! reason phrased to follow "`key` = value: ".

use std::path::{Component, Path, PathBuf};

/// A path relative to the repository root that stays inside it, normalised (`./a/../b` → `b`).
/// Empty (the root itself) when `allow_root`.
pub(crate) fn relative_path(raw: &str, allow_root: bool) -> Result<PathBuf, String> {
    if raw.trim().is_empty() {
        return Err("is empty; write a path relative to the repository root".into());
    }
    let path = Path::new(raw);
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Prefix(_) | Component::RootDir => {
                return Err("is absolute; write a path relative to the repository root".into());
            }
            Component::CurDir => {}
            Component::ParentDir => {
                if !normal.pop() {
                    return Err("leaves the repository; it must stay inside it".into());
                }
            }
            Component::Normal(part) => normal.push(part),
        }
    }
    if normal.as_os_str().is_empty() && !allow_root {
        return Err("names the repository root itself; name a file inside it".into());
    }
    if normal.components().next() == Some(Component::Normal(".git".as_ref())) {
        return Err("is inside .git, which nightshift manages itself".into());
    }
    Ok(normal)
}

/// Whether `relative` (already normalised by [`relative_path`]) resolves, through any symbolic
/// links, to somewhere outside `repo_root`. Paths that do not exist yet cannot escape.
pub(crate) fn escapes_through_links(repo_root: &Path, relative: &Path) -> bool {
    let Ok(root) = repo_root.canonicalize() else {
        return false;
    };
    match repo_root.join(relative).canonicalize() {
        Ok(resolved) => !resolved.starts_with(&root),
        Err(_) => false,
    }
}

/// Whether two host patterns (`host`, `*.domain`, each with an optional `:port`) can match the
/// same host and port.
pub fn patterns_overlap(a: &str, b: &str) -> bool {
    fn split(pattern: &str) -> (String, Option<&str>) {
        let pattern = pattern.trim();
        match pattern.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') || host.ends_with(']') => (
                host.trim_matches(['[', ']']).to_ascii_lowercase(),
                Some(port),
            ),
            _ => (pattern.trim_matches(['[', ']']).to_ascii_lowercase(), None),
        }
    }
    let ((a, a_port), (b, b_port)) = (split(a), split(b));
    if let (Some(x), Some(y)) = (a_port, b_port)
        && x != y
    {
        return false;
    }
    let under = |host: &str, domain: &str| host.ends_with(&format!(".{domain}"));
    match (a.strip_prefix("*."), b.strip_prefix("*.")) {
        (Some(x), Some(y)) => x == y || under(x, y) || under(y, x),
        (Some(domain), None) => under(&b, domain),
        (None, Some(domain)) => under(&a, domain),
        (None, None) => a == b,
    }
}

/// An environment variable name: a letter or `_`, then letters, digits or `_`.
pub(crate) fn env_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let starts_well = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if starts_well && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err("is not a valid environment variable name (letters, digits and `_`, not starting with a digit)".into())
    }
}

/// An MCP server's name, the prefix of its tools' names as the model sees them
/// (`NAME__TOOL`).
pub fn mcp_server_name(name: &str) -> Result<(), String> {
    let plain = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !plain {
        return Err("is not an MCP server name (at most 32 letters, digits, `_` and `-`): it prefixes its tools' names".into());
    }
    if name.contains("__") || name.ends_with('_') {
        return Err(
            "may not contain `__` or end with `_`: `__` separates it from its tools' names".into(),
        );
    }
    Ok(())
}

/// A remote MCP server's URL: `http://` or `https://` with a host, and no credentials in it
/// (a token belongs in a `proxy` secret for the host, which the sandbox never sees).
pub fn mcp_url(raw: &str) -> Result<String, String> {
    let url = url::Url::parse(raw.trim()).map_err(|e| format!("is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must start with https:// (or http://)".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "holds credentials; declare a `proxy` secret for its host in [secrets] instead, \
             which the egress proxy adds as a header"
                .into(),
        );
    }
    Ok(url.to_string())
}

/// A host pattern for a network allowlist: `example.com`, `*.example.com`, optionally
/// `:PORT`. Returned lowercased.
pub(crate) fn host_pattern(raw: &str) -> Result<String, String> {
    let pattern = raw.trim().to_ascii_lowercase();
    if pattern.is_empty() {
        return Err("is empty; write a host name such as \"api.example.com\"".into());
    }
    if pattern.contains("://") || pattern.contains('/') {
        return Err("is a URL; write only the host name, such as \"api.example.com\"".into());
    }
    let (host, port) = match pattern.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (pattern.as_str(), None),
    };
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|port| port != 0)
    {
        return Err(format!("has an invalid port `{port}`"));
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if name.is_empty() || !name.split('.').all(label_ok) {
        return Err(
            "is not a host pattern; write \"example.com\" or \"*.example.com\" (a `*` only as the first label)"
                .into(),
        );
    }
    Ok(pattern)
}

/// The name of a check: used in artifact names and events, so kept to a safe alphabet.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Ok(())
    } else {
        Err("is not a valid check name (letters, digits, `-` and `_`)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_stay_inside() {
        assert_eq!(
            relative_path("./a/../b/", false).unwrap(),
            PathBuf::from("b")
        );
        assert_eq!(relative_path(".", true).unwrap(), PathBuf::new());
        assert!(
            relative_path(".", false)
                .unwrap_err()
                .contains("root itself")
        );
        assert!(
            relative_path("../x", true)
                .unwrap_err()
                .contains("leaves the repository")
        );
        assert!(
            relative_path("a/../../x", true)
                .unwrap_err()
                .contains("leaves")
        );
        assert!(
            relative_path("/etc/passwd", true)
                .unwrap_err()
                .contains("absolute")
        );
        assert!(
            relative_path(".git/config", false)
                .unwrap_err()
                .contains(".git")
        );
        assert!(relative_path("  ", false).unwrap_err().contains("empty"));
    }

    #[test]
    fn host_patterns_overlap_as_the_proxy_would_match_them() {
        assert!(patterns_overlap("api.x.com", "api.x.com"));
        assert!(patterns_overlap("API.x.com", "api.x.com:443"));
        assert!(patterns_overlap("api.x.com:443", "api.x.com"));
        assert!(!patterns_overlap("api.x.com:8443", "api.x.com:443"));
        assert!(patterns_overlap("*.x.com", "api.x.com"));
        assert!(patterns_overlap("api.x.com", "*.x.com"));
        assert!(patterns_overlap("*.x.com", "*.api.x.com"));
        assert!(!patterns_overlap("*.x.com", "x.com"));
        assert!(!patterns_overlap("api.x.com", "api.y.com"));
        assert!(!patterns_overlap("evilx.com", "*.x.com"));
        assert!(patterns_overlap("127.0.0.1:3000", "127.0.0.1:3000"));
        assert!(!patterns_overlap("127.0.0.1:3000", "127.0.0.1:3001"));
    }

    #[test]
    fn hosts_and_names() {
        assert_eq!(host_pattern("API.example.com").unwrap(), "api.example.com");
        assert_eq!(
            host_pattern("*.example.com:8443").unwrap(),
            "*.example.com:8443"
        );
        assert!(
            host_pattern("https://example.com")
                .unwrap_err()
                .contains("URL")
        );
        assert!(host_pattern("exa*mple.com").is_err());
        assert!(host_pattern("example.com:0").unwrap_err().contains("port"));
        assert!(host_pattern("*").is_err());
        assert!(env_name("RUST_LOG").is_ok());
        assert!(env_name("_x1").is_ok());
        assert!(env_name("1X").is_err());
        assert!(env_name("A-B").is_err());
        assert!(check_name("unit-tests").is_ok());
        assert!(check_name("unit tests").is_err());
    }
}
