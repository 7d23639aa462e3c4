//! Remote repositories: a task's repository given by URL (`https://`, `ssh://`, `git@host:path`,
//! `file://`) is worked on through a bare mirror of it under the nightshift home, one per
//! remote, shared by every task on it. Each task fetches the mirror up to date first, so the
//! second task on a repository fetches only what is new; the task's branch is handed back into
//! the mirror and pushed to the remote from there. Host git alone talks to the remote: nothing
//! in the sandbox does.
//!
//! Concurrent tasks share a mirror through a file lock held while git writes to it (clone,
//! fetch, hand-back and push), so their ref updates never race.

use std::ffi::OsString;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::git::{GitError, git_remote};
use crate::grants::repo_identity;
use crate::repo::{EnvError, SourceRepo};

/// Whether `repo` names a remote repository rather than a path: a URL with a scheme git
/// speaks, or git's scp-like `user@host:path`.
pub fn is_remote(repo: &str) -> bool {
    let repo = repo.trim();
    if let Some((scheme, rest)) = repo.split_once("://") {
        return matches!(scheme, "https" | "http" | "ssh" | "file") && !rest.is_empty();
    }
    // `user@host:path`: a colon before any slash, after a non-empty host, as git reads it.
    match repo.split_once(':') {
        Some((host, path)) => {
            !host.is_empty() && !host.contains('/') && host.contains('@') && !path.is_empty()
        }
        None => false,
    }
}

/// What host git reaches a remote repository with, from a stored secret. Never on a command
/// line (which other users of the machine can read) and never in the sandbox: an HTTPS token
/// goes in a `GIT_CONFIG_*` variable of git's own environment, an SSH key in a file only the
/// user nightshift runs as can read, for the length of one git command.
#[derive(Clone)]
pub enum RemoteCredential {
    /// For `https://` (and `http://`): `TOKEN` (sent as `x-access-token:TOKEN`, as GitHub and
    /// Gitea take it) or `USER:TOKEN`, in an HTTP Basic `Authorization` header.
    Token(String),
    /// For `ssh://` and `user@host:path`: a private key.
    SshKey(String),
}

impl std::fmt::Debug for RemoteCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemoteCredential::Token(_) => f.write_str("Token(..)"),
            RemoteCredential::SshKey(_) => f.write_str("SshKey(..)"),
        }
    }
}

impl RemoteCredential {
    /// The credential a secret's `value` is for `url`: a key for SSH, a token otherwise.
    pub fn for_url(url: &str, value: String) -> RemoteCredential {
        let url = url.trim();
        let ssh = url.starts_with("ssh://") || (!url.contains("://") && url.contains('@'));
        match ssh {
            true => RemoteCredential::SshKey(value),
            false => RemoteCredential::Token(value.trim().to_string()),
        }
    }
}

/// Variables of one git command's environment.
type GitEnv = Vec<(OsString, OsString)>;

/// The environment of one git command that reaches `url`: SSH never prompts, and the
/// credential when there is one. The returned file (an SSH key) must live until git is done.
fn remote_env(
    url: &str,
    credential: Option<&RemoteCredential>,
) -> Result<(GitEnv, Option<tempfile::TempPath>), std::io::Error> {
    use base64::Engine;
    let mut env: GitEnv = Vec::new();
    let mut ssh = "ssh -o BatchMode=yes".to_string();
    let mut key_file = None;
    match credential {
        Some(RemoteCredential::Token(token)) => {
            let pair = match token.contains(':') {
                true => token.clone(),
                false => format!("x-access-token:{token}"),
            };
            let basic = base64::engine::general_purpose::STANDARD.encode(pair);
            // Scoped to the remote's URL, so that a redirect elsewhere does not carry it.
            env.push(("GIT_CONFIG_COUNT".into(), "1".into()));
            env.push((
                "GIT_CONFIG_KEY_0".into(),
                format!("http.{}.extraHeader", url.trim()).into(),
            ));
            env.push((
                "GIT_CONFIG_VALUE_0".into(),
                format!("Authorization: Basic {basic}").into(),
            ));
        }
        Some(RemoteCredential::SshKey(key)) => {
            use std::io::Write;
            let mut file = tempfile::Builder::new()
                .prefix("nightshift-key")
                .tempfile()?;
            let mut key = key.clone();
            if !key.ends_with('\n') {
                key.push('\n');
            }
            file.write_all(key.as_bytes())?;
            let path = file.into_temp_path();
            ssh = format!(
                "ssh -o BatchMode=yes -o IdentitiesOnly=yes -i '{}'",
                path.display().to_string().replace('\'', "'\\''")
            );
            key_file = Some(path);
        }
        None => {}
    }
    env.push(("GIT_SSH_COMMAND".into(), ssh.into()));
    Ok((env, key_file))
}

/// The mirrors of remote repositories, in one directory.
#[derive(Debug, Clone)]
pub struct Mirrors {
    dir: PathBuf,
}

/// A mirror held for writing; released when dropped.
#[derive(Debug)]
pub struct MirrorLock {
    _file: std::fs::File,
}

