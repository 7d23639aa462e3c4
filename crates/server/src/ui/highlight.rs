//! Syntax highlighting of diff lines with syntect: the language comes from the file's
//! extension, and each line becomes escaped text in `<span class="hl-…">` scopes that the
//! stylesheet colours (light and dark). Each side of a hunk is parsed in order, so a string or
//! comment that spans lines stays one; a hunk starts fresh, since it starts mid-file.

use std::sync::OnceLock;

use syntect::html::{ClassStyle, line_tokens_to_classed_spans};
use syntect::parsing::{ParseState, ScopeStack, SyntaxReference, SyntaxSet};

use super::diff::{FileDiff, LineKind};

/// Files with more changed lines than this are shown plain: highlighting them would cost more
/// than reading them gains.
const MAX_LINES: usize = 5_000;
/// Lines longer than this (minified code, data) are shown plain, and so is the rest of the hunk.
const MAX_LINE_LENGTH: usize = 2_000;

const STYLE: ClassStyle = ClassStyle::SpacedPrefixed { prefix: "hl-" };

fn syntaxes() -> &'static SyntaxSet {
    static SET: OnceLock<SyntaxSet> = OnceLock::new();
    SET.get_or_init(SyntaxSet::load_defaults_nonewlines)
}

/// One side of a hunk being parsed.
struct Side {
    parser: ParseState,
    stack: ScopeStack,
}

impl Side {
    fn new(syntax: &SyntaxReference) -> Side {
        Side {
            parser: ParseState::new(syntax),
            stack: ScopeStack::new(),
        }
    }

    /// `line` as balanced HTML: the scopes still open from earlier lines are reopened first and
    /// everything is closed at the end, so each table cell stands alone.
    fn line(&mut self, line: &str) -> Option<String> {
        if line.len() > MAX_LINE_LENGTH {
            return None;
        }
        let ops = self.parser.parse_line(line, syntaxes()).ok()?;
        let mut html = String::new();
        let reopened = self.stack.as_slice().len();
        for scope in self.stack.as_slice() {
            html.push_str("<span class=\"");
            let classes: Vec<String> = scope
                .build_string()
                .split('.')
                .map(|atom| format!("hl-{atom}"))
                .collect();
            html.push_str(&classes.join(" "));
            html.push_str("\">");
        }
        let (spans, delta) =
            line_tokens_to_classed_spans(line, &ops, STYLE, &mut self.stack).ok()?;
        html.push_str(&spans);
        let open = reopened as isize + delta;
        for _ in 0..open.max(0) {
            html.push_str("</span>");
        }
        Some(html)
    }
}

/// Fills in the highlighted HTML of every line of `files` whose language is known.
pub(crate) fn highlight(files: &mut [FileDiff]) {
    let set = syntaxes();
    for file in files.iter_mut() {
        if file.binary || (file.added + file.removed) as usize > MAX_LINES {
            continue;
        }
        let name = file.path.rsplit('/').next().unwrap_or(&file.path);
        let extension = name.rsplit_once('.').map_or(name, |(_, ext)| ext);
        let Some(syntax) = set.find_syntax_by_extension(extension) else {
            continue;
        };
        for hunk in &mut file.hunks {
            let (mut old, mut new) = (Side::new(syntax), Side::new(syntax));
            for line in &mut hunk.lines {
                let html = match line.kind {
                    LineKind::Removed => old.line(&line.text),
                    LineKind::Added => new.line(&line.text),
                    LineKind::Context => {
                        let _ = old.line(&line.text);
                        new.line(&line.text)
                    }
                };
                match html {
                    Some(html) => line.html = Some(html),
                    // A line the parser could not take: the rest of the hunk stays plain.
                    None => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::diff::parse;
    use super::*;

    #[test]
    fn rust_is_highlighted_and_escaped() {
        let patch = "diff --git a/src/a.rs b/src/a.rs\n--- a/src/a.rs\n+++ b/src/a.rs\n@@ -1,2 +1,3 @@\n fn main() {\n-    let s = \"<script>alert(1)</script>\";\n+    /* a comment\n+       <img src=x onerror=alert(2)> */\n";
        let mut files = parse(patch);
        highlight(&mut files);
        let lines = &files[0].hunks[0].lines;
        let keyword = lines[0].html.as_deref().unwrap_or_default();
        assert!(
            keyword.contains("hl-storage") || keyword.contains("hl-keyword"),
            "{keyword}"
        );
        let string = lines[1].html.as_deref().unwrap_or_default();
        assert!(string.contains("hl-string"), "{string}");
        assert!(string.contains("&lt;script&gt;"), "{string}");
        assert!(!string.contains("<script"), "{string}");
        // The comment goes on into the next line, whose spans are balanced.
        let comment = lines[3].html.as_deref().unwrap_or_default();
        let opened = comment.find("hl-comment").unwrap_or(usize::MAX);
        assert!(opened < comment.find("&lt;img").unwrap_or(0), "{comment}");
        assert!(!comment.contains("<img"), "{comment}");
        assert_eq!(
            comment.matches("<span").count(),
            comment.matches("</span>").count()
        );
    }

    #[test]
    fn unknown_languages_stay_plain() {
        let mut files = parse(
            "diff --git a/x.unknownext b/x.unknownext\n--- a/x\n+++ b/x.unknownext\n@@ -1 +1 @@\n-a\n+b\n",
        );
        highlight(&mut files);
        assert!(files[0].hunks[0].lines.iter().all(|l| l.html.is_none()));
    }
}
