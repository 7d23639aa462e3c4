//! Registry credentials from the host's login files (the containers tools' `auth.json` and
//! Docker's `config.json`, which share a format).
//!
//! People who already log in with `docker login`, `skopeo login` or `podman login` expect
//! nightshift to pull what they can pull. Only the `auths` map with inline `auth` (base64
//! `user:password`) or `username`/`password` is read; credential helpers and credential stores
//! run other programs and are not consulted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::Credentials;
use crate::reference::DOCKER_HUB;

#[derive(serde::Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(serde::Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// Credentials for `registry` (`host[:port]`, `docker.io` for Docker Hub) from the first of
/// the host's login files with an entry for it: the containers tools' (`skopeo login`,
/// `podman login`: `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
/// `$XDG_CONFIG_HOME/containers/auth.json` or `~/.config/containers/auth.json`), then
/// Docker's (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`); `None` when none has
/// one.
pub fn docker_config_credentials(registry: &str) -> Option<Credentials> {
    credentials_from_files(&auth_files(), registry)
}

/// The host's login for the registry `reference` is pulled from; `None` for a local image or a
/// registry with no login.
pub fn host_credentials(reference: &crate::Reference) -> Option<Credentials> {
    match reference {
        crate::Reference::Registry { registry, .. } => docker_config_credentials(registry),
        _ => None,
    }
}

/// The login files read, in order.
fn auth_files() -> Vec<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let home = var("HOME");
    let mut files = Vec::new();
    files.extend(var("REGISTRY_AUTH_FILE"));
    files.extend(var("XDG_RUNTIME_DIR").map(|dir| dir.join("containers/auth.json")));
    match var("XDG_CONFIG_HOME") {
        Some(dir) => files.push(dir.join("containers/auth.json")),
        None => files.extend(
            home.as_ref()
                .map(|h| h.join(".config/containers/auth.json")),
        ),
    }
    match var("DOCKER_CONFIG") {
        Some(dir) => files.push(dir.join("config.json")),
        None => files.extend(home.as_ref().map(|h| h.join(".docker/config.json"))),
    }
    files
}

/// The credentials for `registry` in the first of `files` that has them.
fn credentials_from_files(files: &[PathBuf], registry: &str) -> Option<Credentials> {
    files
        .iter()
        .find_map(|file| docker_config_credentials_from(file, registry))
}

/// Like [`docker_config_credentials`], from the given `config.json`.
pub fn docker_config_credentials_from(path: &Path, registry: &str) -> Option<Credentials> {
    let text = std::fs::read(path).ok()?;
    let config: DockerConfig = match serde_json::from_slice(&text) {
        Ok(config) => config,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable docker config");
            return None;
        }
    };
    let wanted = normalize(registry);
    let entry = config
        .auths
        .iter()
        .find(|(key, _)| normalize(key) == wanted)
        .map(|(_, entry)| entry)?;
    if let Some(auth) = &entry.auth {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (username, password) = text.split_once(':')?;
        return Some(Credentials {
            username: username.to_string(),
            password: password.to_string(),
        });
    }
    Some(Credentials {
        username: entry.username.clone()?,
        password: entry.password.clone()?,
    })
}

/// `https://index.docker.io/v1/`, `index.docker.io` and `docker.io` are one registry; other
/// keys may carry a scheme and a path that Docker ignores.
fn normalize(key: &str) -> String {
    let key = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => DOCKER_HUB.to_string(),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_inline_auth_and_docker_hub_aliases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:x");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},
                    "127.0.0.1:5000":{{"username":"bob","password":"pw"}}}},
                    "credsStore":"desktop"}}"#
            ),
        )
        .unwrap();
        let hub = docker_config_credentials_from(&path, "docker.io").unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("alice", "s3cret:x")
        );
        let local = docker_config_credentials_from(&path, "127.0.0.1:5000").unwrap();
        assert_eq!(local.username, "bob");
        assert!(docker_config_credentials_from(&path, "ghcr.io").is_none());
    }

    #[test]
    fn the_first_login_file_with_the_registry_wins() {
        let dir = tempfile::tempdir().unwrap();
        let podman = dir.path().join("auth.json");
        let docker = dir.path().join("config.json");
        std::fs::write(
            &podman,
            r#"{"auths":{"ghcr.io":{"username":"from-podman","password":"a"}}}"#,
        )
        .unwrap();
        std::fs::write(
            &docker,
            r#"{"auths":{"ghcr.io":{"username":"from-docker","password":"b"},
                "quay.io":{"username":"quay-user","password":"c"}}}"#,
        )
        .unwrap();
        let files = [dir.path().join("missing.json"), podman, docker];
        let ghcr = credentials_from_files(&files, "ghcr.io").unwrap();
        assert_eq!(ghcr.username, "from-podman");
        let quay = credentials_from_files(&files, "quay.io").unwrap();
        assert_eq!(quay.username, "quay-user");
        assert!(credentials_from_files(&files, "docker.io").is_none());
    }
}
