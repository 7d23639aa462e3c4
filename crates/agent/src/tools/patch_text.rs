//! Reading just enough of a model-written unified diff to hand it to `git apply` in good shape
//! and to explain its failures: which file each hunk belongs to and where it starts.
//!
//! `git apply` does the real parsing and applying; this only cleans up the usual wrapping
//! (Markdown fences, a missing final newline), picks the path prefix depth, and marks where one
//! file's hunks end in diffs without `diff --git` lines: with `--recount`, git reads hunks
//! until a line that cannot belong to one, and the next file's `--- a/x` / `+++ b/x` header
//! reads like a removed and an added line.

/// The line put between one file's last hunk and the next file's header. git stops its recount
/// there (with a warning naming this line) and skips it as noise between patches.
pub(crate) const FILE_SEPARATOR: &str = "(nightshift: next file)";

/// A patch ready for `git apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PreparedPatch {
    /// The diff, unwrapped, ending with a newline.
    pub text: String,
    /// How many leading path components `git apply` strips (`-p`): 1 for `a/`/`b/` prefixes.
    pub strip: usize,
    pub files: Vec<FilePatch>,
    /// 0-based indexes in `text` of the [`FILE_SEPARATOR`] lines added.
    separators: Vec<usize>,
    /// Lines of the model's text before `text` starts (an opening fence and anything above).
    dropped_lines: usize,
}

/// The hunks of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FilePatch {
    /// The path as `git apply` reports it (prefix stripped).
    pub path: String,
    pub hunks: Vec<Hunk>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hunk {
    /// The first line of the old file the hunk covers, as in its header.
    pub old_start: u64,
    /// The `@@ ... @@` header line as written.
    pub header: String,
}

impl PreparedPatch {
    /// The 1-based index and header of the hunk of `path` starting at `old_start`.
    pub(crate) fn find_hunk(&self, path: &str, old_start: u64) -> Option<(usize, &Hunk)> {
        let file = self.files.iter().find(|file| file.path == path)?;
        file.hunks
            .iter()
            .enumerate()
            .find(|(_, hunk)| hunk.old_start == old_start)
            .map(|(index, hunk)| (index + 1, hunk))
    }

    /// The model's line number for line `line` (1-based) of `text`, which git reports.
    pub(crate) fn original_line(&self, line: usize) -> usize {
        let added = self
            .separators
            .iter()
            .filter(|&&at| at < line.saturating_sub(1))
            .count();
        line.saturating_sub(added) + self.dropped_lines
    }
}

/// Unwraps and inspects `raw`.
pub(crate) fn prepare(raw: &str) -> PreparedPatch {
    let (body, dropped_lines) = unfence(raw);
    let (mut text, separators) = separate_files(body);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let strip = prefix_depth(&text);
    let files = files(&text, strip);
    PreparedPatch {
        text,
        strip,
        files,
        separators,
        dropped_lines,
    }
}

/// `body` with a [`FILE_SEPARATOR`] line before every file header that directly follows a
/// hunk, and the indexes of the lines added.
fn separate_files(body: &str) -> (String, Vec<usize>) {
    let lines: Vec<&str> = body.split_inclusive('\n').collect();
    let trimmed: Vec<&str> = lines
        .iter()
        .map(|line| line.trim_end_matches(['\n', '\r']))
        .collect();
    let mut after_hunk = Vec::new();
    for (plus_line, _, _) in file_headers(&trimmed) {
        let minus_line = plus_line - 1;
        let follows_hunk = minus_line > 0 && {
            let previous = trimmed[minus_line - 1];
            previous.is_empty() || previous.starts_with([' ', '+', '-', '\\'])
        };
        if follows_hunk {
            after_hunk.push(minus_line);
        }
    }
    let mut text = String::with_capacity(body.len() + after_hunk.len() * 32);
    let mut separators = Vec::new();
    let mut written = 0;
    for (index, line) in lines.iter().enumerate() {
        if after_hunk.contains(&index) {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            separators.push(written);
            text.push_str(FILE_SEPARATOR);
            text.push('\n');
            written += 1;
        }
        text.push_str(line);
        written += 1;
    }
    (text, separators)
}

/// The content of the first Markdown code fence, or all of `raw` when there is none, with the
/// number of lines before it. Lines of a diff's body start with ` `, `+` or `-`, so an
/// unprefixed ``` line can only be a fence.
fn unfence(raw: &str) -> (&str, usize) {
    let mut start = None;
    let mut offset = 0;
    for (index, line) in raw.split_inclusive('\n').enumerate() {
        if line.starts_with("```") {
            match start {
                None => start = Some((offset + line.len(), index + 1)),
                Some((begin, dropped)) => return (&raw[begin..offset], dropped),
            }
        }
        offset += line.len();
    }
    match start {
        Some((begin, dropped)) => (&raw[begin..], dropped),
        None => (raw, 0),
    }
}

/// 1 when the paths carry git's `a/` and `b/` prefixes (or the patch has `diff --git`
/// headers), else 0, for plain `--- path` / `+++ path` diffs.
fn prefix_depth(text: &str) -> usize {
    if text.lines().any(|line| line.starts_with("diff --git ")) {
        return 1;
    }
    let lines: Vec<&str> = text.lines().collect();
    let paths: Vec<&str> = file_headers(&lines)
        .into_iter()
        .flat_map(|(_, old, new)| [old, new])
        .filter(|path| *path != "/dev/null")
        .collect();
    let prefixed = paths
        .iter()
        .any(|path| path.starts_with("a/") || path.starts_with("b/"));
    if paths.is_empty() || prefixed { 1 } else { 0 }
}

