//! `devcontainer.json`: its lifecycle commands become setup and maintenance, its environment
//! variables become `env`, and its `image` the image the sandbox starts from. What nightshift
//! does not build yet (a Dockerfile, features) is named in a warning rather than silently
//! dropped.

use std::path::Path;

use serde_json::{Map, Value};

use super::{Imported, Sourced, exec_line, field_warning, has_foreign_variable, malformed};
use crate::config::error::{ConfigWarning, WarningKind};

/// Lifecycle commands that make up setup, in the order a devcontainer runs them.
const SETUP_COMMANDS: [&str; 3] = [
    "onCreateCommand",
    "updateContentCommand",
    "postCreateCommand",
];
/// The lifecycle command run at every start.
const START_COMMAND: &str = "postStartCommand";

/// Settings with no equivalent here, and what that means for the person.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "dockerComposeFile",
        "Docker Compose services are not started",
    ),
    (
        "initializeCommand",
        "it runs on the host machine, which nightshift never does",
    ),
    (
        "postAttachCommand",
        "it runs when an editor attaches, which never happens here",
    ),
    ("mounts", "extra mounts are not made"),
    ("runArgs", "container run arguments do not apply"),
];

pub(super) fn read(file: &Path, text: &str) -> Result<Imported, ConfigWarning> {
    let document: Value =
        jsonc_parser::parse_to_serde_value(text, &Default::default()).map_err(|err| {
            malformed(
                file,
                Some((err.line_display(), err.column_display())),
                format!(
                    "is not valid JSON with comments ({}); it is skipped",
                    err.kind()
                ),
            )
        })?;
    let Value::Object(fields) = document else {
        return Err(malformed(
            file,
            None,
            "is not a JSON object; it is skipped".into(),
        ));
    };
    let mut imported = Imported::default();

    let mut setup_parts = Vec::new();
    let mut setup_fields = Vec::new();
    for field in SETUP_COMMANDS {
        if let Some(value) = fields.get(field) {
            let commands = lifecycle_commands(file, field, value, &mut imported.warnings);
            if !commands.is_empty() {
                setup_parts.extend(commands);
                setup_fields.push(field);
            }
        }
    }
    if !setup_parts.is_empty() {
        imported.setup = Some(Sourced {
            value: setup_parts.join("\n"),
            field: setup_fields.join(" + "),
        });
    }
    if let Some(value) = fields.get(START_COMMAND) {
        let commands = lifecycle_commands(file, START_COMMAND, value, &mut imported.warnings);
        if !commands.is_empty() {
            imported.maintenance = Some(Sourced {
                value: commands.join("\n"),
                field: START_COMMAND.into(),
            });
        }
    }

    match fields.get("image") {
        Some(Value::String(image)) if !image.trim().is_empty() => {
            imported.image = Some(Sourced {
                value: image.clone(),
                field: "image".into(),
            });
        }
        Some(_) => imported.warnings.push(field_warning(
            file,
            WarningKind::Suspicious,
            "image",
            "`image` is not an image reference (a non-empty string); it is skipped".into(),
        )),
        None => {}
    }

    // The agent is what devcontainers call the remote user; `containerUser` is its default.
    for field in ["remoteUser", "containerUser"] {
        match fields.get(field) {
            Some(Value::String(user)) if !user.trim().is_empty() => {
                imported.user = Some(Sourced {
                    value: user.trim().to_string(),
                    field: field.into(),
                });
                break;
            }
            Some(_) => imported.warnings.push(field_warning(
                file,
                WarningKind::Suspicious,
                field,
                format!("`{field}` is not a user name or id (a non-empty string); it is skipped"),
            )),
            None => {}
        }
    }

    for env_field in ["containerEnv", "remoteEnv"] {
        read_env(file, &fields, env_field, &mut imported);
    }

    for (field, consequence) in UNSUPPORTED {
        if fields.contains_key(*field) {
            imported.warnings.push(field_warning(
                file,
                WarningKind::Unsupported,
                field,
                format!("`{field}` is not used: {consequence}"),
            ));
        }
    }
    imported.build = super::devcontainer_build::read(file, &fields, &mut imported.warnings);
    Ok(imported)
}

/// The shell commands of one lifecycle field: a string is a shell command, an array is one
/// command in exec form, an object is named commands (run one after another here; a
/// devcontainer runs them in parallel).
fn lifecycle_commands(
    file: &Path,
    field: &str,
    value: &Value,
    warnings: &mut Vec<ConfigWarning>,
) -> Vec<String> {
    match value {
        Value::Null => Vec::new(),
        Value::Object(named) => named
            .iter()
            .filter_map(|(name, command)| {
                let key = format!("{field}.{name}");
                single_command(file, &key, command, warnings)
                    .map(|line| format!("# {name}\n{line}"))
            })
            .collect(),
        _ => single_command(file, field, value, warnings)
            .into_iter()
            .collect(),
    }
}

fn single_command(
    file: &Path,
    field: &str,
    value: &Value,
    warnings: &mut Vec<ConfigWarning>,
) -> Option<String> {
    match value {
        Value::String(command) if !command.trim().is_empty() => Some(command.clone()),
        Value::String(_) => None,
        Value::Array(items) => {
            let args: Option<Vec<String>> = items
                .iter()
                .map(|item| item.as_str().map(str::to_string))
                .collect();
            match args {
                Some(args) if !args.is_empty() => Some(exec_line(&args)),
                _ => {
                    warnings.push(field_warning(
                        file,
                        WarningKind::Suspicious,
                        field,
                        format!("`{field}` is not a list of strings; it is skipped"),
                    ));
                    None
                }
            }
        }
        _ => {
            warnings.push(field_warning(
                file,
                WarningKind::Suspicious,
                field,
                format!(
                    "`{field}` is not a command (a string, a list or an object); it is skipped"
                ),
            ));
            None
        }
    }
}

/// Environment variables of one field; `remoteEnv` is read after `containerEnv`, so it wins,
/// and its `null` removes a variable, as in a devcontainer.
fn read_env(file: &Path, fields: &Map<String, Value>, env_field: &str, imported: &mut Imported) {
    let Some(value) = fields.get(env_field) else {
        return;
    };
    let Value::Object(vars) = value else {
        imported.warnings.push(field_warning(
            file,
            WarningKind::Suspicious,
            env_field,
            format!("`{env_field}` is not an object; it is skipped"),
        ));
        return;
    };
    for (name, value) in vars {
        let key = format!("{env_field}.{name}");
        let text = match value {
            Value::String(text) => text.clone(),
            Value::Null => {
                imported.env.retain(|(existing, _)| existing != name);
                continue;
            }
            Value::Number(number) => number.to_string(),
            Value::Bool(flag) => flag.to_string(),
            Value::Array(_) | Value::Object(_) => {
                imported.warnings.push(field_warning(
                    file,
                    WarningKind::Suspicious,
                    &key,
                    format!("`{key}` is not a string; it is skipped"),
                ));
                continue;
            }
        };
        if has_foreign_variable(&text) {
            imported.warnings.push(field_warning(
                file,
                WarningKind::Suspicious,
                &key,
                format!(
                    "`{key}` = {text:?} is passed as written: devcontainer variables such as ${{localEnv:...}} are not expanded"
                ),
            ));
        }
        imported.env.push((
            name.clone(),
            Sourced {
                value: text,
                field: key,
            },
        ));
    }
}
