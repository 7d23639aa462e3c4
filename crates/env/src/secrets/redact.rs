//! Finding and replacing secret values in what a task produces, before it is stored, shown or
//! sent to the model. Every value is looked for in each of its [forms](super::forms) (plain,
//! reversed, base64, hex, URL-encoded), and across line breaks, since `base64` and `xxd -p`
//! wrap their output. The automata are built once per task.
//!
//! Redaction fails closed: a redactor whose automata could not be built withholds every text
//! and reports every secret as found, rather than letting anything through unchecked.

use std::borrow::Cow;
use std::io::Read;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use super::forms::forms;

/// What replaces a text that could not be checked for secrets.
pub const WITHHELD: &str = "[withheld: this text could not be checked for secrets]";

/// Replaces secret values, in every form, by `[secret:NAME]`.
#[derive(Clone)]
pub struct Redactor {
    matchers: Matchers,
    /// The secrets' names, in the order they were given.
    names: Vec<String>,
    /// Per pattern: the index of its secret in `names`.
    owners: Vec<usize>,
    /// Per secret: `[secret:NAME]`.
    replacements: Vec<String>,
}

#[derive(Clone)]
enum Matchers {
    /// No secrets: nothing to redact.
    None,
    Ready {
        /// Leftmost-longest, for replacing: a longer form wins where forms overlap.
        matcher: AhoCorasick,
        /// The same patterns for searching a stream (leftmost-longest matching cannot stream).
        detector: AhoCorasick,
    },
    /// The automata could not be built: everything is withheld.
    Unusable,
}

impl Redactor {
    /// A redactor for these `(name, value)` pairs. Values shorter than
    /// [`MIN_SECRET_LEN`](super::MIN_SECRET_LEN) are not redacted (`secret set` refuses them).
    pub fn new(secrets: &[(String, String)]) -> Redactor {
        let mut names = Vec::new();
        let mut patterns = Vec::new();
        let mut owners = Vec::new();
        for (name, value) in secrets {
            let forms = forms(value);
            if forms.is_empty() {
                continue;
            }
            owners.extend(std::iter::repeat_n(names.len(), forms.len()));
            patterns.extend(forms);
            names.push(name.clone());
        }
        let matchers = if patterns.is_empty() {
            Matchers::None
        } else {
            let matcher = AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns);
            match (matcher, AhoCorasick::new(&patterns)) {
                (Ok(matcher), Ok(detector)) => Matchers::Ready { matcher, detector },
                _ => Matchers::Unusable,
            }
        };
        Redactor {
            matchers,
            replacements: names
                .iter()
                .map(|name| format!("[secret:{name}]"))
                .collect(),
            names,
            owners,
        }
    }

    /// No secrets to redact.
    pub fn none() -> Redactor {
        Redactor::new(&[])
    }

    pub fn is_empty(&self) -> bool {
        matches!(self.matchers, Matchers::None)
    }

    fn owner(&self, pattern: aho_corasick::PatternID) -> Option<usize> {
        self.owners.get(pattern.as_usize()).copied()
    }

    /// `text` with every secret value, in every form, replaced by `[secret:NAME]`. A match
    /// that spans line breaks is replaced with them.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let matcher = match &self.matchers {
            Matchers::None => return Cow::Borrowed(text),
            Matchers::Unusable => return Cow::Owned(WITHHELD.to_string()),
            Matchers::Ready { matcher, .. } => matcher,
        };
        let view = Unwrapped::new(text);
        let mut redacted = String::new();
        let mut last = 0;
        let mut matched = false;
        for found in matcher.find_iter(view.text.as_ref()) {
            let (start, end) = view.original(found.start(), found.end());
            let replacement = self
                .owner(found.pattern())
                .and_then(|owner| self.replacements.get(owner));
            // Match bounds are character boundaries; if they ever were not, nothing of the
            // text goes out rather than a piece of a secret.
            let (Some(before), Some(replacement)) = (text.get(last..start), replacement) else {
                return Cow::Owned(WITHHELD.to_string());
            };
            redacted.push_str(before);
            redacted.push_str(replacement);
            last = end;
            matched = true;
        }
        if !matched {
            return Cow::Borrowed(text);
        }
        match text.get(last..) {
            Some(rest) => redacted.push_str(rest),
            None => return Cow::Owned(WITHHELD.to_string()),
        }
        Cow::Owned(redacted)
    }

    /// The names of the secrets whose values occur in `text`, in any form, sorted.
    pub fn found_in(&self, text: &str) -> Vec<String> {
        let detector = match &self.matchers {
            Matchers::None => return Vec::new(),
            Matchers::Unusable => return self.all_names(),
            Matchers::Ready { detector, .. } => detector,
        };
        let view = Unwrapped::new(text);
        let owners = detector
            .find_overlapping_iter(view.text.as_ref())
            .filter_map(|found| self.owner(found.pattern()));
        self.names_of(owners)
    }

    /// The name of a secret whose value occurs, in any form, in what `reader` yields, read
    /// through once in pieces (a value split between two reads, or by line breaks, is found
    /// too). Stops at the first.
    pub fn found_in_reader(&self, reader: impl Read) -> std::io::Result<Option<String>> {
        let detector = match &self.matchers {
            Matchers::None => return Ok(None),
            Matchers::Unusable => return Ok(self.names.first().cloned()),
            Matchers::Ready { detector, .. } => detector,
        };
        match detector.stream_find_iter(Unwrap(reader)).next() {
            Some(found) => {
                let owner = self.owner(found?.pattern());
                // An owner that is not there would be a bug; report some secret, not none.
                Ok(owner
                    .and_then(|owner| self.names.get(owner))
                    .or(self.names.first())
                    .cloned())
            }
            None => Ok(None),
        }
    }

    /// The names of the secrets whose values occur, in any form, in what `reader` yields, read
    /// through to its end; sorted.
    pub fn names_in_reader(&self, reader: impl Read) -> std::io::Result<Vec<String>> {
        let detector = match &self.matchers {
            Matchers::None => return Ok(Vec::new()),
            Matchers::Unusable => return Ok(self.all_names()),
            Matchers::Ready { detector, .. } => detector,
        };
        let mut owners = Vec::new();
        for found in detector.stream_find_iter(Unwrap(reader)) {
            owners.push(self.owner(found?.pattern()).unwrap_or(0));
        }
        Ok(self.names_of(owners.into_iter()))
    }

    fn names_of(&self, owners: impl Iterator<Item = usize>) -> Vec<String> {
        let mut owners: Vec<usize> = owners.collect();
        owners.sort_unstable();
        owners.dedup();
        let mut found: Vec<String> = owners
            .into_iter()
            .filter_map(|owner| self.names.get(owner).cloned())
            .collect();
        found.sort();
        found.dedup();
        found
    }

    fn all_names(&self) -> Vec<String> {
        self.names_of(0..self.names.len())
    }
}

