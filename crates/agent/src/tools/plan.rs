//! The tools of a planning task: `ask`, a question for the person that the run waits on, and
//! `submit_plan`, which hands the plan back and ends the run. Like `finish`, they only validate
//! and hand a [`Control`] back; the loop does the rest.

use nightshift_model::ToolSpec;
use nightshift_protocol::Plan;
use serde::Deserialize;
use serde_json::json;

use super::call::parse_args;
use super::{Control, ToolOutput};

pub(crate) const ASK: &str = "ask";
pub(crate) const SUBMIT_PLAN: &str = "submit_plan";
const ASK_EXPECTED: &str = r#"{"question": string}"#;
const PLAN_EXPECTED: &str = r#"{"goal": string, "constraints"?: [string], "acceptance"?: [{"name": string, "run": string}], "subtasks": [{"name": string, "prompt": string, "paths"?: [string], "depends_on"?: [string]}]}"#;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AskArgs {
    question: String,
}

pub(crate) fn ask_spec() -> ToolSpec {
    ToolSpec {
        name: ASK.to_string(),
        description: "Ask the person who delegated the task a question, when the answer \
                      changes the plan and the repository cannot tell you (what they want, \
                      which of two designs, what may change). The task waits for the answer, \
                      which comes back as this call's result. Ask few, specific questions, \
                      several at once if you have them."
            .to_string(),
        parameters: json!({
            "type": "object",
            "properties": {
                "question": {"type": "string", "description": "The question, with what you found that makes it a question."}
            },
            "required": ["question"],
            "additionalProperties": false
        }),
    }
}

pub(crate) fn ask(arguments: &str) -> ToolOutput {
    let args: AskArgs = match parse_args(ASK, arguments, ASK_EXPECTED) {
        Ok(args) => args,
        Err(output) => return output,
    };
    if args.question.trim().is_empty() {
        return ToolOutput::failure(format!("{ASK}: `question` is empty."));
    }
    ToolOutput {
        control: Some(Control::Ask {
            question: args.question.trim().to_string(),
        }),
        ..ToolOutput::success("")
    }
}

pub(crate) fn submit_plan_spec() -> ToolSpec {
    ToolSpec {
        name: SUBMIT_PLAN.to_string(),
        description: "End the planning task with the plan. Call it once. Split the work into \
                      subtasks a separate agent can each do and verify on its own, in its own \
                      copy of the repository: each with a short name, a complete prompt (the \
                      agent that does it sees only that prompt and the repository), the files \
                      and directories it expects to change, and the subtasks whose result it \
                      needs first. Subtasks that touch the same files are not run side by \
                      side. `acceptance` lists commands that pass once everything is done. No \
                      tool calls run after submit_plan."
            .to_string(),
        parameters: json!({
            "type": "object",
            "properties": {
                "goal": {"type": "string", "description": "What the whole is for, in a sentence or two."},
                "constraints": {"type": "array", "items": {"type": "string"}, "description": "What every subtask must respect."},
                "acceptance": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "run": {"type": "string", "description": "A shell command run at the top level; exit 0 passes."}
                        },
                        "required": ["name", "run"],
                        "additionalProperties": false
                    }
                },
                "subtasks": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string", "description": "Lower-case letters, digits and -, unique in the plan."},
                            "prompt": {"type": "string"},
                            "paths": {"type": "array", "items": {"type": "string"}, "description": "Files and directories it expects to change, relative to the top level."},
                            "depends_on": {"type": "array", "items": {"type": "string"}, "description": "Names of subtasks whose result it starts from."}
                        },
                        "required": ["name", "prompt"],
                        "additionalProperties": false
                    }
                }
            },
            "required": ["goal", "subtasks"],
            "additionalProperties": false
        }),
    }
}

pub(crate) fn submit_plan(arguments: &str) -> ToolOutput {
    let plan: Plan = match parse_args(SUBMIT_PLAN, arguments, PLAN_EXPECTED) {
        Ok(plan) => plan,
        Err(output) => return output,
    };
    if let Err(problem) = plan.validate() {
        return ToolOutput::failure(format!(
            "{SUBMIT_PLAN}: {problem}. Fix it and call {SUBMIT_PLAN} again."
        ));
    }
    ToolOutput {
        control: Some(Control::SubmitPlan {
            plan: Box::new(plan),
        }),
        ..ToolOutput::success("Plan submitted.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_plan_ends_the_run_and_a_bad_one_says_why() {
        let good = r#"{"goal": "g", "subtasks": [{"name": "a", "prompt": "do a"}, {"name": "b", "prompt": "do b", "depends_on": ["a"]}]}"#;
        let output = submit_plan(good);
        assert!(output.ok, "{}", output.text);
        assert!(
            matches!(output.control, Some(Control::SubmitPlan { ref plan }) if plan.subtasks.len() == 2)
        );
        let cyclic =
            r#"{"goal": "g", "subtasks": [{"name": "a", "prompt": "x", "depends_on": ["a"]}]}"#;
        let output = submit_plan(cyclic);
        assert!(!output.ok && output.control.is_none());
        assert!(output.text.contains("depends on itself"), "{}", output.text);
        let output = submit_plan(r#"{"goal": "g"}"#);
        assert!(!output.ok, "{}", output.text);
    }

    #[test]
    fn a_question_waits_and_an_empty_one_is_refused() {
        assert!(matches!(
            ask(r#"{"question": " Which API? "}"#).control,
            Some(Control::Ask { ref question }) if question == "Which API?"
        ));
        assert!(!ask(r#"{"question": " "}"#).ok);
    }
}
