//! One task from claim to terminal state.
//!
//! Every path through here ends with exactly one `Ended` event and a terminal row, whatever
//! failed on the way; work the agent did is committed to the task's branch even when the task
//! fails or is cancelled, so nothing is lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use nightshift_agent::{Agent, AgentConfig, AgentOutcome, SinkError};
use nightshift_env::{EnvError, SourceRepo, WorkingCopy, branch_name};
use nightshift_model::{ModelError, ModelSpec};
use nightshift_protocol::{ErrorKind, Event, Task, TaskId, TaskState};
use nightshift_sandbox::SessionSpec;
use nightshift_store::Store;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::sink::TaskLog;
use crate::{Runner, RunnerError};

/// How a run ended, before it is written down.
struct Ending {
    state: TaskState,
    summary: Option<String>,
    error: Option<String>,
    /// Keep the working copy: it holds work that could not be handed back.
    keep_copy: bool,
}

impl Ending {
    fn succeeded(summary: String) -> Self {
        Ending {
            state: TaskState::Succeeded,
            summary: Some(summary),
            error: None,
            keep_copy: false,
        }
    }

    fn cancelled() -> Self {
        Ending {
            state: TaskState::Cancelled,
            summary: Some("cancelled on request".into()),
            error: None,
            keep_copy: false,
        }
    }
}

impl Runner {
    /// Claims the queued task `id` and runs it to a terminal state. `cancel` stops it from this
    /// process; a cancel requested through the store (`nightshift cancel`) is noticed too.
    pub async fn run_task(
        &self,
        id: TaskId,
        cancel: CancellationToken,
    ) -> Result<Task, RunnerError> {
        if !self.store.claim_task(id, &self.config.worker).await? {
            let state = match self.store.get_task(id).await? {
                Some(task) => task.state,
                None => return Err(RunnerError::NoSuchTask(id)),
            };
            return Err(RunnerError::NotClaimable { id, state });
        }
        let task = self
            .store
            .get_task(id)
            .await?
            .ok_or(RunnerError::NoSuchTask(id))?;
        let started = Instant::now();
        let log = TaskLog::new(self.store.clone(), task);
        log.append(Event::Claimed {
            worker: self.config.worker.clone(),
        })
        .await?;

        let watcher = watch_for_cancel(
            self.store.clone(),
            id,
            cancel.clone(),
            self.config.cancel_poll,
        );
        let ending = self.drive(&log, &cancel).await;
        watcher.abort();
        let ending = ending?;

        let now = Timestamp::now();
        let task = log
            .update(|task| {
                task.state = ending.state;
                task.finished_at = Some(now);
                task.summary = ending.summary.clone();
                task.error = ending.error.clone();
            })
            .await?;
        log.append(Event::Ended {
            state: ending.state,
            summary: ending.summary,
            usage: task.usage,
            turns: task.turns,
            duration_ms: started.elapsed().as_millis() as u64,
        })
        .await?;
        Ok(task)
    }

    async fn drive(&self, log: &TaskLog, cancel: &CancellationToken) -> Result<Ending, SinkError> {
        let task = log.snapshot().await;
        set_state(
            log,
            TaskState::Preparing,
            Some("checking out the repository"),
        )
        .await?;

        let source = match SourceRepo::open(std::path::Path::new(&task.spec.repo)).await {
            Ok(source) => source,
            Err(err) => return fail_env(log, err).await,
        };
        let base = match source.resolve_base(task.spec.base.as_deref()).await {
            Ok(base) => base,
            Err(err) => return fail_env(log, err).await,
        };
        let dirty = source.has_uncommitted_changes().await.unwrap_or(false);
        let dest = self.config.work_dir.join(task.id.to_string());
        if dest.exists() {
            // Left over from a run that died; it holds nothing that is not in the source.
            let _ = tokio::fs::remove_dir_all(&dest).await;
        }
        let copy = match source.checkout(&base, &dest).await {
            Ok(copy) => copy,
            Err(err) => return fail_env(log, err).await,
        };
        let short_commit = &base.commit[..base.commit.len().min(12)];
        let note = if dirty {
            format!(
                "the source repository has uncommitted changes; the task starts from the committed {} ({short_commit}) and does not see them",
                base.name
            )
        } else {
            format!(
                "started from the committed {} ({short_commit}); uncommitted changes are never included",
                base.name
            )
        };
        log.append(Event::CheckedOut {
            base: base.name.clone(),
            base_commit: base.commit.clone(),
            note,
        })
        .await?;
        log.update(|task| task.base_commit = Some(base.commit.clone()))
            .await?;

        let ending = self.run_agent(log, &task, &source, &copy, cancel).await?;
        if !ending.keep_copy
            && let Err(err) = copy.remove().await
        {
            log.append(Event::Warning {
                message: format!("could not remove the working copy: {err}"),
            })
            .await?;
        }
        Ok(ending)
    }

