//! The event log's vocabulary. Each task has an append-only log of these; the CLI, the API and
//! the web UI render nothing that is not in it.

use std::ops::AddAssign;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{AttemptRank, Finding, Plan, TaskId, TaskSpec, TaskState};

/// One entry of a task's log, as stored and as printed by `nightshift logs --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub task_id: TaskId,
    /// 1-based, gapless within a task.
    pub seq: u64,
    pub at: Timestamp,
    #[serde(flatten)]
    pub event: Event,
}

/// Something that happened to a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The task was stored and waits for a worker. Always the first event.
    Queued { spec: Box<TaskSpec> },
    /// The task moved to a new state. `detail` says what the step is about, for humans.
    StateChanged {
        state: TaskState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// A worker picked the task up.
    Claimed { worker: String },
    /// The task's working copy is ready at the base commit.
    CheckedOut {
        /// The branch the task started from.
        base: String,
        base_commit: String,
        /// What was deliberately left out, e.g. uncommitted changes of the source repository.
        note: String,
    },
    /// The repository's environment configuration was read.
    EnvironmentLoaded {
        /// `.nightshift.toml`, the importer used, or `defaults`.
        source: String,
        /// The names of the declared checks, in order.
        checks: Vec<String>,
        has_setup: bool,
        has_maintenance: bool,
    },
    /// The image the task's sandbox starts from was resolved and is in the image store: each
    /// of its layers fetched now or found there.
    ImageReady {
        /// The reference as written in canonical form (`docker.io/library/rust:1.86`).
        reference: String,
        /// The manifest's digest it resolved to.
        digest: String,
        /// Lowest first.
        layers: Vec<ImageLayerUse>,
    },
    /// A step built over the image (a Dockerfile's instruction, a devcontainer feature) was
    /// looked for in the layer cache: a hit uses the layer built before; a miss says why and
    /// builds it.
    BuildStep {
        /// `Dockerfile:12 RUN apt-get install -y jq`, `feature ./tool`.
        step: String,
        key: String,
        hit: bool,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        reasons: Vec<String>,
    },
    /// The setup cache was consulted: a hit mounts the layer built before; a miss says why,
    /// input by input, and builds it.
    SetupCache {
        key: String,
        hit: bool,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        reasons: Vec<String>,
    },
    /// A command of the environment (not of the agent) ran: setup, maintenance or a check.
    CommandFinished {
        phase: CommandPhase,
        /// The check's name, or the phase for setup and maintenance.
        name: String,
        command: String,
        ok: bool,
        exit_code: i32,
        duration_ms: u64,
        /// The end of the output; the whole output is the blob `artifact`, when stored.
        output_tail: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        artifact: Option<String>,
    },
    /// A request through the sandbox's egress proxy, allowed or not.
    Egress {
        host: String,
        port: u16,
        /// `CONNECT` for HTTPS tunnels, else the HTTP method.
        method: String,
        allowed: bool,
        bytes_up: u64,
        bytes_down: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// The environment the agent's commands run in.
    SandboxStarted {
        backend: String,
        /// False when commands run directly on the host, without isolation.
        isolated: bool,
    },
    /// An MCP server started in the sandbox and offers these tools (as the model sees their
    /// names, `SERVER__TOOL`).
    McpServerReady { server: String, tools: Vec<String> },
    /// A request is on its way to the model.
    ModelRequest {
        turn: u32,
        model: String,
        messages: u32,
    },
    /// The model answered.
    ModelResponse {
        turn: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCallRecord>,
        usage: Usage,
        /// Dollars this call cost, when the model's price is known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cost_usd: Option<f64>,
        stop_reason: String,
        duration_ms: u64,
    },
    /// A tool call started.
    ToolStarted {
        call_id: String,
        tool: String,
        arguments: Value,
    },
    /// A tool call ended. `output` is what the model saw, already cut to size.
    ToolFinished {
        call_id: String,
        tool: String,
        ok: bool,
        output: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        duration_ms: u64,
    },
    /// The conversation was shortened to fit the model's window: older tool outputs masked,
    /// older turns summarized.
    ContextCompacted {
        before_tokens: u64,
        after_tokens: u64,
        masked: u32,
        summarized: u32,
    },
    /// The agent revised its plan.
    PlanUpdated { steps: Vec<PlanStep> },
    /// The agent called `finish`.
    AgentFinished { summary: String },
    /// A review task's agent called `submit_review`: its verdict in words and its findings,
    /// most severe first.
    ReviewSubmitted {
        summary: String,
        findings: Vec<Finding>,
    },
    /// A planning task's agent asked the person a question; the task waits for the answer
    /// (a `message_received` event).
    QuestionAsked { question: String },
    /// A version of a planning task's plan: 1 from the planner, each edit the next.
    PlanSubmitted {
        version: u32,
        plan: Plan,
        /// `planner`, or who edited it.
        author: String,
    },
    /// A person approved this version of the plan; `run` carries it out.
    PlanApproved {
        version: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run: Option<TaskId>,
    },
    /// A plan's run queued one of its subtasks as a task.
    SubtaskQueued { name: String, task_id: TaskId },
    /// A plan's run merged a subtask's branch into the plan branch (`commit` is the merge),
    /// or, when the subtask changed nothing, took it as done (`commit` absent).
    SubtaskMerged {
        name: String,
        task_id: TaskId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        commit: Option<String>,
    },
    /// Merging a subtask's branch into the plan branch conflicted in `files`; `resolution`
    /// is the task that resolves it, when one was started.
    MergeConflict {
        name: String,
        files: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resolution: Option<TaskId>,
    },
    /// The repository's `[review] auto` queued a review task of this task as it ended.
    ReviewQueued { task_id: TaskId },
    /// A best-of-N task queued one of its attempts, a task of its own.
    AttemptQueued {
        task_id: TaskId,
        index: u32,
        model: String,
    },
    /// A best-of-N task queued a review of one of its attempts, to rank it.
    AttemptReviewQueued { attempt: TaskId, review: TaskId },
    /// A best-of-N task ranked its ended attempts, best first, and took the branch of
    /// `chosen` (none when no attempt left a branch).
    AttemptsRanked {
        ranking: Vec<AttemptRank>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chosen: Option<TaskId>,
        reason: String,
    },
    /// The result was committed on the task's branch in the source repository.
    Committed {
        branch: String,
        commit: String,
        files_changed: u32,
        insertions: u32,
        deletions: u32,
        /// True when the work was committed although the task did not finish.
        incomplete: bool,
    },
    /// The task's branch was pushed to its remote repository (a task whose repository is a
    /// URL), after it was committed.
    BranchPushed {
        remote: String,
        branch: String,
        commit: String,
    },
    /// The task's pull request on its forge: opened for its branch, or (a follow-up, or the
    /// same task again) updated with this run's evidence.
    PullRequest {
        url: String,
        number: u64,
        created: bool,
    },
    /// The task's outcome was commented on the forge conversation that asked for it (its
    /// [`crate::TaskOrigin`]): an issue, or a pull request.
    ForgeCommented { number: u64 },
    /// A push or pull request that a forge outage held up: nightshift tries it again at
    /// `retry_at` (the wait doubles with each attempt), or, with no `retry_at`, has given up
    /// and the work stays on the branch of the mirror.
    ForgeRetry {
        /// `push` or `pull_request`.
        action: String,
        /// How many attempts have failed.
        attempt: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_at: Option<Timestamp>,
        reason: String,
    },
    /// Someone asked to cancel the task.
    CancelRequested,
    /// A person sent the task a message: steering while it runs, or a follow-up once it ended.
    MessageReceived {
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
    },
    /// A message to this ended task started a follow-up task on the same branch.
    FollowUpStarted { task_id: TaskId },
    /// The worker let go of the task (shutting down); it is queued again for another worker.
    Released { worker: String, reason: String },
    /// Something worth knowing that did not stop the task.
    Warning { message: String },
    /// Something stopped the task. `hint` says what to do about it.
    Error {
        kind: ErrorKind,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hint: Option<String>,
    },
    /// The task reached a terminal state. Always the last event.
    Ended {
        state: TaskState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        summary: Option<String>,
        usage: Usage,
        /// Dollars spent on the model, when its price is known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cost_usd: Option<f64>,
        /// CPU time the task's sandboxes used, where the sandbox can measure it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cpu_seconds: Option<f64>,
        turns: u32,
        duration_ms: u64,
        /// True when the agent finished without changing anything: no branch was handed back
        /// and the checks ran on the tree the task started from. Absent (false) otherwise.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        no_changes: bool,
    },
}

/// One layer of an image, as a task used it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageLayerUse {
    pub digest: String,
    /// Its compressed size.
    pub bytes: u64,
    /// Fetched for this task; `false`: the store had it.
    pub fetched: bool,
}

