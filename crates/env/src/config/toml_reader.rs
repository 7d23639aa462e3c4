//! The machinery for reading `.nightshift.toml` with positions: every value keeps its span, so
//! errors and provenance can name a line and column, and unknown keys become warnings with the
//! nearest valid key instead of silently vanishing.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use super::error::{ConfigError, ConfigWarning, Location, WarningKind};
use super::provenance::{Origin, Provenance};

pub(crate) type Key<'i> = Spanned<DeString<'i>>;
pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

/// Keys of each part of the schema, for unknown-key suggestions.
pub(crate) const TOP_KEYS: &[&str] = &[
    "version",
    "environment",
    "checks",
    "network",
    "limits",
    "secrets",
    "review",
    "mcp",
];
pub(crate) const ENVIRONMENT_KEYS: &[&str] = &[
    "setup",
    "maintenance",
    "workdir",
    "cache_key",
    "copy",
    "env",
    "image",
];
pub(crate) const CHECK_KEYS: &[&str] = &["run", "timeout"];
pub(crate) const NETWORK_KEYS: &[&str] = &["setup", "agent"];
pub(crate) const LIMITS_KEYS: &[&str] = &["wall_time", "memory", "cpus", "pids", "disk"];
pub(crate) const SECRET_KEYS: &[&str] = &["scope", "hosts", "header", "format"];
pub(crate) const REVIEW_KEYS: &[&str] = &["auto"];
pub(crate) const MCP_KEYS: &[&str] = &[
    "command",
    "url",
    "transport",
    "args",
    "env",
    "tools",
    "exclude_tools",
    "startup_timeout",
    "timeout",
];

/// Sections whose keys are fixed, searched when a key is unknown where it was written but
/// belongs elsewhere (`wall_time` under `[environment]`).
const SECTIONS: &[(&str, &[&str])] = &[
    ("environment", ENVIRONMENT_KEYS),
    ("network", NETWORK_KEYS),
    ("limits", LIMITS_KEYS),
    ("review", REVIEW_KEYS),
];

/// One `.nightshift.toml` being read: its text, where it is, and what reading it found.
pub(crate) struct TomlReader<'a> {
    pub(crate) repo_root: &'a Path,
    /// The file as the person would find it (for errors).
    path: PathBuf,
    /// The file relative to the repository root (for provenance and warnings).
    relative: PathBuf,
    text: &'a str,
    pub(crate) provenance: Provenance,
    pub(crate) warnings: Vec<ConfigWarning>,
}

impl<'a> TomlReader<'a> {
    pub(crate) fn new(
        repo_root: &'a Path,
        relative: &Path,
        text: &'a str,
        provenance: Provenance,
    ) -> TomlReader<'a> {
        TomlReader {
            repo_root,
            path: repo_root.join(relative),
            relative: relative.to_path_buf(),
            text,
            provenance,
            warnings: Vec::new(),
        }
    }

    /// Parses the whole document, or says where the syntax broke.
    pub(crate) fn parse(&self) -> Result<Spanned<DeTable<'a>>, ConfigError> {
        DeTable::parse(self.text).map_err(|err| {
            let offset = err.span().map_or(0, |span| span.start);
            let message = err
                .message()
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            ConfigError::Syntax {
                at: self.location(offset),
                key: key_at(self.text, offset),
                message,
            }
        })
    }

    fn location(&self, offset: usize) -> Location {
        let (line, column) = line_column(self.text, offset);
        Location {
            path: self.path.clone(),
            line,
            column,
        }
    }

    /// Where a key was written, for provenance.
    pub(crate) fn origin(&self, span: &Range<usize>) -> Origin {
        Origin::File {
            path: self.relative.clone(),
            line: line_column(self.text, span.start).0,
        }
    }

    pub(crate) fn record(&mut self, key: impl Into<String>, at: &Key<'_>) {
        let origin = self.origin(&at.span());
        self.provenance.set(key, origin);
    }

    pub(crate) fn warn(
        &mut self,
        kind: WarningKind,
        key: &str,
        span: &Range<usize>,
        message: String,
    ) {
        let (line, column) = line_column(self.text, span.start);
        self.warnings.push(ConfigWarning {
            kind,
            file: self.relative.clone(),
            line: Some(line),
            column: Some(column),
            key: Some(key.to_string()),
            message,
        });
    }

    pub(crate) fn wrong_type(
        &self,
        key: &str,
        value: &Value<'_>,
        expected: &'static str,
    ) -> ConfigError {
        ConfigError::WrongType {
            at: self.location(value.span().start),
            key: key.to_string(),
            expected,
            found: kind_of(value.get_ref()),
        }
    }

    pub(crate) fn invalid(
        &self,
        key: &str,
        span: &Range<usize>,
        reason: impl Into<String>,
    ) -> ConfigError {
        ConfigError::InvalidValue {
            at: self.location(span.start),
            key: key.to_string(),
            value: self.written(span),
            reason: reason.into(),
        }
    }

    /// The source text of a value, shortened to one readable line.
    fn written(&self, span: &Range<usize>) -> String {
        let text = self.text.get(span.clone()).unwrap_or("").trim();
        let first_line = text.lines().next().unwrap_or("");
        if first_line.chars().count() > 60 || first_line.len() < text.len() {
            let short: String = first_line.chars().take(60).collect();
            format!("{short}…")
        } else {
            first_line.to_string()
        }
    }

    pub(crate) fn table<'v>(
        &self,
        key: &str,
        value: &'v Value<'a>,
    ) -> Result<&'v DeTable<'a>, ConfigError> {
        value
            .get_ref()
            .as_table()
            .ok_or_else(|| self.wrong_type(key, value, "a table"))
    }

    pub(crate) fn string(&self, key: &str, value: &Value<'_>) -> Result<String, ConfigError> {
        value
            .get_ref()
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| self.wrong_type(key, value, "a string"))
    }

    /// A list of strings, each with its span so a bad element can be pointed at.
    pub(crate) fn strings(
        &self,
        key: &str,
        value: &Value<'_>,
    ) -> Result<Vec<(String, Range<usize>)>, ConfigError> {
        let Some(items) = value.get_ref().as_array() else {
            return Err(self.wrong_type(key, value, "a list of strings"));
        };
        items
            .iter()
            .map(|item| match item.get_ref().as_str() {
                Some(text) => Ok((text.to_string(), item.span())),
                None => Err(self.wrong_type(key, item, "a list of strings")),
            })
            .collect()
    }

    pub(crate) fn integer(&self, key: &str, value: &Value<'_>) -> Result<i64, ConfigError> {
        let Some(integer) = value.get_ref().as_integer() else {
            return Err(self.wrong_type(key, value, "an integer"));
        };
        i64::from_str_radix(integer.as_str(), integer.radix())
            .map_err(|_| self.invalid(key, &value.span(), "is too large"))
    }

    pub(crate) fn boolean(&self, key: &str, value: &Value<'_>) -> Result<bool, ConfigError> {
        value
            .get_ref()
            .as_bool()
            .ok_or_else(|| self.wrong_type(key, value, "true or false"))
    }

    /// A number written as an integer or a float.
    pub(crate) fn number(&self, key: &str, value: &Value<'_>) -> Result<f64, ConfigError> {
        match value.get_ref() {
            DeValue::Float(float) => float
                .as_str()
                .parse::<f64>()
                .map_err(|_| self.invalid(key, &value.span(), "is not a number")),
            DeValue::Integer(_) => self.integer(key, value).map(|whole| whole as f64),
            _ => Err(self.wrong_type(key, value, "a number")),
        }
    }

    /// Warns about a key that is not part of the schema, suggesting the nearest one.
    pub(crate) fn unknown_key(&mut self, section: &str, key: &Key<'_>, known: &[&str]) {
        let name: &str = key.get_ref();
        let full = join_key(section, name);
        let message = match suggest(section, name, known) {
            Some(suggestion) => {
                format!("unknown key `{full}`; did you mean `{suggestion}`? Its value is ignored.")
            }
            None => format!(
                "unknown key `{full}` (known here: {}); its value is ignored.",
                known.join(", ")
            ),
        };
        self.warn(WarningKind::UnknownKey, &full, &key.span(), message);
    }
}