    async fn run_agent(
        &self,
        log: &TaskLog,
        task: &Task,
        source: &SourceRepo,
        copy: &WorkingCopy,
        cancel: &CancellationToken,
    ) -> Result<Ending, SinkError> {
        let model = match task.spec.model.parse::<ModelSpec>() {
            Ok(spec) => nightshift_model::connect(&spec, &self.providers),
            Err(err) => Err(err),
        };
        let model = match model {
            Ok(model) => model,
            Err(err) => return fail_model(log, err).await,
        };
        let session = match self
            .sandbox
            .start(SessionSpec {
                workspace: copy.root().to_path_buf(),
                env: vec![],
            })
            .await
        {
            Ok(session) => session,
            Err(err) => {
                return fail(
                    log,
                    ErrorKind::Sandbox,
                    err.to_string(),
                    Some("run `nightshift doctor`".into()),
                )
                .await;
            }
        };
        log.append(Event::SandboxStarted {
            backend: self.sandbox.backend().to_string(),
            isolated: self.sandbox.isolated(),
        })
        .await?;
        if !self.sandbox.isolated() {
            log.append(Event::Warning {
                message: format!(
                    "the agent's commands run on the host without isolation (sandbox backend `{}`)",
                    self.sandbox.backend()
                ),
            })
            .await?;
        }
        if cancel.is_cancelled() {
            let _ = session.close().await;
            return Ok(Ending::cancelled());
        }
        set_state(log, TaskState::Running, None).await?;
        let config = AgentConfig {
            max_turns: task.spec.max_turns,
            limits: self.config.tool_limits.clone(),
            max_output_tokens: None,
        };
        let agent = Agent {
            model: model.as_ref(),
            session: session.as_ref(),
            sink: log,
            config: &config,
        };
        let report = agent.run(&task.spec.prompt, cancel).await;
        if let Err(err) = session.close().await {
            log.append(Event::Warning {
                message: format!("closing the sandbox: {err}"),
            })
            .await?;
        }
        let report = report.map_err(|err| match err {
            nightshift_agent::AgentError::Sink(sink) => sink,
        })?;

        match report.outcome {
            AgentOutcome::Finished { summary } => {
                set_state(
                    log,
                    TaskState::Verifying,
                    Some("no checks are declared for this repository; the agent's own test runs are in the log"),
                )
                .await?;
                set_state(log, TaskState::HandingOff, Some("committing the result")).await?;
                let message = commit_message(&summary, task, None);
                match self
                    .hand_back(log, task, source, copy, &message, false)
                    .await
                {
                    Ok(true) => Ok(Ending::succeeded(summary)),
                    Ok(false) => {
                        log.append(Event::Warning {
                            message: "the agent finished without changing any file; no branch was created".into(),
                        })
                        .await?;
                        Ok(Ending::succeeded(summary))
                    }
                    Err(err) => handoff_failed(log, copy, err).await,
                }
            }
            AgentOutcome::TurnsExhausted => {
                let reason = format!(
                    "the agent used all {} turns without finishing",
                    task.spec.max_turns
                );
                self.save_incomplete(log, task, source, copy, &reason)
                    .await?;
                fail(
                    log,
                    ErrorKind::Budget,
                    reason,
                    Some(
                        "run it again with a larger --max-turns, or a more specific prompt".into(),
                    ),
                )
                .await
            }
            AgentOutcome::Cancelled => {
                self.save_incomplete(log, task, source, copy, "the task was cancelled")
                    .await?;
                Ok(Ending::cancelled())
            }
            AgentOutcome::ModelFailed(err) => {
                self.save_incomplete(log, task, source, copy, &format!("the model failed: {err}"))
                    .await?;
                fail_model(log, err).await
            }
        }
    }

    /// Commits and hands back whatever the agent changed, marked incomplete; a failure here is
    /// logged but does not hide the reason the task stopped.
    async fn save_incomplete(
        &self,
        log: &TaskLog,
        task: &Task,
        source: &SourceRepo,
        copy: &WorkingCopy,
        reason: &str,
    ) -> Result<(), SinkError> {
        let message = commit_message("Incomplete work", task, Some(reason));
        if let Err(err) = self
            .hand_back(log, task, source, copy, &message, true)
            .await
        {
            log.append(Event::Warning {
                message: format!(
                    "could not save the incomplete work ({err}); it is still in {}",
                    copy.root().display()
                ),
            })
            .await?;
        }
        Ok(())
    }

