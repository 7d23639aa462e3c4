//! Turning a request into a queued task, after checking everything that can be checked before
//! any work starts: the prompt, the model spec, the repository and the base branch.

use jiff::Timestamp;
use nightshift_env::SourceRepo;
use nightshift_model::ModelSpec;
use nightshift_protocol::{Task, TaskId, TaskSpec};

use crate::{Runner, SubmitError};

/// What a person asks for; `TaskSpec` is what gets stored once it is checked and resolved.
#[derive(Debug, Clone)]
pub struct TaskRequest {
    pub repo: std::path::PathBuf,
    pub base: Option<String>,
    pub prompt: String,
    pub model: String,
    pub max_turns: u32,
}

impl Runner {
    /// Checks the request and stores it as a queued task. The repository path is stored as its
    /// absolute top level, so the task does not depend on the submitter's working directory.
    pub async fn submit(&self, request: TaskRequest) -> Result<Task, SubmitError> {
        let prompt = request.prompt.trim();
        if prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if request.max_turns == 0 {
            return Err(SubmitError::NoTurns);
        }
        let model: ModelSpec = request.model.parse()?;
        let source = SourceRepo::open(&request.repo).await?;
        let base = source.resolve_base(request.base.as_deref()).await?;
        let spec = TaskSpec {
            repo: source.root().display().to_string(),
            base: Some(base.name),
            prompt: prompt.to_string(),
            model: model.to_string(),
            max_turns: request.max_turns,
        };
        let task = Task::queued(TaskId::new(), spec, Timestamp::now());
        self.store.create_task(&task).await?;
        Ok(task)
    }
}
