//! The forms a secret's value takes after a trivial transformation. A task that holds a value
//! (a setup variable echoed into a file, a service that echoes a header back) can print it
//! reversed, base64- or hex-encoded or URL-encoded as easily as in the clear, so each of these
//! forms is redacted as the value itself is.

use super::MIN_SECRET_LEN;

/// The shortest encoded form kept: a shorter run of base64 (or hex) turns up in ordinary text
/// by chance.
pub(crate) const MIN_ENCODED_LEN: usize = 8;

const BASE64_STANDARD: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const BASE64_URL_SAFE: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Every form of `value` to look for, the value itself first, without duplicates and without
/// line breaks (the redactor matches across line breaks, since encoders wrap their output).
/// Empty for a value shorter than [`MIN_SECRET_LEN`].
pub(crate) fn forms(value: &str) -> Vec<String> {
    let mut forms = Forms(Vec::new());
    if value.len() < MIN_SECRET_LEN {
        return forms.0;
    }
    forms.push(value, MIN_SECRET_LEN);
    forms.push(&value.chars().rev().collect::<String>(), MIN_SECRET_LEN);
    let bytes = value.as_bytes();
    for alphabet in [BASE64_STANDARD, BASE64_URL_SAFE] {
        for form in base64_forms(bytes, alphabet) {
            forms.push(&form, MIN_ENCODED_LEN);
        }
    }
    forms.push(&hex::encode(bytes), MIN_ENCODED_LEN);
    forms.push(&hex::encode_upper(bytes), MIN_ENCODED_LEN);
    for form in percent_forms(bytes) {
        forms.push(&form, MIN_ENCODED_LEN);
    }
    forms.0
}

struct Forms(Vec<String>);

impl Forms {
    fn push(&mut self, form: &str, min_len: usize) {
        let form: String = form.chars().filter(|c| !matches!(c, '\n' | '\r')).collect();
        if form.len() >= min_len && !self.0.contains(&form) {
            self.0.push(form);
        }
    }
}

/// The base64 of `value` wherever it sits in what was encoded. Encoded from a byte offset that
/// is not a multiple of 3, the value's characters come out differently, and the first and last
/// ones mix in bits of its neighbours; so for each of the three offsets: the stable inner part
/// (every character made of the value's bits only), and, for a value at the end of what was
/// encoded, the part through the final characters with and without `=` padding. An offset whose
/// stable part is shorter than [`MIN_ENCODED_LEN`] is left out.
fn base64_forms(value: &[u8], alphabet: &[u8; 64]) -> Vec<String> {
    let mut forms = Vec::new();
    for offset in 0..3 {
        let mut bytes = vec![0u8; offset];
        bytes.extend_from_slice(value);
        let encoded = base64(&bytes, alphabet);
        // Character i holds bits 6i..6i+6; the value has bits 8*offset..8*(offset+len).
        let start = (8 * offset).div_ceil(6);
        let stable_end = 8 * (offset + value.len()) / 6;
        if stable_end < start + MIN_ENCODED_LEN {
            continue;
        }
        let (Some(stable), Some(at_end)) = (encoded.get(start..stable_end), encoded.get(start..))
        else {
            continue;
        };
        forms.push(stable.to_string());
        forms.push(at_end.to_string());
        forms.push(at_end.trim_end_matches('=').to_string());
    }
    forms
}

/// `bytes` in base64 with `alphabet`, padded.
fn base64(bytes: &[u8], alphabet: &[u8; 64]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let group = chunk.iter().enumerate().fold(0u32, |group, (i, byte)| {
            group | u32::from(*byte) << (16 - 8 * i)
        });
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(alphabet[(group >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The URL encodings of `value`: every byte as `%XX`, and only the bytes that need it under
/// the common rules (RFC 3986's unreserved characters kept; also `/` kept, as Python's
/// `quote`; `!'()*` kept, as JavaScript's `encodeURIComponent`; the reserved characters kept,
/// as `encodeURI`; space as `+`, as form encoding), each with upper- and lowercase hex digits.
fn percent_forms(value: &[u8]) -> Vec<String> {
    fn unreserved(byte: u8) -> bool {
        byte.is_ascii_alphanumeric() || b"-._~".contains(&byte)
    }
    let keeps: [&dyn Fn(u8) -> bool; 5] = [
        &|_| false,
        &unreserved,
        &|byte| unreserved(byte) || byte == b'/',
        &|byte| unreserved(byte) || b"!'()*".contains(&byte),
        &|byte| unreserved(byte) || b"!'()*;,/?:@&=+$#".contains(&byte),
    ];
    let mut forms = Vec::new();
    for keep in keeps {
        for upper in [true, false] {
            for plus_for_space in [false, true] {
                forms.push(percent(value, keep, upper, plus_for_space));
            }
        }
    }
    forms
}

fn percent(value: &[u8], keep: &dyn Fn(u8) -> bool, upper: bool, plus_for_space: bool) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for &byte in value {
        if plus_for_space && byte == b' ' {
            out.push('+');
        } else if keep(byte) {
            out.push(char::from(byte));
        } else if upper {
            out.push_str(&format!("%{byte:02X}"));
        } else {
            out.push_str(&format!("%{byte:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_usual_encoder() {
        assert_eq!(base64(b"", BASE64_STANDARD), "");
        assert_eq!(base64(b"f", BASE64_STANDARD), "Zg==");
        assert_eq!(base64(b"fo", BASE64_STANDARD), "Zm8=");
        assert_eq!(base64(b"foo", BASE64_STANDARD), "Zm9v");
        assert_eq!(base64(b"foobar", BASE64_STANDARD), "Zm9vYmFy");
        assert_eq!(base64(&[0xfb, 0xff], BASE64_STANDARD), "+/8=");
        assert_eq!(base64(&[0xfb, 0xff], BASE64_URL_SAFE), "-_8=");
    }

    #[test]
    fn every_form_is_long_enough_and_has_no_line_break() {
        for value in [
            "abcdef",
            "abcdefg",
            "tok-5ecr3t-0123456789",
            "line one\nline two",
        ] {
            let forms = forms(value);
            assert!(forms.iter().all(|f| f.len() >= MIN_SECRET_LEN), "{forms:?}");
            assert!(forms.iter().all(|f| !f.contains('\n')), "{forms:?}");
            let mut unique = forms.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), forms.len());
        }
        assert!(forms("abcde").is_empty());
    }

    #[test]
    fn short_values_keep_only_the_offsets_with_a_long_enough_stable_part() {
        // 6 bytes: 8 stable characters at offset 0, 7 at offsets 1 and 2 (left out).
        let forms = base64_forms(b"abcdef", BASE64_STANDARD);
        assert_eq!(forms, ["YWJjZGVm", "YWJjZGVm", "YWJjZGVm"]);
        assert_eq!(base64_forms(b"abcdefg", BASE64_STANDARD).len(), 9);
    }

    #[test]
    fn percent_forms_cover_every_byte_and_only_the_reserved_ones() {
        let forms = percent_forms(b"a b/c");
        for expected in [
            "%61%20%62%2F%63",
            "%61%20%62%2f%63",
            "a%20b%2Fc",
            "a%20b%2fc",
            "a+b%2Fc",
            "a%20b/c",
        ] {
            assert!(forms.iter().any(|f| f == expected), "{expected}: {forms:?}");
        }
    }
}
