//! `apply_patch`: a unified diff applied by the real `git apply`, run on the host in the
//! workspace directory.
//!
//! `git apply` is atomic (on any failure nothing is written), refuses paths that leave the
//! working area, go through symlinks or touch `.git/`, and works outside repositories too. What
//! this module adds is the translation of its complaints into instructions the model can follow:
//! which hunk of which file failed, what git looked for, and what to do next.

use std::collections::BTreeSet;
use std::time::Duration;

use nightshift_model::ToolSpec;
use nightshift_sandbox::{ExecRequest, ExitStatus};
use serde::Deserialize;
use serde_json::json;

use super::call::parse_args;
use super::patch_text::{FILE_SEPARATOR, PreparedPatch, prepare};
use super::{ToolContext, ToolOutput};

pub(crate) const NAME: &str = "apply_patch";
const EXPECTED: &str = r#"{"patch": string (a unified diff)}"#;

/// `git apply` on any sane patch takes milliseconds; this only guards against a wedged git.
const GIT_TIMEOUT: Duration = Duration::from_secs(60);
/// The most lines of git's "while searching for" text quoted back.
const MAX_SEARCHED_LINES: usize = 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    patch: String,
}

pub(crate) fn spec() -> ToolSpec {
    ToolSpec {
        name: NAME.to_string(),
        description: "Apply a unified diff to the workspace with `git apply`; best for changes \
                      spanning several places or files. Accepts `git diff` output (`diff --git` \
                      headers) and plain diffs with `--- a/path` and `+++ b/path` lines \
                      (paths relative to the workspace root; the `a/` and `b/` prefixes are \
                      optional). Each hunk starts with a header like `@@ -12,5 +12,6 @@` \
                      followed by lines starting with ` ` (context, an empty context line is a \
                      single space), `-` (removed) or `+` (added); the line counts in headers \
                      may be approximate, but context and removed lines must match the file \
                      exactly, so give about three lines of context copied from read_file \
                      output (without its line numbers). Create a file with `--- /dev/null`, \
                      delete one with `+++ /dev/null`. All or nothing: if any hunk does not \
                      apply, no file is changed and the error names the file and hunk. Paths \
                      outside the workspace, through symlinks or inside `.git/` are refused. \
                      The output lists the files changed."
            .to_string(),
        parameters: json!({
            "type": "object",
            "properties": {
                "patch": {
                    "type": "string",
                    "description": "The unified diff, e.g. \"--- a/src/lib.rs\\n+++ b/src/lib.rs\\n@@ -1,3 +1,3 @@\\n use std::fmt;\\n-use std::io;\\n+use std::io::{self, Read};\\n \\n\"."
                }
            },
            "required": ["patch"],
            "additionalProperties": false
        }),
    }
}

pub(crate) async fn run(arguments: &str, ctx: &ToolContext<'_>) -> ToolOutput {
    let args: Args = match parse_args(NAME, arguments, EXPECTED) {
        Ok(args) => args,
        Err(output) => return output,
    };
    if args.patch.trim().is_empty() {
        return ToolOutput::failure(format!("{NAME}: `patch` is empty; give a unified diff"));
    }
    let patch = prepare(&args.patch);
    let git = match git_apply(&patch, ctx).await {
        Ok(git) => git,
        Err(output) => return output,
    };
    if git.success {
        ToolOutput::success(applied(&git))
    } else {
        ToolOutput::failure(rejected(&patch, &git))
    }
}

/// What `git apply` said.
struct GitApply {
    success: bool,
    /// `--numstat` and `--summary` lines.
    stdout: String,
    /// `--verbose` progress, warnings and errors.
    stderr: String,
}

/// Separates git's standard error from its standard output in the sandbox's combined output.
const STDERR_MARK: &str = "\n@@nightshift: git apply stderr@@\n";

