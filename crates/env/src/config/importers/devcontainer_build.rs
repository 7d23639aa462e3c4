//! devcontainer.json's `build` (`dockerfile`, `context`, `args`; or the older top-level
//! `dockerFile` and `context`) and `features` (with `overrideFeatureInstallOrder`): what
//! nightshift builds over the image itself. Paths are relative to devcontainer.json's folder
//! and must stay inside the repository.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

use super::field_warning;
use crate::build::features::FeatureRequest;
use crate::config::error::{ConfigWarning, WarningKind};
use crate::config::schema::ImageBuild;
use crate::config::validate;

/// The build devcontainer.json asks for, if any; what cannot be used is a warning.
pub(super) fn read(
    file: &Path,
    fields: &Map<String, Value>,
    warnings: &mut Vec<ConfigWarning>,
) -> Option<ImageBuild> {
    let config_dir = file.parent().unwrap_or(Path::new("")).to_path_buf();
    let mut suspicious = Vec::new();
    let mut warn = |field: &str, message: String| {
        suspicious.push(field_warning(file, WarningKind::Suspicious, field, message));
    };
    let inside = |field: &str, raw: &str, warn: &mut dyn FnMut(&str, String)| {
        let joined = config_dir.join(raw);
        match validate::relative_path(&joined.to_string_lossy(), true) {
            Ok(path) => Some(path),
            Err(reason) => {
                warn(
                    field,
                    format!("`{field}` = {raw:?} {reason}; it is skipped"),
                );
                None
            }
        }
    };
    let build = fields.get("build").and_then(Value::as_object);
    let string = |object: Option<&Map<String, Value>>, key: &str| {
        object
            .and_then(|object| object.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let dockerfile_raw = string(build, "dockerfile").or_else(|| string(Some(fields), "dockerFile"));
    let context_raw = string(build, "context").or_else(|| string(Some(fields), "context"));
    let mut result = ImageBuild {
        config_dir: config_dir.clone(),
        context: config_dir.clone(),
        ..ImageBuild::default()
    };
    if let Some(raw) = &dockerfile_raw {
        result.dockerfile = inside("build.dockerfile", raw, &mut warn);
        result.dockerfile.as_ref()?;
        if let Some(raw) = &context_raw {
            result.context = inside("build.context", raw, &mut warn)?;
        }
    }
    if let Some(Value::Object(args)) = build.and_then(|build| build.get("args")) {
        for (name, value) in args {
            match value {
                Value::String(text) => {
                    result.args.insert(name.clone(), text.clone());
                }
                other => warn(
                    "build.args",
                    format!("`build.args.{name}` is {other}, not a string; it is skipped"),
                ),
            }
        }
    }
    for field in ["target", "cacheFrom", "options"] {
        if build.is_some_and(|build| build.contains_key(field)) {
            warn(
                &format!("build.{field}"),
                format!(
                    "`build.{field}` is not used: nightshift builds the Dockerfile itself, one stage"
                ),
            );
        }
    }
    if let Some(features) = fields.get("features") {
        match features {
            Value::Object(features) => {
                for (id, value) in features {
                    let usable = crate::build::features::is_local(id)
                        || crate::build::features::is_tarball(id)
                        || nightshift_image::Reference::parse(id).is_ok_and(|reference| {
                            matches!(reference, nightshift_image::Reference::Registry { .. })
                        });
                    if !usable {
                        warnings.push(field_warning(
                            file,
                            WarningKind::Unsupported,
                            "features",
                            format!(
                                "feature `{id}` is not installed: features are local folders (`./folder` beside devcontainer.json), OCI references (`ghcr.io/devcontainers/features/node:1`) or tarball URLs (`https://host/devcontainer-feature-NAME.tgz`)"
                            ),
                        ));
                        continue;
                    }
                    let options = match value {
                        Value::Object(options) => {
                            options.iter().map(|(k, v)| (k.clone(), text(v))).collect()
                        }
                        // A string is the `version` option; `true` takes the defaults.
                        Value::String(version) => {
                            BTreeMap::from([("version".to_string(), version.clone())])
                        }
                        _ => BTreeMap::new(),
                    };
                    result.features.push(FeatureRequest {
                        id: id.clone(),
                        options,
                    });
                }
            }
            _ => warn(
                "features",
                "`features` is not an object of feature ids; it is skipped".into(),
            ),
        }
    }
    if let Some(Value::Array(order)) = fields.get("overrideFeatureInstallOrder") {
        result.feature_order = order
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
    }
    warnings.extend(suspicious);
    (result.dockerfile.is_some() || !result.features.is_empty()).then_some(result)
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}
