//! `shell`: one command line run in the task's sandbox session.
//!
//! The output always ends with a line saying how the command ended, and that line survives any
//! cutting: the model must never have to guess whether a build passed.

use std::time::Duration;

use nightshift_model::ToolSpec;
use nightshift_sandbox::{ExecRequest, ExitStatus};
use serde::Deserialize;
use serde_json::json;

use super::call::parse_args;
use super::{ToolContext, ToolOutput, cut_text};

pub(crate) const NAME: &str = "shell";
/// Output bytes kept free for the notes and the status line after the command's output.
const TRAILER_ROOM: usize = 512;
const EXPECTED: &str = r#"{"command": string, "timeout_secs"?: integer}"#;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    command: String,
    #[serde(default)]
    timeout_secs: Option<u64>,
}

pub(crate) fn spec() -> ToolSpec {
    ToolSpec {
        name: NAME.to_string(),
        description: "Run a command line with bash in the workspace directory (the root of the \
                      repository) and return its combined stdout and stderr, followed by a \
                      last line saying how it ended: `[exit code: N]`, `[timed out after Ns]`, \
                      `[killed by signal N]`, `[cancelled]` or `[limit exceeded: ...]` (the \
                      sandbox's memory, process or disk limit). Each call starts a fresh shell \
                      in the workspace root: `cd` and exported variables do not carry over, so \
                      chain with `&&` (e.g. `cd web && npm test`). There is no terminal and no \
                      input: never run interactive programs (editors, pagers, prompts); pass \
                      flags such as `--yes` or `--no-pager`. The command and everything it \
                      started are killed at the timeout (default 120 s unless configured \
                      otherwise; `timeout_secs` can raise it up to the configured maximum). \
                      Long output keeps its beginning and end, with a marker saying how much \
                      was left out of the middle: redirect to a file and use search or \
                      read_file to see all of it. Prefer read_file, search, list_files and the \
                      edit tools for reading and changing files."
            .to_string(),
        parameters: json!({
            "type": "object",
            "properties": {
                "command": {
                    "type": "string",
                    "description": "The command line, run as `bash -c <command>` in the workspace root."
                },
                "timeout_secs": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "Seconds before the command is killed. Default 120 (or as configured); larger values are capped at the configured maximum."
                }
            },
            "required": ["command"],
            "additionalProperties": false
        }),
    }
}

pub(crate) async fn run(arguments: &str, ctx: &ToolContext<'_>) -> ToolOutput {
    let args: Args = match parse_args(NAME, arguments, EXPECTED) {
        Ok(args) => args,
        Err(output) => return output,
    };
    if args.command.trim().is_empty() {
        return ToolOutput::failure(format!("{NAME}: `command` is empty; give a command line"));
    }
    let limits = ctx.limits;
    let mut notes = Vec::new();
    let timeout = match args.timeout_secs {
        None => limits.default_shell_timeout,
        Some(0) => {
            return ToolOutput::failure(format!(
                "{NAME}: `timeout_secs` must be at least 1 (or left out for the default of {})",
                seconds(limits.default_shell_timeout)
            ));
        }
        Some(asked) if Duration::from_secs(asked) > limits.max_shell_timeout => {
            notes.push(format!(
                "[note: timeout_secs {asked} is above the maximum; used {}]",
                seconds(limits.max_shell_timeout)
            ));
            limits.max_shell_timeout
        }
        Some(asked) => Duration::from_secs(asked),
    };
    let request = ExecRequest {
        command: args.command,
        workdir: None,
        timeout,
        // The sandbox keeps head and tail within this; the rest of the budget is the trailer's.
        output_limit: limits.output_bytes.saturating_sub(TRAILER_ROOM).max(64),
        stdin: None,
    };
    let executed = match ctx.session.exec(request, ctx.cancel).await {
        Ok(executed) => executed,
        Err(err) => {
            return ToolOutput::failure(format!(
                "{NAME}: the command could not be run: {err}. Nothing was executed."
            ));
        }
    };
    if executed.omitted_bytes > 0 {
        notes.push(format!(
            "[note: {} bytes were left out of the middle of the output; redirect the output to \
             a file and use search or read_file on it to see all of it]",
            executed.omitted_bytes
        ));
    }
    notes.push(match executed.status {
        ExitStatus::Exited(code) => format!("[exit code: {code}]"),
        ExitStatus::Signaled(signal) => format!("[killed by signal {signal}]"),
        ExitStatus::TimedOut => format!(
            "[timed out after {}; the command and everything it started were killed]",
            seconds(timeout)
        ),
        ExitStatus::Cancelled => "[cancelled]".to_string(),
        ExitStatus::LimitExceeded(limit) => format!("[{}]", limit.explain()),
    });

    let trailer = notes.join("\n");
    let room = limits.output_bytes.saturating_sub(trailer.len() + 1);
    let mut text = cut_text(&executed.output, room);
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&trailer);
    ToolOutput {
        text,
        ok: executed.status.success(),
        exit_code: Some(executed.status.code()),
        control: None,
    }
}

/// `d` as the model reads it: whole seconds when it is whole, else tenths.
fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
