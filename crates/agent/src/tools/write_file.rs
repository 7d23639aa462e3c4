//! `write_file`: creates or replaces a whole file. The blunt instrument next to `edit_file` and
//! `apply_patch`, right for new files and for rewrites.

use std::io;
use std::path::Path;

use nightshift_model::ToolSpec;
use serde::Deserialize;
use serde_json::json;

use super::call::{blocking_as, parse_args};
use super::workspace::{Workspace, display};
use super::{ToolContext, ToolOutput};

pub(crate) const NAME: &str = "write_file";
const EXPECTED: &str = r#"{"path": string, "content": string}"#;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    path: String,
    content: String,
}

pub(crate) fn spec() -> ToolSpec {
    ToolSpec {
        name: NAME.to_string(),
        description: "Write a whole file in the workspace: creates it (and any missing parent \
                      directories) or replaces all of its content. `content` is written \
                      exactly as given, so end it with a newline when the file should end \
                      with one. Prefer edit_file or apply_patch to change part of an existing \
                      file: rewriting a large file risks dropping lines. Refuses paths outside \
                      the workspace and inside `.git/`. The output says how many bytes were \
                      written and whether the file was created or overwritten."
            .to_string(),
        parameters: json!({
            "type": "object",
            "properties": {
                "path": {
                    "type": "string",
                    "description": "The file, relative to the workspace root."
                },
                "content": {
                    "type": "string",
                    "description": "The complete new content of the file."
                }
            },
            "required": ["path", "content"],
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
    blocking_as(owner, NAME, move || match write(&root, &args) {
        Ok(message) => ToolOutput::success(message),
        Err(message) => ToolOutput::failure(format!("{NAME}: {message}")),
    })
    .await
}

fn write(root: &Path, args: &Args) -> Result<String, String> {
    let workspace = Workspace::open(root).map_err(|err| err.to_string())?;
    let relative = workspace
        .relative(&args.path)
        .map_err(|err| err.to_string())?;
    if relative.as_os_str().is_empty() {
        return Err("`path` names the workspace root; give the path of a file".to_string());
    }
    let shown = display(&relative);
    workspace
        .check_writable(&relative)
        .map_err(|err| err.to_string())?;
    let previous = match workspace.dir().metadata(&relative) {
        Ok(meta) if meta.is_dir() => {
            return Err(format!("`{shown}` is a directory; choose a file path"));
        }
        Ok(meta) => Some(meta.len()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(err) => return Err(workspace.describe_error(&relative, &err)),
    };
    if let Some(parent) = relative.parent().filter(|p| !p.as_os_str().is_empty()) {
        workspace
            .dir()
            .create_dir_all(parent)
            .map_err(|err| workspace.describe_error(parent, &err))?;
    }
    workspace.write_regular(&relative, args.content.as_bytes())?;
    let bytes = args.content.len();
    let lines = args.content.lines().count();
    Ok(match previous {
        None => format!("Created `{shown}` ({bytes} bytes, {lines} lines)."),
        Some(old) => {
            format!("Overwrote `{shown}` ({bytes} bytes, {lines} lines; it had {old} bytes).")
        }
    })
}
