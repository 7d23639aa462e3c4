//! `submit_review`: how a review task's agent hands back what it found. Like `finish`, it only
//! validates and hands a [`Control`] back; the loop records the review and ends the task.

use nightshift_model::ToolSpec;
use nightshift_protocol::Finding;
use serde::Deserialize;
use serde_json::json;

use super::call::parse_args;
use super::{Control, ToolOutput};

pub(crate) const SUBMIT_REVIEW: &str = "submit_review";
const EXPECTED: &str = r#"{"summary": string, "findings": [{"path": string, "line": integer, "end_line"?: integer, "severity": "critical" | "high" | "medium" | "low", "problem": string, "suggestion"?: string}]}"#;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewArgs {
    summary: String,
    findings: Vec<Finding>,
}

pub(crate) fn spec() -> ToolSpec {
    ToolSpec {
        name: SUBMIT_REVIEW.to_string(),
        description: "End the review. Call it once, after reading the changes and what they \
                      touch. `findings` lists only what matters: wrong results, security \
                      holes, data loss, broken contracts, requirements of the request that \
                      are missed; no style remarks. Each finding names the file and line in \
                      the reviewed version, how severe it is, what is wrong and why, and how \
                      to fix it. An empty list says the changes are fine. No tool calls run \
                      after submit_review."
            .to_string(),
        parameters: json!({
            "type": "object",
            "properties": {
                "summary": {
                    "type": "string",
                    "description": "Your verdict in a few sentences: what the changes do, whether they do what was asked, and what you checked. Must not be empty."
                },
                "findings": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "path": {"type": "string", "description": "The file, relative to the repository's top level."},
                            "line": {"type": "integer", "minimum": 1, "description": "The first line concerned, in the reviewed version."},
                            "end_line": {"type": "integer", "minimum": 1, "description": "The last line concerned, when more than one."},
                            "severity": {"type": "string", "enum": ["critical", "high", "medium", "low"]},
                            "problem": {"type": "string", "description": "What is wrong, and why it matters."},
                            "suggestion": {"type": "string", "description": "How to fix it."}
                        },
                        "required": ["path", "line", "severity", "problem"],
                        "additionalProperties": false
                    }
                }
            },
            "required": ["summary", "findings"],
            "additionalProperties": false
        }),
    }
}

pub(crate) fn submit_review(arguments: &str) -> ToolOutput {
    let args: ReviewArgs = match parse_args(SUBMIT_REVIEW, arguments, EXPECTED) {
        Ok(args) => args,
        Err(output) => return output,
    };
    if args.summary.trim().is_empty() {
        return ToolOutput::failure(format!(
            "{SUBMIT_REVIEW}: `summary` is empty; give your verdict in a few sentences and call \
             {SUBMIT_REVIEW} again."
        ));
    }
    for (index, finding) in args.findings.iter().enumerate() {
        let problem = if finding.path.trim().is_empty() || finding.path.starts_with('/') {
            Some("`path` must be a file relative to the repository's top level")
        } else if finding.line == 0 {
            Some("`line` is 1-based")
        } else if finding.end_line.is_some_and(|end| end < finding.line) {
            Some("`end_line` comes before `line`")
        } else if finding.problem.trim().is_empty() {
            Some("`problem` is empty")
        } else {
            None
        };
        if let Some(problem) = problem {
            return ToolOutput::failure(format!(
                "{SUBMIT_REVIEW}: finding {}: {problem}. Nothing was submitted; fix it and call \
                 {SUBMIT_REVIEW} again.",
                index + 1
            ));
        }
    }
    let mut findings: Vec<Finding> = args
        .findings
        .into_iter()
        .map(|finding| Finding {
            path: finding.path.trim().to_string(),
            problem: finding.problem.trim().to_string(),
            suggestion: finding
                .suggestion
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
            ..finding
        })
        .collect();
    // Most severe first; the model's order within a severity.
    findings.sort_by_key(|finding| finding.severity);
    let text = match findings.len() {
        0 => "Review submitted: no findings.".to_string(),
        n => format!(
            "Review submitted: {n} finding(s), the most severe {}.",
            findings[0].severity.as_str()
        ),
    };
    ToolOutput {
        control: Some(Control::Review {
            summary: args.summary.trim().to_string(),
            findings,
        }),
        ..ToolOutput::success(text)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use nightshift_protocol::Severity;

    #[test]
    fn a_review_is_validated_and_sorted_most_severe_first() {
        let out = submit_review(
            r#"{"summary": "add subtracts", "findings": [
                {"path": "README.md", "line": 2, "severity": "low", "problem": "typo"},
                {"path": "calc.sh", "line": 3, "end_line": 4, "severity": "critical", "problem": "add subtracts", "suggestion": "use +"}
            ]}"#,
        );
        assert!(out.ok, "{}", out.text);
        let Some(Control::Review { summary, findings }) = out.control else {
            panic!("{out:?}")
        };
        assert_eq!(summary, "add subtracts");
        assert_eq!(findings[0].path, "calc.sh");
        assert_eq!(findings[0].severity, Severity::Critical);
        assert_eq!(findings[1].severity, Severity::Low);
    }

    #[test]
    fn a_bad_finding_says_which_and_submits_nothing() {
        for (arguments, expected) in [
            (r#"{"summary": "", "findings": []}"#, "`summary` is empty"),
            (
                r#"{"summary": "s", "findings": [{"path": "/etc/passwd", "line": 1, "severity": "low", "problem": "p"}]}"#,
                "finding 1: `path` must be",
            ),
            (
                r#"{"summary": "s", "findings": [{"path": "a", "line": 5, "end_line": 2, "severity": "low", "problem": "p"}]}"#,
                "`end_line` comes before",
            ),
            (
                r#"{"summary": "s", "findings": [{"path": "a", "line": 1, "severity": "urgent", "problem": "p"}]}"#,
                "invalid arguments",
            ),
        ] {
            let out = submit_review(arguments);
            assert!(!out.ok && out.control.is_none(), "{arguments}");
            assert!(out.text.contains(expected), "{expected:?} in {}", out.text);
        }
    }
}
