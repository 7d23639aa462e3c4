//! The nightshift agent: the loop that turns a prompt into edits by calling a model and running
//! its tool calls in a sandbox.
//!
//! The agent never touches the store: everything it does goes out as [`Event`]s through an
//! [`EventSink`], which the runner backs with the task's log.
//!
//! [`Event`]: nightshift_protocol::Event

mod compact;
mod governor;
pub mod mcp;
mod prompt;
mod run;
mod sink;
pub mod tools;

pub use governor::{Budget, CostFn, LOOP_REPEATS};
pub use prompt::{PLAN_SYSTEM_PROMPT, REVIEW_SYSTEM_PROMPT, SYSTEM_PROMPT};
pub use run::{Agent, AgentConfig, AgentError, AgentOutcome, AgentReport};
pub use sink::{EventSink, Inbox, SinkError};
