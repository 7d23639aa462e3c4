//! Where the task commands get their answers: the embedded local store (and detached workers
//! started from this process), or a `nightshift serve` over HTTP when `NIGHTSHIFT_SERVER` is
//! set. The commands and everything they print are shared; only this seam knows which one it
//! talks to, so `show --json` prints the same object either way.

mod local;
mod plan;
mod remote;
mod stream;

use std::ops::ControlFlow;
use std::path::PathBuf;

use nightshift_protocol::{EventRecord, Task, TaskId, TaskState};
use nightshift_store::CancelOutcome;

pub use local::Local;
pub use remote::Remote;

use crate::output::Failure;

/// The model of a task that names none, in local mode. In remote mode the server's own default
/// (`nightshift serve --model`) applies instead.
pub const DEFAULT_MODEL: &str = "openai:gpt-4.1";

/// What `nightshift run` asks for.
#[derive(Debug, Clone)]
pub struct Submission {
    pub repo: PathBuf,
    pub base: Option<String>,
    pub prompt: String,
    /// `None`: the default of whoever runs the task.
    pub model: Option<String>,
    pub max_turns: u32,
    pub max_tokens: Option<u64>,
    pub max_cost_usd: Option<f64>,
    pub max_duration_secs: Option<u64>,
    /// The image to start from, over the repository's.
    pub image: Option<String>,
    /// Make it a review of a task's result or of the branch `base` (see `nightshift review`).
    pub review: Option<nightshift_runner::ReviewOf>,
    /// Best-of-N: how many attempts (`None`: one per model of `models`, or one).
    pub attempts: Option<u32>,
    /// The models to spread the attempts over (empty: `model` for all).
    pub models: Vec<String>,
    /// Make it a planning task.
    pub plan: bool,
}

/// Called with each event while following a log; `Break` stops following.
pub type OnEvent<'a> = dyn FnMut(&EventRecord) -> Result<ControlFlow<()>, Failure> + 'a;

/// The store the task commands work on.
pub enum Backend {
    Local(Local),
    Remote(Remote),
}

impl Backend {
    /// `NIGHTSHIFT_SERVER` (with `NIGHTSHIFT_TOKEN`) selects a server; otherwise the local
    /// store of `NIGHTSHIFT_HOME`, after settling tasks whose local worker died.
    pub async fn from_env() -> Result<Backend, Failure> {
        match Remote::from_env()? {
            Some(remote) => Ok(Backend::Remote(remote)),
            None => Ok(Backend::Local(Local::from_env().await?)),
        }
    }

    /// Checks and queues a task, and makes sure something will run it: a detached local worker,
    /// or the server's workers.
    pub async fn submit(&self, submission: Submission) -> Result<Task, Failure> {
        match self {
            Backend::Local(local) => local.submit(submission).await,
            Backend::Remote(remote) => remote.submit(submission).await,
        }
    }

    /// Tasks, newest first.
    pub async fn list(&self, states: &[TaskState], limit: u32) -> Result<Vec<Task>, Failure> {
        match self {
            Backend::Local(local) => local.list(states, limit).await,
            Backend::Remote(remote) => remote.list(states, limit).await,
        }
    }

    /// The task a full id, unique prefix or short id names.
    pub async fn find(&self, reference: &str) -> Result<Task, Failure> {
        match self {
            Backend::Local(local) => local.find(reference).await,
            Backend::Remote(remote) => remote.find(reference).await,
        }
    }

    /// Up to `limit` events with a `seq` above `after`, in order.
    pub async fn events(
        &self,
        id: TaskId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<EventRecord>, Failure> {
        match self {
            Backend::Local(local) => local.events(id, after, limit).await,
            Backend::Remote(remote) => remote.events(id, after, limit).await,
        }
    }

    /// Every event after `after` and then each new one as it is appended, until `on_event`
    /// breaks. Waits as long as the task produces nothing.
    pub async fn follow(
        &self,
        id: TaskId,
        after: u64,
        on_event: &mut OnEvent<'_>,
    ) -> Result<(), Failure> {
        match self {
            Backend::Local(local) => local.follow(id, after, on_event).await,
            Backend::Remote(remote) => stream::follow(remote, id, after, on_event).await,
        }
    }

    /// The patch the task handed back, if it has one.
    pub async fn diff(&self, task: &Task) -> Result<Option<Vec<u8>>, Failure> {
        match self {
            Backend::Local(local) => local.diff(task).await,
            Backend::Remote(remote) => remote.diff(task).await,
        }
    }

    pub async fn cancel(&self, task: &Task) -> Result<CancelOutcome, Failure> {
        match self {
            Backend::Local(local) => local.cancel(task).await,
            Backend::Remote(remote) => remote.cancel(task).await,
        }
    }

    /// Appends a `message_received` event: read by a running task before its next turn.
    pub async fn say(&self, task: &Task, text: &str) -> Result<EventRecord, Failure> {
        match self {
            Backend::Local(local) => local.say(task, text).await,
            Backend::Remote(remote) => remote.say(task, text).await,
        }
    }
}
