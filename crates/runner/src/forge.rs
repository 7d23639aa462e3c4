//! After a task on a GitHub repository ended: when this run pushed its branch, a draft pull
//! request whose body is the task's evidence (its summary, each check with its result, tokens,
//! dollars and turns), or, when the branch has one open already (a follow-up), that pull
//! request's body updated and a comment saying what this run changed; and when an issue or a
//! pull request asked for the task (a webhook), its outcome commented there. A forge that
//! refuses never fails the task: the branch is pushed and the event log says what could not be
//! done. A forge that is down gets the report again later (see `forge_retry`).

use std::fmt::Write as _;

use nightshift_agent::SinkError;
use nightshift_env::RemoteCredential;
use nightshift_forge::{ForgeError, GitHub, NewPullRequest, PullRequest, RepoRef};
use nightshift_protocol::{CommandPhase, Event, EventRecord, Task, TaskOrigin, TaskState};

use crate::Runner;
use crate::ending::Ending;
use crate::sink::TaskLog;

/// How a task ended, as its forge report tells it: from the run that just ended, or from the
/// stored task when a report is tried again later.
pub(crate) struct Outcome {
    pub(crate) state: TaskState,
    pub(crate) summary: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) cost_usd: Option<f64>,
}

impl Outcome {
    /// The run's ending, through the task's redactor: what goes to a forge is as clean as
    /// what is stored.
    fn of_run(ending: &Ending, log: &TaskLog) -> Outcome {
        Outcome {
            state: ending.state,
            summary: ending.summary.as_deref().map(|s| log.redact(s)),
            error: ending.error.as_deref().map(|s| log.redact(s)),
            cost_usd: ending.cost_usd,
        }
    }

    /// The stored task (its summary and error were redacted when stored).
    pub(crate) fn of_stored(task: &Task, events: &[EventRecord]) -> Outcome {
        let cost_usd = events.iter().rev().find_map(|record| match &record.event {
            Event::Ended { cost_usd, .. } => *cost_usd,
            _ => None,
        });
        Outcome {
            state: task.state,
            summary: task.summary.clone(),
            error: task.error.clone(),
            cost_usd,
        }
    }

    fn summary(&self) -> Option<&str> {
        self.summary
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }
}

/// Whether a forge report is done, or was held up by an outage and is to be tried again.
pub(crate) enum Reported {
    Done,
    /// The forge could not be reached or failed: why.
    HeldUp(String),
}

impl Runner {
    /// The report at the end of a run; one held up by an outage is scheduled to be tried
    /// again.
    pub(crate) async fn report_to_forge(
        &self,
        log: &TaskLog,
        ending: &Ending,
    ) -> Result<(), SinkError> {
        let task = log.snapshot().await;
        // An attempt's branch is pushed; whether it goes further is its best-of-N task's call.
        if !nightshift_env::is_remote(&task.spec.repo)
            || task.spec.attempt_of.is_some()
            || task.spec.subtask_of.is_some()
        {
            return Ok(());
        }
        let events = match self.store.events(task.id, 0, 10_000).await {
            Ok(events) => events,
            Err(err) => {
                return warn(
                    log,
                    format!("reading the task's log for its forge report: {err}"),
                )
                .await;
            }
        };
        let events = self.forge_view(&task, events).await;
        let mut said = Vec::new();
        if task.spec.review.is_some() {
            return self.report_review(log, ending, &task, &events).await;
        }
        let reported = self
            .report(&task, &Outcome::of_run(ending, log), &events, &mut said)
            .await;
        for event in said {
            log.append(event).await?;
        }
        if let Reported::HeldUp(reason) = reported {
            let event = self.defer(task.id, "pull_request", 0, &reason).await;
            log.append(event).await?;
        }
        Ok(())
    }