/// Runs `git apply` inside the sandbox session, in the workspace, with the patch on its
/// standard input: the agent's own git and filesystem view, and nothing of the host's git
/// configuration. Standard error goes through a file so the two streams stay apart.
async fn git_apply(patch: &PreparedPatch, ctx: &ToolContext<'_>) -> Result<GitApply, ToolOutput> {
    let script = format!(
        "err=$(mktemp) || exit 125\n\
         LC_ALL=C GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null \
         GIT_CEILING_DIRECTORIES=\"$(dirname \"$PWD\")\" \
         git apply --numstat --summary --apply --verbose --recount --whitespace=nowarn -p{} - 2>\"$err\"\n\
         status=$?\n\
         printf '{}'\n\
         cat \"$err\"; rm -f \"$err\"\n\
         exit $status\n",
        patch.strip,
        STDERR_MARK.replace('\n', "\\n"),
    );
    let mut request = ExecRequest::new(script);
    request.stdin = Some(patch.text.clone().into_bytes());
    request.timeout = GIT_TIMEOUT;
    request.output_limit = 1024 * 1024;
    let output = ctx.session.exec(request, ctx.cancel).await.map_err(|err| {
        ToolOutput::failure(format!(
            "{NAME}: could not run `git apply` in the sandbox ({err}); nothing was changed. Make \
             the change with edit_file or write_file instead."
        ))
    })?;
    match output.status {
        ExitStatus::TimedOut => {
            return Err(ToolOutput::failure(format!(
                "{NAME}: `git apply` did not finish within {}s and was stopped; check the \
                 workspace with shell (`git status`) before retrying.",
                GIT_TIMEOUT.as_secs()
            )));
        }
        ExitStatus::Cancelled => return Err(ToolOutput::failure(format!("{NAME}: [cancelled]"))),
        ExitStatus::Exited(127) => {
            return Err(ToolOutput::failure(format!(
                "{NAME}: git is not installed in the sandbox; nothing was changed. Make the \
                 change with edit_file or write_file instead."
            )));
        }
        ExitStatus::Exited(_) | ExitStatus::Signaled(_) | ExitStatus::LimitExceeded(_) => {}
    }
    let (stdout, stderr) = output
        .output
        .split_once(STDERR_MARK)
        .map_or((output.output.as_str(), ""), |(out, err)| (out, err));
    Ok(GitApply {
        success: output.status.success(),
        stdout: stdout.to_string(),
        stderr: stderr.to_string(),
    })
}

/// The success message: every file with its kind of change and line counts.
fn applied(git: &GitApply) -> String {
    let mut created = BTreeSet::new();
    let mut deleted = BTreeSet::new();
    let mut stats = Vec::new();
    for line in git.stdout.lines() {
        if let Some(path) = summary_path(line, " create mode ") {
            created.insert(path);
        } else if let Some(path) = summary_path(line, " delete mode ") {
            deleted.insert(path);
        } else if let [added, removed, path] = line.splitn(3, '\t').collect::<Vec<_>>()[..] {
            stats.push((added, removed, path));
        }
    }
    let noun = if stats.len() == 1 { "file" } else { "files" };
    let mut text = format!("Applied the patch: {} {noun} changed.\n", stats.len());
    for (added, removed, path) in &stats {
        let kind = if created.contains(path) {
            "created"
        } else if deleted.contains(path) {
            "deleted"
        } else if path.contains(" => ") {
            "renamed"
        } else {
            "modified"
        };
        let counts = if *added == "-" {
            "binary".to_string()
        } else {
            format!("+{added} -{removed}")
        };
        text.push_str(&format!("{kind} {path} ({counts})\n"));
    }
    // Hunks applied at an offset, and warnings: worth knowing, not worth failing for.
    for line in git.stderr.lines().filter(|line| !is_progress(line)) {
        text.push_str(&format!("note: {line}\n"));
    }
    text.truncate(text.trim_end().len());
    text
}

/// The path of a `--summary` line such as ` create mode 100644 src/new.rs`.
fn summary_path<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    line.strip_prefix(prefix)?
        .split_once(' ')
        .map(|(_mode, path)| path)
}

/// Lines of git's output that say nothing the model needs: progress, and the warning our own
/// file separators cause.
fn is_progress(line: &str) -> bool {
    line.starts_with("Checking patch ")
        || line.starts_with("Applied patch ")
        || line.is_empty()
        || (line.starts_with("warning: recount: unexpected line: ")
            && line.ends_with(FILE_SEPARATOR))
}

