//! `nightshift mcp`: nightshift as an MCP server on standard input and output, so that an
//! interactive agent (in an editor, a terminal) can hand a long job to a background task and
//! follow it. The tools work on the same store as the other commands: the local one, or with
//! NIGHTSHIFT_SERVER and NIGHTSHIFT_TOKEN a server's.
//!
//! Standard output is the protocol's: nothing else may be printed there.

use std::process::ExitCode;
use std::sync::Arc;

use nightshift_protocol::{Event, Task, TaskSpec};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, ServiceExt, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::json;

use crate::backend::{Backend, Submission};
use crate::output::{Failure, TaskView};
use crate::render;

/// The most events `task_logs` returns at once, and the most bytes of text.
const LOG_PAGE: u32 = 200;
const LOG_BYTES: usize = 48 * 1024;
/// The most bytes of a diff `task_diff` returns; a longer one keeps its head and tail.
const DIFF_BYTES: usize = 200 * 1024;

pub async fn run() -> Result<ExitCode, Failure> {
    let backend = Backend::from_env().await?;
    let server = Tools::new(backend)
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|err| Failure::error(format!("starting the MCP server: {err}")))?;
    server
        .waiting()
        .await
        .map_err(|err| Failure::error(format!("the MCP session failed: {err}")))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone)]
struct Tools {
    backend: Arc<Backend>,
    #[allow(dead_code, reason = "the tool_handler macro reads it")]
    tool_router: ToolRouter<Self>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct StartTask {
    /// The git repository: a path on the machine that runs the tasks, a repository registered
    /// with `nightshift repo add` (by name), or a remote repository's URL.
    repo: String,
    /// What the agent should do, as you would write it to a colleague.
    prompt: String,
    /// The branch to start from; default: the repository's checked-out (or default) branch.
    #[serde(default)]
    base: Option<String>,
    /// The model as provider:model, e.g. openai:gpt-4.1; default: nightshift's.
    #[serde(default)]
    model: Option<String>,
    /// Run this many independent attempts (2 to 8) and keep the best; default: one.
    #[serde(default)]
    attempts: Option<u32>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct TaskRef {
    /// The task's id, or its 8-character short id.
    id: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct TaskLogs {
    /// The task's id, or its 8-character short id.
    id: String,
    /// Return the events after this sequence number (the `next_since` of the previous call);
    /// default 0, from the start.
    #[serde(default)]
    since: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct SendMessage {
    /// The task's id, or its 8-character short id.
    id: String,
    /// The message. A running task's agent reads it before its next turn; a task that has
    /// ended takes it as a follow-up on the same branch.
    message: String,
}

fn text(text: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text.into())])
}

fn failed(failure: Failure) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(failure.to_string())])
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// What the tools say about a task: its JSON view, as `show --json` prints it.
fn view(task: &Task) -> serde_json::Value {
    serde_json::to_value(TaskView::new(task)).unwrap_or_else(|_| json!({"id": task.id}))
}

#[tool_router]
impl Tools {
    fn new(backend: Backend) -> Self {
        Tools {
            backend: Arc::new(backend),
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "Delegate a coding task to a nightshift background agent. It works in an isolated copy of the repository (its own sandbox), runs the repository's checks on its result, and hands back a git branch. Returns the task at once (state `queued`); follow it with task_status or task_logs, and read its result with task_diff once it has ended."
    )]
    async fn start_task(
        &self,
        Parameters(args): Parameters<StartTask>,
    ) -> Result<CallToolResult, ErrorData> {
        let submission = Submission {
            repo: args.repo.into(),
            base: args.base,
            prompt: args.prompt,
            model: args.model,
            max_turns: TaskSpec::DEFAULT_MAX_TURNS,
            max_tokens: None,
            max_cost_usd: None,
            max_duration_secs: None,
            image: None,
            review: None,
            attempts: args.attempts,
            models: Vec::new(),
            plan: false,
        };
        Ok(match self.backend.submit(submission).await {
            Ok(task) => text(pretty(&json!({
                "task": view(&task),
                "next": format!("task_status {{\"id\": \"{}\"}} says where it stands; task_logs follows it", task.id.short()),
            }))),
            Err(failure) => failed(failure),
        })
    }

