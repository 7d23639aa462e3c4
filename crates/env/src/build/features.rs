//! Devcontainer features: what devcontainer.json's `features` asks for, read into the order
//! they install in and the environment each `install.sh` runs with. A local feature
//! (`"./name"`, a directory beside devcontainer.json with `devcontainer-feature.json` and
//! `install.sh`) is read from the repository, as the untrusted input it is: inside the tree,
//! regular files only, bounded.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use crate::tree_files::{Links, read_regular};

/// A feature as devcontainer.json names it, with the options it sets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FeatureRequest {
    /// `./name` (local) or an OCI reference (`ghcr.io/devcontainers/features/node:1`).
    pub id: String,
    /// Option values as written (strings, booleans and numbers as text).
    pub options: BTreeMap<String, String>,
}

/// A feature ready to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    pub id: String,
    /// Its directory, relative to the repository root.
    pub dir: PathBuf,
    /// The environment `install.sh` runs with: each option (its value, or its default) under
    /// its name in capitals.
    pub env: Vec<(String, String)>,
    /// `containerEnv` of its metadata: for every later command.
    pub container_env: Vec<(String, String)>,
    /// Features it installs after when both are asked for (`installsAfter`, `dependsOn`).
    pub after: Vec<String>,
    /// The digest of what was fetched for it (an OCI artifact's manifest, a tarball's
    /// sha256), for its layer's key; `None` for a local folder (its files are the key).
    pub digest: Option<String>,
}

/// Why features cannot be installed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("feature {id}: {message}")]
pub struct FeatureError {
    pub id: String,
    pub message: String,
}

/// The largest devcontainer-feature.json read.
const METADATA_LIMIT: u64 = 1 << 20;

/// Reads each of `requests` (devcontainer.json's `features`, in its order) from the repository
/// at `root`, whose devcontainer.json is in `config_dir` (relative), and puts them in the order
/// they install: `order` first (devcontainer.json's `overrideFeatureInstallOrder`), then each
/// after the features it names in `installsAfter`/`dependsOn`, else as written.
///
/// A feature published as an OCI artifact is read from where its folder was unpacked:
/// `fetched` maps its id to that directory, relative to `root`.
pub fn resolve(
    root: &Path,
    config_dir: &Path,
    requests: &[FeatureRequest],
    order: &[String],
    fetched: &BTreeMap<String, PathBuf>,
) -> Result<Vec<Feature>, FeatureError> {
    let mut features = Vec::new();
    for request in requests {
        let dir = match fetched.get(&request.id) {
            Some(dir) => dir.clone(),
            None => local_dir(config_dir, request)?,
        };
        features.push(read_feature(root, dir, request)?);
    }
    Ok(install_order(features, order))
}

/// Where a task unpacks the OCI features it installs, in its working copy (the build's
/// sessions see it there): removed before the agent starts, and never part of a Dockerfile's
/// build context.
pub const FETCHED_DIR: &str = ".nightshift-features";

/// Whether a feature id names a folder in the repository (`./name`) rather than an OCI
/// artifact or a tarball.
pub fn is_local(id: &str) -> bool {
    id.starts_with("./")
}

/// Whether a feature id is a tarball's URL
/// (`https://host/path/devcontainer-feature-NAME.tgz`), fetched rather than pulled.
pub fn is_tarball(id: &str) -> bool {
    id.starts_with("https://") || id.starts_with("http://")
}

fn local_dir(config_dir: &Path, request: &FeatureRequest) -> Result<PathBuf, FeatureError> {
    let fail = |message: String| FeatureError {
        id: request.id.clone(),
        message,
    };
    let Some(local) = request.id.strip_prefix("./") else {
        return Err(fail(
            "is neither a local feature (`./name`, a directory beside devcontainer.json) nor a fetched OCI feature".into(),
        ));
    };
    let relative = Path::new(local);
    if relative
        .components()
        .any(|part| !matches!(part, Component::Normal(_)))
        || local.is_empty()
    {
        return Err(fail(
            "a local feature must be a directory inside the devcontainer.json's folder".into(),
        ));
    }
    Ok(config_dir.join(relative))
}

fn read_feature(
    root: &Path,
    dir: PathBuf,
    request: &FeatureRequest,
) -> Result<Feature, FeatureError> {
    let fail = |message: String| FeatureError {
        id: request.id.clone(),
        message,
    };
    let metadata = read_regular(
        root,
        &dir.join("devcontainer-feature.json"),
        Links::Refuse,
        METADATA_LIMIT,
    )
    .map_err(|err| fail(err.to_string()))?;
    read_regular(root, &dir.join("install.sh"), Links::Refuse, 16 << 20)
        .map_err(|err| fail(err.to_string()))?;
    let metadata: Value = jsonc_parser::parse_to_serde_value(
        &String::from_utf8_lossy(&metadata),
        &Default::default(),
    )
    .map_err(|err| {
        fail(format!(
            "devcontainer-feature.json is not valid JSON ({err})"
        ))
    })?;
    let mut env = Vec::new();
    if let Some(Value::Object(options)) = metadata.get("options") {
        for (name, spec) in options {
            let value = match request.options.get(name) {
                Some(value) => Some(value.clone()),
                None => spec.get("default").map(text),
            };
            if let Some(value) = value {
                env.push((option_variable(name), value));
            }
        }
    }
    for (name, value) in &request.options {
        let known = metadata
            .get("options")
            .and_then(|options| options.get(name))
            .is_some();
        if !known {
            return Err(fail(format!(
                "has no option `{name}` (devcontainer-feature.json lists its options)"
            )));
        }
        let _ = value;
    }
    let container_env = match metadata.get("containerEnv") {
        Some(Value::Object(vars)) => vars.iter().map(|(k, v)| (k.clone(), text(v))).collect(),
        _ => Vec::new(),
    };
    let mut after = Vec::new();
    if let Some(Value::Array(ids)) = metadata.get("installsAfter") {
        after.extend(ids.iter().filter_map(Value::as_str).map(str::to_string));
    }
    if let Some(Value::Object(ids)) = metadata.get("dependsOn") {
        after.extend(ids.keys().cloned());
    }
    Ok(Feature {
        id: request.id.clone(),
        dir,
        env,
        container_env,
        after,
        digest: None,
    })
}

