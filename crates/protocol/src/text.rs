//! Cutting long text to size for the model and the log, keeping both ends: the start of a
//! command's output says what ran, the end says how it ended.

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

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
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
}
