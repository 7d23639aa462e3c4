//! Messages to tasks, and follow-ups: a message to a running task steers it (the agent reads
//! it at its next turn); a message to a task that ended with a result starts a follow-up task
//! that continues on the same branch, with the earlier request and result as context.
//!
//! A follow-up's branch holds what earlier agents committed, which no person chose: its
//! configuration does not decide where secrets go or what the sandbox may reach, its setup
//! (whose scripts those commits may have rewritten) gets no setup secrets, and the layer that
//! setup builds is the follow-up's alone, never taken from or given to the shared cache.

use nightshift_agent::SinkError;
use nightshift_env::SourceRepo;
use nightshift_protocol::{Event, EventRecord, Task, TaskId, TaskOrigin, TaskState};

use crate::sink::TaskLog;
use crate::{Runner, RunnerError, TaskRequest};

/// Why a message was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageRefusal {
    /// The task ended (cancelled, or failed to start) before it ever ran: there is no run to
    /// steer or follow up on.
    #[error("task {} was {state} before it ever ran, so there is no run to follow up on; nothing was sent", id.short())]
    NeverRan { id: TaskId, state: TaskState },
    /// Cancellation was requested and the task has not ended yet.
    #[error("task {} is being cancelled; nothing was sent", id.short())]
    BeingCancelled { id: TaskId },
}

/// What a message did.
#[derive(Debug)]
pub struct MessageOutcome {
    /// The `message_received` event in the task's log.
    pub record: EventRecord,
    /// The follow-up task the message started, when the task had ended.
    pub follow_up: Option<Task>,
    /// Why a follow-up could not start (the message is kept, and the reason logged).
    pub follow_up_error: Option<String>,
}

impl Runner {
    /// Sends `text` to task `id`. A running task reads it at its next turn; a task that
    /// succeeded or failed after running gets a follow-up task (queued, to be claimed like any
    /// other), recorded in its log as `follow_up_started`.
    pub async fn message(
        &self,
        id: TaskId,
        text: &str,
        from: Option<String>,
    ) -> Result<MessageOutcome, RunnerError> {
        self.message_from(id, text, from, None).await
    }

    /// [`Runner::message`], from a forge conversation: a follow-up it starts reports its
    /// outcome there (a follow-up started otherwise reports where the task it follows did).
    pub async fn message_from(
        &self,
        id: TaskId,
        text: &str,
        from: Option<String>,
        origin: Option<TaskOrigin>,
    ) -> Result<MessageOutcome, RunnerError> {
        let task = self
            .store
            .get_task(id)
            .await?
            .ok_or(RunnerError::NoSuchTask(id))?;
        // Nobody would ever read these: refused rather than silently kept.
        if task.state.is_terminal() && task.started_at.is_none() {
            return Err(RunnerError::MessageRefused(MessageRefusal::NeverRan {
                id,
                state: task.state,
            }));
        }
        if task.cancel_requested && !task.state.is_terminal() {
            return Err(RunnerError::MessageRefused(
                MessageRefusal::BeingCancelled { id },
            ));
        }
        let message = Event::MessageReceived {
            text: text.to_string(),
            from,
        };
        let record = self.store.append_event(id, &message).await?;
        let continues = matches!(task.state, TaskState::Succeeded | TaskState::Failed)
            && task.started_at.is_some();
        let mut outcome = MessageOutcome {
            record,
            follow_up: None,
            follow_up_error: None,
        };
        if !continues {
            return Ok(outcome);
        }
        let spec = &task.spec;
        let request = TaskRequest {
            base: spec.base.clone(),
            max_turns: spec.max_turns,
            max_tokens: spec.max_tokens,
            max_cost_usd: spec.max_cost_usd,
            max_duration_secs: spec.max_duration_secs,
            follows: Some(task.id),
            image: spec.image.clone(),
            origin: origin.or(spec.origin),
            ..TaskRequest::new(&spec.repo, text, &spec.model)
        };
        match self.submit(request).await {
            Ok(follow_up) => {
                let started = Event::FollowUpStarted {
                    task_id: follow_up.id,
                };
                self.store.append_event(id, &started).await?;
                outcome.follow_up = Some(follow_up);
            }
            Err(err) => {
                let reason = format!("the message is kept, but no follow-up could start: {err}");
                self.store
                    .append_event(
                        id,
                        &Event::Warning {
                            message: reason.clone(),
                        },
                    )
                    .await?;
                outcome.follow_up_error = Some(reason);
            }
        }
        Ok(outcome)
    }

    /// For a follow-up: the earlier task, whose branch it continues.
    pub(crate) async fn followed(&self, task: &Task) -> Result<Option<Task>, RunnerError> {
        match task.spec.follows {
            Some(parent) => Ok(self.store.get_task(parent).await?),
            None => Ok(None),
        }
    }
}

