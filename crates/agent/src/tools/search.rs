//! `search`: ripgrep's engine over the workspace, so the model finds code without spending
//! `shell` calls (and output) on `grep -r` through build directories.

use std::io::Read;
use std::path::Path;

use grep_regex::RegexMatcherBuilder;
use grep_searcher::sinks::Lossy;
use grep_searcher::{BinaryDetection, SearcherBuilder};
use nightshift_model::ToolSpec;
use serde::Deserialize;
use serde_json::json;

use super::call::{blocking, parse_args};
use super::read_file::cut_line;
use super::walk::{Scope, compile_glob, walk_files};
use super::workspace::{Workspace, display};
use super::{ToolContext, ToolOutput};

pub(crate) const NAME: &str = "search";
const EXPECTED: &str = r#"{"pattern": string (regex), "path"?: string, "glob"?: string}"#;

/// The most bytes of one file searched.
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// About the longest line searched (the searcher holds a whole line in memory): a file is not
/// searched past a longer one.
const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Matching lines longer than this are cut in the output.
const MAX_MATCH_LINE_BYTES: usize = 300;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    pattern: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    glob: Option<String>,
}

pub(crate) fn spec() -> ToolSpec {
    ToolSpec {
        name: NAME.to_string(),
        description: format!(
            "Search file contents in the workspace with a regular expression (Rust regex \
             syntax, as in ripgrep; case-sensitive unless the pattern starts with `(?i)`; it \
             matches within one line, so `\\n` is not allowed). Searches the files under `path` \
             (default: the whole workspace), skipping `.git/`, files ignored by `.gitignore` \
             and binary files; other hidden files such as `.github/` are searched. Symlinks are \
             not followed. `glob` keeps only matching files, e.g. `*.rs`, `*.{{ts,tsx}}` or \
             `src/**/*.py` (relative to the workspace root). Prints one `path:line:text` line \
             per matching line, paths relative to the workspace root, in path order; text \
             longer than {MAX_MATCH_LINE_BYTES} bytes is cut. Stops after the match limit \
             (usually 500) and says so. No match is not an error: it prints `no matches`."
        ),
        parameters: json!({
            "type": "object",
            "properties": {
                "pattern": {
                    "type": "string",
                    "description": "The regular expression, e.g. `fn\\s+parse_args` or `(?i)todo`. Escape `(`, `[`, `{`, `.`, `*`, `?`, `+`, `|` and `\\` to match them literally."
                },
                "path": {
                    "type": "string",
                    "description": "A directory or file to search, relative to the workspace root. Default: the whole workspace."
                },
                "glob": {
                    "type": "string",
                    "description": "Only search files matching this glob, e.g. `*.rs` or `crates/**/Cargo.toml`."
                }
            },
            "required": ["pattern"],
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
    let max_matches = ctx.limits.max_entries.max(1);
    blocking(NAME, move || match search(&root, &args, max_matches) {
        Ok(text) => ToolOutput::success(text),
        Err(message) => ToolOutput::failure(format!("{NAME}: {message}")),
    })
    .await
}

fn search(root: &Path, args: &Args, max_matches: usize) -> Result<String, String> {
    if args.pattern.is_empty() {
        return Err("`pattern` is empty; give a regular expression to look for".to_string());
    }
    let matcher = RegexMatcherBuilder::new()
        .line_terminator(Some(b'\n'))
        .build(&args.pattern)
        .map_err(|err| {
            format!(
                "invalid regular expression `{}`: {err}. Escape special characters such as \
                 `(`, `[`, `{{` or `.` with a backslash to match them literally",
                args.pattern
            )
        })?;
    let workspace = Workspace::open(root).map_err(|err| err.to_string())?;
    let scope = Scope::resolve(&workspace, args.path.as_deref())?;
    let glob = compile_glob(&scope.root, args.glob.as_deref())?;
    let mut searcher = SearcherBuilder::new()
        .line_number(true)
        .binary_detection(BinaryDetection::quit(0))
        .heap_limit(Some(MAX_LINE_BYTES))
        .build();

    let mut matches = Vec::new();
    let mut truncated = false;
    let mut files = 0usize;
    let mut skipped = SomePaths::default();
    let mut partial = SomePaths::default();
    let mut search_file = |relative: &Path| -> bool {
        // Opening through the workspace handle keeps even a file swapped for a symlink since
        // the walk from leading outside; a FIFO or device swapped in is refused, not waited on.
        let Ok((file, meta)) = workspace.open_regular(relative) else {
            return true;
        };
        if !meta.is_file() {
            return true;
        }
        files += 1;
        let shown = display(relative);
        if meta.len() > MAX_FILE_BYTES {
            partial.push(&shown);
        }
        let sink = Lossy(|number, line| {
            if matches.len() >= max_matches {
                truncated = true;
                return Ok(false);
            }
            let line = line.trim_end_matches(['\n', '\r']);
            matches.push(format!(
                "{shown}:{number}:{}",
                cut_line(line, MAX_MATCH_LINE_BYTES)
            ));
            Ok(true)
        });
        // Only the first MAX_FILE_BYTES, and no line longer than MAX_LINE_BYTES is held: such
        // a file is skipped from there on, as ripgrep skips an unreadable one.
        if searcher
            .search_reader(&matcher, file.take(MAX_FILE_BYTES), sink)
            .is_err()
        {
            skipped.push(&display(relative));
        }
        !truncated
    };
    let mut forced = false;
    let mut cut_note = None;
    if scope.is_file {
        search_file(&scope.target);
    } else {
        let walked = walk_files(&workspace, &scope, glob.as_ref(), |found| {
            found.is_symlink || search_file(found.relative)
        });
        forced = walked.forced;
        cut_note = walked.cut_note();
    }

    let where_ = display(&scope.target);
    let mut text = if matches.is_empty() {
        let filter = args
            .glob
            .as_deref()
            .map(|g| format!(" matching `{g}`"))
            .unwrap_or_default();
        format!(
            "no matches for `{}` in `{where_}` ({files} files{filter} searched)",
            args.pattern
        )
    } else {
        matches.join("\n")
    };
    if truncated {
        text.push_str(&format!(
            "\n[showing the first {max_matches} matches; there are more. Narrow the search with \
             a more specific pattern, a path or a glob]"
        ));
    }
    if forced {
        text.push_str(&format!(
            "\n[note: `{where_}` is ignored by .gitignore; searched because it was asked for]"
        ));
    }
    if skipped.total > 0 {
        text.push_str(&format!(
            "\n[note: not searched past a line longer than {} KiB or a read error: {}]",
            MAX_LINE_BYTES >> 10,
            some_of(&skipped)
        ));
    }
    if partial.total > 0 {
        text.push_str(&format!(
            "\n[note: only the first {} MiB searched of: {}]",
            MAX_FILE_BYTES >> 20,
            some_of(&partial)
        ));
    }
    if let Some(note) = cut_note {
        text.push('\n');
        text.push_str(&note);
    }
    Ok(text)
}

/// How many paths a note names.
const SHOWN: usize = 5;

/// The first few paths of a kind, and how many there were: a search of a huge tree does not
/// hold every path a note counts.
#[derive(Default)]
struct SomePaths {
    first: Vec<String>,
    total: usize,
}

impl SomePaths {
    fn push(&mut self, path: &str) {
        self.total += 1;
        if self.first.len() < SHOWN {
            self.first.push(path.to_string());
        }
    }
}

/// The first few of `paths`, and how many more.
fn some_of(paths: &SomePaths) -> String {
    let mut text = paths
        .first
        .iter()
        .map(|path| format!("`{path}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if paths.total > paths.first.len() {
        text.push_str(&format!(" and {} more", paths.total - paths.first.len()));
    }
    text
}
