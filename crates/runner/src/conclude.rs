//! The end of a build task's agent run: its prompt going in, and its outcome turned into the
//! task's ending, with its work handed back.

use nightshift_agent::{AgentOutcome, SinkError};
use nightshift_protocol::ErrorKind;
use nightshift_sandbox::SandboxSession;

use crate::Runner;
use crate::ending::{Ending, fail, fail_model};
use crate::environment;
use crate::follow_up::follow_up_context;
use crate::handoff::Run;

impl Runner {
    /// A build task's prompt: the repository's context (AGENTS.md, its checks), a follow-up's
    /// history, then the request.
    pub(crate) fn build_prompt(&self, run: &Run<'_>) -> String {
        let mut context = environment::agent_context(run.env, run.copy.root());
        if let Some(parent) = run.parent {
            context.push_str(&format!("\n{}", follow_up_context(parent)));
        }
        if context.trim().is_empty() {
            run.task.spec.prompt.clone()
        } else {
            format!(
                "{}\n\n# The task\n\n{}",
                context.trim_end(),
                run.task.spec.prompt
            )
        }
    }

    /// Turns the agent's outcome into the task's ending, handing back its work.
    pub(crate) async fn conclude(
        &self,
        run: &Run<'_>,
        session: &dyn SandboxSession,
        outcome: AgentOutcome,
        shutting_down: bool,
    ) -> Result<Ending, SinkError> {
        let log = run.log;
        match outcome {
            AgentOutcome::Finished { summary } => {
                self.verify_and_publish(run, session, summary).await
            }
            // Only a review's agent has `submit_review`, and a planner's `submit_plan`.
            AgentOutcome::Reviewed { .. } | AgentOutcome::Planned { .. } => {
                fail(
                    log,
                    ErrorKind::Internal,
                    "a build task's agent submitted a review or a plan".into(),
                    None,
                )
                .await
            }
            AgentOutcome::BudgetExceeded { reason, summary } => {
                self.save_incomplete(run, session, summary.as_deref(), &reason)
                    .await?;
                let ending = fail(
                    log,
                    ErrorKind::Budget,
                    format!("the task stopped: {reason}"),
                    Some("run it again with a larger budget (--max-turns, --max-tokens, --max-cost, --max-time) or a more specific prompt".into()),
                )
                .await?;
                Ok(Ending { summary, ..ending })
            }
            AgentOutcome::Cancelled => {
                if shutting_down {
                    // The task goes back to the queue and starts over elsewhere; its branch
                    // name must stay free for that run.
                    return Ok(Ending::released());
                }
                self.save_incomplete(run, session, None, "the task was cancelled")
                    .await?;
                Ok(Ending::cancelled())
            }
            AgentOutcome::ModelFailed(err) => {
                self.save_incomplete(run, session, None, &format!("the model failed: {err}"))
                    .await?;
                fail_model(log, err).await
            }
        }
    }
}
