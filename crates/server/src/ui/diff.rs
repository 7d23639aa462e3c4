//! The diff viewer: the task's patch (the same blob `GET /api/tasks/{id}/diff` serves) parsed
//! into files and hunks, shown unified or side by side with line numbers. Large and generated
//! files start collapsed; binary files are named, not shown.

use maud::{Markup, PreEscaped, html};

/// Changed lines past which a file starts collapsed.
const LARGE_FILE_LINES: usize = 400;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineKind {
    Context,
    Added,
    Removed,
}

#[derive(Debug)]
pub(crate) struct Line {
    pub kind: LineKind,
    pub old: Option<u32>,
    pub new: Option<u32>,
    pub text: String,
    /// The line highlighted, escaped, as HTML (see [`super::highlight`]); `None` shows `text`.
    pub html: Option<String>,
}

impl Line {
    fn code(&self) -> Markup {
        match &self.html {
            Some(html) => PreEscaped(html.clone()),
            None => html! { (self.text) },
        }
    }
}

#[derive(Debug)]
pub(crate) struct Hunk {
    pub header: String,
    pub lines: Vec<Line>,
}

#[derive(Debug, Default)]
pub(crate) struct FileDiff {
    pub path: String,
    pub binary: bool,
    pub added: u32,
    pub removed: u32,
    pub hunks: Vec<Hunk>,
}

impl FileDiff {
    /// Lock files and the like: their changes are rarely read line by line.
    fn generated(&self) -> bool {
        let name = self.path.rsplit('/').next().unwrap_or(&self.path);
        name.ends_with(".lock")
            || name.ends_with(".min.js")
            || name.ends_with(".min.css")
            || matches!(name, "package-lock.json" | "pnpm-lock.yaml" | "go.sum")
            || self.path.contains("/generated/")
    }

    fn collapsed(&self) -> bool {
        self.generated() || (self.added + self.removed) as usize > LARGE_FILE_LINES
    }
}

/// `-12,3` or `+4` in a hunk header: the first line number.
fn start_of(range: &str) -> u32 {
    range[1..]
        .split(',')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Parses a `git diff` patch. Anything it does not understand is skipped, not trusted.
pub(crate) fn parse(patch: &str) -> Vec<FileDiff> {
    let mut files: Vec<FileDiff> = Vec::new();
    let (mut old, mut new) = (0u32, 0u32);
    for line in patch.lines() {
        if let Some(rest) = line.strip_prefix("diff --git ") {
            let path = rest.split_once(" b/").map_or(rest, |(_, b)| b).to_string();
            files.push(FileDiff {
                path,
                ..FileDiff::default()
            });
            continue;
        }
        let Some(file) = files.last_mut() else {
            continue;
        };
        let in_header = file.hunks.is_empty();
        if in_header && (line.starts_with("Binary files ") || line == "GIT binary patch") {
            file.binary = true;
        } else if in_header && (line.starts_with("+++ ") || line.starts_with("--- ")) {
            if let Some(path) = line.strip_prefix("+++ b/") {
                file.path = path.to_string();
            }
        } else if line.starts_with("@@") {
            let mut parts = line.split_whitespace().skip(1);
            old = parts.next().map_or(0, start_of);
            new = parts.next().map_or(0, start_of);
            file.hunks.push(Hunk {
                header: line.to_string(),
                lines: Vec::new(),
            });
        } else if let Some(hunk) = file.hunks.last_mut() {
            let (kind, text) = match line.chars().next() {
                Some('+') => (LineKind::Added, &line[1..]),
                Some('-') => (LineKind::Removed, &line[1..]),
                Some(' ') => (LineKind::Context, &line[1..]),
                Some(_) | None => continue,
            };
            let (o, n) = match kind {
                LineKind::Added => {
                    file.added += 1;
                    new += 1;
                    (None, Some(new - 1))
                }
                LineKind::Removed => {
                    file.removed += 1;
                    old += 1;
                    (Some(old - 1), None)
                }
                LineKind::Context => {
                    old += 1;
                    new += 1;
                    (Some(old - 1), Some(new - 1))
                }
            };
            hunk.lines.push(Line {
                kind,
                old: o,
                new: n,
                text: text.to_string(),
                html: None,
            });
        }
    }
    files
}

fn class(kind: LineKind) -> &'static str {
    match kind {
        LineKind::Context => "ctx",
        LineKind::Added => "add",
        LineKind::Removed => "del",
    }
}

fn sign(kind: LineKind) -> &'static str {
    match kind {
        LineKind::Context => " ",
        LineKind::Added => "+",
        LineKind::Removed => "-",
    }
}

fn number(n: Option<u32>) -> String {
    n.map(|n| n.to_string()).unwrap_or_default()
}

