//! `edit_file`: exact string replacement, the edit models get right most often.
//!
//! It is strict on purpose (the text must match exactly, and once unless `replace_all`), because
//! a loose match that edits the wrong place is worse than a refusal. The refusals say how to
//! recover: where a near match is, or on which lines the ambiguous matches sit.

use std::io::Read;
use std::path::Path;

use nightshift_model::ToolSpec;
use serde::Deserialize;
use serde_json::json;

use super::call::{blocking_as, parse_args};
use super::read_file::render_line;
use super::workspace::{Workspace, display};
use super::{ToolContext, ToolOutput};

pub(crate) const NAME: &str = "edit_file";
const EXPECTED: &str =
    r#"{"path": string, "old_string": string, "new_string": string, "replace_all"?: boolean}"#;

/// The largest file edit_file reads into memory to edit.
const MAX_EDITED_BYTES: u64 = 32 * 1024 * 1024;
/// Lines of unchanged context shown around the first edit.
const CONTEXT_LINES: usize = 3;
/// The most lines of the edited region shown.
const MAX_SNIPPET_LINES: usize = 30;
/// The most line numbers listed for an ambiguous match.
const MAX_LISTED_MATCHES: usize = 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    path: String,
    old_string: String,
    new_string: String,
    #[serde(default)]
    replace_all: bool,
}

