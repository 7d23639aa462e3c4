//! `list_files`: the workspace's files as a developer sees them, for finding one's way around
//! without listing `target/` or `node_modules/` through `shell`.

use std::path::Path;

use nightshift_model::ToolSpec;
use serde::Deserialize;
use serde_json::json;

use super::call::{blocking, parse_args};
use super::walk::{Scope, compile_glob, walk_files};
use super::workspace::{Workspace, display};
use super::{ToolContext, ToolOutput};

pub(crate) const NAME: &str = "list_files";
const EXPECTED: &str = r#"{"path"?: string, "glob"?: string}"#;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    glob: Option<String>,
}

pub(crate) fn spec() -> ToolSpec {
    ToolSpec {
        name: NAME.to_string(),
        description: "List the files under a directory of the workspace, recursively: one path \
                      per line, relative to the workspace root, sorted. Only files are listed \
                      (directories show up in the paths); symlinks are listed but not followed. \
                      Skips `.git/` and anything ignored by `.gitignore`; other hidden files \
                      such as `.github/` are included. `glob` keeps only matching files, e.g. \
                      `*.rs` or `src/**/*.ts` (relative to the workspace root). At most the \
                      entry limit (usually 500) is listed, followed by a count of the rest; \
                      narrow with `path` or `glob` to see them."
            .to_string(),
        parameters: json!({
            "type": "object",
            "properties": {
                "path": {
                    "type": "string",
                    "description": "The directory to list, relative to the workspace root. Default: the whole workspace."
                },
                "glob": {
                    "type": "string",
                    "description": "Only list files matching this glob, e.g. `*.md` or `crates/*/Cargo.toml`."
                }
            },
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
    let max_entries = ctx.limits.max_entries.max(1);
    blocking(NAME, move || match list(&root, &args, max_entries) {
        Ok(text) => ToolOutput::success(text),
        Err(message) => ToolOutput::failure(format!("{NAME}: {message}")),
    })
    .await
}

fn list(root: &Path, args: &Args, max_entries: usize) -> Result<String, String> {
    let workspace = Workspace::open(root).map_err(|err| err.to_string())?;
    let scope = Scope::resolve(&workspace, args.path.as_deref())?;
    let glob = compile_glob(&scope.root, args.glob.as_deref())?;
    let mut files = Vec::new();
    let mut forced = false;
    let mut cut_note = None;
    if scope.is_file {
        files.push(display(&scope.target));
    } else {
        let walked = walk_files(&workspace, &scope, glob.as_ref(), |found| {
            files.push(display(found.relative));
            true
        });
        forced = walked.forced;
        cut_note = walked.cut_note();
    }
    files.sort();

    let where_ = display(&scope.target);
    let mut text = if files.is_empty() {
        let filter = args
            .glob
            .as_deref()
            .map(|g| format!(" matching `{g}`"))
            .unwrap_or_default();
        format!("no files{filter} in `{where_}`")
    } else {
        let shown = files.len().min(max_entries);
        files[..shown].join("\n")
    };
    if files.len() > max_entries {
        text.push_str(&format!(
            "\n[... and {} more files ({} in total); narrow the listing with path or glob]",
            files.len() - max_entries,
            files.len()
        ));
    }
    if forced {
        text.push_str(&format!(
            "\n[note: `{where_}` is ignored by .gitignore; listed because it was asked for]"
        ));
    }
    if let Some(note) = cut_note {
        text.push('\n');
        text.push_str(&note);
    }
    Ok(text)
}