/// `section.name`, or `name` at the top level.
pub(crate) fn join_key(section: &str, name: &str) -> String {
    if section.is_empty() {
        name.to_string()
    } else {
        format!("{section}.{name}")
    }
}

/// The nearest valid key to an unknown one: a close spelling in the same section, or the same
/// key in another section.
fn suggest(section: &str, name: &str, known: &[&str]) -> Option<String> {
    let normal = name.to_ascii_lowercase().replace('-', "_");
    let limit = (normal.chars().count() / 3).max(1);
    let nearest = known
        .iter()
        .map(|candidate| (strsim::damerau_levenshtein(&normal, candidate), *candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance);
    if let Some((_, candidate)) = nearest {
        return Some(join_key(section, candidate));
    }
    SECTIONS
        .iter()
        .filter(|(other, _)| *other != section)
        .find(|(_, keys)| keys.contains(&normal.as_str()))
        .map(|(other, _)| format!("{other}.{normal}"))
}

/// "a string", "an integer", ... for type errors.
fn kind_of(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "a list",
        DeValue::Table(_) => "a table",
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before
        .get(line_start..)
        .map_or(0, |part| part.chars().count())
        + 1;
    (line, column)
}

/// The key being written at `offset`, told from the nearest table header above it and the
/// `key =` on its line; `None` when the line is not a key/value pair or a header.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let (line_number, _) = line_column(text, offset);
    let mut header: Option<String> = None;
    let mut key = None;
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if index + 1 > line_number {
            break;
        }
        let is_error_line = index + 1 == line_number;
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest.trim_start_matches('[');
            let name = name.split(']').next().unwrap_or(name).trim();
            header = Some(name.to_string());
            if is_error_line {
                return Some(name.to_string()).filter(|name| !name.is_empty());
            }
        } else if is_error_line && let Some((left, _)) = line.split_once('=') {
            let left = left.trim().trim_matches(|c| c == '"' || c == '\'');
            if !left.is_empty() && !left.contains(char::is_whitespace) {
                key = Some(left.to_string());
            }
        }
    }
    let key = key?;
    Some(match header {
        Some(header) if !header.is_empty() => format!("{header}.{key}"),
        _ => key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, 9), (2, 3));
    }

    #[test]
    fn the_key_under_a_broken_value() {
        let text = "[environment]\nsetup = \"unterminated\n";
        assert_eq!(key_at(text, 22).as_deref(), Some("environment.setup"));
        assert_eq!(key_at("[limits\n", 1).as_deref(), Some("limits"));
        assert_eq!(key_at("just words\n", 2), None);
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("", "enviroment", TOP_KEYS).as_deref(),
            Some("environment")
        );
        assert_eq!(
            suggest("environment", "wall_time", ENVIRONMENT_KEYS).as_deref(),
            Some("limits.wall_time")
        );
        assert_eq!(
            suggest("limits", "wall-time", LIMITS_KEYS).as_deref(),
            Some("limits.wall_time")
        );
        assert_eq!(suggest("", "zzzzzz", TOP_KEYS), None);
    }
}
