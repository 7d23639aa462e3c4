//! `read_file`: a window of a text file, with line numbers the model can cite back in edits.
//!
//! The file is streamed line by line, so a large file costs memory only for the window shown
//! (and a huge line only the part of it shown); the whole file is still scanned once to report
//! its line count, which is what lets the model page through it without guessing, up to a
//! bound past which the count is reported as partial.

use std::io::{BufRead, BufReader, Read};
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
/// The most bytes of a line held in memory: enough to show [`MAX_LINE_BYTES`] of it.
const KEPT_LINE_BYTES: usize = MAX_LINE_BYTES + 8;
/// The most bytes of a file read, to count its lines and find the window.
const MAX_SCANNED_BYTES: u64 = 256 * 1024 * 1024;
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
    let io_error = |err: std::io::Error| workspace.describe_error(relative, &err);
    let (file, meta) = workspace.open_regular(relative)?;
    let size = meta.len();
    if meta.is_dir() {
        return Err(format!(
            "`{shown}` is a directory, not a file; use list_files to see the files in it"
        ));
    }
    // Never more than MAX_SCANNED_BYTES, whatever the file claims to hold (a sparse file can
    // claim terabytes).
    let mut reader = BufReader::with_capacity(64 * 1024, file.take(MAX_SCANNED_BYTES));
    let head = reader.fill_buf().map_err(io_error)?;
    if head[..head.len().min(SNIFF_BYTES)].contains(&0) {
        return Ok(binary(&shown, size));
    }

    let mut text = String::new();
    let mut line = Vec::new();
    let mut number = 0usize;
    let mut last_shown = 0usize;
    let mut window_full = false;
    let mut scanned = 0u64;
    loop {
        let read = read_line_capped(&mut reader, &mut line, KEPT_LINE_BYTES).map_err(io_error)?;
        if read.consumed == 0 {
            break;
        }
        scanned += read.consumed as u64;
        number += 1;
        if number < offset || window_full {
            continue;
        }
        if line.contains(&0) {
            return Ok(binary(&shown, size));
        }
        let rendered = render_cut_line(number, &line, read.omitted);
        let shown_lines = number - offset;
        if shown_lines >= limit || (shown_lines > 0 && text.len() + rendered.len() > budget) {
            window_full = true;
            continue;
        }
        text.push_str(&rendered);
        last_shown = number;
    }
    let counted_all = scanned < MAX_SCANNED_BYTES;

    let total = number;
    if total == 0 {
        return Ok(ToolOutput::success(format!("[`{shown}` is empty]")));
    }
    if offset > total {
        if !counted_all {
            return Err(format!(
                "offset {offset} is past the first {total} lines of `{shown}`, which are all \
                 read_file looks at (its first {} MiB); use shell (for example \
                 `sed -n '{offset},+100p' {shown}`) to read further",
                MAX_SCANNED_BYTES >> 20
            ));
        }
        return Err(format!(
            "offset {offset} is past the end of `{shown}`, which has {total} lines; call again \
             with an offset between 1 and {total}"
        ));
    }
    if !counted_all {
        let next = last_shown + 1;
        text.push_str(&format!(
            "[file is larger than {} MiB, read_file's limit: {total} lines counted; showing \
             {offset}-{last_shown}; call again with offset={next}, or use shell past the limit]",
            MAX_SCANNED_BYTES >> 20
        ));
    } else if last_shown < total {
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

/// How much of a line [`read_line_capped`] read.
struct LineRead {
    /// Bytes read, line ending included; 0 at the end of the file.
    consumed: usize,
    /// Bytes of the line's content read past without being kept.
    omitted: usize,
}

/// Reads the next line of `reader` into `line`, keeping at most `keep` bytes of it (the rest is
/// read past, never held).
fn read_line_capped(
    reader: &mut impl BufRead,
    line: &mut Vec<u8>,
    keep: usize,
) -> std::io::Result<LineRead> {
    line.clear();
    let mut read = LineRead {
        consumed: 0,
        omitted: 0,
    };
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        if available.is_empty() {
            return Ok(read);
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (&available[..=at], true),
            None => (available, false),
        };
        let kept = chunk.len().min(keep.saturating_sub(line.len()));
        line.extend_from_slice(&chunk[..kept]);
        // A line ending read past is not content.
        let ending = usize::from(done && kept < chunk.len());
        read.omitted += chunk.len() - kept - ending;
        read.consumed += chunk.len();
        let used = chunk.len();
        reader.consume(used);
        if done {
            return Ok(read);
        }
    }
}

/// [`render_line`] for a line of which `omitted` bytes were never read.
fn render_cut_line(number: usize, kept: &[u8], omitted: usize) -> String {
    if omitted == 0 {
        return render_line(number, kept);
    }
    let decoded = String::from_utf8_lossy(kept);
    let mut end = MAX_LINE_BYTES.min(decoded.len());
    while !decoded.is_char_boundary(end) {
        end -= 1;
    }
    let more = decoded.len() - end + omitted;
    format!(
        "{number:>6}\t{}… [line cut: {more} more bytes]\n",
        &decoded[..end]
    )
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