impl Event {
    /// The `type` tag this event carries in JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Queued { .. } => "queued",
            Event::StateChanged { .. } => "state_changed",
            Event::Claimed { .. } => "claimed",
            Event::CheckedOut { .. } => "checked_out",
            Event::EnvironmentLoaded { .. } => "environment_loaded",
            Event::CommandFinished { .. } => "command_finished",
            Event::ImageReady { .. } => "image_ready",
            Event::BuildStep { .. } => "build_step",
            Event::SetupCache { .. } => "setup_cache",
            Event::Egress { .. } => "egress",
            Event::SandboxStarted { .. } => "sandbox_started",
            Event::McpServerReady { .. } => "mcp_server_ready",
            Event::ModelRequest { .. } => "model_request",
            Event::ModelResponse { .. } => "model_response",
            Event::ToolStarted { .. } => "tool_started",
            Event::ToolFinished { .. } => "tool_finished",
            Event::ContextCompacted { .. } => "context_compacted",
            Event::PlanUpdated { .. } => "plan_updated",
            Event::AgentFinished { .. } => "agent_finished",
            Event::ReviewSubmitted { .. } => "review_submitted",
            Event::ReviewQueued { .. } => "review_queued",
            Event::QuestionAsked { .. } => "question_asked",
            Event::PlanSubmitted { .. } => "plan_submitted",
            Event::PlanApproved { .. } => "plan_approved",
            Event::SubtaskQueued { .. } => "subtask_queued",
            Event::SubtaskMerged { .. } => "subtask_merged",
            Event::MergeConflict { .. } => "merge_conflict",
            Event::AttemptQueued { .. } => "attempt_queued",
            Event::AttemptReviewQueued { .. } => "attempt_review_queued",
            Event::AttemptsRanked { .. } => "attempts_ranked",
            Event::Committed { .. } => "committed",
            Event::BranchPushed { .. } => "branch_pushed",
            Event::PullRequest { .. } => "pull_request",
            Event::ForgeCommented { .. } => "forge_commented",
            Event::ForgeRetry { .. } => "forge_retry",
            Event::CancelRequested => "cancel_requested",
            Event::MessageReceived { .. } => "message_received",
            Event::FollowUpStarted { .. } => "follow_up_started",
            Event::Released { .. } => "released",
            Event::Warning { .. } => "warning",
            Event::Error { .. } => "error",
            Event::Ended { .. } => "ended",
        }
    }
}