/// A text without its line breaks, and where they were: what is searched, so that a form a
/// program wrapped over several lines is found.
struct Unwrapped<'a> {
    text: Cow<'a, str>,
    /// At each removed byte: its position in `text` (before which it was) and how many bytes
    /// were removed up to and including it.
    breaks: Vec<(usize, usize)>,
}

impl<'a> Unwrapped<'a> {
    fn new(original: &'a str) -> Unwrapped<'a> {
        if !original.bytes().any(|byte| byte == b'\n' || byte == b'\r') {
            return Unwrapped {
                text: Cow::Borrowed(original),
                breaks: Vec::new(),
            };
        }
        let mut text = String::with_capacity(original.len());
        let mut breaks = Vec::new();
        for (i, piece) in original.split(['\n', '\r']).enumerate() {
            if i > 0 {
                breaks.push((text.len(), i));
            }
            text.push_str(piece);
        }
        Unwrapped {
            text: Cow::Owned(text),
            breaks,
        }
    }

    /// How many bytes were removed before the byte at `at` in `text`.
    fn removed_before(&self, at: usize) -> usize {
        match self.breaks.partition_point(|(position, _)| *position <= at) {
            0 => 0,
            n => self.breaks.get(n - 1).map_or(0, |(_, removed)| *removed),
        }
    }

    /// The range in the original text of the range `start..end` (not empty) of `text`: from
    /// its first byte through its last, with the line breaks in between.
    fn original(&self, start: usize, end: usize) -> (usize, usize) {
        let last = end.saturating_sub(1).max(start);
        (
            start + self.removed_before(start),
            last + self.removed_before(last) + 1,
        )
    }
}

/// A reader without line breaks (see [`Unwrapped`]).
struct Unwrap<R>(R);

impl<R: Read> Read for Unwrap<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let read = self.0.read(buf)?;
            if read == 0 {
                return Ok(0);
            }
            let mut kept = 0;
            for i in 0..read {
                let byte = buf[i];
                if byte != b'\n' && byte != b'\r' {
                    buf[kept] = byte;
                    kept += 1;
                }
            }
            if kept > 0 {
                return Ok(kept);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "tok-5ecr3t-0123456789";

    fn redactor() -> Redactor {
        Redactor::new(&[("TOKEN".into(), TOKEN.into())])
    }

    /// Standard base64, padded, as the test's own reference encoder.
    fn b64(bytes: &[u8]) -> String {
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                out.push(if i <= chunk.len() {
                    alphabet[(n >> (18 - 6 * i)) as usize & 63] as char
                } else {
                    '='
                });
            }
        }
        out
    }

    #[test]
    fn the_value_and_its_reversal_are_redacted() {
        let redactor = redactor();
        let reversed: String = TOKEN.chars().rev().collect();
        let text = format!("plain {TOKEN} and reversed {reversed}\n");
        assert_eq!(
            redactor.redact(&text),
            "plain [secret:TOKEN] and reversed [secret:TOKEN]\n"
        );
    }

    #[test]
    fn base64_at_every_offset_of_a_longer_text_is_redacted() {
        let redactor = redactor();
        for prefix in ["", "x", "xy", "xyz", "user:", "Authorization: Bearer "] {
            for suffix in ["", "!", "!!", " and more"] {
                let plain = format!("{prefix}{TOKEN}{suffix}");
                let standard = b64(plain.as_bytes());
                let url_safe = standard.replace('+', "-").replace('/', "_");
                for encoded in [
                    standard.clone(),
                    standard.trim_end_matches('=').to_string(),
                    url_safe,
                ] {
                    let text = format!("echo {encoded} | base64 -d");
                    let redacted = redactor.redact(&text);
                    let (before, after) = redacted
                        .strip_prefix("echo ")
                        .and_then(|rest| rest.strip_suffix(" | base64 -d"))
                        .and_then(|rest| rest.split_once("[secret:TOKEN]"))
                        .unwrap_or_else(|| panic!("{text} → {redacted}"));
                    // What is left is the prefix's characters and the one that mixes its bits
                    // with the value's, then the suffix's likewise: nothing of the value alone.
                    let (k, n) = (prefix.len(), TOKEN.len());
                    assert_eq!(before.len(), (8 * k).div_ceil(6), "{text} → {redacted}");
                    assert!(
                        after.len() <= encoded.len() - 8 * (k + n) / 6,
                        "{text} → {redacted}"
                    );
                    if suffix.is_empty() {
                        assert_eq!(after, "", "{text} → {redacted}");
                    }
                    assert_eq!(redactor.found_in(&text), ["TOKEN"]);
                }
            }
        }
    }

    #[test]
    fn wrapped_base64_and_hex_are_redacted_across_the_line_breaks() {
        let long = "a-much-longer-secret-value-".repeat(4);
        let redactor = Redactor::new(&[("LONG".into(), long.clone())]);
        let wrap = |text: &str, width: usize| {
            text.as_bytes()
                .chunks(width)
                .map(|line| String::from_utf8_lossy(line).into_owned())
                .collect::<Vec<_>>()
                .join("\n")
        };
        let base64 = wrap(&b64(long.as_bytes()), 76);
        let hex = wrap(&hex::encode(format!("x{long}")), 60);
        for text in [base64, hex] {
            let out = format!("$ cmd\n{text}\ndone\n");
            let redacted = redactor.redact(&out);
            assert_eq!(
                redacted.matches("[secret:LONG]").count(),
                1,
                "{out} → {redacted}"
            );
            assert!(redacted.starts_with("$ cmd\n") && redacted.ends_with("\ndone\n"));
            assert!(redactor.found_in_reader(out.as_bytes()).unwrap().is_some());
        }
    }

    #[test]
    fn hex_in_either_case_is_redacted() {
        let redactor = redactor();
        for encoded in [
            hex::encode(TOKEN),
            hex::encode_upper(TOKEN),
            hex::encode(format!("a{TOKEN}")),
        ] {
            let redacted = redactor.redact(&encoded);
            assert!(redacted.contains("[secret:TOKEN]"), "{redacted}");
            assert!(!redacted.contains(&hex::encode(&TOKEN[1..])), "{redacted}");
        }
    }

    #[test]
    fn url_encoded_values_are_redacted() {
        let value = "p@ss w/rd:+&=42";
        let redactor = Redactor::new(&[("PASS".into(), value.into())]);
        for encoded in [
            "p%40ss%20w%2Frd%3A%2B%26%3D42",
            "p%40ss%20w%2frd%3a%2b%26%3d42",
            "p%40ss+w%2Frd%3A%2B%26%3D42",
            "p%40ss%20w/rd%3A%2B%26%3D42",
            "%70%40%73%73%20%77%2F%72%64%3A%2B%26%3D%34%32",
        ] {
            let text = format!("GET /login?password={encoded}&next=1");
            assert_eq!(
                redactor.redact(&text),
                "GET /login?password=[secret:PASS]&next=1",
                "{encoded}"
            );
        }
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        let redactor = Redactor::new(&[
            ("TOKEN".into(), TOKEN.into()),
            ("SHORT".into(), "abcdef".into()),
            ("HEXY".into(), "0123456789abcdef".into()),
        ]);
        let text = "fn main() {\n    println!(\"hello, world\");\n}\n\
                    commit 3f2a9c1d0b8e7f6a5d4c3b2a19081726354a5b6c\n\
                    SGVsbG8sIHdvcmxkIQ== is base64, 48656c6c6f is hex, %2F is a slash\n\
                    abcde abc-def fedcb";
        assert!(matches!(redactor.redact(text), Cow::Borrowed(_)));
        assert!(redactor.found_in(text).is_empty());
        assert_eq!(redactor.found_in_reader(text.as_bytes()).unwrap(), None);
    }

    #[test]
    fn longer_values_win_and_short_ones_are_not_redacted() {
        let redactor = Redactor::new(&[
            ("SHORT".into(), "abcdef".into()),
            ("LONG".into(), "abcdefghij".into()),
            ("TINY".into(), "ab".into()),
        ]);
        assert_eq!(
            redactor.redact("x abcdefghij y abcdef z ab"),
            "x [secret:LONG] y [secret:SHORT] z ab"
        );
        assert_eq!(
            redactor.found_in("abcdef and abcdefghij"),
            ["LONG", "SHORT"]
        );
        assert!(Redactor::new(&[("TINY".into(), "abcde".into())]).is_empty());
        assert!(Redactor::none().is_empty());
    }

    #[test]
    fn non_ascii_text_around_a_match_is_kept_whole() {
        let redactor = Redactor::new(&[("K".into(), "clé-secrète".into())]);
        assert_eq!(redactor.redact("é\r\nclé-sec\nrète ü"), "é\r\n[secret:K] ü");
    }

    #[test]
    fn secrets_are_found_across_reads_of_a_stream() {
        let redactor = Redactor::new(&[("TOKEN".into(), "s3cr3t-value-42".into())]);
        let mut data = vec![b'x'; (1 << 16) - 5];
        data.extend_from_slice(b"s3cr3t-val\nue-42 and more");
        // A reader that hands out a few bytes at a time: the value spans many reads, and a line
        // break.
        struct Trickle<'a>(&'a [u8]);
        impl std::io::Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(7).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        assert_eq!(
            redactor.found_in_reader(Trickle(&data)).unwrap(),
            Some("TOKEN".into())
        );
        assert_eq!(
            redactor.found_in_reader(&b"nothing here"[..]).unwrap(),
            None
        );
        assert_eq!(Redactor::none().found_in_reader(&data[..]).unwrap(), None);
    }

    #[test]
    fn a_reader_reports_every_secret_it_holds() {
        let redactor = Redactor::new(&[
            ("A".into(), "first-value".into()),
            ("B".into(), "second-value".into()),
        ]);
        let data = format!("{}\n{}", b64(b"second-value"), hex::encode("first-value"));
        assert_eq!(
            redactor.names_in_reader(data.as_bytes()).unwrap(),
            ["A", "B"]
        );
        assert!(
            redactor
                .names_in_reader(&b"nothing"[..])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn an_unusable_redactor_withholds_everything() {
        let redactor = Redactor {
            matchers: Matchers::Unusable,
            names: vec!["TOKEN".into()],
            owners: vec![0],
            replacements: vec!["[secret:TOKEN]".into()],
        };
        assert!(!redactor.is_empty());
        assert_eq!(redactor.redact("anything at all"), WITHHELD);
        assert_eq!(redactor.found_in("anything"), ["TOKEN"]);
        assert_eq!(
            redactor.found_in_reader(&b""[..]).unwrap(),
            Some("TOKEN".into())
        );
        assert_eq!(redactor.names_in_reader(&b""[..]).unwrap(), ["TOKEN"]);
    }
}
