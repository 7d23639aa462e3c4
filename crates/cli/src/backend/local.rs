//! Local mode: the store in NIGHTSHIFT_HOME (or NIGHTSHIFT_DATABASE_URL), read and written
//! from this process, and a detached `nightshift __run-task ID` worker for each task `run`
//! queues, so that closing the terminal does not stop it.

use std::fs::OpenOptions;
use std::ops::ControlFlow;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nightshift_protocol::{EventRecord, Task, TaskId, TaskState};
use nightshift_runner::{DIFF_BLOB, MessageRefusal, Runner, RunnerError, SubmitError, TaskRequest};
use nightshift_store::{CancelOutcome, Store, TaskFilter};

use super::{DEFAULT_MODEL, OnEvent, Submission};
use crate::home::Home;
use crate::output::Failure;

/// How often following a log asks the store for new events.
const POLL: Duration = Duration::from_millis(100);
const PAGE: u32 = 500;

pub struct Local {
    /// Where detached workers log; `None` for a caller that runs its tasks itself (the demo).
    home: Option<Home>,
    runner: Arc<Runner>,
}

impl Local {
    /// The store of NIGHTSHIFT_HOME, with tasks whose worker died settled first.
    pub async fn from_env() -> Result<Local, Failure> {
        let home = Home::from_env()?;
        let runner = home.reconciled_runner().await?;
        Ok(Local {
            home: Some(home),
            runner: Arc::new(runner),
        })
    }

    /// A backend over `runner` that never starts workers: the caller runs what it submits.
    pub fn in_process(runner: Arc<Runner>) -> Local {
        Local { home: None, runner }
    }

    /// Starts a detached worker for the queued task `id` (none for an in-process caller).
    pub(super) fn start_worker(&self, id: TaskId) -> Result<(), Failure> {
        match &self.home {
            Some(home) => spawn_worker(home, id),
            None => Ok(()),
        }
    }

    pub(super) fn runner(&self) -> &Arc<Runner> {
        &self.runner
    }

    fn store(&self) -> &Arc<dyn Store> {
        self.runner.store()
    }

    pub(super) async fn submit(&self, mut submission: Submission) -> Result<Task, Failure> {
        // `--repo NAME`: a registered repository, unless a directory of that name is here.
        if !submission.repo.exists()
            && let Some(text) = submission.repo.to_str()
        {
            let repos = self.store().repos().await?;
            if let Some(repo) = nightshift_runner::find_registered(&repos, text) {
                submission.repo = repo.location.clone().into();
            }
        }
        let model = submission.model.as_deref().unwrap_or(DEFAULT_MODEL);
        let attempts =
            nightshift_runner::attempt_models(&submission.models, submission.attempts, model)
                .map_err(submit_failure)?;
        let request = TaskRequest {
            attempts,
            base: submission.base,
            max_turns: submission.max_turns,
            max_tokens: submission.max_tokens,
            max_cost_usd: submission.max_cost_usd,
            max_duration_secs: submission.max_duration_secs,
            image: submission.image,
            review: submission.review,
            plan: submission.plan,
            ..TaskRequest::new(submission.repo, submission.prompt, model)
        };
        if self.home.is_some() {
            // A bucket that cannot be used would fail the task only at its end, after the
            // agent's work: say so now, before anything runs.
            self.store()
                .check_blobs()
                .await
                .map_err(|err| Failure::error(format!("cannot use the blobs: {err}")))?;
        }
        let task = self.runner.submit(request).await.map_err(submit_failure)?;
        if let Some(home) = &self.home
            && let Err(failure) = spawn_worker(home, task.id)
        {
            // Nothing will run it: take it off the queue rather than leave it waiting forever.
            let _ = self.store().request_cancel(task.id).await;
            return Err(failure);
        }
        Ok(task)
    }

    pub(super) async fn list(
        &self,
        states: &[TaskState],
        limit: u32,
    ) -> Result<Vec<Task>, Failure> {
        let filter = TaskFilter {
            states: states.to_vec(),
            limit,
            ..TaskFilter::default()
        };
        Ok(self.store().list_tasks(&filter).await?)
    }

