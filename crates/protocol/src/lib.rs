//! The shared vocabulary of nightshift.
//!
//! Every other crate speaks in these types: the store persists them, the runner emits them, the
//! CLI and the API render them. Keeping them in one crate without I/O means that the wire format
//! (the JSON of `nightshift logs --json`, the API, the event log) has exactly one definition.

mod attempts;
mod event;
mod id;
mod plan;
mod repo;
mod review;
mod task;
mod text;
mod token;

pub use attempts::{
    AttemptOf, AttemptRank, FindingCounts, MAX_ATTEMPTS, choice_reason, rank_attempts,
};
pub use event::{
    CommandPhase, ErrorKind, Event, EventRecord, ImageLayerUse, PlanStep, PlanStepStatus,
    ToolCallRecord, Usage,
};
pub use id::{ParseTaskIdError, TaskId};
pub use plan::{
    AcceptanceCheck, MAX_SUBTASKS, Plan, PlanHistory, PlanRun, PlanVersion, Subtask, SubtaskOf,
};
pub use repo::{InvalidRepoName, MAX_REPO_NAME, Repository, check_repo_name};
pub use review::{Finding, REVIEW_PROMPT, ReviewSpec, Severity, findings_as_request};
pub use task::{Task, TaskOrigin, TaskSpec, TaskState, UnknownTaskState};
pub use text::{Truncated, floor_char_boundary, printable, truncate_middle};
pub use token::{ApiToken, TokenScope, UnknownTokenScope};

/// The version of the JSON shapes in this crate. Bumped (with a migration note in
/// docs/json.md) whenever a field changes meaning or disappears; adding a field does not bump it.
pub const SCHEMA_VERSION: u32 = 1;