pub(crate) fn spec() -> ToolSpec {
    ToolSpec {
        name: NAME.to_string(),
        description: "Replace exact text in a file. `old_string` must match the file's current \
                      content exactly, character for character, including indentation and line \
                      breaks (copy it from read_file output without the line-number prefixes). \
                      It must occur exactly once unless `replace_all` is true; include enough \
                      surrounding lines to make it unique. On any failure the file is left \
                      unchanged: not found (with a hint when a match differing only in \
                      whitespace exists), found several times (with their line numbers), or \
                      `old_string` equal to `new_string`. The output says how many \
                      replacements were made and shows the edited lines with some context. Use \
                      write_file to create files."
            .to_string(),
        parameters: json!({
            "type": "object",
            "properties": {
                "path": {
                    "type": "string",
                    "description": "The file to edit, relative to the workspace root."
                },
                "old_string": {
                    "type": "string",
                    "description": "The exact text to replace. Must not be empty."
                },
                "new_string": {
                    "type": "string",
                    "description": "The text to put in its place (may be empty to delete)."
                },
                "replace_all": {
                    "type": "boolean",
                    "description": "Replace every occurrence instead of requiring exactly one. Default false."
                }
            },
            "required": ["path", "old_string", "new_string"],
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
    let owner = ctx.session.file_owner();
    blocking_as(owner, NAME, move || match edit(&root, &args) {
        Ok(message) => ToolOutput::success(message),
        Err(message) => ToolOutput::failure(format!("{NAME}: {message} The file was not changed.")),
    })
    .await
}

fn edit(root: &Path, args: &Args) -> Result<String, String> {
    let workspace = Workspace::open(root).map_err(|err| err.to_string())?;
    let relative = workspace
        .relative(&args.path)
        .map_err(|err| err.to_string())?;
    let shown = display(&relative);
    if relative.as_os_str().is_empty() {
        return Err("`path` names the workspace root; give the path of a file.".to_string());
    }
    if args.old_string.is_empty() {
        return Err(
            "`old_string` is empty. To create a file use write_file; to insert text, \
                    put a neighbouring line in `old_string` and repeat it in `new_string`."
                .to_string(),
        );
    }
    if args.old_string == args.new_string {
        return Err(
            "`old_string` and `new_string` are identical, so there is nothing to change."
                .to_string(),
        );
    }
    workspace
        .check_writable(&relative)
        .map_err(|err| format!("{err}."))?;
    if workspace
        .dir()
        .metadata(&relative)
        .is_ok_and(|meta| meta.is_dir())
    {
        return Err(format!("`{shown}` is a directory, not a file."));
    }
    let (file, meta) = workspace
        .open_regular(&relative)
        .map_err(|message| format!("{message}."))?;
    if meta.len() > MAX_EDITED_BYTES {
        return Err(format!(
            "`{shown}` is {} bytes, more than edit_file edits ({} MiB); change it with shell \
             (for example sed) instead.",
            meta.len(),
            MAX_EDITED_BYTES >> 20
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_EDITED_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|err| format!("{}.", workspace.describe_error(&relative, &err)))?;
    let content = String::from_utf8(bytes).map_err(|_| {
        format!(
            "`{shown}` is not UTF-8 text; edit_file only edits text. Use write_file to replace it."
        )
    })?;

    let (old, new) = matching_pair(&content, &args.old_string, &args.new_string)
        .ok_or_else(|| not_found(&content, &args.old_string, &shown))?;
    let positions: Vec<usize> = content
        .match_indices(old.as_str())
        .map(|(at, _)| at)
        .collect();
    let Some(&first) = positions.first() else {
        return Err(not_found(&content, &args.old_string, &shown));
    };
    if positions.len() > 1 && !args.replace_all {
        let lines: Vec<String> = positions
            .iter()
            .take(MAX_LISTED_MATCHES)
            .map(|&at| line_of(&content, at).to_string())
            .collect();
        let more = if positions.len() > MAX_LISTED_MATCHES {
            ", ..."
        } else {
            ""
        };
        return Err(format!(
            "`old_string` occurs {} times in `{shown}` (starting on lines {}{more}). Include \
             more surrounding lines in `old_string` to pick one, or set `replace_all` to true \
             to replace every occurrence.",
            positions.len(),
            lines.join(", ")
        ));
    }

    let updated = if args.replace_all {
        content.replace(old.as_str(), &new)
    } else {
        content.replacen(old.as_str(), &new, 1)
    };
    workspace
        .write_regular(&relative, updated.as_bytes())
        .map_err(|message| format!("{message}."))?;

    let count = if args.replace_all { positions.len() } else { 1 };
    let noun = if count == 1 {
        "occurrence"
    } else {
        "occurrences"
    };
    let start = line_of(&updated, first);
    let end = start + new.matches('\n').count();
    Ok(format!(
        "Replaced {count} {noun} in `{shown}`. The first edit, with context:\n{}",
        snippet(&updated, start, end)
    ))
}

/// The strings to replace: as given, or with `\n` turned into `\r\n` when the file uses CRLF
/// line endings and the model wrote plain newlines.
fn matching_pair(content: &str, old: &str, new: &str) -> Option<(String, String)> {
    if content.contains(old) {
        return Some((old.to_string(), new.to_string()));
    }
    if content.contains("\r\n") && old.contains('\n') && !old.contains('\r') {
        let crlf_old = old.replace('\n', "\r\n");
        if content.contains(&crlf_old) {
            return Some((crlf_old, new.replace("\r\n", "\n").replace('\n', "\r\n")));
        }
    }
    None
}

fn not_found(content: &str, old: &str, shown: &str) -> String {
    let mut message = format!("`old_string` was not found in `{shown}`.");
    if let Some(at) = whitespace_insensitive_find(content, old) {
        let line = line_of(content, at);
        message.push_str(&format!(
            " Text that differs from it only in whitespace (indentation, spaces or line breaks) \
             starts at line {line}: re-read that part with read_file and copy it exactly."
        ));
    } else if old.lines().next().is_some_and(looks_numbered) {
        message.push_str(
            " It seems to include read_file's line-number prefixes; leave those out and copy \
             only the text after the tab.",
        );
    } else {
        message.push_str(
            " Re-read the file with read_file (it may have changed) and copy the text exactly.",
        );
    }
    message
}

fn looks_numbered(line: &str) -> bool {
    let trimmed = line.trim_start();
    let digits = trimmed.chars().take_while(char::is_ascii_digit).count();
    digits > 0 && trimmed[digits..].starts_with('\t')
}

/// Where `needle` occurs in `haystack` when every run of whitespace counts as one space and
/// leading and trailing whitespace is ignored: the byte offset in `haystack`.
fn whitespace_insensitive_find(haystack: &str, needle: &str) -> Option<usize> {
    let (needle, _) = collapse_whitespace(needle.trim());
    if needle.is_empty() {
        return None;
    }
    let (collapsed, origins) = collapse_whitespace(haystack);
    let at = collapsed.find(&needle)?;
    origins.get(at).copied()
}

/// `text` with each whitespace run replaced by one space, and for each byte of the result the
/// offset in `text` it came from.
fn collapse_whitespace(text: &str) -> (String, Vec<usize>) {
    let mut collapsed = String::with_capacity(text.len());
    let mut origins = Vec::with_capacity(text.len());
    let mut in_space = false;
    for (at, ch) in text.char_indices() {
        if ch.is_whitespace() {
            if !in_space {
                collapsed.push(' ');
                origins.push(at);
            }
            in_space = true;
        } else {
            collapsed.push(ch);
            origins.extend(std::iter::repeat_n(at, ch.len_utf8()));
            in_space = false;
        }
    }
    (collapsed, origins)
}

/// The 1-based line that byte `at` of `text` is on.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Lines `start..=end` of `text` numbered, with context around them, capped in length.
fn snippet(text: &str, start: usize, end: usize) -> String {
    let first = start.saturating_sub(CONTEXT_LINES).max(1);
    let last = (end + CONTEXT_LINES).min(first + MAX_SNIPPET_LINES - 1);
    let mut out = String::new();
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let number = index + 1;
        if number < first {
            continue;
        }
        if number > last {
            break;
        }
        out.push_str(&render_line(number, line.as_bytes()));
    }
    if out.is_empty() {
        out.push_str("[the file is now empty]\n");
    }
    out
}