/// What a task's working copy may be trusted with, by where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Provenance {
    /// The configuration files are as a person chose them: the task may use the secrets and
    /// network its configuration names.
    pub configuration: bool,
    /// The tree is one a person chose (their base, nothing an agent committed on top): only
    /// such a tree's setup gets setup secrets, and only its layer is shared through the cache.
    pub chosen_tree: bool,
}

impl Provenance {
    /// A tree a person chose: a task's base, or a follow-up's when its branch is gone.
    pub(crate) const CHOSEN: Provenance = Provenance {
        configuration: true,
        chosen_tree: true,
    };
}

impl Runner {
    /// What a follow-up standing on the earlier runs' branch at `head` may be trusted with,
    /// compared with the commit a person chose for the first of them. Says in the task's log
    /// what it is denied, and why.
    pub(crate) async fn follow_up_provenance(
        &self,
        log: &TaskLog,
        source: &SourceRepo,
        parent: &Task,
        head: &str,
    ) -> Result<Provenance, SinkError> {
        let chosen = self.chosen_base(parent).await;
        let changed = match &chosen {
            Some(chosen) => source
                .changed_paths(chosen, head, &nightshift_env::config::config_files())
                .await
                .map_err(|err| err.to_string()),
            None => Err("the commit the first task started from is not known".into()),
        };
        let configuration = match changed {
            Ok(changed) if changed.is_empty() => true,
            why => {
                let why = match why {
                    Ok(changed) => format!(
                        "the earlier runs changed {} on the branch",
                        changed.join(", ")
                    ),
                    Err(err) => format!("its configuration could not be compared ({err})"),
                };
                log.append(Event::Warning {
                    message: format!(
                        "this follow-up gets no secrets and no network: {why}, and a configuration an agent wrote does not decide where secrets go or what the sandbox may reach; commit the change to your branch yourself (or start a new task from it) to use it"
                    ),
                })
                .await?;
                false
            }
        };
        let beyond = match &chosen {
            Some(chosen) => source
                .commits_between(chosen, head)
                .await
                .map_err(|err| err.to_string()),
            None => Err("the commit the first task started from is not known".into()),
        };
        let chosen_tree = match beyond {
            Ok(0) => true,
            beyond => {
                let short = &head[..head.len().min(12)];
                let why = match beyond {
                    Ok(count) => format!(
                        "its branch is at {short}, {count} commit(s) beyond the base you chose, which the earlier runs made"
                    ),
                    Err(err) => format!(
                        "its branch at {short} could not be compared with the base you chose ({err})"
                    ),
                };
                log.append(Event::Warning {
                    message: format!(
                        "{why}: setup runs without its secrets (setup scripts those commits may have changed get none), and the setup layer is built for this follow-up alone, never taken from or added to the cache; start a new task from the branch to have setup treated as yours"
                    ),
                })
                .await?;
                false
            }
        };
        Ok(Provenance {
            configuration,
            chosen_tree,
        })
    }

    /// The commit a person chose for the first task of `parent`'s chain of follow-ups.
    async fn chosen_base(&self, parent: &Task) -> Option<String> {
        match self.first_run(parent).await {
            (first, true) => first.base_commit,
            (_, false) => None,
        }
    }

    /// The first run of the chain of follow-ups `task` ends: the earliest task that can be
    /// read, and whether it is the first (false when an earlier one is missing, or the chain
    /// is past a thousand).
    pub(crate) async fn first_run(&self, task: &Task) -> (Task, bool) {
        let mut first = task.clone();
        let mut steps = 0;
        while let Some(earlier) = first.spec.follows {
            steps += 1;
            match self.store.get_task(earlier).await {
                Ok(Some(task)) if steps < 1000 => first = task,
                _ => return (first, false),
            }
        }
        (first, true)
    }
}

/// Where a follow-up starts: the current tip of the earlier task's branch (which may have
/// moved since: a person's own commits are kept), as a base name `resolve_base` understands.
pub(crate) async fn follow_up_base(source: &SourceRepo, parent: &Task) -> Option<String> {
    let branch = parent.branch.as_ref()?;
    source
        .has_branch(branch)
        .await
        .ok()
        .filter(|exists| *exists)
        .map(|_| branch.clone())
}

/// The context a follow-up's agent starts with.
pub(crate) fn follow_up_context(parent: &Task) -> String {
    let mut context = String::from(
        "This task follows up on earlier work in this repository. The working copy already contains that work",
    );
    match &parent.branch {
        Some(branch) => context.push_str(&format!(" (branch `{branch}`).\n\n")),
        None => context.push_str(" (it changed no files).\n\n"),
    }
    context.push_str(&format!(
        "The earlier request was:\n{}\n\n",
        parent.spec.prompt.trim()
    ));
    match (&parent.summary, &parent.error) {
        (Some(summary), _) => context.push_str(&format!(
            "The earlier result, as summarized then:\n{}\n\n",
            summary.trim()
        )),
        (None, Some(error)) => context.push_str(&format!(
            "The earlier run ended without finishing: {}\n\n",
            error.trim()
        )),
        (None, None) => {}
    }
    context.push_str("Now the person asks:");
    context
}
