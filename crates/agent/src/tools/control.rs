//! `update_plan` and `finish`: the tools that steer the loop instead of touching the workspace.
//! They only validate and hand a [`Control`] back; the loop records the plan and ends the task.

use nightshift_model::ToolSpec;
use nightshift_protocol::{PlanStep, PlanStepStatus};
use serde::Deserialize;
use serde_json::json;

use super::call::parse_args;
use super::{Control, ToolOutput};

pub(crate) const UPDATE_PLAN: &str = "update_plan";
pub(crate) const FINISH: &str = "finish";
const PLAN_EXPECTED: &str =
    r#"{"steps": [{"step": string, "status": "pending" | "in_progress" | "completed"}]}"#;
const FINISH_EXPECTED: &str = r#"{"summary": string}"#;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanArgs {
    steps: Vec<StepArg>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepArg {
    step: String,
    status: PlanStepStatus,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FinishArgs {
    summary: String,
}

pub(crate) fn update_plan_spec() -> ToolSpec {
    ToolSpec {
        name: UPDATE_PLAN.to_string(),
        description: "Record your plan for the task as an ordered list of short steps, each \
                      `pending`, `in_progress` or `completed`. Each call replaces the whole \
                      plan, so send every step each time. At most one step may be \
                      `in_progress`. Use it for work with several steps: make a plan early, \
                      and update it as steps are completed or the plan changes. The plan is \
                      shown to the people following the task; it does not change any file."
            .to_string(),
        parameters: json!({
            "type": "object",
            "properties": {
                "steps": {
                    "type": "array",
                    "minItems": 1,
                    "description": "The whole plan, in order.",
                    "items": {
                        "type": "object",
                        "properties": {
                            "step": {
                                "type": "string",
                                "description": "What the step does, in a short sentence."
                            },
                            "status": {
                                "type": "string",
                                "enum": ["pending", "in_progress", "completed"]
                            }
                        },
                        "required": ["step", "status"],
                        "additionalProperties": false
                    }
                }
            },
            "required": ["steps"],
            "additionalProperties": false
        }),
    }
}

pub(crate) fn finish_spec() -> ToolSpec {
    ToolSpec {
        name: FINISH.to_string(),
        description: "End the task. Call it once the work is done (or cannot be done), after \
                      checking the result, for example by building or running the tests. \
                      `summary` tells the people who asked for the task what you changed and \
                      why, what you verified and how, and anything left undone or worth their \
                      attention. No tool calls run after finish."
            .to_string(),
        parameters: json!({
            "type": "object",
            "properties": {
                "summary": {
                    "type": "string",
                    "description": "What was done, how it was verified, and what is left. Must not be empty."
                }
            },
            "required": ["summary"],
            "additionalProperties": false
        }),
    }
}

pub(crate) fn update_plan(arguments: &str) -> ToolOutput {
    let args: PlanArgs = match parse_args(UPDATE_PLAN, arguments, PLAN_EXPECTED) {
        Ok(args) => args,
        Err(output) => return output,
    };
    if args.steps.is_empty() {
        return ToolOutput::failure(format!(
            "{UPDATE_PLAN}: `steps` is empty; send the whole plan, at least one step. To end \
             the task, call {FINISH}."
        ));
    }
    if let Some(index) = args.steps.iter().position(|s| s.step.trim().is_empty()) {
        return ToolOutput::failure(format!(
            "{UPDATE_PLAN}: step {} has an empty `step`; describe every step. The plan was not \
             changed.",
            index + 1
        ));
    }
    let in_progress: Vec<String> = args
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.status == PlanStepStatus::InProgress)
        .map(|(index, _)| (index + 1).to_string())
        .collect();
    if in_progress.len() > 1 {
        return ToolOutput::failure(format!(
            "{UPDATE_PLAN}: {} steps are in_progress (steps {}); at most one may be. Mark the \
             others pending or completed. The plan was not changed.",
            in_progress.len(),
            in_progress.join(", ")
        ));
    }
    let steps: Vec<PlanStep> = args
        .steps
        .into_iter()
        .map(|s| PlanStep {
            step: s.step.trim().to_string(),
            status: s.status,
        })
        .collect();
    let mut text = String::from("Plan updated:\n");
    for step in &steps {
        let mark = match step.status {
            PlanStepStatus::Pending => "[ ]",
            PlanStepStatus::InProgress => "[>]",
            PlanStepStatus::Completed => "[x]",
        };
        text.push_str(&format!("{mark} {}\n", step.step));
    }
    ToolOutput {
        control: Some(Control::Plan { steps }),
        ..ToolOutput::success(text)
    }
}

pub(crate) fn finish(arguments: &str) -> ToolOutput {
    let args: FinishArgs = match parse_args(FINISH, arguments, FINISH_EXPECTED) {
        Ok(args) => args,
        Err(output) => return output,
    };
    let summary = args.summary.trim();
    if summary.is_empty() {
        return ToolOutput::failure(format!(
            "{FINISH}: `summary` is empty; say what you changed, how you verified it and what \
             is left, then call {FINISH} again."
        ));
    }
    ToolOutput {
        control: Some(Control::Finish {
            summary: summary.to_string(),
        }),
        ..ToolOutput::success("Finished. The task ends here.")
    }
}