/// The `--- old` / `+++ new` header pairs as (index of the `+++` line, old path, new path). A
/// `--- ` line is a header only when a `+++ ` line follows it: in a hunk body it can also be a
/// removed line that started with `-- `.
fn file_headers<'a>(lines: &[&'a str]) -> Vec<(usize, &'a str, &'a str)> {
    lines
        .windows(2)
        .enumerate()
        .filter_map(|(index, pair)| {
            let old = pair[0].strip_prefix("--- ").map(header_path)?;
            let new = pair[1].strip_prefix("+++ ").map(header_path)?;
            Some((index + 1, old, new))
        })
        .collect()
}

/// A header's path, without a trailing timestamp or quotes.
fn header_path(rest: &str) -> &str {
    let path = rest.split('\t').next().unwrap_or(rest).trim_end();
    path.strip_prefix('"')
        .and_then(|p| p.strip_suffix('"'))
        .unwrap_or(path)
}

fn strip_components(path: &str, strip: usize) -> String {
    let mut rest = path;
    for _ in 0..strip {
        match rest.split_once('/') {
            Some((_, tail)) => rest = tail,
            None => break,
        }
    }
    rest.to_string()
}

fn files(text: &str, strip: usize) -> Vec<FilePatch> {
    let lines: Vec<&str> = text.lines().collect();
    let headers = file_headers(&lines);
    let mut next_header = headers.iter().peekable();
    let mut files: Vec<FilePatch> = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        if let Some(&&(at, old, new)) = next_header.peek()
            && at == index
        {
            next_header.next();
            let path = if new == "/dev/null" { old } else { new };
            files.push(FilePatch {
                path: strip_components(path, strip),
                hunks: Vec::new(),
            });
            continue;
        }
        if line.starts_with("@@ ") {
            let old_start = line
                .strip_prefix("@@ -")
                .and_then(|rest| rest.split([',', ' ']).next())
                .and_then(|start| start.parse().ok());
            if let (Some(file), Some(old_start)) = (files.last_mut(), old_start) {
                file.hunks.push(Hunk {
                    old_start,
                    header: hunk_header(line),
                });
            }
        }
    }
    files
}

/// The `@@ -a,b +c,d @@` part of a hunk header, without the function context after it.
fn hunk_header(line: &str) -> String {
    match line[2..].find("@@") {
        Some(end) => line[..end + 4].to_string(),
        None => line.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn unwraps_fences_and_adds_the_final_newline() {
        let patch = prepare("Here it is:\n```diff\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n```\n");
        assert_eq!(patch.text, "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n");
        let bare = prepare("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b");
        assert!(bare.text.ends_with("+b\n"));
    }

    #[test]
    fn picks_the_prefix_depth() {
        assert_eq!(prepare("--- a/x\n+++ b/x\n").strip, 1);
        assert_eq!(prepare("--- src/x.rs\n+++ src/x.rs\n").strip, 0);
        assert_eq!(prepare("--- /dev/null\n+++ new.rs\n").strip, 0);
        assert_eq!(prepare("diff --git x x\n--- x\n+++ x\n").strip, 1);
    }

    #[test]
    fn finds_hunks_by_file_and_start() {
        let patch = prepare(
            "--- a/x.rs\n+++ b/x.rs\n@@ -1,2 +1,2 @@ fn main\n a\n-b\n+c\n@@ -10 +10 @@\n-d\n+e\n\
             --- /dev/null\n+++ b/new.rs\n@@ -0,0 +1 @@\n+n\n",
        );
        assert_eq!(patch.files.len(), 2);
        let (index, hunk) = patch.find_hunk("x.rs", 10).unwrap();
        assert_eq!((index, hunk.header.as_str()), (2, "@@ -10 +10 @@"));
        assert_eq!(
            patch.find_hunk("x.rs", 1).unwrap().1.header,
            "@@ -1,2 +1,2 @@"
        );
        assert_eq!(patch.files[1].path, "new.rs");
    }

    #[test]
    fn separates_files_after_hunks_and_maps_line_numbers_back() {
        let raw = "```diff\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n--- a/y\n+++ b/y\n@@ -1 +1 @@\n-c\n+d\n```\n";
        let patch = prepare(raw);
        assert_eq!(
            patch.text,
            format!(
                "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n{FILE_SEPARATOR}\n--- a/y\n+++ b/y\n@@ -1 +1 @@\n-c\n+d\n"
            )
        );
        assert_eq!(patch.files.len(), 2);
        // Line 10 of the text ("-c") is line 10 of the model's text: one fence line above, one
        // separator added.
        assert_eq!(patch.original_line(10), 10);
        assert_eq!(patch.original_line(3), 4);

        let git =
            prepare("diff --git a/x b/x\nindex 1..2\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n");
        assert!(!git.text.contains(FILE_SEPARATOR));
    }

    #[test]
    fn a_removed_line_starting_with_dashes_is_not_a_header() {
        let patch =
            prepare("--- a/q.sql\n+++ b/q.sql\n@@ -1,2 +1,1 @@\n--- old comment\n select 1;\n");
        assert_eq!(patch.files.len(), 1);
        assert_eq!(patch.files[0].hunks.len(), 1);
    }
}
