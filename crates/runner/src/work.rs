//! The agent's part of a task, in a session that is started and prepared: its budget, its
//! MCP servers (started before its first turn, stopped after its last, killed on any way out),
//! its prompt, its run, and what its outcome comes to.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nightshift_agent::{Agent, AgentConfig, AgentOutcome, SinkError};
use nightshift_model::ModelSpec;
use nightshift_protocol::{ErrorKind, TaskState};
use nightshift_sandbox::SandboxSession;
use tokio_util::sync::CancellationToken;

use crate::Runner;
use crate::ending::{Ending, budget, fail, set_state};
use crate::handoff::Run;
use crate::lifecycle::Stops;
use crate::watch::Watch;

impl Runner {
    /// Runs the agent in `session` and concludes the task from its outcome.
    pub(crate) async fn work(
        &self,
        run: &Run<'_>,
        (model, spec): (&dyn nightshift_model::ModelClient, &ModelSpec),
        session: &dyn SandboxSession,
        stop: &CancellationToken,
        stops: &Stops,
        watch: &Watch,
    ) -> Result<Ending, SinkError> {
        let Run { log, task, .. } = *run;
        let review = task.spec.review.as_ref();
        let read_only = review.is_some() || task.spec.plan;
        set_state(log, TaskState::Running, None).await?;
        let mut config = AgentConfig {
            budget: budget(
                task,
                Some(run.env.config.limits.wall_time.as_duration())
                    .into_iter()
                    .chain(self.config.max_duration)
                    .min(),
            ),
            limits: self.config.tool_limits.clone(),
            max_output_tokens: None,
            cost: self.cost.clone().and_then(|price| price(spec)),
            context_window: Some(nightshift_model::limits(spec).context_window),
            mode: match (review, task.spec.plan) {
                (Some(_), _) => nightshift_agent::tools::Mode::Review,
                (None, true) => nightshift_agent::tools::Mode::Plan,
                (None, false) => nightshift_agent::tools::Mode::Build,
            },
        };
        let prompt = match review {
            Some(review) => crate::review::review_prompt(run, review).await,
            None if task.spec.plan => Ok(crate::plan::plan_prompt(run)),
            None => Ok(self.build_prompt(run)),
        };
        let prompt = match prompt {
            Ok(prompt) => prompt,
            Err(message) => return fail(log, ErrorKind::Repository, message, None).await,
        };
        // AGENTS.md is read after setup ran, which may have written into it.
        let prompt = log.redact(&prompt);
        // Dropped on every way out of here, which kills the servers' processes; stopped below
        // when the agent is done, which gives them a moment to end on their own.
        let starting = Instant::now();
        let mcp = crate::mcp::start(
            log,
            session,
            (&self.config.mcp_servers, &run.env.config.mcp),
            config.budget.max_duration.unwrap_or(Duration::MAX),
            stop,
        )
        .await?;
        // The servers' start is the agent's time too.
        if let Some(max) = &mut config.budget.max_duration {
            *max = max.saturating_sub(starting.elapsed());
        }
        let agent = Agent {
            model,
            session,
            sink: log,
            config: &config,
            inbox: Some(&watch.messages),
            mcp: Some(&mcp),
        };
        let report = agent.run(&prompt, stop).await;
        let _ = tokio::time::timeout(crate::mcp::STOP_WAIT, mcp.stop()).await;
        drop(mcp);
        let report = match report {
            Ok(report) => report,
            Err(nightshift_agent::AgentError::Sink(err)) => return Err(err),
        };
        let shutting_down = stops.shutdown.is_cancelled()
            && !stops.cancel.is_cancelled()
            && !watch.cancel_requested.load(Ordering::SeqCst);
        let ending = match review {
            _ if read_only
                && shutting_down
                && matches!(report.outcome, AgentOutcome::Cancelled) =>
            {
                Ok(Ending::released())
            }
            Some(_) => crate::review::conclude_review(log, report.outcome).await,
            None if task.spec.plan => crate::plan::conclude_plan(log, report.outcome).await,
            None => {
                self.conclude(run, session, report.outcome, shutting_down)
                    .await
            }
        };
        ending.map(|ending| Ending {
            cost_usd: report.cost_usd,
            ..ending
        })
    }
}
