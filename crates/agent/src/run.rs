//! The agent loop: ask the model, run its tool calls, feed the results back, until it calls
//! `finish`, a budget runs out, the model fails, or the task is cancelled.

use std::time::Instant;

use nightshift_model::{Message, ModelClient, ModelError, ModelRequest, ToolCall};
use nightshift_protocol::{Event, Finding, Plan, TaskState, ToolCallRecord, Usage};
use nightshift_sandbox::SandboxSession;
use tokio_util::sync::CancellationToken;

use crate::compact::{compact, is_context_overflow, needs_compaction};
use crate::governor::{Budget, CostFn, Governor, Verdict};
use crate::mcp::McpTools;
use crate::prompt::{PLAN_SYSTEM_PROMPT, REVIEW_SYSTEM_PROMPT, SYSTEM_PROMPT};
use crate::tools::{Control, Mode, ToolContext, ToolLimits};
use crate::{EventSink, Inbox, SinkError};

/// How many answers without tool calls in a row the agent tolerates before it takes the last
/// one as its summary.
const MAX_TEXT_ONLY_ANSWERS: u32 = 2;

/// How often a run that waits for an answer looks for one.
const ANSWER_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// What bounds a run.
#[derive(Clone, Default)]
pub struct AgentConfig {
    pub budget: Budget,
    pub limits: ToolLimits,
    /// Passed to the model as its output limit per turn.
    pub max_output_tokens: Option<u32>,
    /// The model's price, when known: makes dollar budgets and cost reports possible.
    pub cost: Option<CostFn>,
    /// The model's context window in tokens, when known: the conversation is compacted as it
    /// nears it.
    pub context_window: Option<u64>,
    /// Build (change the repository) or review (report findings, change nothing).
    pub mode: Mode,
}

/// How a run ended.
#[derive(Debug)]
pub enum AgentOutcome {
    /// The agent called `finish` (or answered in words twice without calling a tool).
    Finished { summary: String },
    /// A review's agent called `submit_review`.
    Reviewed {
        summary: String,
        findings: Vec<Finding>,
    },
    /// A planning task's agent called `submit_plan`.
    Planned { plan: Plan },
    /// A budget ran out (or the agent looped); it had one turn to wrap up. `summary` is its
    /// `finish` summary if it called `finish` in that turn.
    BudgetExceeded {
        reason: String,
        summary: Option<String>,
    },
    /// The cancel token fired.
    Cancelled,
    /// The model failed in a way retries did not cure.
    ModelFailed(ModelError),
}

/// The end of a run: how it ended and what it used.
#[derive(Debug)]
pub struct AgentReport {
    pub outcome: AgentOutcome,
    pub usage: Usage,
    pub turns: u32,
    /// Dollars spent on the model, when its price is known.
    pub cost_usd: Option<f64>,
}

/// Why a run stopped without an outcome.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// One agent run over one sandbox session.
pub struct Agent<'a> {
    pub model: &'a dyn ModelClient,
    pub session: &'a dyn SandboxSession,
    pub sink: &'a dyn EventSink,
    pub config: &'a AgentConfig,
    /// Messages for the running task, if anyone can send them.
    pub inbox: Option<&'a dyn Inbox>,
    /// The MCP servers' tools, offered after the built-in ones.
    pub mcp: Option<&'a McpTools>,
}