    /// Opens or updates the pull request of the branch this run pushed, and comments the
    /// outcome where the task was asked for. What it did goes to `said` as events. Steps an
    /// earlier attempt finished (per the log) are not done twice.
    pub(crate) async fn report(
        &self,
        task: &Task,
        outcome: &Outcome,
        events: &[EventRecord],
        said: &mut Vec<Event>,
    ) -> Reported {
        let url = task.spec.repo.trim();
        if !nightshift_env::is_remote(url) || push_pending(events) {
            return Reported::Done;
        }
        let pushed = events
            .iter()
            .any(|record| matches!(record.event, Event::BranchPushed { .. }));
        let origin = task.spec.origin;
        if !pushed && origin.is_none() {
            return Reported::Done;
        }
        let forge = match self.forge_for(url).await {
            Ok(Some(forge)) => forge,
            Ok(None) => return Reported::Done,
            Err(err) => {
                said.push(Event::Warning {
                    message: format!("no forge report for this task: {err}"),
                });
                return Reported::Done;
            }
        };
        let mut pull = events.iter().rev().find_map(|record| match &record.event {
            Event::PullRequest { url, number, .. } => Some(PullRequest {
                number: *number,
                html_url: url.clone(),
            }),
            _ => None,
        });
        let mut updated_pull = false;
        if let (true, None, Some(branch)) = (pushed, &pull, task.branch.as_deref()) {
            match open_or_update(&forge, task, outcome, events, branch).await {
                Ok((opened, created)) => {
                    said.push(Event::PullRequest {
                        url: opened.html_url.clone(),
                        number: opened.number,
                        created,
                    });
                    updated_pull = !created;
                    pull = Some(opened);
                }
                Err(err) if err.is_transient() => {
                    return Reported::HeldUp(format!("the pull request for {branch}: {err}"));
                }
                Err(err) => said.push(Event::Warning {
                    message: format!(
                        "the pull request for {branch} could not be opened or updated: {err}; the branch is pushed"
                    ),
                }),
            }
        }
        // The outcome, where it was asked for; a follow-up that updated its pull request has
        // said what it did there already.
        let target = match origin {
            Some(TaskOrigin::GithubIssue { number }) => Some(number),
            Some(TaskOrigin::GithubPullRequest { number }) if !updated_pull => Some(number),
            _ => None,
        };
        let commented = events
            .iter()
            .any(|record| matches!(record.event, Event::ForgeCommented { .. }));
        if let (Some(number), false) = (target, commented) {
            let body = outcome_comment(task, outcome, events, pull.as_ref());
            match forge.github.comment(&forge.repo, number, &body).await {
                Ok(()) => said.push(Event::ForgeCommented { number }),
                Err(err) if err.is_transient() => {
                    return Reported::HeldUp(format!("the comment on #{number}: {err}"));
                }
                Err(err) => said.push(Event::Warning {
                    message: format!("the outcome could not be commented on #{number}: {err}"),
                }),
            }
        }
        Reported::Done
    }
}

/// Whether the branch's push is waiting for a retry: the last commit was not pushed, and an
/// outage held the push up. The retry reports once it has pushed.
pub(crate) fn push_pending(events: &[EventRecord]) -> bool {
    let mut pending = false;
    for record in events {
        match &record.event {
            Event::Committed { .. } | Event::BranchPushed { .. } => pending = false,
            Event::ForgeRetry {
                action,
                retry_at: Some(_),
                ..
            } if action == "push" => pending = true,
            _ => {}
        }
    }
    pending
}

/// Opens the branch's draft pull request, or updates the open one and comments what changed.
async fn open_or_update(
    forge: &Forge,
    task: &Task,
    outcome: &Outcome,
    events: &[EventRecord],
    branch: &str,
) -> Result<(PullRequest, bool), ForgeError> {
    let Forge { github, repo } = forge;
    let body = pull_request_body(task, outcome, events);
    match github.open_pull_for(repo, branch).await? {
        Some(pull) => {
            github.update_pull_body(repo, pull.number, &body).await?;
            let comment = follow_up_comment(task, outcome, events);
            github.comment(repo, pull.number, &comment).await?;
            Ok((pull, false))
        }
        None => {
            let title = title(task, outcome);
            let base = task.spec.base.clone().unwrap_or_else(|| "main".into());
            let pull = github
                .create_pull(
                    repo,
                    &NewPullRequest {
                        title: &title,
                        head: branch,
                        base: &base,
                        body: &body,
                        draft: true,
                    },
                )
                .await?;
            Ok((pull, true))
        }
    }
}

async fn warn(log: &TaskLog, message: String) -> Result<(), SinkError> {
    log.append(Event::Warning { message }).await
}

/// The first line of the agent's summary, else of the prompt.
fn title(task: &Task, outcome: &Outcome) -> String {
    let source = outcome.summary().unwrap_or(&task.spec.prompt);
    let line = source.lines().next().unwrap_or("").trim();
    let title: String = line.chars().take(100).collect();
    match title.is_empty() {
        true => format!("nightshift task {}", task.id.short()),
        false => title,
    }
}