    pub(super) async fn find(&self, reference: &str) -> Result<Task, Failure> {
        Ok(self.store().find_task(reference).await?)
    }

    pub(super) async fn events(
        &self,
        id: TaskId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<EventRecord>, Failure> {
        Ok(self.store().events(id, after, limit).await?)
    }

    /// Polls the store. The log is append-only with gapless sequence numbers, so "everything
    /// after seq N" never misses or repeats an event.
    pub(super) async fn follow(
        &self,
        id: TaskId,
        mut after: u64,
        on_event: &mut OnEvent<'_>,
    ) -> Result<(), Failure> {
        loop {
            let page = self.store().events(id, after, PAGE).await?;
            for record in &page {
                after = record.seq;
                if let ControlFlow::Break(()) = on_event(record)? {
                    return Ok(());
                }
            }
            if page.len() as u32 != PAGE {
                tokio::time::sleep(POLL).await;
            }
        }
    }

    pub(super) async fn diff(&self, task: &Task) -> Result<Option<Vec<u8>>, Failure> {
        let patch = self.store().get_blob(task.id, DIFF_BLOB).await?;
        Ok(patch.map(|bytes| bytes.to_vec()))
    }

    pub(super) async fn cancel(&self, task: &Task) -> Result<CancelOutcome, Failure> {
        Ok(self.store().request_cancel(task.id).await?)
    }

    pub(super) async fn say(&self, task: &Task, text: &str) -> Result<EventRecord, Failure> {
        let outcome = self
            .runner
            .message(task.id, text, None)
            .await
            .map_err(|err| match err {
                RunnerError::MessageRefused(refusal) => {
                    let hint = match refusal {
                        MessageRefusal::NeverRan { .. } => "start a new task with `nightshift run`",
                        MessageRefusal::BeingCancelled { .. } => {
                            "wait for it to end, then send the message as a follow-up"
                        }
                    };
                    Failure::usage(refusal.to_string()).with_hint(Some(hint.into()))
                }
                other => Failure::error(other.to_string()),
            })?;
        if let Some(reason) = &outcome.follow_up_error {
            eprintln!("warning: {reason}");
        }
        if let Some(follow_up) = &outcome.follow_up {
            if let Some(home) = &self.home {
                spawn_worker(home, follow_up.id)?;
            }
            eprintln!(
                "{} had ended: follow-up task {} continues its work{}",
                task.id.short(),
                follow_up.id.short(),
                task.branch
                    .as_ref()
                    .map(|b| format!(" on {b}"))
                    .unwrap_or_default()
            );
        }
        Ok(outcome.record)
    }
}

fn submit_failure(err: SubmitError) -> Failure {
    let hint = err.hint();
    let failure = match &err {
        SubmitError::EmptyPrompt
        | SubmitError::Budget(_)
        | SubmitError::Model(_)
        | SubmitError::Image(_)
        | SubmitError::Review(_)
        | SubmitError::Attempts(_)
        | SubmitError::MissingKey { .. } => Failure::usage(err.to_string()),
        SubmitError::Repository(env) if env.is_invalid_input() => Failure::usage(err.to_string()),
        SubmitError::Repository(_) | SubmitError::Store(_) => Failure::error(err.to_string()),
    };
    failure.with_hint(hint)
}

/// Starts `nightshift __run-task ID` detached: its own session, no terminal, output to
/// `NIGHTSHIFT_HOME/workers/ID.log`.
fn spawn_worker(home: &Home, id: TaskId) -> Result<(), Failure> {
    let exe = std::env::current_exe()
        .map_err(|err| Failure::error(format!("cannot find the nightshift executable: {err}")))?;
    let log_path = home.worker_log(&id.to_string());
    let cannot = |err: std::io::Error| Failure::error(format!("cannot start the worker: {err}"));
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).map_err(cannot)?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(cannot)?;
    let log_err = log.try_clone().map_err(cannot)?;
    let mut command = std::process::Command::new(exe);
    command
        .arg("__run-task")
        .arg(id.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err));
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    command.spawn().map_err(cannot)?;
    Ok(())
}
