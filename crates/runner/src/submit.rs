//! Turning a request into a queued task, after checking everything that can be checked before
//! any work starts: the prompt, the model spec and its provider's key, the budgets, the
//! repository and the base branch.

use std::path::PathBuf;

use jiff::Timestamp;
use nightshift_env::{EnvError, SourceRepo};
use nightshift_model::ModelSpec;
use nightshift_protocol::{
    AttemptOf, MAX_ATTEMPTS, ReviewSpec, Task, TaskId, TaskOrigin, TaskSpec,
};

use crate::{Runner, SubmitError};

/// What a person asks for; `TaskSpec` is what gets stored once it is checked and resolved.
#[derive(Debug, Clone)]
pub struct TaskRequest {
    pub repo: PathBuf,
    pub base: Option<String>,
    pub prompt: String,
    pub model: String,
    pub max_turns: u32,
    pub max_tokens: Option<u64>,
    pub max_cost_usd: Option<f64>,
    pub max_duration_secs: Option<u64>,
    /// The earlier task this one follows up on.
    pub follows: Option<TaskId>,
    /// The image the task starts from, over the repository's (see [`TaskSpec::image`]).
    pub image: Option<String>,
    /// The forge conversation that asked for it (see [`TaskSpec::origin`]).
    pub origin: Option<TaskOrigin>,
    /// Make it a review task (see [`TaskSpec::review`]): `prompt` is then what to look at
    /// besides the changes themselves.
    pub review: Option<ReviewOf>,
    /// Make it a best-of-N task (see [`TaskSpec::attempts`]): the model of each attempt.
    /// Empty for a task that runs once; see [`attempt_models`].
    pub attempts: Vec<String>,
    /// Set when this is one attempt of a best-of-N task (the runner sets it).
    pub attempt_of: Option<AttemptOf>,
    /// Make it a planning task (see [`TaskSpec::plan`]).
    pub plan: bool,
    /// The run of an approved plan, a subtask of one, or a resolution (the runner sets them;
    /// see [`TaskSpec::plan_run`]).
    pub plan_run: Option<nightshift_protocol::PlanRun>,
    pub subtask_of: Option<nightshift_protocol::SubtaskOf>,
    pub merge: Option<String>,
}

/// The model of each of `attempts` attempts, spread over `models` in turn (the first model for
/// every attempt when `models` is empty or has one). One attempt is an ordinary task: an empty
/// list.
pub fn attempt_models(
    models: &[String],
    attempts: Option<u32>,
    default_model: &str,
) -> Result<Vec<String>, SubmitError> {
    let count = match attempts {
        Some(0) => {
            return Err(SubmitError::Attempts(
                "--attempts 0 asks for no attempt at all".into(),
            ));
        }
        Some(n) => n as usize,
        None => models.len().max(1),
    };
    if models.len() > count {
        return Err(SubmitError::Attempts(format!(
            "{} models for {count} attempt(s): give at most one model per attempt",
            models.len()
        )));
    }
    if count == 1 {
        return Ok(Vec::new());
    }
    let models: Vec<String> = match models.is_empty() {
        true => vec![default_model.to_string()],
        false => models.to_vec(),
    };
    Ok((0..count)
        .map(|index| models[index % models.len()].clone())
        .collect())
}

/// What a review task reviews.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewOf {
    /// The result of an ended task: its branch, measured from where its first run started.
    /// The request's repository and base are the task's.
    Task(TaskId),
    /// The changes of the request's `base` branch since it left this branch (`None`: the
    /// branch the repository has checked out).
    Base(Option<String>),
}

impl TaskRequest {
    /// A request with the default budget.
    pub fn new(
        repo: impl Into<PathBuf>,
        prompt: impl Into<String>,
        model: impl Into<String>,
    ) -> Self {
        TaskRequest {
            repo: repo.into(),
            base: None,
            prompt: prompt.into(),
            model: model.into(),
            max_turns: TaskSpec::DEFAULT_MAX_TURNS,
            max_tokens: None,
            max_cost_usd: None,
            max_duration_secs: None,
            follows: None,
            image: None,
            origin: None,
            review: None,
            attempts: Vec::new(),
            attempt_of: None,
            plan: false,
            plan_run: None,
            subtask_of: None,
            merge: None,
        }
    }
}

impl Runner {
    /// The repository a task names: a local path, opened at its top level; or a remote
    /// repository's URL, whose mirror is brought up to date with the remote first.
    pub(crate) async fn open_source(&self, repo: &str) -> Result<SourceRepo, EnvError> {
        if !nightshift_env::is_remote(repo) {
            return SourceRepo::open(std::path::Path::new(repo)).await;
        }
        match &self.config.mirrors {
            Some(mirrors) => {
                let credential =
                    self.remote_credential(repo)
                        .await
                        .map_err(|detail| EnvError::Remote {
                            url: repo.trim().to_string(),
                            detail,
                        })?;
                mirrors.sync(repo.trim(), credential.as_ref()).await
            }
            None => Err(EnvError::NotARepository {
                path: repo.into(),
                detail: "this runner keeps no mirrors, so it takes repositories by path only"
                    .into(),
            }),
        }
    }

