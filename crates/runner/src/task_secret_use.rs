//! What a task may have of the stored secrets, and where they must never end up: the
//! secrets its configuration names, given only when granted to its repository (as setup's
//! variables or the egress proxy's credentials), and the scan that keeps a setup layer holding
//! one out of the cache.

use std::path::{Path, PathBuf};

use nightshift_env::config::{Loaded, SecretScope};
use nightshift_env::secrets::Redactor;
use nightshift_sandbox::Credential;

use nightshift_agent::SinkError;
use nightshift_protocol::Event;

use crate::Runner;
use crate::sink::TaskLog;

impl Runner {
    /// Every stored secret, unsealed with this worker's key; what cannot be unsealed is
    /// reported and left out.
    pub(crate) async fn load_secrets(&self, log: &TaskLog) -> Result<Vec<StoredSecret>, SinkError> {
        let sealed = match self.store.secrets().await {
            Ok(sealed) => sealed,
            Err(err) => {
                log.append(Event::Warning {
                    message: format!("could not read the stored secrets: {err}"),
                })
                .await?;
                return Ok(Vec::new());
            }
        };
        if sealed.is_empty() {
            return Ok(Vec::new());
        }
        let Some(key) = &self.secret_key else {
            log.append(Event::Warning {
                message: "secrets are stored, but this worker has no secret key (NIGHTSHIFT_SECRET_KEY or the key file); tasks here get none".into(),
            })
            .await?;
            return Ok(Vec::new());
        };
        let mut secrets = Vec::new();
        for secret in sealed {
            match key.unseal(&secret.name, &secret.sealed) {
                Ok(value) => secrets.push(StoredSecret {
                    name: secret.name,
                    value,
                    repos: secret.repos,
                }),
                Err(err) => {
                    log.append(Event::Warning {
                        message: err.to_string(),
                    })
                    .await?
                }
            }
        }
        Ok(secrets)
    }
}

/// What the configuration's secrets become in a task's sandboxes.
#[derive(Debug, Default)]
pub(crate) struct TaskSecrets {
    /// Setup's environment variables.
    pub setup_env: Vec<(String, String)>,
    /// Headers the egress proxy adds for the sandbox.
    pub credentials: Vec<Credential>,
}

/// A stored secret, unsealed, with the repositories it is granted to.
#[derive(Debug, Clone)]
pub(crate) struct StoredSecret {
    pub name: String,
    pub value: String,
    pub repos: Vec<String>,
}

/// Why a task cannot have the secrets its configuration names.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SecretsRefused {
    /// Not stored at all.
    pub missing: Vec<String>,
    /// Stored, but not granted to the task's repository.
    pub ungranted: Vec<String>,
}

impl SecretsRefused {
    /// The task's error and the hint that says how to fix it.
    pub(crate) fn explain(&self, repo: &str) -> (String, String) {
        let mut problems = Vec::new();
        if !self.missing.is_empty() {
            problems.push(format!(
                "names the secret(s) {}, which are not set",
                self.missing.join(", ")
            ));
        }
        if !self.ungranted.is_empty() {
            problems.push(format!(
                "names the secret(s) {}, which are not granted to this repository ({repo})",
                self.ungranted.join(", ")
            ));
        }
        let message = format!("the configuration {}", problems.join(", and "));
        let hint = match (self.missing.first(), self.ungranted.first()) {
            (Some(name), _) => format!(
                "set each with `nightshift secret set NAME --repo {repo}` (the value is read from stdin), e.g. `nightshift secret set {name} --repo {repo}`"
            ),
            (None, Some(name)) => format!(
                "a secret reaches only the repositories it is granted to: `nightshift secret grant {name} --repo {repo}` (or `--all-repos`), if this repository's tasks should have it"
            ),
            (None, None) => String::new(),
        };
        (message, hint)
    }
}

/// The secrets the configuration names, as setup's environment variables and the egress
/// proxy's credentials, or why some cannot be given: not stored, or not granted to `repo`
/// (the task's repository). The repository's configuration only asks; the grants decide.
pub(crate) fn task_secrets(
    loaded: &Loaded,
    secrets: &[StoredSecret],
    repo: &str,
) -> Result<TaskSecrets, SecretsRefused> {
    let mut task = TaskSecrets::default();
    let mut refused = SecretsRefused::default();
    for spec in &loaded.config.secrets {
        let Some(stored) = secrets.iter().find(|stored| stored.name == spec.name) else {
            refused.missing.push(spec.name.clone());
            continue;
        };
        if !nightshift_env::grants::granted(&stored.repos, repo) {
            refused.ungranted.push(spec.name.clone());
            continue;
        }
        let value = &stored.value;
        match &spec.scope {
            SecretScope::Setup => task.setup_env.push((spec.name.clone(), value.clone())),
            SecretScope::Proxy {
                hosts,
                header,
                format,
            } => task.credentials.push(Credential {
                name: spec.name.clone(),
                hosts: hosts.clone(),
                header: header.clone(),
                value: format.replace("{value}", value),
            }),
        }
    }
    if refused == SecretsRefused::default() {
        Ok(task)
    } else {
        Err(refused)
    }
}

