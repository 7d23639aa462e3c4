//! The shell-like word rules of a Dockerfile's instructions: splitting `ENV a="b c" d=e` into
//! words with quotes and escapes, and substituting `$VAR`, `${VAR}`, `${VAR:-word}` and
//! `${VAR:+word}` (and their forms without the colon) from the build's variables.

/// Substitutes the variables of `vars` in `text` as Docker does in the instructions it
/// expands (not in `RUN`, which its shell expands). An unset variable is empty; `\$` is a
/// literal dollar sign.
pub fn expand(text: &str, vars: &[(String, String)]) -> Result<String, String> {
    let lookup = |name: &str| {
        vars.iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'$') => {
                out.push('$');
                chars.next();
            }
            '$' => match chars.peek() {
                Some('{') => {
                    chars.next();
                    let mut inner = String::new();
                    let mut depth = 1;
                    for c in chars.by_ref() {
                        match c {
                            '{' => depth += 1,
                            '}' => {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            _ => {}
                        }
                        inner.push(c);
                    }
                    if depth != 0 {
                        return Err(format!("`${{{inner}` is missing its closing brace"));
                    }
                    out.push_str(&braced(&inner, &lookup, vars)?);
                }
                Some(&next) if next == '_' || next.is_ascii_alphabetic() => {
                    let mut name = String::new();
                    while let Some(&c) = chars.peek() {
                        if c == '_' || c.is_ascii_alphanumeric() {
                            name.push(c);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    out.push_str(lookup(&name).unwrap_or(""));
                }
                _ => out.push('$'),
            },
            _ => out.push(c),
        }
    }
    Ok(out)
}

/// `${...}`: a name, optionally followed by `:-`, `-`, `:+` or `+` and a word (expanded in
/// turn).
fn braced<'v>(
    inner: &str,
    lookup: &impl Fn(&str) -> Option<&'v str>,
    vars: &[(String, String)],
) -> Result<String, String> {
    let end = inner
        .find(|c: char| !(c == '_' || c.is_ascii_alphanumeric()))
        .unwrap_or(inner.len());
    let (name, rest) = inner.split_at(end);
    if name.is_empty() {
        return Err(format!("`${{{inner}}}` names no variable"));
    }
    let value = lookup(name);
    let (colon, rest) = match rest.strip_prefix(':') {
        Some(rest) => (true, rest),
        None => (false, rest),
    };
    let set = match value {
        Some(value) => !(colon && value.is_empty()),
        None => false,
    };
    match rest.chars().next() {
        None if !colon => Ok(value.unwrap_or("").to_string()),
        Some('-') => match set {
            true => Ok(value.unwrap_or("").to_string()),
            false => expand(&rest[1..], vars),
        },
        Some('+') => match set {
            true => expand(&rest[1..], vars),
            false => Ok(String::new()),
        },
        _ => Err(format!(
            "`${{{inner}}}` is not a substitution Dockerfiles have (`${{NAME}}`, `${{NAME:-default}}`, `${{NAME:+alternative}}`)"
        )),
    }
}

/// Splits `text` into words at unquoted whitespace, removing quotes (`"..."`, `'...'`) and
/// backslash escapes as Docker does for `ENV`, `ARG` and `LABEL`.
pub fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\\' => {
                in_word = true;
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            '"' | '\'' => {
                in_word = true;
                let quote = c;
                let mut closed = false;
                while let Some(c) = chars.next() {
                    if c == quote {
                        closed = true;
                        break;
                    }
                    if c == '\\' && quote == '"' {
                        match chars.next() {
                            Some(next @ ('"' | '\\' | '$')) => word.push(next),
                            Some(next) => {
                                word.push('\\');
                                word.push(next);
                            }
                            None => word.push('\\'),
                        }
                        continue;
                    }
                    word.push(c);
                }
                if !closed {
                    return Err(format!("a {quote} quote is not closed"));
                }
            }
            _ => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Quotes `word` for a POSIX shell.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn vars() -> Vec<(String, String)> {
        vec![("A".into(), "one".into()), ("EMPTY".into(), String::new())]
    }

    #[test]
    fn expands_the_forms_dockerfiles_use() {
        let cases = [
            ("$A/x", "one/x"),
            ("${A}x", "onex"),
            ("${B:-two}", "two"),
            ("${EMPTY:-two}", "two"),
            ("${EMPTY-two}", ""),
            ("${A:+set}", "set"),
            ("${B:+set}", ""),
            ("\\$A", "$A"),
            ("${B:-${A}}", "one"),
            ("cost $5", "cost $5"),
        ];
        for (text, want) in cases {
            assert_eq!(expand(text, &vars()).unwrap(), want, "{text}");
        }
        assert!(expand("${A", &vars()).is_err());
        assert!(expand("${A/x/y}", &vars()).is_err());
    }

    #[test]
    fn splits_words_with_quotes_and_escapes() {
        assert_eq!(
            split_words(r#"A="b c" D=e\ f G='h "i"'"#).unwrap(),
            vec!["A=b c", "D=e f", "G=h \"i\""]
        );
        assert!(split_words("A=\"open").is_err());
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("/usr/bin"), "/usr/bin");
    }
}