    /// Checks the request and stores it as a queued task. The repository path is stored as its
    /// absolute top level, so the task does not depend on the submitter's working directory.
    pub async fn submit(&self, mut request: TaskRequest) -> Result<Task, SubmitError> {
        let review = request.review.take();
        let reviewed_task = match &review {
            Some(ReviewOf::Task(id)) => Some(self.reviewed_task(*id, &mut request).await?),
            Some(ReviewOf::Base(_)) if request.base.is_none() => {
                return Err(SubmitError::Review(
                    "a review of a branch needs the branch (--branch)".into(),
                ));
            }
            _ => None,
        };
        let prompt = request.prompt.trim();
        if prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if request.max_turns == 0 {
            return Err(SubmitError::Budget("max_turns must be at least 1".into()));
        }
        if request.max_tokens == Some(0) || request.max_duration_secs == Some(0) {
            return Err(SubmitError::Budget(
                "a token or time budget of 0 leaves no room to work".into(),
            ));
        }
        if let Some(cost) = request.max_cost_usd
            && !(cost.is_finite() && cost > 0.0)
        {
            return Err(SubmitError::Budget(format!(
                "a dollar budget must be a positive amount, not {cost}"
            )));
        }
        let attempts = self.check_attempts(&request, review.is_some())?;
        if request.plan && (review.is_some() || !attempts.is_empty() || request.follows.is_some()) {
            return Err(SubmitError::Review(
                "a planning task plans new work: it is not a review, a follow-up or best-of-N"
                    .into(),
            ));
        }
        if let Some(first) = attempts.first() {
            request.model = first.clone();
        }
        let model = self.check_model(&request.model)?;
        let image = match request.image.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => Some(
                nightshift_image::Reference::parse(text)
                    .map_err(|err| SubmitError::Image(err.to_string()))?
                    .to_string(),
            ),
        };
        let source = self.open_source(&request.repo.to_string_lossy()).await?;
        let base = source.resolve_base(request.base.as_deref()).await?;
        let review = match review {
            Some(ReviewOf::Base(against)) => {
                let against = source.resolve_base(against.as_deref()).await?;
                Some(ReviewSpec {
                    task: None,
                    base: against.name,
                    base_commit: against.commit,
                })
            }
            _ => reviewed_task,
        };
        let repo = match nightshift_env::is_remote(&request.repo.to_string_lossy()) {
            true => request.repo.to_string_lossy().trim().to_string(),
            false => source.root().display().to_string(),
        };
        let spec = TaskSpec {
            repo,
            base: Some(base.name),
            prompt: prompt.to_string(),
            model: model.to_string(),
            max_turns: request.max_turns,
            max_tokens: request.max_tokens,
            max_cost_usd: request.max_cost_usd,
            max_duration_secs: request.max_duration_secs,
            follows: request.follows,
            image,
            origin: request.origin,
            review,
            attempts,
            attempt_of: request.attempt_of,
            plan: request.plan,
            plan_run: request.plan_run,
            subtask_of: request.subtask_of,
            merge: request.merge,
        };
        let task = Task::queued(TaskId::new(), spec, Timestamp::now());
        self.store.create_task(&task).await?;
        Ok(task)
    }
}

impl Runner {
    /// The model spec `text`, read, with the key its provider needs at hand.
    fn check_model(&self, text: &str) -> Result<ModelSpec, SubmitError> {
        let model: ModelSpec = text.parse()?;
        if self.config.check_provider_keys
            && let Some(variable) = self.providers.missing_key(&model)
        {
            return Err(SubmitError::MissingKey {
                model: model.to_string(),
                variable,
            });
        }
        Ok(model)
    }

    /// A best-of-N request's attempts, each model checked and written as it is stored.
    fn check_attempts(
        &self,
        request: &TaskRequest,
        review: bool,
    ) -> Result<Vec<String>, SubmitError> {
        if request.attempts.is_empty() {
            return Ok(Vec::new());
        }
        let n = request.attempts.len();
        if !(2..=MAX_ATTEMPTS).contains(&n) {
            return Err(SubmitError::Attempts(format!(
                "{n} attempts asked for; a task runs 2 to {MAX_ATTEMPTS}"
            )));
        }
        if review || request.follows.is_some() || request.attempt_of.is_some() {
            return Err(SubmitError::Attempts(
                "several attempts are for new work: a review, a follow-up or an attempt runs once"
                    .into(),
            ));
        }
        request
            .attempts
            .iter()
            .map(|text| Ok(self.check_model(text)?.to_string()))
            .collect()
    }

    /// What a review of the task `id` looks at: its branch (the request's repository and base
    /// become the task's) from the commit its first run started on.
    async fn reviewed_task(
        &self,
        id: TaskId,
        request: &mut TaskRequest,
    ) -> Result<ReviewSpec, SubmitError> {
        let short = id.short();
        let Some(task) = self.store.get_task(id).await? else {
            return Err(SubmitError::Review(format!("there is no task {id}")));
        };
        if !task.state.is_terminal() {
            return Err(SubmitError::Review(format!(
                "task {short} is {}; review it once it has ended",
                task.state
            )));
        }
        if task.spec.review.is_some() {
            return Err(SubmitError::Review(format!(
                "task {short} is a review itself, and changed nothing"
            )));
        }
        let Some(branch) = task.branch.clone() else {
            return Err(SubmitError::Review(format!(
                "task {short} left no branch to review (it changed nothing, or ended before it committed)"
            )));
        };
        // A follow-up's branch goes on from its earlier runs': the changes are all of theirs.
        let (first, _) = self.first_run(&task).await;
        let Some(base_commit) = first.base_commit.clone() else {
            return Err(SubmitError::Review(format!(
                "the commit task {} started from is not recorded",
                first.id.short()
            )));
        };
        request.repo = first.spec.repo.clone().into();
        request.base = Some(branch);
        Ok(ReviewSpec {
            task: Some(id),
            base: first
                .spec
                .base
                .clone()
                .unwrap_or_else(|| "the task's base".into()),
            base_commit,
        })
    }
}
