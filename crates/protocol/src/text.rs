//! Cutting long text to size for the model and the log, keeping both ends: the start of a
//! command's output says what ran, the end says how it ended. And showing text that came from a
//! repository (its commands' output, its servers' words) on a terminal without letting it
//! drive the terminal.

/// `text` without control characters other than newlines and tabs, nor bidirectional
/// overrides: each is replaced by U+FFFD. What a repository's code printed reaches terminals
/// (`nightshift logs`, `show`, `env check --probe`), where an escape sequence could retitle the
/// window, write the clipboard or hide lines, and an override could reorder what is shown.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| (c.is_control() && c != '\n' && c != '\t') || is_bidi_override(c);
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    text.chars()
        .map(|c| if unsafe_char(c) { '\u{FFFD}' } else { c })
        .collect::<String>()
        .into()
}

fn is_bidi_override(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// The result of [`truncate_middle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncated {
    pub text: String,
    /// How many bytes of the input were left out (0 when it fit).
    pub omitted_bytes: usize,
}

/// Keeps at most `max_bytes` of `text`: its head and its tail, split evenly, with a marker line
/// between them saying how many bytes and lines were left out. Cuts only at char boundaries,
/// preferring line boundaries when one is near.
pub fn truncate_middle(text: &str, max_bytes: usize) -> Truncated {
    if text.len() <= max_bytes {
        return Truncated {
            text: text.to_string(),
            omitted_bytes: 0,
        };
    }
    let half = max_bytes / 2;
    let mut head_end = floor_char_boundary(text, half);
    if let Some(newline) = text[..head_end].rfind('\n')
        && newline >= head_end / 2
    {
        head_end = newline + 1;
    }
    let mut tail_start = ceil_char_boundary(text, text.len() - half);
    if let Some(newline) = text[tail_start..].find('\n')
        && newline < half / 2
    {
        tail_start += newline + 1;
    }
    let omitted = &text[head_end..tail_start];
    let omitted_lines = omitted.matches('\n').count();
    let marker = format!(
        "\n[... {} bytes ({} lines) omitted ...]\n",
        omitted.len(),
        omitted_lines
    );
    let mut out = String::with_capacity(head_end + marker.len() + text.len() - tail_start);
    out.push_str(&text[..head_end]);
    out.push_str(&marker);
    out.push_str(&text[tail_start..]);
    Truncated {
        text: out,
        omitted_bytes: omitted.len(),
    }
}

/// The largest character boundary of `text` at or before byte `index` (at most its length).
pub fn floor_char_boundary(text: &str, index: usize) -> usize {
    let mut index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

fn ceil_char_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index += 1;
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_untouched() {
        let cut = truncate_middle("hello", 10);
        assert_eq!(
            cut,
            Truncated {
                text: "hello".into(),
                omitted_bytes: 0
            }
        );
    }

    #[test]
    fn long_text_keeps_head_and_tail_and_says_what_was_cut() {
        let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        let cut = truncate_middle(&text, 200);
        assert!(cut.text.starts_with("line 0\n"));
        assert!(cut.text.ends_with("line 999\n"));
        assert!(cut.omitted_bytes > 0);
        assert!(
            cut.text
                .contains(&format!("[... {} bytes", cut.omitted_bytes))
        );
        assert!(cut.text.len() < 200 + 60);
    }

    #[test]
    fn never_splits_a_character() {
        let text = "é".repeat(500);
        let cut = truncate_middle(&text, 101);
        assert!(cut.text.starts_with('é'));
        assert!(cut.text.ends_with('é'));
        assert_eq!(
            cut.omitted_bytes + cut.text.matches('é').count() * 2,
            text.len()
        );
    }

    #[test]
    fn printable_text_cannot_drive_a_terminal() {
        assert_eq!(printable("plain\tline\n"), "plain\tline\n");
        assert_eq!(
            printable("ok\x1b]0;title\x07\x1b[2Jdone\r\u{202E}x\u{85}"),
            "ok\u{FFFD}]0;title\u{FFFD}\u{FFFD}[2Jdone\u{FFFD}\u{FFFD}x\u{FFFD}"
        );
    }
}