    /// Commits the working copy and creates the task's branch in the source repository.
    /// Returns false when there was nothing to commit.
    async fn hand_back(
        &self,
        log: &TaskLog,
        task: &Task,
        source: &SourceRepo,
        copy: &WorkingCopy,
        message: &str,
        incomplete: bool,
    ) -> Result<bool, HandoffError> {
        let Some(_) = copy.commit_all(message).await? else {
            return Ok(false);
        };
        let stats = copy.stats().await?;
        let diff = copy.diff().await?;
        self.store
            .put_blob(task.id, DIFF_BLOB, diff.into_bytes().into())
            .await
            .map_err(|err| HandoffError::Store(err.to_string()))?;
        let branch = branch_name(&task.id.short(), &task.spec.prompt);
        let head = copy.hand_off(source, &branch).await?;
        log.update(|task| {
            task.branch = Some(branch.clone());
            task.head_commit = Some(head.clone());
        })
        .await?;
        log.append(Event::Committed {
            branch,
            commit: head,
            files_changed: stats.files_changed,
            insertions: stats.insertions,
            deletions: stats.deletions,
            incomplete,
        })
        .await?;
        Ok(true)
    }
}

/// The blob holding the task's change as a patch (`nightshift diff`).
pub const DIFF_BLOB: &str = "diff.patch";

#[derive(Debug, thiserror::Error)]
enum HandoffError {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error("storing the diff: {0}")]
    Store(String),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

async fn handoff_failed(
    log: &TaskLog,
    copy: &WorkingCopy,
    err: HandoffError,
) -> Result<Ending, SinkError> {
    if let HandoffError::Sink(sink) = err {
        return Err(sink);
    }
    let message = format!("handing off failed: {err}");
    let hint = format!(
        "the working copy is kept at {}; its commits can be fetched from there",
        copy.root().display()
    );
    let ending = fail(log, ErrorKind::Repository, message, Some(hint)).await?;
    Ok(Ending {
        keep_copy: true,
        ..ending
    })
}

/// The commit message: the summary's first line as the subject, the rest as the body, and the
/// task's id and prompt as trailers a reviewer can trace back.
fn commit_message(summary: &str, task: &Task, incomplete: Option<&str>) -> String {
    let summary = summary.trim();
    let (subject, body) = summary.split_once('\n').unwrap_or((summary, ""));
    let mut subject: String = subject.trim().chars().take(72).collect();
    if subject.is_empty() {
        subject = "nightshift task result".into();
    }
    let mut message = subject;
    let body = body.trim();
    if !body.is_empty() {
        message.push_str("\n\n");
        message.push_str(body);
    }
    if let Some(reason) = incomplete {
        message.push_str(&format!("\n\nThis work is incomplete: {reason}."));
    }
    let prompt: String = task
        .spec
        .prompt
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect();
    message.push_str(&format!(
        "\n\nNightshift-Task: {}\nNightshift-Prompt: {prompt}\n",
        task.id
    ));
    message
}

async fn set_state(log: &TaskLog, state: TaskState, detail: Option<&str>) -> Result<(), SinkError> {
    log.update(|task| task.state = state).await?;
    log.append(Event::StateChanged {
        state,
        detail: detail.map(str::to_string),
    })
    .await
}

async fn fail(
    log: &TaskLog,
    kind: ErrorKind,
    message: String,
    hint: Option<String>,
) -> Result<Ending, SinkError> {
    log.append(Event::Error {
        kind,
        message: message.clone(),
        hint,
    })
    .await?;
    Ok(Ending {
        state: TaskState::Failed,
        summary: None,
        error: Some(message),
        keep_copy: false,
    })
}

async fn fail_env(log: &TaskLog, err: EnvError) -> Result<Ending, SinkError> {
    let kind = if err.is_invalid_input() {
        ErrorKind::InvalidInput
    } else {
        ErrorKind::Repository
    };
    let hint = err.hint();
    fail(log, kind, err.to_string(), hint).await
}

async fn fail_model(log: &TaskLog, err: ModelError) -> Result<Ending, SinkError> {
    let kind = match &err {
        ModelError::Unreachable { .. } | ModelError::IdleTimeout(_) => ErrorKind::ModelUnreachable,
        ModelError::Unauthorized { .. } => ErrorKind::ModelAuth,
        ModelError::Malformed { .. } => ErrorKind::ModelProtocol,
        ModelError::Config(_) => ErrorKind::InvalidInput,
        ModelError::Cancelled => return Ok(Ending::cancelled()),
        ModelError::RateLimited { .. }
        | ModelError::Server { .. }
        | ModelError::Rejected { .. } => ErrorKind::Model,
    };
    let hint = err.hint().map(str::to_string);
    fail(log, kind, err.to_string(), hint).await
}

/// Polls the store for a cancel request made by another process (`nightshift cancel`).
fn watch_for_cancel(
    store: Arc<dyn Store>,
    id: TaskId,
    cancel: CancellationToken,
    poll: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(poll) => {}
            }
            if let Ok(Some(task)) = store.get_task(id).await
                && task.cancel_requested
            {
                cancel.cancel();
                return;
            }
        }
    })
}
