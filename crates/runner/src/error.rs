//! Errors of the runner's two entry points.

use nightshift_env::EnvError;
use nightshift_model::ModelError;
use nightshift_protocol::{TaskId, TaskState};
use nightshift_store::StoreError;

/// Why a task was not queued. Nothing was stored.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the prompt is empty: say what the task should do")]
    EmptyPrompt,
    #[error("{0}")]
    Budget(String),
    #[error("{0}")]
    Model(#[from] ModelError),
    /// The model's provider needs an API key that this runner's provider configuration lacks:
    /// the task could only fail once a worker got to it.
    #[error(
        "`{model}` needs an API key, and {variable} is not set (nor {} in [providers] of config.toml)",
        variable.to_ascii_lowercase()
    )]
    MissingKey {
        model: String,
        /// The environment variable that holds the key, e.g. `OPENAI_API_KEY`.
        variable: &'static str,
    },
    #[error("{0}")]
    Repository(#[from] EnvError),
    /// The image reference cannot be read.
    #[error("{0}")]
    Image(String),
    /// What a review was asked of cannot be reviewed; nothing was queued.
    #[error("{0}")]
    Review(String),
    /// A best-of-N request that cannot be run as asked; nothing was queued.
    #[error("{0}")]
    Attempts(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl SubmitError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            SubmitError::EmptyPrompt | SubmitError::Budget(_) => None,
            SubmitError::Review(_) => Some("`nightshift review ID` reviews an ended task's branch; `nightshift review --repo PATH --branch B --base A` reviews a branch".into()),
            SubmitError::Attempts(_) => Some(format!(
                "ask for 2 to {} attempts (--attempts N), and give --model once for all of them or once per model to spread them over",
                nightshift_protocol::MAX_ATTEMPTS
            )),
            SubmitError::Model(err) => err.hint().map(str::to_string),
            SubmitError::MissingKey { variable, .. } => Some(format!(
                "set {variable} where the tasks run (for `nightshift run`, in its environment), or point {} at a server that needs no key (such as a local OpenAI-compatible one)",
                variable.replace("_API_KEY", "_BASE_URL")
            )),
            SubmitError::Repository(err) => err.hint(),
            SubmitError::Store(_) => None,
            SubmitError::Image(_) => Some("write an image as `REGISTRY/NAME[:TAG][@DIGEST]` (or `rust:1.86` on Docker Hub), `oci:PATH[:TAG]`, `oci-archive:PATH` or `docker-archive:PATH`".into()),
        }
    }
}

/// Why a task could not be run at all. Failures of the task itself (a model that refuses, a
/// git error) are not errors here: they end the task as failed, with an error event.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("task {id} is {state}, not queued; it cannot be started again")]
    NotClaimable { id: TaskId, state: TaskState },
    #[error("no task {0}")]
    NoSuchTask(TaskId),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sink(#[from] nightshift_agent::SinkError),
    #[error(transparent)]
    MessageRefused(crate::follow_up::MessageRefusal),
}
