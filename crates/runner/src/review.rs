//! Review tasks: an agent reads a branch's changes with read-only access and reports findings
//! as data; nothing is committed, verified or pushed.

use nightshift_agent::{AgentOutcome, SinkError};
use nightshift_protocol::{
    ErrorKind, Event, EventRecord, Finding, ReviewSpec, Task, TaskState, truncate_middle,
};

use crate::Runner;
use crate::ending::{Ending, fail, fail_model};
use crate::handoff::Run;
use crate::sink::TaskLog;
use crate::submit::{ReviewOf, TaskRequest};

/// The most bytes of the diff the review's prompt carries; a longer diff keeps its head and
/// tail, and the agent reads the rest from the working copy.
const DIFF_BYTES: usize = 96 * 1024;

/// What a review's agent is told: the repository's rules, the request the changes answer, the
/// changes, and what the person asked to look at.
pub(crate) async fn review_prompt(run: &Run<'_>, review: &ReviewSpec) -> Result<String, String> {
    let copy = run.copy;
    let mut dirs = Vec::new();
    if let Some(workdir) = &run.env.config.environment.workdir {
        dirs.push(workdir.clone());
    }
    let docs = nightshift_env::config::collect_agents_md(copy.root(), &dirs);
    let mut prompt = nightshift_env::config::render_agents_context(&docs);
    if !run.env.config.checks.is_empty() {
        prompt.push_str("\nThe repository declares these checks:\n");
        for check in &run.env.config.checks {
            prompt.push_str(&format!("- {}: `{}`\n", check.name, check.run));
        }
    }
    if let Some(task) = run.reviewed {
        prompt.push_str(&format!(
            "\n# The request the changes answer\n\n{}\n",
            task.spec.prompt.trim()
        ));
        if let Some(summary) = &task.summary {
            prompt.push_str(&format!(
                "\nThe author's summary of the changes:\n{}\n",
                summary.trim()
            ));
        }
    }
    let diff = copy
        .diff_since(&review.base_commit)
        .await
        .map_err(|err| format!("reading the changes since {}: {err}", review.base))?;
    let shown = truncate_middle(&diff, DIFF_BYTES);
    let branch = run.task.spec.base.as_deref().unwrap_or("HEAD");
    prompt.push_str(&format!(
        "\n# The changes\n\nThe working copy is `{branch}`. Its changes since it left {} ({}), as `git diff {}...HEAD` shows them{}:\n\n```diff\n{}\n```\n",
        review.base,
        &review.base_commit[..review.base_commit.len().min(12)],
        &review.base_commit[..review.base_commit.len().min(12)],
        if shown.text.len() < diff.len() {
            " (cut in the middle: run that command for the whole)"
        } else {
            ""
        },
        shown.text.trim_end()
    ));
    prompt.push_str(&format!(
        "\n# The review\n\n{}\n",
        run.task.spec.prompt.trim()
    ));
    Ok(prompt)
}

/// A review's ending: succeeded with its verdict once findings are submitted. Its sessions
/// could change nothing, so nothing is saved whatever the outcome.
pub(crate) async fn conclude_review(
    log: &TaskLog,
    outcome: AgentOutcome,
) -> Result<Ending, SinkError> {
    match outcome {
        AgentOutcome::Reviewed { summary, findings } => Ok(Ending::new(
            TaskState::Succeeded,
            Some(verdict(&summary, &findings)),
            None,
        )),
        AgentOutcome::Finished { summary } => {
            fail(
                log,
                ErrorKind::Internal,
                format!("the review ended without findings submitted: {summary}"),
                None,
            )
            .await
        }
        AgentOutcome::Planned { .. } => {
            fail(
                log,
                ErrorKind::Internal,
                "a review's agent submitted a plan".into(),
                None,
            )
            .await
        }
        AgentOutcome::BudgetExceeded { reason, .. } => {
            fail(
                log,
                ErrorKind::Budget,
                format!("the review stopped before it submitted findings: {reason}"),
                Some("review again with a larger budget (--max-turns, --max-tokens, --max-cost, --max-time)".into()),
            )
            .await
        }
        AgentOutcome::Cancelled => Ok(Ending::cancelled()),
        AgentOutcome::ModelFailed(err) => fail_model(log, err).await,
    }
}

/// Queues the review `[review] auto` asks for of `task`, which has just succeeded with a
/// branch, with the task's model and budgets; a review that cannot be queued is a warning.
pub(crate) async fn queue_review(
    runner: &crate::Runner,
    log: &TaskLog,
    task: &Task,
) -> Result<(), SinkError> {
    let request = TaskRequest {
        max_tokens: task.spec.max_tokens,
        max_cost_usd: task.spec.max_cost_usd,
        max_duration_secs: task.spec.max_duration_secs,
        review: Some(ReviewOf::Task(task.id)),
        ..TaskRequest::new(
            task.spec.repo.clone(),
            nightshift_protocol::REVIEW_PROMPT,
            task.spec.model.clone(),
        )
    };
    match runner.submit(request).await {
        Ok(review) => log.append(Event::ReviewQueued { task_id: review.id }).await,
        Err(err) => {
            log.append(Event::Warning {
                message: format!("[review] auto: the review was not queued: {err}"),
            })
            .await
        }
    }
}

