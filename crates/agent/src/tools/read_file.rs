//! `read_file`: a window of a text file, with line numbers the model can cite back in edits.
//!
//! The file is streamed line by line, so a large file costs memory only for the window shown;
//! the whole file is still scanned once to report its line count, which is what lets the model
//! page through it without guessing.

use std::io::{BufRead, BufReader};
use std::path::Path;

use nightshift_model::ToolSpec;
use serde::Deserialize;
use serde_json::json;

use super::call::{blocking, parse_args};
use super::workspace::{Workspace, display};
use super::{ToolContext, ToolOutput};

pub(crate) const NAME: &str = "read_file";
const EXPECTED: &str = r#"{"path": string, "offset"?: integer (first line, 1-based), "limit"?: integer (number of lines)}"#;

/// Lines shown when the call gives no `limit`.
pub(crate) const DEFAULT_LIMIT: usize = 2000;
/// Longer lines are cut, so one minified line cannot use up the whole window.
pub(crate) const MAX_LINE_BYTES: usize = 2000;
/// How much of the start of a file is checked for NUL bytes to call it binary.
const SNIFF_BYTES: usize = 8000;
/// Room kept under the output limit for the paging note, so the cut never hides it.
const NOTE_ROOM: usize = 256;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    path: String,
    #[serde(default)]
    offset: Option<usize>,
    #[serde(default)]
    limit: Option<usize>,
}

pub(crate) fn spec() -> ToolSpec {
    ToolSpec {
        name: NAME.to_string(),
        description: format!(
            "Read a text file from the workspace. Returns its lines numbered like `cat -n` \
             (line number, a tab, the line), starting at line `offset` (1-based, default 1), at \
             most `limit` lines (default {DEFAULT_LIMIT}) and at most about the tool output \
             limit in bytes. Lines longer than {MAX_LINE_BYTES} bytes are cut. When the file \
             has more lines than shown, the output ends with `[file has N lines; showing A-B; \
             call again with offset=B+1]`. The line numbers are not part of the file: never \
             include them in edit_file or apply_patch text. Binary files are reported, not \
             shown. Use list_files for directories and search to find where something is."
        ),
        parameters: json!({
            "type": "object",
            "properties": {
                "path": {
                    "type": "string",
                    "description": "The file, relative to the workspace root (an absolute path inside the workspace also works)."
                },
                "offset": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "The first line to show, 1-based. Default 1."
                },
                "limit": {
                    "type": "integer",
                    "minimum": 1,
                    "description": format!("The most lines to show. Default {DEFAULT_LIMIT}.")
                }
            },
            "required": ["path"],
            "additionalProperties": false
        }),
    }
}

pub(crate) async fn run(arguments: &str, ctx: &ToolContext<'_>) -> ToolOutput {
    let args: Args = match parse_args(NAME, arguments, EXPECTED) {
        Ok(args) => args,
        Err(output) => return output,
    };
    let root = ctx.session.workspace().to_path_buf();
    let budget = ctx
        .limits
        .read_bytes
        .min(ctx.limits.output_bytes.saturating_sub(NOTE_ROOM));
    blocking(NAME, move || read(&root, args, budget.max(1))).await
}

fn read(root: &Path, args: Args, budget: usize) -> ToolOutput {
    let workspace = match Workspace::open(root) {
        Ok(workspace) => workspace,
        Err(err) => return ToolOutput::failure(format!("{NAME}: {err}")),
    };
    let relative = match workspace.relative(&args.path) {
        Ok(relative) => relative,
        Err(err) => return ToolOutput::failure(format!("{NAME}: {err}")),
    };
    let offset = args.offset.unwrap_or(1).max(1);
    let limit = args.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 {
        return ToolOutput::failure(format!("{NAME}: `limit` must be at least 1"));
    }
    match read_window(&workspace, &relative, offset, limit, budget) {
        Ok(output) => output,
        Err(message) => ToolOutput::failure(format!("{NAME}: {message}")),
    }
}

fn read_window(
    workspace: &Workspace,
    relative: &Path,
    offset: usize,
    limit: usize,
    budget: usize,
) -> Result<ToolOutput, String> {
    let shown = display(relative);
    let target = if relative.as_os_str().is_empty() {
        Path::new(".")
    } else {
        relative
    };
    let io_error = |err: std::io::Error| workspace.describe_error(relative, &err);
    let meta = workspace.dir().metadata(target).map_err(io_error)?;
    if meta.is_dir() {
        return Err(format!(
            "`{shown}` is a directory, not a file; use list_files to see the files in it"
        ));
    }
    if !meta.is_file() {
        return Err(format!("`{shown}` is not a regular file"));
    }
    let file = workspace.dir().open(target).map_err(io_error)?;
    let mut reader = BufReader::with_capacity(64 * 1024, file.into_std());
    let head = reader.fill_buf().map_err(io_error)?;
    if head[..head.len().min(SNIFF_BYTES)].contains(&0) {
        return Ok(binary(&shown, meta.len()));
    }

    let mut text = String::new();
    let mut line = Vec::new();
    let mut number = 0usize;
    let mut last_shown = 0usize;
    let mut window_full = false;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(io_error)? == 0 {
            break;
        }
        number += 1;
        if number < offset || window_full {
            continue;
        }
        if line.contains(&0) {
            return Ok(binary(&shown, meta.len()));
        }
        let rendered = render_line(number, &line);
        let shown_lines = number - offset;
        if shown_lines >= limit || (shown_lines > 0 && text.len() + rendered.len() > budget) {
            window_full = true;
            continue;
        }
        text.push_str(&rendered);
        last_shown = number;
    }

    let total = number;
    if total == 0 {
        return Ok(ToolOutput::success(format!("[`{shown}` is empty]")));
    }
    if offset > total {
        return Err(format!(
            "offset {offset} is past the end of `{shown}`, which has {total} lines; call again \
             with an offset between 1 and {total}"
        ));
    }
    if last_shown < total {
        let next = last_shown + 1;
        text.push_str(&format!(
            "[file has {total} lines; showing {offset}-{last_shown}; call again with offset={next}]"
        ));
    } else if offset > 1 {
        text.push_str(&format!(
            "[file has {total} lines; showing {offset}-{last_shown}]"
        ));
    }
    Ok(ToolOutput::success(text))
}

/// One line as `cat -n` prints it, without its line ending, cut when very long.
pub(crate) fn render_line(number: usize, line: &[u8]) -> String {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let decoded = String::from_utf8_lossy(line);
    let content = cut_line(&decoded, MAX_LINE_BYTES);
    format!("{number:>6}\t{content}\n")
}

/// `line` cut to about `max_bytes`, saying how much was left out.
pub(crate) fn cut_line(line: &str, max_bytes: usize) -> String {
    if line.len() <= max_bytes {
        return line.to_string();
    }
    let mut end = max_bytes;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… [line cut: {} more bytes]",
        &line[..end],
        line.len() - end
    )
}

fn binary(shown: &str, size: u64) -> ToolOutput {
    ToolOutput::failure(format!(
        "{NAME}: `{shown}` is a binary file ({size} bytes, contains NUL bytes); its content is \
         not shown. Inspect it with shell if needed (for example `file {shown}` or \
         `xxd {shown} | head`)."
    ))
}