/// Why a task stopped, in a form scripts can branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request itself was wrong: no such repository, branch or model spec, an empty prompt.
    InvalidInput,
    /// A git operation failed.
    Repository,
    /// The model could not be reached.
    ModelUnreachable,
    /// The model refused the credentials.
    ModelAuth,
    /// The model answered something that is not the protocol.
    ModelProtocol,
    /// The model answered with another error.
    Model,
    /// The sandbox could not run a command.
    Sandbox,
    /// The repository's setup or maintenance script failed.
    Setup,
    /// A declared check failed on the committed result (or, when the agent changed nothing, on
    /// the tree the task started from).
    Checks,
    /// A budget ran out (turns, tokens, time).
    Budget,
    /// The task was cancelled.
    Cancelled,
    /// A bug or an unexpected condition in nightshift itself.
    Internal,
}

/// A tool call as the model made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallRecord {
    pub id: String,
    pub name: String,
    /// The arguments as the model sent them: parsed JSON when they parse, else the raw string.
    pub arguments: Value,
}

/// Which environment command ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandPhase {
    Setup,
    Maintenance,
    Check,
    /// A step nightshift builds over the task's image: a Dockerfile's `RUN`, a devcontainer
    /// feature's install script.
    Build,
}

/// Token counts, per call or summed over a task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    /// The part of `input_tokens` served from the provider's prompt cache.
    #[serde(default)]
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