/// The evidence: summary, prompt, checks, cost.
fn pull_request_body(task: &Task, outcome: &Outcome, events: &[EventRecord]) -> String {
    let mut body = String::new();
    if let Some(summary) = outcome.summary() {
        let _ = writeln!(body, "{summary}\n");
    }
    if let Some(TaskOrigin::GithubIssue { number }) = task.spec.origin {
        let _ = writeln!(body, "Fixes #{number}.\n");
    }
    let _ = writeln!(
        body,
        "**Task** `{}` ({}), on `{}`; see it with `nightshift show {}`.\n",
        task.id,
        outcome.state,
        task.spec.base.as_deref().unwrap_or("HEAD"),
        task.id.short()
    );
    let _ = writeln!(body, "**Prompt**\n");
    for line in task.spec.prompt.lines().take(20) {
        let _ = writeln!(body, "> {line}");
    }
    let _ = writeln!(body, "\n### Checks\n");
    let checks: Vec<_> = events
        .iter()
        .filter_map(|record| match &record.event {
            Event::CommandFinished {
                phase: CommandPhase::Check,
                name,
                command,
                ok,
                exit_code,
                duration_ms,
                ..
            } => Some((name, command, *ok, *exit_code, *duration_ms)),
            _ => None,
        })
        .collect();
    if checks.is_empty() {
        let _ = writeln!(body, "The repository declares no checks.");
    } else {
        let _ = writeln!(body, "| check | command | result |\n|---|---|---|");
        for (name, command, ok, exit_code, duration_ms) in checks {
            let result = match ok {
                true => format!("passed ({:.1} s)", duration_ms as f64 / 1000.0),
                false => format!("**failed** (exit {exit_code})"),
            };
            let command = command.replace('|', "\\|").replace('\n', " ");
            let _ = writeln!(body, "| {name} | `{command}` | {result} |");
        }
    }
    let usage = task.usage;
    let _ = writeln!(
        body,
        "\n### Cost\n\n{} tokens in ({} cached), {} out, over {} turns{}.",
        usage.input_tokens,
        usage.cached_input_tokens,
        usage.output_tokens,
        task.turns,
        match outcome.cost_usd {
            Some(cost) => format!("; model ${cost:.4}"),
            None => String::new(),
        }
    );
    let _ = writeln!(
        body,
        "\n---\nOpened by nightshift, which never approves or merges. Each commit carries a `Nightshift-Task:` trailer."
    );
    body
}

/// What a follow-up says on the pull request it updated.
fn follow_up_comment(task: &Task, outcome: &Outcome, events: &[EventRecord]) -> String {
    let committed = events.iter().rev().find_map(|record| match &record.event {
        Event::Committed {
            commit,
            files_changed,
            insertions,
            deletions,
            ..
        } => Some(format!(
            "{files_changed} files, +{insertions} -{deletions}, up to `{}`",
            &commit[..commit.len().min(12)]
        )),
        _ => None,
    });
    let mut comment = format!(
        "nightshift task `{}` ({}) pushed more work to this branch",
        task.id, outcome.state
    );
    if let Some(committed) = committed {
        let _ = write!(comment, ": {committed}");
    }
    comment.push_str(".\n");
    if let Some(summary) = outcome.summary() {
        let _ = write!(comment, "\n{summary}\n");
    }
    comment
}

/// What the issue or pull request that asked for the task is told when it ends.
fn outcome_comment(
    task: &Task,
    outcome: &Outcome,
    events: &[EventRecord],
    pull: Option<&PullRequest>,
) -> String {
    let id = task.id;
    let mut comment = match (outcome.state, pull) {
        (TaskState::Succeeded, Some(pull)) => format!(
            "nightshift task `{id}` succeeded: #{} has the change and its evidence.",
            pull.number
        ),
        (TaskState::Succeeded, None) if task.no_changes() => {
            format!("nightshift task `{id}` finished without changing anything.")
        }
        (TaskState::Succeeded, None) => format!(
            "nightshift task `{id}` succeeded; its work is on the branch `{}`.",
            task.branch.as_deref().unwrap_or("?")
        ),
        (TaskState::Cancelled, _) => format!("nightshift task `{id}` was cancelled."),
        (state, _) => format!(
            "nightshift task `{id}` {state}: {}",
            outcome.error.as_deref().unwrap_or("no reason was recorded")
        ),
    };
    if outcome.state != TaskState::Succeeded
        && let Some(pull) = pull
    {
        let _ = write!(
            comment,
            " What it did is on #{}, marked incomplete.",
            pull.number
        );
    }
    let (passed, failed) = events
        .iter()
        .fold((0, 0), |(p, f), record| match &record.event {
            Event::CommandFinished {
                phase: CommandPhase::Check,
                ok,
                ..
            } => match ok {
                true => (p + 1, f),
                false => (p, f + 1),
            },
            _ => (p, f),
        });
    if passed + failed > 0 {
        let _ = write!(comment, " Checks: {passed} passed, {failed} failed.");
    }
    if let Some(summary) = outcome.summary() {
        let _ = write!(comment, "\n\n{summary}");
    }
    let _ = write!(comment, "\n\n(`nightshift show {}`)", id.short());
    comment
}

/// A repository's forge, as the webhook receiver and the hand-back reach it.
#[derive(Debug, Clone)]
pub struct Forge {
    pub github: GitHub,
    pub repo: RepoRef,
}