impl Mirrors {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Mirrors { dir: dir.into() }
    }

    /// Where the mirror of `url` lives: one directory per remote, named by a hash of the URL as
    /// [`repo_identity`] normalizes it (so `https://host/a.git` and `https://host/a/` share it).
    pub fn path_for(&self, url: &str) -> PathBuf {
        let digest = Sha256::digest(repo_identity(url).as_bytes());
        self.dir.join(format!("{}.git", &hex::encode(digest)[..24]))
    }

    /// Takes the mirror of `url` for writing, waiting for another task that has it.
    pub async fn lock(&self, url: &str) -> Result<MirrorLock, EnvError> {
        let io = |what: String| move |source| EnvError::Io { what, source };
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(io(format!("creating {}", self.dir.display())))?;
        let path = self.path_for(url).with_extension("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        let file = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
            .await
            .map_err(|err| EnvError::Io {
                what: format!("locking {}", path.display()),
                source: std::io::Error::other(err.to_string()),
            })?
            .map_err(io("locking the mirror".to_string()))?;
        Ok(MirrorLock { _file: file })
    }

    /// Brings the mirror of `url` up to date with the remote's branches (cloning it the first
    /// time) and opens it. The remote's default branch is the mirror's `HEAD`.
    pub async fn sync(
        &self,
        url: &str,
        credential: Option<&RemoteCredential>,
    ) -> Result<SourceRepo, EnvError> {
        let _lock = self.lock(url).await?;
        let (env, _key) = remote_env(url, credential).map_err(|source| EnvError::Io {
            what: "writing the SSH key for git".into(),
            source,
        })?;
        let path = self.path_for(url);
        let unreachable = |err: GitError| EnvError::Remote {
            url: url.to_string(),
            detail: short_reason(&err),
        };
        if !path.join("HEAD").is_file() {
            let partial = path.with_extension("cloning");
            let _ = tokio::fs::remove_dir_all(&partial).await;
            git_remote(
                &self.dir,
                &env,
                [
                    "clone".as_ref(),
                    "--bare".as_ref(),
                    "--quiet".as_ref(),
                    "--no-tags".as_ref(),
                    "--".as_ref(),
                    url.as_ref(),
                    partial.as_os_str(),
                ],
            )
            .await
            .map_err(unreachable)?;
            tokio::fs::rename(&partial, &path)
                .await
                .map_err(|source| EnvError::Io {
                    what: format!("moving the new mirror of {url} into place"),
                    source,
                })?;
        } else {
            git_remote(
                &path,
                &env,
                [
                    "fetch",
                    "--quiet",
                    "--no-tags",
                    "--no-write-fetch-head",
                    "--",
                    url,
                    "+refs/heads/*:refs/heads/*",
                ],
            )
            .await
            .map_err(unreachable)?;
        }
        Ok(SourceRepo::bare(path))
    }

    /// Pushes `branch` of the mirror of `url` to the remote's branch of the same name, never
    /// forced: a remote branch that moved elsewhere, a protected branch or a missing permission
    /// is an error quoting the remote, and the branch stays in the mirror. Take the mirror's
    /// lock around the hand-back and this.
    pub async fn push(
        &self,
        url: &str,
        branch: &str,
        credential: Option<&RemoteCredential>,
    ) -> Result<(), GitError> {
        let path = self.path_for(url);
        let (env, _key) = remote_env(url, credential).map_err(|err| GitError::Read {
            args: "push (writing the SSH key)".into(),
            source: err,
        })?;
        let refspec = format!("refs/heads/{branch}:refs/heads/{branch}");
        git_remote(
            &path,
            &env,
            ["push", "--quiet", "--no-verify", "--", url, &refspec],
        )
        .await
        .map(|_| ())
    }
}

fn short_reason(err: &GitError) -> String {
    match err {
        GitError::Failed { stderr, .. } => stderr
            .lines()
            .find(|line| line.starts_with("fatal:") || line.starts_with("error:"))
            .unwrap_or(stderr)
            .to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes_are_urls_and_scp_like_names_and_paths_are_not() {
        for remote in [
            "https://github.com/acme/app.git",
            "http://git.local/app",
            "ssh://git@host:22/acme/app.git",
            "file:///srv/git/app.git",
            "git@github.com:acme/app.git",
        ] {
            assert!(is_remote(remote), "{remote}");
        }
        for path in [
            "/srv/app",
            "./app",
            "app",
            "acme/app",
            "C:/x",
            "ftp://host/x",
            "https://",
            "host:path",
        ] {
            assert!(!is_remote(path), "{path}");
        }
    }

    #[test]
    fn one_mirror_per_remote_whatever_the_spelling() {
        let mirrors = Mirrors::new("/m");
        assert_eq!(
            mirrors.path_for("https://GitHub.com/acme/app.git"),
            mirrors.path_for("https://github.com/acme/app/")
        );
        assert_ne!(
            mirrors.path_for("https://github.com/acme/app"),
            mirrors.path_for("https://github.com/acme/lib")
        );
    }
}