/// Why the proxy secrets would never be sent, when the backend has no egress proxy (hosts no
/// allowlist reaches are a warning of the configuration itself).
pub(crate) fn unsendable_credentials(
    credentials: &[Credential],
    backend: Option<&str>,
) -> Vec<String> {
    let Some(backend) = backend else {
        return Vec::new();
    };
    credentials
        .iter()
        .map(|credential| {
            format!(
                "secret `{}` has scope `proxy`, but the {backend} backend has no egress proxy: it is never sent",
                credential.name
            )
        })
        .collect()
}

/// The first file under `dir` (relative path) holding a secret's value in any form, with the
/// secret's name. Every regular file is read through once, whatever its size; names and
/// symlink targets are checked too (links are not followed). What cannot be read is reported
/// the same way, in place of a name: it may hold a secret, and a layer is kept on disk.
pub(crate) async fn secret_in_tree(log: &TaskLog, dir: &Path) -> Option<(String, PathBuf)> {
    if !log.has_secrets() {
        return None;
    }
    let redactor = log.current_redactor();
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || scan_tree(&redactor, &dir))
        .await
        .unwrap_or_else(|err| {
            Some((
                format!("(unknown: the scan for secrets stopped: {err})"),
                PathBuf::new(),
            ))
        })
}

/// Files up to this size are read through whatever they hold; above it, a file must be
/// mostly data (see [`scan_tree`]).
const SPARSE_SCAN_FLOOR: u64 = 64 << 20;

fn scan_tree(redactor: &Redactor, dir: &Path) -> Option<(String, PathBuf)> {
    let relative = |path: &Path| {
        path.strip_prefix(dir)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| path.to_path_buf())
    };
    let unchecked = |path: &Path, err: std::io::Error| {
        Some((
            format!("(unknown: it could not be read to check it: {err})"),
            relative(path),
        ))
    };
    let found_in_bytes = |bytes: &[u8]| redactor.found_in_reader(bytes).ok().flatten();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let entries = match std::fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(err) => return unchecked(&current, err),
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(err) => return unchecked(&current, err),
            };
            let path = entry.path();
            if let Some(name) = found_in_bytes(entry.file_name().as_encoded_bytes()) {
                return Some((name, relative(&path)));
            }
            // The entry itself, not what a symlink points at.
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(err) => return unchecked(&path, err),
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                // A large file that is mostly holes (a sparse file setup made cost nothing to
                // write) would take the scan ages to read through: it is not checked, and so
                // discards the layer like any unchecked file.
                use std::os::unix::fs::MetadataExt;
                let allocated = meta.blocks().saturating_mul(512);
                if meta.len() > SPARSE_SCAN_FLOOR && allocated < meta.len() / 2 {
                    let err = std::io::Error::other(format!(
                        "a sparse file of {} bytes with {allocated} allocated",
                        meta.len()
                    ));
                    return unchecked(&path, err);
                }
                let found = std::fs::File::open(&path).and_then(|file| {
                    redactor.found_in_reader(std::io::BufReader::with_capacity(1 << 16, file))
                });
                match found {
                    Ok(Some(name)) => return Some((name, relative(&path))),
                    Ok(None) => {}
                    Err(err) => return unchecked(&path, err),
                }
            } else if meta.is_symlink() {
                match std::fs::read_link(&path) {
                    Ok(target) => {
                        if let Some(name) = found_in_bytes(target.as_os_str().as_encoded_bytes()) {
                            return Some((name, relative(&path)));
                        }
                    }
                    Err(err) => return unchecked(&path, err),
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn a_layer_scan_finds_encoded_values_names_and_link_targets_and_fails_closed() {
        const TOKEN: &str = "tok-5ecr3t-0123456789";
        let redactor = Redactor::new(&[("TOKEN".into(), TOKEN.into())]);
        let layer = |setup: &dyn Fn(&Path)| {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("home/.cache")).unwrap();
            std::fs::write(dir.path().join("home/.cache/clean"), "nothing\n").unwrap();
            setup(dir.path());
            scan_tree(&redactor, dir.path())
        };
        assert_eq!(layer(&|_| {}), None);
        let found = layer(&|dir| {
            let hex = hex_of(&format!("x{TOKEN}"));
            std::fs::write(dir.join("home/.cache/hex"), hex).unwrap();
        });
        assert_eq!(found, Some(("TOKEN".into(), "home/.cache/hex".into())));
        let found = layer(&|dir| {
            let reversed: String = TOKEN.chars().rev().collect();
            std::fs::write(dir.join(reversed), "").unwrap();
        });
        assert_eq!(found.unwrap().0, "TOKEN");
        let found = layer(&|dir| {
            std::os::unix::fs::symlink(format!("/tmp/{TOKEN}"), dir.join("link")).unwrap();
        });
        assert_eq!(found, Some(("TOKEN".into(), "link".into())));
        let (name, _) = scan_tree(&redactor, Path::new("/nonexistent/layer")).unwrap();
        assert!(name.starts_with("(unknown: it could not be read"), "{name}");
        // A terabyte of holes is not read through: it is unchecked, found at once.
        let started = Instant::now();
        let (name, file) = layer(&|dir| {
            let file = std::fs::File::create(dir.join("home/sparse")).unwrap();
            file.set_len(1 << 40).unwrap();
        })
        .unwrap();
        assert!(name.contains("a sparse file"), "{name}");
        assert_eq!(file, PathBuf::from("home/sparse"));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    fn hex_of(text: &str) -> String {
        text.bytes().map(|b| format!("{b:02x}")).collect()
    }
}
