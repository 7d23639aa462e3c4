//! Exit codes, error reports and the JSON shapes the CLI prints (docs/cli.md).

use std::process::ExitCode;

use nightshift_protocol::{SCHEMA_VERSION, Task, TaskState};
use serde::Serialize;

/// Exit codes: a contract for scripts.
pub mod exit {
    /// The command (or the awaited task) succeeded.
    pub const OK: u8 = 0;
    /// The awaited task failed, or the command could not do its job.
    pub const FAILED: u8 = 1;
    /// The request was wrong: bad arguments, not a repository, unknown branch or task.
    pub const USAGE: u8 = 2;
    /// The awaited task was cancelled.
    pub const CANCELLED: u8 = 3;
}

/// A command that could not do its job: what went wrong, what to do, and the exit code.
#[derive(Debug)]
pub struct Failure {
    message: String,
    hint: Option<String>,
    code: u8,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            hint: None,
            code: exit::USAGE,
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            hint: None,
            code: exit::FAILED,
        }
    }

    pub fn with_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }

    pub fn report(self) -> ExitCode {
        eprintln!("error: {}", self.message);
        if let Some(hint) = self.hint {
            eprintln!("hint: {hint}");
        }
        ExitCode::from(self.code)
    }
}

impl From<nightshift_store::StoreError> for Failure {
    fn from(err: nightshift_store::StoreError) -> Self {
        match err {
            nightshift_store::StoreError::NotFound { .. }
            | nightshift_store::StoreError::Ambiguous { .. } => Failure::usage(err.to_string()),
            other => Failure::error(other.to_string()),
        }
    }
}

/// The exit code for a task that ended in `state`.
pub fn exit_for(state: TaskState) -> ExitCode {
    let code = match state {
        TaskState::Succeeded => exit::OK,
        TaskState::Cancelled => exit::CANCELLED,
        TaskState::Failed
        | TaskState::Queued
        | TaskState::Preparing
        | TaskState::Running
        | TaskState::Verifying
        | TaskState::HandingOff => exit::FAILED,
    };
    ExitCode::from(code)
}

/// A task as `show --json`, `ls --json` and `run --json` print it.
#[derive(Serialize)]
pub struct TaskView<'a> {
    pub schema: u32,
    pub short_id: String,
    #[serde(flatten)]
    pub task: &'a Task,
}

impl<'a> TaskView<'a> {
    pub fn new(task: &'a Task) -> Self {
        TaskView {
            schema: SCHEMA_VERSION,
            short_id: task.id.short(),
            task,
        }
    }
}

/// Prints `value` as one line of JSON.
pub fn print_json(value: &impl Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string(value).map_err(|err| Failure::error(err.to_string()))?;
    println!("{text}");
    Ok(())
}
