//! `.cursor/environment.json`, Cursor background agents' environment: `install` becomes setup,
//! `start` becomes maintenance, `env` (if present) becomes env. Its snapshot, Dockerfile build
//! and terminals have no equivalent here and are named in warnings.

use std::path::Path;

use serde_json::Value;

use super::{Imported, Sourced, exec_line, field_warning, malformed};
use crate::config::error::{ConfigWarning, WarningKind};

const USED: [&str; 3] = ["install", "start", "env"];

pub(super) fn read(file: &Path, text: &str) -> Result<Imported, ConfigWarning> {
    let document: Value =
        jsonc_parser::parse_to_serde_value(text, &Default::default()).map_err(|err| {
            malformed(
                file,
                Some((err.line_display(), err.column_display())),
                format!("is not valid JSON ({}); it is skipped", err.kind()),
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
    imported.setup = command(
        file,
        "install",
        fields.get("install"),
        &mut imported.warnings,
    );
    imported.maintenance = command(file, "start", fields.get("start"), &mut imported.warnings);
    match fields.get("env") {
        None => {}
        Some(Value::Object(vars)) => {
            for (name, value) in vars {
                let key = format!("env.{name}");
                let text = match value {
                    Value::String(text) => text.clone(),
                    Value::Number(number) => number.to_string(),
                    Value::Bool(flag) => flag.to_string(),
                    _ => {
                        imported.warnings.push(field_warning(
                            file,
                            WarningKind::Suspicious,
                            &key,
                            format!("`{key}` is not a string; it is skipped"),
                        ));
                        continue;
                    }
                };
                imported.env.push((
                    name.clone(),
                    Sourced {
                        value: text,
                        field: key,
                    },
                ));
            }
        }
        Some(_) => imported.warnings.push(field_warning(
            file,
            WarningKind::Suspicious,
            "env",
            "`env` is not an object; it is skipped".into(),
        )),
    }
    for field in fields
        .keys()
        .filter(|field| !USED.contains(&field.as_str()))
    {
        imported.warnings.push(field_warning(
            file,
            WarningKind::Unsupported,
            field,
            format!("`{field}` is not used by nightshift"),
        ));
    }
    Ok(imported)
}

/// A command: a shell string, or an exec-form list.
fn command(
    file: &Path,
    field: &str,
    value: Option<&Value>,
    warnings: &mut Vec<ConfigWarning>,
) -> Option<Sourced> {
    let script = match value? {
        Value::String(script) => script.clone(),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            let args: Vec<String> = items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_string))
                .collect();
            exec_line(&args)
        }
        _ => {
            warnings.push(field_warning(
                file,
                WarningKind::Suspicious,
                field,
                format!("`{field}` is not a command string; it is skipped"),
            ));
            return None;
        }
    };
    Some(script)
        .filter(|script| !script.trim().is_empty())
        .map(|value| Sourced {
            value,
            field: field.to_string(),
        })
}
