//! What a task is: the request (`TaskSpec`), where it stands (`TaskState`) and the row every
//! listing shows (`Task`).

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{AttemptOf, PlanRun, ReviewSpec, SubtaskOf, TaskId, Usage};

/// What the person (or integration) asked for. Stored verbatim with the task; everything the
/// runner resolves later (the base commit, the branch) lives on `Task` instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// The source repository: an absolute path to a local git repository.
    pub repo: String,
    /// The branch to start from. `None` means the branch the source repository has checked out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// What to do, in the person's words.
    pub prompt: String,
    /// The model spec, e.g. `openai:gpt-4.1`.
    pub model: String,
    /// The most model turns the agent may take before the task stops.
    pub max_turns: u32,
    /// The most tokens (input plus output, over all turns) before the task stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// The most dollars of model usage before the task stops (needs a known price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    /// The longest the agent may work, in seconds, before the task stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_secs: Option<u64>,
    /// The earlier task this one follows up on: it starts from that task's branch, with that
    /// task's request and result as context, and hands back on the same branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follows: Option<TaskId>,
    /// The image the task's sandbox starts from (`REGISTRY/NAME[:TAG][@DIGEST]`, `oci:PATH`,
    /// ...), over the repository's `[environment] image`. `None`: the repository's, or the
    /// host's system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The forge conversation that started the task, which its outcome is reported back to.
    /// Set by nightshift's own integrations (webhooks), never taken from an API request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<TaskOrigin>,
    /// Set for a review task: it reviews the changes of the branch it starts from (`base`)
    /// with read-only access and reports findings, instead of changing anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<ReviewSpec>,
    /// Set for a best-of-N task: one attempt per model listed (a model may repeat), each a
    /// task of its own with this request; the best attempt's branch becomes this task's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<String>,
    /// Set for one attempt of a best-of-N task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_of: Option<AttemptOf>,
    /// A planning task: with read-only access, the agent may ask the person questions and
    /// hands back a plan (its `plan_submitted` event) instead of a branch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plan: bool,
    /// Set for the run of an approved plan: it runs the plan's subtasks as tasks of their own
    /// and merges their branches into one plan branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_run: Option<PlanRun>,
    /// Set for one subtask of a plan's run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtask_of: Option<SubtaskOf>,
    /// Start with this branch of the source repository being merged into the base, its
    /// conflicts left in the files for the agent to resolve (a plan run's resolution task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<String>,
}

/// Where on a forge a task was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskOrigin {
    /// A GitHub issue: labelled `nightshift`, or an `@nightshift` comment on it.
    GithubIssue { number: u64 },
    /// A GitHub pull request: a review, a review comment or an `@nightshift` comment on it.
    GithubPullRequest { number: u64 },
}

impl TaskSpec {
    /// The default turn budget when none is given.
    pub const DEFAULT_MAX_TURNS: u32 = 50;
}

/// Where a task stands. The order of the variants is the order of the lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Stored, waiting for a worker.
    Queued,
    /// A worker has it: checking out the repository and starting the sandbox.
    Preparing,
    /// The agent loop is running.
    Running,
    /// The agent asked the person a question and waits for the answer (`nightshift say`).
    Waiting,
    /// The agent finished; the result is being checked.
    Verifying,
    /// Committing the result and creating the branch.
    HandingOff,
    /// Done, with a branch to review.
    Succeeded,
    /// Ended without a usable result; the error event says why.
    Failed,
    /// Stopped on request.
    Cancelled,
}

impl TaskState {
    /// Every state, in lifecycle order.
    pub const ALL: [TaskState; 9] = [
        TaskState::Queued,
        TaskState::Preparing,
        TaskState::Running,
        TaskState::Waiting,
        TaskState::Verifying,
        TaskState::HandingOff,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    /// A terminal state never changes again.
    pub fn is_terminal(self) -> bool {
        match self {
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled => true,
            TaskState::Queued
            | TaskState::Preparing
            | TaskState::Running
            | TaskState::Waiting
            | TaskState::Verifying
            | TaskState::HandingOff => false,
        }
    }

    /// The snake_case name used in JSON, the database and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Preparing => "preparing",
            TaskState::Running => "running",
            TaskState::Waiting => "waiting",
            TaskState::Verifying => "verifying",
            TaskState::HandingOff => "handing_off",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not one of the task states.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown task state `{0}` (expected one of queued, preparing, running, waiting, verifying, handing_off, succeeded, failed, cancelled)"
)]
pub struct UnknownTaskState(pub String);

impl FromStr for TaskState {
    type Err = UnknownTaskState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownTaskState(s.to_string()))
    }
}

/// A task as listings show it: the spec plus what the run has resolved and measured so far.
/// The event log is the truth; this row is a summary of it kept up to date by the runner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub spec: TaskSpec,
    pub state: TaskState,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// The commit the task started from, once resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_commit: Option<String>,
    /// The branch created in the source repository, once handed off; for a follow-up that
    /// changed nothing, the branch it continued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The commit of the result: the tip of `branch` as handed back, or, when the agent
    /// finished without changing anything, the commit it started from (`base_commit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_commit: Option<String>,
    /// The agent's closing summary, or the reason the task ended without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Why the task failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Model turns taken.
    pub turns: u32,
    /// Tokens used across all model calls.
    pub usage: Usage,
    /// Set once someone asked to cancel; the worker stops at its next check.
    pub cancel_requested: bool,
    /// The worker holding the task, while one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// When the worker's hold on the task lapses unless renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<Timestamp>,
}

impl Task {
    /// Whether the agent finished without changing anything: its result is the commit it
    /// started from, and the declared checks ran on that tree. Derived from the row (the result
    /// is its base commit) rather than stored, so older rows read the same.
    pub fn no_changes(&self) -> bool {
        self.head_commit.is_some() && self.head_commit == self.base_commit
    }

    /// A freshly queued task.
    pub fn queued(id: TaskId, spec: TaskSpec, now: Timestamp) -> Self {
        Task {
            id,
            spec,
            state: TaskState::Queued,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            base_commit: None,
            branch: None,
            head_commit: None,
            summary: None,
            error: None,
            turns: 0,
            usage: Usage::default(),
            cancel_requested: false,
            worker: None,
            lease_expires_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip() {
        for state in TaskState::ALL {
            assert_eq!(state.as_str().parse::<TaskState>().unwrap(), state);
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        assert!("done".parse::<TaskState>().is_err());
    }

    #[test]
    fn only_three_states_are_terminal() {
        let terminal: Vec<_> = TaskState::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                TaskState::Succeeded,
                TaskState::Failed,
                TaskState::Cancelled
            ]
        );
    }

    #[test]
    fn no_changes_means_the_result_is_the_base_commit() {
        let spec = TaskSpec {
            repo: "/r".into(),
            base: None,
            prompt: "p".into(),
            model: "openai:m".into(),
            max_turns: 3,
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
        };
        let mut task = Task::queued(TaskId::new(), spec, Timestamp::UNIX_EPOCH);
        assert!(!task.no_changes(), "nothing is known yet");
        task.base_commit = Some("a".repeat(40));
        assert!(!task.no_changes(), "no result yet");
        task.head_commit = Some("b".repeat(40));
        assert!(!task.no_changes(), "a result with changes");
        task.head_commit = task.base_commit.clone();
        assert!(task.no_changes());
    }

    #[test]
    fn spec_rejects_unknown_fields() {
        let json = r#"{"repo":"/r","prompt":"p","model":"openai:m","max_turns":3,"colour":"red"}"#;
        let err = serde_json::from_str::<TaskSpec>(json).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }
}