/// The file tree with per-file counts.
pub(crate) fn tree(files: &[FileDiff]) -> Markup {
    html! {
        nav.filetree aria-label="Changed files" {
            ul {
                @for (n, file) in files.iter().enumerate() {
                    li {
                        a href={ "#file-" (n) } { (file.path) }
                        " "
                        @if file.binary { span.badge { "binary" } }
                        @else {
                            span.add { "+" (file.added) } " " span.del { "−" (file.removed) }
                        }
                    }
                }
            }
        }
    }
}

/// Every file, unified (`split == false`) or side by side.
pub(crate) fn files(files: &[FileDiff], split: bool) -> Markup {
    html! {
        @for (n, file) in files.iter().enumerate() {
            details.file id={ "file-" (n) } open[!file.collapsed()] {
                summary {
                    code { (file.path) }
                    " "
                    @if file.binary { span.badge { "binary file, not shown" } }
                    @else {
                        span.add { "+" (file.added) } " " span.del { "−" (file.removed) }
                        @if file.collapsed() { " " span.badge { "collapsed: large or generated" } }
                    }
                }
                @if !file.binary {
                    div.scroll {
                        table.diff.split[split] {
                            @for hunk in &file.hunks {
                                tr.hunk { td colspan=(if split { 4 } else { 3 }) { (hunk.header) } }
                                @if split { (split_rows(&hunk.lines)) } @else {
                                    @for line in &hunk.lines {
                                        tr class=(class(line.kind)) {
                                            td.num { (number(line.old)) }
                                            td.num { (number(line.new)) }
                                            td.code { span.sign { (sign(line.kind)) } (line.code()) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Side-by-side rows: context on both sides, a run of removals paired with the additions after it.
fn split_rows(lines: &[Line]) -> Markup {
    let mut rows: Vec<(Option<&Line>, Option<&Line>)> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].kind == LineKind::Context {
            rows.push((Some(&lines[i]), Some(&lines[i])));
            i += 1;
            continue;
        }
        let removed_start = i;
        while i < lines.len() && lines[i].kind == LineKind::Removed {
            i += 1;
        }
        let added_start = i;
        while i < lines.len() && lines[i].kind == LineKind::Added {
            i += 1;
        }
        let removed = &lines[removed_start..added_start];
        let added = &lines[added_start..i];
        for k in 0..removed.len().max(added.len()) {
            rows.push((removed.get(k), added.get(k)));
        }
    }
    html! {
        @for (left, right) in rows {
            tr {
                @match left {
                    Some(l) => { td.num { (number(l.old)) } td class={ "code " (class(l.kind)) } { (l.code()) } }
                    None => { td.num {} td.code.empty {} }
                }
                @match right {
                    Some(r) => { td.num { (number(r.new)) } td class={ "code " (class(r.kind)) } { (r.code()) } }
                    None => { td.num {} td.code.empty {} }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATCH: &str = "diff --git a/calc.sh b/calc.sh\nindex 1..2 100644\n--- a/calc.sh\n+++ b/calc.sh\n@@ -1,3 +1,3 @@\n #!/bin/sh\n-add() { echo $(($1 - $2)); }\n+add() { echo $(($1 + $2)); }\n add \"$@\"\ndiff --git a/logo.png b/logo.png\nBinary files a/logo.png and b/logo.png differ\n";

    #[test]
    fn parses_files_hunks_and_numbers() {
        let files = parse(PATCH);
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].path, "calc.sh");
        assert_eq!((files[0].added, files[0].removed), (1, 1));
        let lines = &files[0].hunks[0].lines;
        assert_eq!(lines[1].old, Some(2));
        assert_eq!(lines[2].new, Some(2));
        assert_eq!(lines[3].old, Some(3));
        assert!(files[1].binary);
        assert_eq!(files[1].path, "logo.png");
    }

    #[test]
    fn large_and_generated_files_start_collapsed() {
        let big: String = (0..401).map(|n| format!("+line {n}\n")).collect();
        let patch = format!(
            "diff --git a/big.txt b/big.txt\n--- /dev/null\n+++ b/big.txt\n@@ -0,0 +1,401 @@\n{big}\
             diff --git a/Cargo.lock b/Cargo.lock\n--- a/Cargo.lock\n+++ b/Cargo.lock\n@@ -1 +1 @@\n-a\n+b\n\
             diff --git a/src/a.rs b/src/a.rs\n--- a/src/a.rs\n+++ b/src/a.rs\n@@ -1 +1 @@\n-a\n+b\n"
        );
        let files = parse(&patch);
        let collapsed: Vec<bool> = files.iter().map(FileDiff::collapsed).collect();
        assert_eq!(collapsed, [true, true, false]);
        assert_eq!(files[0].added, 401);
    }

    #[test]
    fn renders_both_views_escaped() {
        let patch = "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-<b>old</b>\n+<script>new</script>\n";
        for split in [false, true] {
            let html = files(&parse(patch), split).into_string();
            assert!(html.contains("&lt;script&gt;new&lt;/script&gt;"), "{html}");
            assert!(!html.contains("<script>"));
        }
    }
}
