//! Branch names: `nightshift/<short-id>-<slug>`, where the slug is a readable piece of the
//! prompt that git accepts in a ref name.

/// The most characters of prompt the slug keeps.
const SLUG_MAX: usize = 40;

/// Lowercase ASCII words of `text` joined by dashes, at most 40 characters, cut at a word
/// boundary. Empty when the text has no ASCII letters or digits.
pub fn slugify(text: &str) -> String {
    let mut slug = String::new();
    for word in text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty())
    {
        let word = word.to_ascii_lowercase();
        let extra = if slug.is_empty() {
            word.len()
        } else {
            word.len() + 1
        };
        if slug.len() + extra > SLUG_MAX {
            if slug.is_empty() {
                slug.push_str(&word[..SLUG_MAX]);
            }
            break;
        }
        if !slug.is_empty() {
            slug.push('-');
        }
        slug.push_str(&word);
    }
    slug
}

/// The task branch for a short id and a prompt.
pub fn branch_name(short_id: &str, prompt: &str) -> String {
    let slug = slugify(prompt);
    if slug.is_empty() {
        format!("nightshift/{short_id}")
    } else {
        format!("nightshift/{short_id}-{slug}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_readable_and_short() {
        assert_eq!(
            slugify("Fix the off-by-one in `sum()`!"),
            "fix-the-off-by-one-in-sum"
        );
        assert_eq!(slugify("日本語だけ"), "");
        let long = slugify("make the parser handle deeply nested brackets without recursion");
        assert!(long.len() <= 40, "{long}");
        assert!(!long.ends_with('-'));
        assert_eq!(slugify(&"a".repeat(100)).len(), 40);
    }

    #[test]
    fn branch_names() {
        assert_eq!(
            branch_name("abcd1234", "Fix bug"),
            "nightshift/abcd1234-fix-bug"
        );
        assert_eq!(branch_name("abcd1234", "???"), "nightshift/abcd1234");
    }
}