    #[tool(
        description = "Where a nightshift task stands: its state (queued, preparing, running, waiting, verifying, handing_off, succeeded, failed, cancelled), branch, summary or error, tokens used."
    )]
    async fn task_status(
        &self,
        Parameters(TaskRef { id }): Parameters<TaskRef>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(match self.backend.find(&id).await {
            Ok(task) => text(pretty(&view(&task))),
            Err(failure) => failed(failure),
        })
    }

    #[tool(
        description = "A nightshift task's log: model turns, tool calls with their output, checks, the commit, one line per event, from the start or after `since`. Returns `next_since` for the next call and `ended` once the task has ended."
    )]
    async fn task_logs(
        &self,
        Parameters(TaskLogs { id, since }): Parameters<TaskLogs>,
    ) -> Result<CallToolResult, ErrorData> {
        let task = match self.backend.find(&id).await {
            Ok(task) => task,
            Err(failure) => return Ok(failed(failure)),
        };
        let events = match self
            .backend
            .events(task.id, since.unwrap_or(0), LOG_PAGE)
            .await
        {
            Ok(events) => events,
            Err(failure) => return Ok(failed(failure)),
        };
        let mut lines = String::new();
        let mut next = since.unwrap_or(0);
        let mut ended = false;
        for record in &events {
            let line = format!("{:>4} {}\n", record.seq, render::event(record));
            if !lines.is_empty() && lines.len() + line.len() > LOG_BYTES {
                break;
            }
            lines.push_str(&line);
            next = record.seq;
            ended |= matches!(record.event, Event::Ended { .. });
        }
        Ok(text(format!(
            "{lines}\n{}",
            pretty(&json!({"next_since": next, "ended": ended, "state": task.state}))
        )))
    }

    #[tool(
        description = "The change a nightshift task handed back, as a unified diff (git format), once it has ended. Long diffs keep their head and tail."
    )]
    async fn task_diff(
        &self,
        Parameters(TaskRef { id }): Parameters<TaskRef>,
    ) -> Result<CallToolResult, ErrorData> {
        let task = match self.backend.find(&id).await {
            Ok(task) => task,
            Err(failure) => return Ok(failed(failure)),
        };
        Ok(match self.backend.diff(&task).await {
            Ok(Some(patch)) => {
                let patch = String::from_utf8_lossy(&patch);
                let shown = nightshift_protocol::truncate_middle(&patch, DIFF_BYTES);
                let branch = task.branch.as_deref().unwrap_or("its branch");
                text(format!("On {branch}:\n\n{}", shown.text))
            }
            Ok(None) => CallToolResult::error(vec![ContentBlock::text(format!(
                "task {} has no diff: {} (state: {})",
                task.id.short(),
                match task.state.is_terminal() {
                    true => "it changed no files",
                    false => "it has not handed back a result yet",
                },
                task.state
            ))]),
            Err(failure) => failed(failure),
        })
    }

    #[tool(
        description = "Send a nightshift task a message: a running task's agent reads it before its next turn (to steer it); a task that has ended takes it as a follow-up, which works on the same branch."
    )]
    async fn send_message(
        &self,
        Parameters(SendMessage { id, message }): Parameters<SendMessage>,
    ) -> Result<CallToolResult, ErrorData> {
        if message.trim().is_empty() {
            return Ok(CallToolResult::error(vec![ContentBlock::text(
                "the message is empty; nothing was sent",
            )]));
        }
        let task = match self.backend.find(&id).await {
            Ok(task) => task,
            Err(failure) => return Ok(failed(failure)),
        };
        Ok(match self.backend.say(&task, &message).await {
            Ok(_) if task.state.is_terminal() => text(format!(
                "sent as a follow-up to the {} task {}: its log gets a `follow_up_started` event naming the new task",
                task.state,
                task.id.short()
            )),
            Ok(_) => text(format!(
                "sent to {}; the agent reads it before its next turn",
                task.id.short()
            )),
            Err(failure) => failed(failure),
        })
    }

    #[tool(
        description = "Stop a nightshift task. What it changed so far is committed to its branch, marked incomplete."
    )]
    async fn cancel_task(
        &self,
        Parameters(TaskRef { id }): Parameters<TaskRef>,
    ) -> Result<CallToolResult, ErrorData> {
        let task = match self.backend.find(&id).await {
            Ok(task) => task,
            Err(failure) => return Ok(failed(failure)),
        };
        Ok(match self.backend.cancel(&task).await {
            Ok(outcome) => text(super::cancel::said(&task.id.short(), &outcome)),
            Err(failure) => failed(failure),
        })
    }
}

#[tool_handler]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("nightshift", env!("CARGO_PKG_VERSION")))
            .with_instructions(
            "nightshift runs coding tasks in the background, each in its own sandbox, and hands back a git branch with the diff, the log and the checks' results. Delegate with start_task, then follow with task_status and task_logs, and read the result with task_diff.",
        )
    }
}
