//! `.github/workflows/copilot-setup-steps.yml`: the `run` steps of its `copilot-setup-steps` job
//! become the setup script. `uses:` steps are actions that need the GitHub Actions runner; they
//! are skipped and each one is named in a warning, since what they installed will be missing.

use std::path::Path;

use serde_yaml_ng::Value;

use super::{Imported, Sourced, field_warning, has_foreign_variable, malformed, shell_quote};
use crate::config::error::{ConfigWarning, WarningKind};
use crate::config::validate;

const JOB: &str = "copilot-setup-steps";

pub(super) fn read(file: &Path, text: &str) -> Result<Imported, ConfigWarning> {
    let document: Value = serde_yaml_ng::from_str(text).map_err(|err| {
        let position = err.location().map(|at| (at.line(), at.column()));
        let message = err.to_string();
        let message = message.split(" at line ").next().unwrap_or(&message);
        malformed(
            file,
            position,
            format!("is not valid YAML ({message}); it is skipped"),
        )
    })?;
    let Some(job) = document.get("jobs").and_then(|jobs| jobs.get(JOB)) else {
        return Err(malformed(
            file,
            None,
            format!("has no `jobs.{JOB}` job; it is skipped"),
        ));
    };
    let Some(steps) = job.get("steps").and_then(Value::as_sequence) else {
        return Err(malformed(
            file,
            None,
            format!("`jobs.{JOB}` has no list of `steps`; it is skipped"),
        ));
    };
    let mut imported = Imported::default();

    read_env(file, document.get("env"), "env", &mut imported);
    read_env(
        file,
        job.get("env"),
        &format!("jobs.{JOB}.env"),
        &mut imported,
    );
    let default_workdir = job
        .get("defaults")
        .and_then(|defaults| defaults.get("run"))
        .and_then(|run| run.get("working-directory"))
        .and_then(Value::as_str);

    let mut parts = Vec::new();
    let mut used_steps = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        let number = index + 1;
        let field = format!("jobs.{JOB}.steps[{index}]");
        let label = step.get("name").and_then(Value::as_str).map_or_else(
            || format!("step {number}"),
            |name| format!("step {number}: {name}"),
        );
        if let Some(action) = step.get("uses").and_then(Value::as_str) {
            // The task's working copy is already checked out: nothing is lost by skipping it.
            if action.split('@').next() == Some("actions/checkout") {
                continue;
            }
            imported.warnings.push(field_warning(
                file,
                WarningKind::Unsupported,
                &format!("{field}.uses"),
                format!(
                    "{label} uses the action `{action}`, which cannot run here; it is skipped (add what it installs to the setup script)"
                ),
            ));
            continue;
        }
        let Some(run) = step.get("run").and_then(Value::as_str) else {
            continue;
        };
        if let Some(shell) = step.get("shell").and_then(Value::as_str)
            && !matches!(shell.split_whitespace().next(), Some("bash" | "sh"))
        {
            imported.warnings.push(field_warning(
                file,
                WarningKind::Unsupported,
                &format!("{field}.shell"),
                format!("{label} runs in `{shell}`, which setup does not use; it is skipped"),
            ));
            continue;
        }
        if let Some(condition) = step.get("if") {
            let condition = yaml_text(condition).unwrap_or_default();
            imported.warnings.push(field_warning(
                file,
                WarningKind::Suspicious,
                &format!("{field}.if"),
                format!("{label} has the condition `{condition}`, which is not evaluated: the step always runs"),
            ));
        }
        if run.contains("${{") {
            imported.warnings.push(field_warning(
                file,
                WarningKind::Suspicious,
                &format!("{field}.run"),
                format!("{label} uses `${{{{ }}}}` expressions, which are passed to the shell as written"),
            ));
        }
        let workdir = step
            .get("working-directory")
            .and_then(Value::as_str)
            .or(default_workdir);
        let script = match workdir {
            None => run.trim_end().to_string(),
            Some(dir) => match validate::relative_path(dir, true) {
                Ok(dir) if dir.as_os_str().is_empty() => run.trim_end().to_string(),
                // A subshell, so the directory change ends with the step as it does in Actions.
                Ok(dir) => format!(
                    "(\ncd {} || exit\n{}\n)",
                    shell_quote(&dir.to_string_lossy()),
                    run.trim_end()
                ),
                Err(reason) => {
                    imported.warnings.push(field_warning(
                        file,
                        WarningKind::Unsupported,
                        &format!("{field}.working-directory"),
                        format!("{label}: working-directory {dir:?} {reason}; the step is skipped"),
                    ));
                    continue;
                }
            },
        };
        parts.push(format!("# {label}\n{script}"));
        used_steps.push(number.to_string());
        read_env(
            file,
            step.get("env"),
            &format!("{field}.env"),
            &mut imported,
        );
    }
    if !parts.is_empty() {
        imported.setup = Some(Sourced {
            value: parts.join("\n"),
            field: format!("jobs.{JOB}: run steps {}", used_steps.join(", ")),
        });
    }
    Ok(imported)
}

/// Merges an `env:` mapping. Expressions (`${{ secrets.TOKEN }}`) cannot be evaluated, so
/// those variables are skipped with a warning rather than set to the literal text.
fn read_env(file: &Path, env: Option<&Value>, field: &str, imported: &mut Imported) {
    let Some(env) = env else {
        return;
    };
    let Some(vars) = env.as_mapping() else {
        imported.warnings.push(field_warning(
            file,
            WarningKind::Suspicious,
            field,
            format!("`{field}` is not a mapping; it is skipped"),
        ));
        return;
    };
    for (name, value) in vars {
        let (Some(name), Some(text)) = (name.as_str(), yaml_text(value)) else {
            continue;
        };
        let key = format!("{field}.{name}");
        if has_foreign_variable(&text) {
            imported.warnings.push(field_warning(
                file,
                WarningKind::Suspicious,
                &key,
                format!(
                    "`{key}` is a GitHub Actions expression, which cannot be evaluated here; it is skipped (declare secrets in .nightshift.toml)"
                ),
            ));
            continue;
        }
        if let Some((_, earlier)) = imported.env.iter().rev().find(|(seen, _)| seen == name)
            && earlier.value != text
        {
            imported.warnings.push(field_warning(
                file,
                WarningKind::Suspicious,
                &key,
                format!(
                    "`{name}` is set by both `{}` and `{key}`; steps share one environment here, so the later value is used",
                    earlier.field
                ),
            ));
        }
        imported.env.push((
            name.to_string(),
            Sourced {
                value: text,
                field: key,
            },
        ));
    }
}

/// A scalar as the text a shell would see.
fn yaml_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}