/// The failure message: what failed where, git's own words, and what to do next.
fn rejected(patch: &PreparedPatch, git: &GitApply) -> String {
    let mut text = format!("{NAME}: the patch was not applied; no file was changed.\n");
    let mut hints = Vec::new();
    let mut searched: Vec<&str> = Vec::new();
    let mut in_search = false;
    let mut details = Vec::new();
    for line in git.stderr.lines() {
        if line == "error: while searching for:" {
            in_search = true;
            searched.clear();
            continue;
        }
        if let Some(location) = line.strip_prefix("error: patch failed: ") {
            in_search = false;
            while searched.last().is_some_and(|l| l.is_empty()) {
                searched.pop();
            }
            details.push(hunk_failure(patch, location, &searched));
            hints.push(
                "Re-read the file with read_file around that line and resend the whole patch \
                 with context (' ') and removed ('-') lines copied exactly from the current \
                 content, or make the change with edit_file.",
            );
            continue;
        }
        if in_search {
            searched.push(line);
            continue;
        }
        // "X: patch does not apply" repeats what the hunk failure above said.
        if is_progress(line) || line.ends_with(": patch does not apply") {
            continue;
        }
        details.push(renumber(patch, line));
        hints.extend(hint_for(line));
    }
    if details.is_empty() {
        details.push(format!(
            "git apply failed without saying why: {}",
            git.stderr.trim()
        ));
    }
    for detail in details {
        text.push_str(&detail);
        text.push('\n');
    }
    hints.dedup();
    for hint in hints {
        text.push_str("Hint: ");
        text.push_str(hint);
        text.push('\n');
    }
    text.truncate(text.trim_end().len());
    text
}

/// Explains `error: patch failed: FILE:LINE` with the hunk it was about.
fn hunk_failure(patch: &PreparedPatch, location: &str, searched: &[&str]) -> String {
    let (file, line) = location.rsplit_once(':').unwrap_or((location, ""));
    let mut text = match line
        .parse()
        .ok()
        .and_then(|line| patch.find_hunk(file, line))
    {
        Some((index, hunk)) => format!(
            "Hunk #{index} of `{file}` ({}) does not match the file's current content near \
             line {line}.",
            hunk.header
        ),
        None => format!(
            "A hunk of `{file}` does not match the file's current content near line {line}."
        ),
    };
    if !searched.is_empty() {
        text.push_str("\ngit looked for these lines and did not find them:\n");
        for line in searched.iter().take(MAX_SEARCHED_LINES) {
            text.push_str("    ");
            text.push_str(line);
            text.push('\n');
        }
        if searched.len() > MAX_SEARCHED_LINES {
            text.push_str(&format!(
                "    [... {} more lines]\n",
                searched.len() - MAX_SEARCHED_LINES
            ));
        }
        text.pop();
    }
    text
}

/// git's "corrupt patch at line N" counts lines of what it was sent; the model needs them
/// counted in what it wrote.
fn renumber(patch: &PreparedPatch, line: &str) -> String {
    const MARK: &str = "corrupt patch at line ";
    let Some(at) = line.find(MARK) else {
        return line.to_string();
    };
    let start = at + MARK.len();
    let digits = line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .count();
    match line[start..start + digits].parse::<usize>() {
        Ok(number) => format!(
            "{}{}{}",
            &line[..start],
            patch.original_line(number),
            &line[start + digits..]
        ),
        Err(_) => line.to_string(),
    }
}

fn hint_for(line: &str) -> Option<&'static str> {
    if line.contains("corrupt patch at line") {
        Some(
            "The patch is malformed at that line (counted from the first line of `patch`): \
             every hunk line must start with ' ', '+' or '-' (an empty context \
             line is a single space) and each hunk needs a header like `@@ -12,5 +12,6 @@`.",
        )
    } else if line.contains("No valid patches in input") {
        Some(
            "No file headers or hunks were found: each file needs a `--- a/path` line and a \
             `+++ b/path` line before its hunks, and each hunk a header with line numbers like \
             `@@ -12,5 +12,6 @@`.",
        )
    } else if line.contains("No such file or directory") || line.contains("does not exist") {
        Some(
            "A file the patch modifies does not exist: check the path with list_files (paths \
             are relative to the workspace root), or create the file with `--- /dev/null`.",
        )
    } else if line.contains("already exists") {
        Some(
            "The patch creates a file that already exists: patch it as a modification, or \
             replace it with write_file.",
        )
    } else if line.contains("invalid path") || line.contains("beyond a symbolic link") {
        Some(
            "Patch paths must be relative to the workspace root, stay inside it, not go \
             through symlinks and not touch `.git/`.",
        )
    } else {
        None
    }
}