impl Runner {
    /// The GitHub API of the registered remote repository at `url`, with its token; `None` for
    /// a repository registered without one.
    pub async fn forge_for(&self, url: &str) -> Result<Option<Forge>, String> {
        let url = url.trim();
        let repos = self.store.repos().await.map_err(|e| e.to_string())?;
        let Some(api) = repos
            .into_iter()
            .find(|repo| repo.location == url)
            .and_then(|repo| repo.github_api)
        else {
            return Ok(None);
        };
        let token = match self.remote_credential(url).await? {
            Some(RemoteCredential::Token(token)) => token,
            _ => return Err(format!("{url} has no token credential for GitHub's API")),
        };
        let repo =
            RepoRef::from_url(url).ok_or_else(|| format!("{url} does not end in OWNER/NAME"))?;
        let github = GitHub::new(&api, &token).map_err(|e| e.to_string())?;
        Ok(Some(Forge { github, repo }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use jiff::Timestamp;
    use nightshift_protocol::{TaskId, TaskSpec};

    use super::*;

    fn task(origin: Option<TaskOrigin>) -> Task {
        // From JSON, so that optional fields added later keep their defaults here.
        let mut spec: TaskSpec = serde_json::from_value(serde_json::json!({
            "repo": "https://github.com/acme/app.git",
            "base": "main",
            "prompt": "Fix add",
            "model": "openai:m",
            "max_turns": 3,
        }))
        .unwrap();
        spec.origin = origin;
        Task::queued(TaskId::new(), spec, Timestamp::UNIX_EPOCH)
    }

    fn record(task: &Task, event: Event) -> EventRecord {
        EventRecord {
            task_id: task.id,
            seq: 1,
            at: Timestamp::UNIX_EPOCH,
            event,
        }
    }

    fn check(task: &Task, ok: bool) -> EventRecord {
        record(
            task,
            Event::CommandFinished {
                phase: CommandPhase::Check,
                name: "test".into(),
                command: "sh test.sh".into(),
                ok,
                exit_code: if ok { 0 } else { 1 },
                duration_ms: 10,
                output_tail: String::new(),
                artifact: None,
            },
        )
    }

    fn outcome(state: TaskState, error: Option<&str>) -> Outcome {
        Outcome {
            state,
            summary: Some("Fix add: it subtracted".into()),
            error: error.map(str::to_string),
            cost_usd: None,
        }
    }

    #[test]
    fn the_outcome_comment_says_how_the_task_ended_and_where_its_work_is() {
        let issue = Some(TaskOrigin::GithubIssue { number: 7 });
        let mut done = task(issue);
        done.branch = Some("nightshift/ab12-fix".into());
        let pull = PullRequest {
            number: 3,
            html_url: "https://github.com/acme/app/pull/3".into(),
        };
        let events = [check(&done, true), check(&done, false)];
        let said = outcome_comment(
            &done,
            &outcome(TaskState::Succeeded, None),
            &events,
            Some(&pull),
        );
        assert!(said.contains("succeeded: #3 has the change"), "{said}");
        assert!(said.contains("Checks: 1 passed, 1 failed."), "{said}");
        assert!(said.contains("Fix add: it subtracted"), "{said}");

        let failed = outcome_comment(
            &done,
            &outcome(TaskState::Failed, Some("the model's budget ran out")),
            &[],
            Some(&pull),
        );
        assert!(
            failed.contains("failed: the model's budget ran out")
                && failed.contains("on #3, marked incomplete"),
            "{failed}"
        );
        assert!(!failed.contains("Checks:"), "{failed}");

        let cancelled = outcome_comment(
            &task(issue),
            &outcome(TaskState::Cancelled, None),
            &[],
            None,
        );
        assert!(cancelled.contains("was cancelled"), "{cancelled}");
    }

    #[test]
    fn a_push_is_pending_only_until_the_next_commit_or_push() {
        let t = task(None);
        let committed = record(
            &t,
            Event::Committed {
                branch: "b".into(),
                commit: "c".into(),
                files_changed: 1,
                insertions: 1,
                deletions: 0,
                incomplete: false,
            },
        );
        let deferred = |retry_at| {
            record(
                &t,
                Event::ForgeRetry {
                    action: "push".into(),
                    attempt: 1,
                    retry_at,
                    reason: "503".into(),
                },
            )
        };
        let pushed = record(
            &t,
            Event::BranchPushed {
                remote: "r".into(),
                branch: "b".into(),
                commit: "c".into(),
            },
        );
        let later = Some(Timestamp::UNIX_EPOCH);
        assert!(!push_pending(std::slice::from_ref(&committed)));
        assert!(push_pending(&[committed.clone(), deferred(later)]));
        assert!(!push_pending(&[committed.clone(), deferred(later), pushed]));
        // Given up: nothing is pending any more.
        assert!(!push_pending(&[committed.clone(), deferred(None)]));
        assert!(!push_pending(&[deferred(later), committed]));
    }
}
