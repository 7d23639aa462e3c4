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

/// The message and its hint, for a report that goes on after the failure.
impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

impl From<nightshift_store::StoreError> for Failure {
    fn from(err: nightshift_store::StoreError) -> Self {
        match err {
            nightshift_store::StoreError::NotFound { .. }
            | nightshift_store::StoreError::Ambiguous { .. }
            | nightshift_store::StoreError::AlreadyExists { .. }
            | nightshift_store::StoreError::InvalidRepoName(_) => Failure::usage(err.to_string()),
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
        | TaskState::Waiting
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
    /// The agent finished without changing anything ([`Task::no_changes`]); absent otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_changes: bool,
    #[serde(flatten)]
    pub task: &'a Task,
    /// What the task cost, where it was worked out (`show`, `run --wait`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<Cost>,
}

/// A task's cost, split the way hosted agents bill: model usage and machine time.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Cost {
    /// Dollars of model usage, from the price table; `None` when the model's price is unknown.
    pub model_usd: Option<f64>,
    /// The task's wall-clock time in the sandbox.
    pub machine_seconds: f64,
    /// `machine_seconds` at `NIGHTSHIFT_MACHINE_USD_PER_HOUR`, when that is set.
    pub machine_usd: Option<f64>,
    /// CPU time the task's sandboxes used, when the sandbox could measure it.
    pub cpu_seconds: Option<f64>,
}

impl Cost {
    /// Adds up the model cost recorded in the task's events and prices its run time.
    pub async fn of(backend: &crate::backend::Backend, task: &Task) -> Result<Cost, Failure> {
        let mut model_usd: Option<f64> = None;
        let mut cpu_seconds: Option<f64> = None;
        let mut after = 0;
        loop {
            let page = backend.events(task.id, after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for record in &page {
                match record.event {
                    nightshift_protocol::Event::ModelResponse {
                        cost_usd: Some(cost),
                        ..
                    } => {
                        *model_usd.get_or_insert(0.0) += cost;
                    }
                    nightshift_protocol::Event::Ended {
                        cpu_seconds: cpu,
                        cost_usd,
                        ..
                    } => {
                        if let Some(cpu) = cpu {
                            *cpu_seconds.get_or_insert(0.0) += cpu;
                        }
                        // A best-of-N task's or a plan run's model use is its tasks', summed
                        // as it ended.
                        if !task.spec.attempts.is_empty() || task.spec.plan_run.is_some() {
                            model_usd = cost_usd;
                        }
                    }
                    _ => {}
                }
            }
        }
        let machine_seconds = crate::render::elapsed(task).as_secs_f64();
        let rate = std::env::var("NIGHTSHIFT_MACHINE_USD_PER_HOUR")
            .ok()
            .and_then(|r| r.parse::<f64>().ok());
        Ok(Cost {
            model_usd,
            machine_seconds,
            machine_usd: rate.map(|rate| rate * machine_seconds / 3600.0),
            cpu_seconds,
        })
    }
}

impl<'a> TaskView<'a> {
    pub fn new(task: &'a Task) -> Self {
        TaskView {
            schema: SCHEMA_VERSION,
            short_id: task.id.short(),
            no_changes: task.no_changes(),
            task,
            cost: None,
        }
    }
}

/// Prints `value` as one line of JSON.
pub fn print_json(value: &impl Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string(value).map_err(|err| Failure::error(err.to_string()))?;
    println!("{text}");
    Ok(())
}