/// An option's environment variable: its name in capitals, with what is not a letter, digit or
/// `_` as `_` (and a leading digit prefixed by `_`), as the features specification says.
pub fn option_variable(name: &str) -> String {
    let mut variable: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if variable.starts_with(|c: char| c.is_ascii_digit()) {
        variable.insert(0, '_');
    }
    variable
}

/// A JSON value as an environment variable's text.
fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// `order` first, then each feature once the features it installs after (among those asked
/// for) are in, else as written.
fn install_order(mut features: Vec<Feature>, order: &[String]) -> Vec<Feature> {
    let mut ordered = Vec::new();
    for id in order {
        if let Some(index) = features.iter().position(|f| &f.id == id) {
            ordered.push(features.remove(index));
        }
    }
    while !features.is_empty() {
        let ready = features
            .iter()
            .position(|feature| {
                feature
                    .after
                    .iter()
                    .all(|id| !features.iter().any(|other| same_feature(&other.id, id)))
            })
            // A cycle: as written.
            .unwrap_or(0);
        ordered.push(features.remove(ready));
    }
    ordered
}

/// Whether two feature ids name the same feature, whatever their version tags.
fn same_feature(a: &str, b: &str) -> bool {
    let base = |id: &str| -> String {
        let id = id.rsplit_once('@').map_or(id, |(name, _)| name);
        match id.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => name.to_string(),
            _ => id.to_string(),
        }
    };
    base(a) == base(b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn feature(root: &Path, name: &str, metadata: &str) {
        let dir = root.join(".devcontainer").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("devcontainer-feature.json"), metadata).unwrap();
        std::fs::write(dir.join("install.sh"), "#!/bin/sh\n").unwrap();
    }

    fn request(id: &str, options: &[(&str, &str)]) -> FeatureRequest {
        FeatureRequest {
            id: id.into(),
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn local_features_get_their_options_and_install_after_what_they_name() {
        let repo = tempfile::tempdir().unwrap();
        feature(
            repo.path(),
            "tool",
            r#"{"id":"tool","options":{"version":{"type":"string","default":"1.0"},"with-docs":{"type":"boolean","default":false}},"containerEnv":{"TOOL_HOME":"/opt/tool"},"installsAfter":["./base"]}"#,
        );
        feature(repo.path(), "base", r#"{"id":"base"}"#);
        let features = resolve(
            repo.path(),
            Path::new(".devcontainer"),
            &[
                request("./tool", &[("version", "2.1")]),
                request("./base", &[]),
            ],
            &[],
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(features[0].id, "./base");
        assert_eq!(features[1].id, "./tool");
        assert_eq!(
            features[1].env,
            vec![
                ("VERSION".to_string(), "2.1".to_string()),
                ("WITH_DOCS".to_string(), "false".to_string())
            ]
        );
        assert_eq!(
            features[1].container_env,
            vec![("TOOL_HOME".to_string(), "/opt/tool".to_string())]
        );
        let ordered = resolve(
            repo.path(),
            Path::new(".devcontainer"),
            &[request("./tool", &[]), request("./base", &[])],
            &["./tool".to_string()],
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(ordered[0].id, "./tool");
        // An OCI feature is read from where it was fetched to.
        let oci = "registry.example/features/base:1";
        let fetched = BTreeMap::from([(oci.to_string(), PathBuf::from(".devcontainer/base"))]);
        let features = resolve(
            repo.path(),
            Path::new(".devcontainer"),
            &[request("./tool", &[]), request(oci, &[])],
            &[],
            &fetched,
        )
        .unwrap();
        assert_eq!(features[1].dir, Path::new(".devcontainer/base"));
    }

    #[test]
    fn what_cannot_be_installed_says_why() {
        let repo = tempfile::tempdir().unwrap();
        feature(repo.path(), "tool", r#"{"id":"tool","options":{}}"#);
        let dir = Path::new(".devcontainer");
        let err = |requests: &[FeatureRequest]| {
            resolve(repo.path(), dir, requests, &[], &BTreeMap::new())
                .unwrap_err()
                .to_string()
        };
        assert!(
            err(&[request("ghcr.io/devcontainers/features/node:1", &[])])
                .contains("nor a fetched OCI feature")
        );
        assert!(err(&[request("./../../etc", &[])]).contains("inside"));
        assert!(err(&[request("./missing", &[])]).contains("does not exist"));
        assert!(err(&[request("./tool", &[("nope", "1")])]).contains("no option `nope`"));
        std::os::unix::fs::symlink(
            "/etc/passwd",
            repo.path().join(".devcontainer/tool/install.sh.tmp"),
        )
        .unwrap();
        std::fs::remove_file(repo.path().join(".devcontainer/tool/install.sh")).unwrap();
        std::os::unix::fs::symlink(
            "/etc/passwd",
            repo.path().join(".devcontainer/tool/install.sh"),
        )
        .unwrap();
        assert!(err(&[request("./tool", &[])]).contains("symbolic link"));
        assert_eq!(option_variable("with-docs"), "WITH_DOCS");
        assert_eq!(option_variable("2fa"), "_2FA");
    }
}
