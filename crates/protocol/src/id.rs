//! Task ids: ULIDs, so that ids sort by creation time in the store and in listings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use ulid::Ulid;

/// A task's id. Displayed as 26 lowercase Crockford base-32 characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(Ulid);

impl TaskId {
    /// A fresh id, later than every id made before it on this machine's clock.
    pub fn new() -> Self {
        TaskId(Ulid::generate())
    }

    /// The short form used in branch names and listings: the last eight characters, which are
    /// random (the leading ones encode the creation time and collide between close tasks).
    pub fn short(&self) -> String {
        let full = self.to_string();
        full[full.len() - 8..].to_string()
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_string().to_ascii_lowercase())
    }
}

/// The text given was not a task id.
#[derive(Debug, thiserror::Error)]
#[error("`{input}` is not a task id (expected 26 characters of Crockford base 32)")]
pub struct ParseTaskIdError {
    input: String,
}

impl FromStr for TaskId {
    type Err = ParseTaskIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ulid::from_string(s)
            .map(TaskId)
            .map_err(|_| ParseTaskIdError {
                input: s.to_string(),
            })
    }
}

impl Serialize for TaskId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TaskId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_round_trips_and_is_lowercase() {
        let id = TaskId::new();
        let text = id.to_string();
        assert_eq!(text.len(), 26);
        assert_eq!(text, text.to_ascii_lowercase());
        assert_eq!(text.parse::<TaskId>().unwrap(), id);
        assert_eq!(text.to_ascii_uppercase().parse::<TaskId>().unwrap(), id);
    }

    #[test]
    fn ids_sort_by_creation() {
        let a = TaskId::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = TaskId::new();
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
    }

    #[test]
    fn short_is_the_random_tail() {
        let id = TaskId::new();
        assert_eq!(id.short().len(), 8);
        assert!(id.to_string().ends_with(&id.short()));
    }

    #[test]
    fn rejects_garbage() {
        let err = "not-an-id".parse::<TaskId>().unwrap_err();
        assert!(err.to_string().contains("not-an-id"));
    }
}
