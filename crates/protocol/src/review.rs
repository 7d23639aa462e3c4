//! Reviews: what a review task looks at, and what it reports.
//!
//! A review task reads a branch's changes over a base with read-only access and reports
//! findings as data: where, how bad, what is wrong and how to fix it. It never changes the
//! branch.

use serde::{Deserialize, Serialize};

use crate::TaskId;

/// What a review asks for when the person adds nothing.
pub const REVIEW_PROMPT: &str =
    "Review the changes: report what is wrong with them, or that they are fine.";

/// What a review task reviews: the changes of the branch it starts from (its spec's `base`)
/// since it left `base`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewSpec {
    /// The task whose result is reviewed (`nightshift review ID`); its prompt is what the
    /// changes were asked to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskId>,
    /// What the changes are measured from: a branch name, or the reviewed task's base.
    pub base: String,
    /// The commit `base` was when the review was asked for.
    pub base_commit: String,
}

/// One thing a review found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    /// The file, relative to the repository's top level.
    pub path: String,
    /// The first line concerned (1-based, in the reviewed branch's version of the file).
    pub line: u32,
    /// The last line concerned, when more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_line: Option<u32>,
    pub severity: Severity,
    /// What is wrong, and why it matters.
    pub problem: String,
    /// How to fix it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<String>,
}

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Wrong results, data loss, a security hole: must not be merged as it is.
    Critical,
    /// A broken contract or a missed requirement of the request.
    High,
    /// A real problem in a less common case.
    Medium,
    /// Worth fixing, harmless as it is.
    Low,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
        }
    }
}

impl Finding {
    /// `path:line` or `path:line-end_line`.
    pub fn location(&self) -> String {
        match self.end_line {
            Some(end) if end != self.line => format!("{}:{}-{end}", self.path, self.line),
            _ => format!("{}:{}", self.path, self.line),
        }
    }
}

/// The findings as instructions for the builder: what `nightshift review ID --send` sends as a
/// follow-up.
pub fn findings_as_request(findings: &[Finding]) -> String {
    let mut text = String::from(
        "A review of your changes found the problems below. Fix each one (or, where a finding is wrong, leave the code and say why in your summary), and run the checks again.\n",
    );
    for (index, finding) in findings.iter().enumerate() {
        text.push_str(&format!(
            "\n{}. [{}] {}: {}",
            index + 1,
            finding.severity.as_str(),
            finding.location(),
            finding.problem.trim()
        ));
        if let Some(suggestion) = &finding.suggestion {
            text.push_str(&format!("\n   Suggested fix: {}", suggestion.trim()));
        }
    }
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_read_as_numbered_instructions() {
        let findings = [
            Finding {
                path: "src/calc.rs".into(),
                line: 3,
                end_line: Some(5),
                severity: Severity::Critical,
                problem: "add subtracts".into(),
                suggestion: Some("use +".into()),
            },
            Finding {
                path: "README.md".into(),
                line: 1,
                end_line: None,
                severity: Severity::Low,
                problem: "typo".into(),
                suggestion: None,
            },
        ];
        let text = findings_as_request(&findings);
        assert!(
            text.contains(
                "\n1. [critical] src/calc.rs:3-5: add subtracts\n   Suggested fix: use +"
            )
        );
        assert!(text.contains("\n2. [low] README.md:1: typo\n"));
    }
}
