//! `list_files`: the workspace's files as a developer sees them, for finding one's way around
//! without listing `target/` or `node_modules/` through `shell`.

use std::collections::BinaryHeap;
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
    let mut listing = Listing::new(max_entries);
    let mut forced = false;
    let mut cut_note = None;
    if scope.is_file {
        listing.push(display(&scope.target));
    } else {
        let walked = walk_files(&workspace, &scope, glob.as_ref(), |found| {
            listing.push(display(found.relative));
            true
        });
        forced = walked.forced;
        cut_note = walked.cut_note();
    }
    let total = listing.total;
    let files = listing.into_sorted();

    let where_ = display(&scope.target);
    let mut text = if files.is_empty() {
        let filter = args
            .glob
            .as_deref()
            .map(|g| format!(" matching `{g}`"))
            .unwrap_or_default();
        format!("no files{filter} in `{where_}`")
    } else {
        files.join("\n")
    };
    if total > files.len() {
        text.push_str(&format!(
            "\n[... and {} more files ({total} in total); narrow the listing with path or glob]",
            total - files.len(),
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

/// The first `limit` paths in sorted order of all those pushed, and how many were pushed: a
/// listing of a huge tree holds `limit` paths, not the tree.
struct Listing {
    limit: usize,
    /// The smallest paths so far, the largest of them on top.
    kept: BinaryHeap<String>,
    total: usize,
}

impl Listing {
    fn new(limit: usize) -> Listing {
        Listing {
            limit,
            kept: BinaryHeap::with_capacity(limit.min(4096) + 1),
            total: 0,
        }
    }

    fn push(&mut self, path: String) {
        self.total += 1;
        if self.kept.len() < self.limit {
            self.kept.push(path);
        } else if self.kept.peek().is_some_and(|largest| path < *largest) {
            self.kept.pop();
            self.kept.push(path);
        }
    }

    fn into_sorted(self) -> Vec<String> {
        self.kept.into_sorted_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_holds_only_the_paths_it_shows() {
        let mut listing = Listing::new(3);
        for i in (0..10_000).rev() {
            listing.push(format!("src/f{i:05}.rs"));
            assert!(listing.kept.len() <= 3);
        }
        assert_eq!(listing.total, 10_000);
        assert_eq!(
            listing.into_sorted(),
            ["src/f00000.rs", "src/f00001.rs", "src/f00002.rs"]
        );
    }
}