/// The task's summary: how many findings of which severity, then the reviewer's words.
fn verdict(summary: &str, findings: &[Finding]) -> String {
    if findings.is_empty() {
        return format!("No findings. {}", summary.trim());
    }
    let mut counts: Vec<(nightshift_protocol::Severity, usize)> = Vec::new();
    for finding in findings {
        match counts.iter_mut().find(|(s, _)| *s == finding.severity) {
            Some((_, n)) => *n += 1,
            None => counts.push((finding.severity, 1)),
        }
    }
    let counted: Vec<String> = counts
        .iter()
        .map(|(severity, n)| format!("{n} {}", severity.as_str()))
        .collect();
    format!(
        "{} finding(s): {}. {}",
        findings.len(),
        counted.join(", "),
        summary.trim()
    )
}

impl Runner {
    /// A review task's forge report: once it succeeded, its findings on the pull request of
    /// the branch it reviewed.
    pub(crate) async fn report_review(
        &self,
        log: &TaskLog,
        ending: &Ending,
        task: &Task,
        events: &[EventRecord],
    ) -> Result<(), SinkError> {
        let mut said = Vec::new();
        if ending.state == TaskState::Succeeded {
            self.comment_review(task, events, log, &mut said).await;
        }
        for event in said {
            log.append(event).await?;
        }
        Ok(())
    }

    /// A review task's findings, as a comment on the pull request of the branch it reviewed
    /// (the newest task on that branch that opened or updated one). What it did goes to `said`.
    async fn comment_review(
        &self,
        task: &Task,
        events: &[EventRecord],
        log: &TaskLog,
        said: &mut Vec<Event>,
    ) {
        let url = task.spec.repo.trim();
        let Some(branch) = task.spec.base.as_deref() else {
            return;
        };
        let Some((summary, findings)) =
            events.iter().rev().find_map(|record| match &record.event {
                Event::ReviewSubmitted { summary, findings } => Some((summary, findings)),
                _ => None,
            })
        else {
            return;
        };
        let Some(number) = self.pull_request_of(url, branch).await else {
            return;
        };
        let forge = match self.forge_for(url).await {
            Ok(Some(forge)) => forge,
            Ok(None) => return,
            Err(err) => {
                said.push(Event::Warning {
                    message: format!("the review could not be commented on #{number}: {err}"),
                });
                return;
            }
        };
        let body = log.redact(&review_comment(task, summary, findings));
        match forge.github.comment(&forge.repo, number, &body).await {
            Ok(()) => said.push(Event::ForgeCommented { number }),
            Err(err) => said.push(Event::Warning {
                message: format!("the review could not be commented on #{number}: {err}"),
            }),
        }
    }

    /// The number of the pull request of `branch` on the remote repository `url`, from the
    /// newest of its tasks' logs that has one.
    async fn pull_request_of(&self, url: &str, branch: &str) -> Option<u64> {
        let filter = nightshift_store::TaskFilter {
            limit: 50,
            repos: Some(vec![url.to_string()]),
            branch: Some(branch.to_string()),
            ..Default::default()
        };
        for task in self.store.list_tasks(&filter).await.ok()? {
            let events = self.store.events(task.id, 0, 10_000).await.ok()?;
            let number = events.iter().rev().find_map(|record| match record.event {
                Event::PullRequest { number, .. } => Some(number),
                _ => None,
            });
            if number.is_some() {
                return number;
            }
        }
        None
    }
}

/// What a review says on the pull request: its verdict, then each finding with its place,
/// severity and fix.
fn review_comment(task: &Task, summary: &str, findings: &[Finding]) -> String {
    let mut body = format!(
        "**nightshift review** `{}`: {}\n",
        task.id.short(),
        task.summary.as_deref().unwrap_or(summary).trim()
    );
    for finding in findings {
        body.push_str(&format!(
            "\n- **{}** `{}`: {}",
            finding.severity.as_str(),
            finding.location(),
            finding.problem.trim()
        ));
        if let Some(suggestion) = &finding.suggestion {
            body.push_str(&format!("\n  Suggested fix: {}", suggestion.trim()));
        }
    }
    body.push_str(&format!(
        "\n\n`nightshift show {}` shows the review; `nightshift review ID --send` asks the author to fix what it found.\n",
        task.id.short()
    ));
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use nightshift_protocol::Severity;

    fn finding(severity: Severity) -> Finding {
        Finding {
            path: "a".into(),
            line: 1,
            end_line: None,
            severity,
            problem: "p".into(),
            suggestion: None,
        }
    }

    #[test]
    fn the_verdict_counts_findings_by_severity() {
        assert_eq!(verdict(" Fine. ", &[]), "No findings. Fine.");
        let findings = [
            finding(Severity::Critical),
            finding(Severity::Low),
            finding(Severity::Low),
        ];
        assert_eq!(
            verdict("Add is broken.", &findings),
            "3 finding(s): 1 critical, 2 low. Add is broken."
        );
    }
}