impl AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        self.input_tokens += other.input_tokens;
        self.cached_input_tokens += other.cached_input_tokens;
        self.output_tokens += other.output_tokens;
    }
}

/// One step of the agent's plan (`update_plan`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanStep {
    pub step: String,
    pub status: PlanStepStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanStepStatus {
    Pending,
    InProgress,
    Completed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_flat_json_with_a_type_tag() {
        let record = EventRecord {
            task_id: TaskId::new(),
            seq: 3,
            at: Timestamp::UNIX_EPOCH,
            event: Event::StateChanged {
                state: TaskState::Running,
                detail: None,
            },
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["type"], "state_changed");
        assert_eq!(json["state"], "running");
        assert_eq!(json["seq"], 3);
        assert_eq!(json["at"], "1970-01-01T00:00:00Z");
        let back: EventRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn kind_matches_the_serde_tag() {
        let events = [
            Event::CancelRequested,
            Event::Warning {
                message: "w".into(),
            },
            Event::AgentFinished {
                summary: "s".into(),
            },
            Event::ReviewSubmitted {
                summary: "s".into(),
                findings: Vec::new(),
            },
            Event::Ended {
                state: TaskState::Failed,
                summary: None,
                usage: Usage::default(),
                cost_usd: None,
                cpu_seconds: None,
                turns: 0,
                duration_ms: 0,
                no_changes: true,
            },
        ];
        for event in events {
            let json = serde_json::to_value(&event).unwrap();
            assert_eq!(json["type"], event.kind());
        }
    }

    #[test]
    fn ended_says_no_changes_only_when_true_and_reads_old_logs() {
        let old = r#"{"type":"ended","state":"succeeded","usage":{"input_tokens":1,"output_tokens":2},"turns":1,"duration_ms":5}"#;
        let event: Event = serde_json::from_str(old).unwrap();
        let Event::Ended { no_changes, .. } = &event else {
            panic!("{event:?}")
        };
        assert!(!no_changes);
        let json = serde_json::to_value(&event).unwrap();
        assert!(json.get("no_changes").is_none(), "{json}");
        let unchanged = Event::Ended {
            state: TaskState::Failed,
            summary: None,
            usage: Usage::default(),
            cost_usd: None,
            cpu_seconds: None,
            turns: 1,
            duration_ms: 5,
            no_changes: true,
        };
        assert_eq!(
            serde_json::to_value(&unchanged).unwrap()["no_changes"],
            true
        );
    }

    #[test]
    fn usage_adds_up() {
        let mut total = Usage::default();
        total += Usage {
            input_tokens: 10,
            cached_input_tokens: 4,
            output_tokens: 2,
        };
        total += Usage {
            input_tokens: 5,
            cached_input_tokens: 0,
            output_tokens: 1,
        };
        assert_eq!(
            total,
            Usage {
                input_tokens: 15,
                cached_input_tokens: 4,
                output_tokens: 3
            }
        );
        assert_eq!(total.total(), 18);
    }
}
