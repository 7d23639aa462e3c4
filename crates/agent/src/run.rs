//! The agent loop: ask the model, run its tool calls, feed the results back, until it calls
//! `finish`, runs out of turns, fails, or is cancelled.

use std::time::Instant;

use nightshift_model::{Message, ModelClient, ModelError, ModelRequest, ToolCall};
use nightshift_protocol::{Event, ToolCallRecord, Usage};
use nightshift_sandbox::SandboxSession;
use tokio_util::sync::CancellationToken;

use crate::prompt::SYSTEM_PROMPT;
use crate::tools::{self, Control, ToolContext, ToolLimits};
use crate::{EventSink, SinkError};

/// How many answers without tool calls in a row the agent tolerates before it takes the last
/// one as its summary.
const MAX_TEXT_ONLY_ANSWERS: u32 = 2;

/// What bounds a run.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The most model turns.
    pub max_turns: u32,
    pub limits: ToolLimits,
    /// Passed to the model as its output limit per turn.
    pub max_output_tokens: Option<u32>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            max_turns: 50,
            limits: ToolLimits::default(),
            max_output_tokens: None,
        }
    }
}

/// How a run ended.
#[derive(Debug)]
pub enum AgentOutcome {
    /// The agent called `finish` (or answered in words twice without calling a tool).
    Finished { summary: String },
    /// `max_turns` turns were taken without `finish`.
    TurnsExhausted,
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
            system: SYSTEM_PROMPT.to_string(),
            messages: vec![Message::User {
                content: prompt.to_string(),
            }],
            tools: tools::specs(),
            max_output_tokens: self.config.max_output_tokens,
        };
        let mut usage = Usage::default();
        let mut text_only_answers = 0;
        let context = ToolContext {
            session: self.session,
            cancel,
            limits: &self.config.limits,
        };

        for turn in 1..=self.config.max_turns {
            let report = |outcome| AgentReport {
                outcome,
                usage,
                turns: turn - 1,
            };
            if cancel.is_cancelled() {
                return Ok(report(AgentOutcome::Cancelled));
            }
            self.sink
                .emit(Event::ModelRequest {
                    turn,
                    model: self.model.spec().to_string(),
                    messages: request.messages.len() as u32,
                })
                .await?;
            let started = Instant::now();
            let response = match self.model.complete(&request, cancel, &mut |_| {}).await {
                Ok(response) => response,
                Err(ModelError::Cancelled) => return Ok(report(AgentOutcome::Cancelled)),
                Err(error) => return Ok(report(AgentOutcome::ModelFailed(error))),
            };
            usage += response.usage;
            self.sink
                .emit(Event::ModelResponse {
                    turn,
                    text: response.text.clone(),
                    tool_calls: response.tool_calls.iter().map(record).collect(),
                    usage: response.usage,
                    stop_reason: response
                        .stop_reason
                        .map_or("none", |reason| reason.as_str())
                        .to_string(),
                    duration_ms: started.elapsed().as_millis() as u64,
                })
                .await?;
            let done = |outcome| AgentReport {
                outcome,
                usage,
                turns: turn,
            };

            if response.tool_calls.is_empty() {
                text_only_answers += 1;
                let text = response.text.unwrap_or_default();
                if text_only_answers >= MAX_TEXT_ONLY_ANSWERS && !text.trim().is_empty() {
                    self.sink
                        .emit(Event::Warning {
                            message: "the model stopped without calling `finish`; its last answer is taken as the summary".into(),
                        })
                        .await?;
                    return Ok(done(AgentOutcome::Finished { summary: text }));
                }
                request.messages.push(Message::Assistant {
                    content: Some(text),
                    tool_calls: vec![],
                });
                request.messages.push(Message::User {
                    content: "Continue working with the tools. When the task is done, call `finish` with your summary.".into(),
                });
                continue;
            }
            text_only_answers = 0;

            request.messages.push(Message::Assistant {
                content: response.text.clone(),
                tool_calls: response.tool_calls.clone(),
            });
            let mut finished = None;
            for call in &response.tool_calls {
                let result = self.run_tool(call, &context).await?;
                request.messages.push(Message::Tool {
                    call_id: call.id.clone(),
                    content: result.0,
                });
                if let Some(summary) = result.1 {
                    finished = Some(summary);
                }
                if cancel.is_cancelled() {
                    return Ok(done(AgentOutcome::Cancelled));
                }
            }
            if let Some(summary) = finished {
                return Ok(done(AgentOutcome::Finished { summary }));
            }
        }
        Ok(AgentReport {
            outcome: AgentOutcome::TurnsExhausted,
            usage,
            turns: self.config.max_turns,
        })
    }

    /// Runs one call with its events; returns what the model sees and, for `finish`, the
    /// summary.
    async fn run_tool(
        &self,
        call: &ToolCall,
        context: &ToolContext<'_>,
    ) -> Result<(String, Option<String>), SinkError> {
        self.sink
            .emit(Event::ToolStarted {
                call_id: call.id.clone(),
                tool: call.name.clone(),
                arguments: arguments_value(&call.arguments),
            })
            .await?;
        let started = Instant::now();
        let output = tools::run(&call.name, &call.arguments, context).await;
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
                Some(summary)
            }
            Some(Control::Plan { steps }) => {
                self.sink.emit(Event::PlanUpdated { steps }).await?;
                None
            }
            None => None,
        };
        Ok((output.text, summary))
    }
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