impl Agent<'_> {
    /// Works on `prompt` until an outcome is reached.
    pub async fn run(
        &self,
        prompt: &str,
        cancel: &CancellationToken,
    ) -> Result<AgentReport, AgentError> {
        let mut request = ModelRequest {
            model: self.model.spec().model.clone(),
            system: match self.config.mode {
                Mode::Build => SYSTEM_PROMPT,
                Mode::Review => REVIEW_SYSTEM_PROMPT,
                Mode::Plan => PLAN_SYSTEM_PROMPT,
            }
            .to_string(),
            messages: vec![Message::User {
                content: prompt.to_string(),
            }],
            tools: {
                let mut tools = self.config.mode.specs();
                tools.extend(self.mcp.iter().flat_map(|mcp| mcp.specs()).cloned());
                tools
            },
            max_output_tokens: self.config.max_output_tokens,
        };
        let mut usage = Usage::default();
        let mut cost_usd = 0.0;
        let mut text_only_answers = 0;
        let mut governor = Governor::new(self.config.budget.clone());
        let mut wrapping_up: Option<String> = None;
        let context = ToolContext {
            session: self.session,
            cancel,
            limits: &self.config.limits,
            mode: self.config.mode,
        };
        let final_tool = self.config.mode.final_tool();
        let priced = self.config.cost.is_some();
        let mut turn = 0;

        loop {
            turn += 1;
            let report = |outcome, turns| AgentReport {
                outcome,
                usage,
                turns,
                cost_usd: priced.then_some(cost_usd),
            };
            if cancel.is_cancelled() {
                return Ok(report(AgentOutcome::Cancelled, turn - 1));
            }
            if let Some(inbox) = self.inbox {
                for message in inbox.drain() {
                    request.messages.push(Message::User {
                        content: format!(
                            "Message from the person who delegated this task:\n{message}"
                        ),
                    });
                }
            }
            if wrapping_up.is_none()
                && let Verdict::WrapUp(reason) = governor.before_turn(turn, &usage, cost_usd)
            {
                self.sink
                    .emit(Event::Warning {
                        message: format!(
                            "budget reached: {reason}; the agent has one turn to wrap up"
                        ),
                    })
                    .await?;
                request.messages.push(Message::User {
                    content: format!(
                        "Stop working: {reason}. This is your last turn. Call `{final_tool}` now with a summary of what is done, what is not, and what remains to do."
                    ),
                });
                wrapping_up = Some(reason);
            }

            if let Some(window) = self.config.context_window
                && needs_compaction(&request, window)
            {
                self.compact(&mut request, window, false, cancel).await?;
            }
            self.sink
                .emit(Event::ModelRequest {
                    turn,
                    model: self.model.spec().to_string(),
                    messages: request.messages.len() as u32,
                })
                .await?;
            let started = Instant::now();
            let mut compacted_for_overflow = false;
            let response = loop {
                match self.model.complete(&request, cancel, &mut |_| {}).await {
                    Ok(response) => break response,
                    Err(ModelError::Cancelled) => {
                        return Ok(report(AgentOutcome::Cancelled, turn - 1));
                    }
                    Err(error) if is_context_overflow(&error) && !compacted_for_overflow => {
                        compacted_for_overflow = true;
                        let window = self
                            .config
                            .context_window
                            .unwrap_or_else(|| crate::compact::estimate_tokens(&request) * 3 / 4);
                        if !self.compact(&mut request, window, true, cancel).await? {
                            return Ok(report(AgentOutcome::ModelFailed(error), turn - 1));
                        }
                    }
                    Err(error) => return Ok(report(AgentOutcome::ModelFailed(error), turn - 1)),
                }
            };
            usage += response.usage;
            let call_cost = self.config.cost.as_ref().map(|cost| cost(&response.usage));
            cost_usd += call_cost.unwrap_or(0.0);
            self.sink
                .emit(Event::ModelResponse {
                    turn,
                    text: response.text.clone(),
                    tool_calls: response.tool_calls.iter().map(record).collect(),
                    usage: response.usage,
                    cost_usd: call_cost,
                    stop_reason: response
                        .stop_reason
                        .map_or("none", |reason| reason.as_str())
                        .to_string(),
                    duration_ms: started.elapsed().as_millis() as u64,
                })
                .await?;
            let report = |outcome| AgentReport {
                outcome,
                usage,
                turns: turn,
                cost_usd: priced.then_some(cost_usd),
            };

            let mut finished = None;
            if response.tool_calls.is_empty() {
                text_only_answers += 1;
                let text = response.text.clone().unwrap_or_default();
                // A review's findings are data: words alone never end one.
                if text_only_answers >= MAX_TEXT_ONLY_ANSWERS
                    && !text.trim().is_empty()
                    && self.config.mode == Mode::Build
                {
                    self.sink
                        .emit(Event::Warning {
                            message: "the model stopped without calling `finish`; its last answer is taken as the summary".into(),
                        })
                        .await?;
                    finished = Some(Ended::Finished(text));
                } else {
                    request.messages.push(Message::Assistant {
                        content: Some(text),
                        tool_calls: vec![],
                        reasoning: response.reasoning.clone(),
                    });
                    request.messages.push(Message::User {
                        content: format!("Continue working with the tools. When the task is done, call `{final_tool}` with your summary."),
                    });
                }
            } else {
                text_only_answers = 0;
                // Reasoning goes back verbatim: providers require it (signed thinking blocks,
                // encrypted reasoning items) to continue the same line of thought.
                request.messages.push(Message::Assistant {
                    content: response.text.clone(),
                    tool_calls: response.tool_calls.clone(),
                    reasoning: response.reasoning.clone(),
                });
                for call in &response.tool_calls {
                    let (output, summary) =
                        self.run_tool(call, &context, governor.deadline()).await?;
                    if matches!(summary, Some(Ended::Cancelled)) {
                        return Ok(report(AgentOutcome::Cancelled));
                    }
                    governor.record_call(&call.name, &call.arguments, &output);
                    request.messages.push(Message::Tool {
                        call_id: call.id.clone(),
                        content: output,
                    });
                    if cancel.is_cancelled() {
                        return Ok(report(AgentOutcome::Cancelled));
                    }
                    // `finish`, `submit_review` and `submit_plan` end the run: the calls after
                    // them in the same answer do not run.
                    if summary.is_some() {
                        finished = summary;
                        break;
                    }
                }
            }
            match (finished, wrapping_up.take()) {
                (Some(Ended::Finished(summary)), None) => {
                    return Ok(report(AgentOutcome::Finished { summary }));
                }
                // A review or plan submitted in the last turn is whole: it stands.
                (Some(Ended::Reviewed { summary, findings }), _) => {
                    return Ok(report(AgentOutcome::Reviewed { summary, findings }));
                }
                (Some(Ended::Planned(plan)), _) => {
                    return Ok(report(AgentOutcome::Planned { plan }));
                }
                (Some(Ended::Cancelled), _) => return Ok(report(AgentOutcome::Cancelled)),
                (finished, Some(reason)) => {
                    let summary = match finished {
                        Some(Ended::Finished(summary)) => Some(summary),
                        _ => None,
                    };
                    return Ok(report(AgentOutcome::BudgetExceeded { reason, summary }));
                }
                (None, None) => {}
            }
        }
    }

    /// Compacts the conversation and logs it; false when there was nothing left to compact or
    /// the summary could not be made.
    async fn compact(
        &self,
        request: &mut ModelRequest,
        window: u64,
        force: bool,
        cancel: &CancellationToken,
    ) -> Result<bool, SinkError> {
        match compact(request, window, force, self.model, cancel).await {
            Ok(Some(done)) => {
                self.sink
                    .emit(Event::ContextCompacted {
                        before_tokens: done.before_tokens,
                        after_tokens: done.after_tokens,
                        masked: done.masked,
                        summarized: done.summarized,
                    })
                    .await?;
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(err) => {
                self.sink
                    .emit(Event::Warning {
                        message: format!("could not summarize the conversation: {err}"),
                    })
                    .await?;
                Ok(false)
            }
        }
    }

    /// Runs one call with its events; returns what the model sees and, for `finish` and
    /// `submit_review`, how the run ends.
    async fn run_tool(
        &self,
        call: &ToolCall,
        context: &ToolContext<'_>,
        deadline: Option<std::time::Instant>,
    ) -> Result<(String, Option<Ended>), SinkError> {
        self.sink
            .emit(Event::ToolStarted {
                call_id: call.id.clone(),
                tool: call.name.clone(),
                arguments: arguments_value(&call.arguments),
            })
            .await?;
        let started = Instant::now();
        let mut output = match self.mcp {
            Some(mcp) if mcp.handles(&call.name) => mcp
                .call(
                    &call.name,
                    &call.arguments,
                    self.session,
                    context.cancel,
                    deadline,
                )
                .await
                .cut_to(context.limits.output_bytes),
            _ => crate::tools::run(&call.name, &call.arguments, context).await,
        };
        // Secrets go neither into the log nor to the model.
        output.text = self.sink.redact(&output.text);
        self.sink
            .emit(Event::ToolFinished {
                call_id: call.id.clone(),
                tool: call.name.clone(),
                ok: output.ok,
                output: output.text.clone(),
                exit_code: output.exit_code,
                duration_ms: started.elapsed().as_millis() as u64,
            })
            .await?;
        let summary = match output.control {
            Some(Control::Finish { summary }) => {
                self.sink
                    .emit(Event::AgentFinished {
                        summary: summary.clone(),
                    })
                    .await?;
                Some(Ended::Finished(summary))
            }
            Some(Control::Review { summary, findings }) => {
                self.sink
                    .emit(Event::ReviewSubmitted {
                        summary: summary.clone(),
                        findings: findings.clone(),
                    })
                    .await?;
                Some(Ended::Reviewed { summary, findings })
            }
            Some(Control::Plan { steps }) => {
                self.sink.emit(Event::PlanUpdated { steps }).await?;
                None
            }
            Some(Control::SubmitPlan { plan }) => {
                self.sink
                    .emit(Event::PlanSubmitted {
                        version: 1,
                        plan: (*plan).clone(),
                        author: "planner".into(),
                    })
                    .await?;
                Some(Ended::Planned(*plan))
            }
            Some(Control::Ask { question }) => {
                return match self
                    .wait_for_answer(&question, context.cancel, deadline)
                    .await?
                {
                    Some(answer) => Ok((answer, None)),
                    None => Ok((String::new(), Some(Ended::Cancelled))),
                };
            }
            None => None,
        };
        Ok((output.text, summary))
    }

    /// Puts the question to the person and waits for the answer (a message to the task);
    /// `None` when the task was cancelled first. Without an inbox nobody can answer: the tool
    /// says so at once.
    async fn wait_for_answer(
        &self,
        question: &str,
        cancel: &CancellationToken,
        deadline: Option<std::time::Instant>,
    ) -> Result<Option<String>, SinkError> {
        let Some(inbox) = self.inbox else {
            return Ok(Some(
                "Nobody can answer questions in this task: decide yourself, and say in the plan what you assumed.".into(),
            ));
        };
        self.sink
            .emit(Event::QuestionAsked {
                question: question.to_string(),
            })
            .await?;
        self.sink
            .emit(Event::StateChanged {
                state: TaskState::Waiting,
                detail: Some("waiting for the person's answer".into()),
            })
            .await?;
        let answer = loop {
            let messages = inbox.drain();
            if !messages.is_empty() {
                break format!("The person answered:\n{}", messages.join("\n\n"));
            }
            // The time budget bounds the wait: the agent then decides without an answer.
            if deadline.is_some_and(|deadline| std::time::Instant::now() >= deadline) {
                self.sink
                    .emit(Event::Warning {
                        message: "no answer came before the task's time ran out".into(),
                    })
                    .await?;
                break "No answer came before the task's time ran out: decide yourself, and say in the plan what you assumed.".to_string();
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(None),
                _ = tokio::time::sleep(ANSWER_POLL) => {}
            }
        };
        self.sink
            .emit(Event::StateChanged {
                state: TaskState::Running,
                detail: Some("answered".into()),
            })
            .await?;
        Ok(Some(answer))
    }
}

/// How a tool call ended the run.
enum Ended {
    Finished(String),
    Reviewed {
        summary: String,
        findings: Vec<Finding>,
    },
    Planned(Plan),
    /// Cancelled while waiting for an answer.
    Cancelled,
}

fn record(call: &ToolCall) -> ToolCallRecord {
    ToolCallRecord {
        id: call.id.clone(),
        name: call.name.clone(),
        arguments: arguments_value(&call.arguments),
    }
}

/// The arguments as JSON when they parse, else as the raw string, so the log shows exactly what
/// the model sent.
fn arguments_value(arguments: &str) -> serde_json::Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| serde_json::Value::String(arguments.into()))
}
