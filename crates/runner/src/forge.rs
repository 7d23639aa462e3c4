//! After a task on a GitHub repository pushed its branch: a draft pull request whose body is
//! the task's evidence (its summary, each check with its result, tokens, dollars and turns),
//! or, when the branch has one open already (a follow-up), that pull request's body updated and
//! a comment saying what this run changed. A forge that fails or is down never fails the task:
//! the branch is pushed and the event log says what could not be done.

use std::fmt::Write as _;

use nightshift_agent::SinkError;
use nightshift_env::RemoteCredential;
use nightshift_forge::{GitHub, NewPullRequest, RepoRef};
use nightshift_protocol::{CommandPhase, Event, EventRecord, Task};

use crate::Runner;
use crate::ending::Ending;
use crate::sink::TaskLog;

impl Runner {
    /// Opens or updates the pull request of the task's branch, when its repository is
    /// registered with a GitHub API and this run pushed the branch.
    pub(crate) async fn report_to_forge(
        &self,
        log: &TaskLog,
        ending: &Ending,
    ) -> Result<(), SinkError> {
        let task = log.snapshot().await;
        let url = task.spec.repo.trim().to_string();
        let Some(branch) = task.branch.clone() else {
            return Ok(());
        };
        if !nightshift_env::is_remote(&url) {
            return Ok(());
        }
        let events = match self.store.events(task.id, 0, 10_000).await {
            Ok(events) => events,
            Err(err) => {
                return warn(
                    log,
                    format!("reading the task's log for its pull request: {err}"),
                )
                .await;
            }
        };
        if !events
            .iter()
            .any(|record| matches!(record.event, Event::BranchPushed { .. }))
        {
            return Ok(());
        }
        let Forge { github, repo } = match self.forge_for(&url).await {
            Ok(Some(forge)) => forge,
            Ok(None) => return Ok(()),
            Err(err) => return warn(log, format!("no pull request for {branch}: {err}")).await,
        };
        let body = pull_request_body(&task, ending, &events);
        let outcome = match github.open_pull_for(&repo, &branch).await {
            Ok(Some(pull)) => {
                let updated = github.update_pull_body(&repo, pull.number, &body).await;
                let comment = follow_up_comment(&task, ending, &events);
                match updated {
                    Ok(()) => github
                        .comment(&repo, pull.number, &comment)
                        .await
                        .map(|()| (pull, false)),
                    Err(err) => Err(err),
                }
            }
            Ok(None) => {
                let title = title(&task, ending);
                let base = task.spec.base.clone().unwrap_or_else(|| "main".into());
                github
                    .create_pull(
                        &repo,
                        &NewPullRequest {
                            title: &title,
                            head: &branch,
                            base: &base,
                            body: &body,
                            draft: true,
                        },
                    )
                    .await
                    .map(|pull| (pull, true))
            }
            Err(err) => Err(err),
        };
        match outcome {
            Ok((pull, created)) => {
                log.append(Event::PullRequest {
                    url: pull.html_url,
                    number: pull.number,
                    created,
                })
                .await
            }
            Err(err) => {
                let retry = match err.is_transient() {
                    true => {
                        " (GitHub was unavailable after retries; a follow-up of this task opens or updates it)"
                    }
                    false => "",
                };
                warn(log, format!("the pull request for {branch} could not be opened or updated: {err}{retry}; the branch is pushed")).await
            }
        }
    }
}

async fn warn(log: &TaskLog, message: String) -> Result<(), SinkError> {
    log.append(Event::Warning { message }).await
}

/// The first line of the agent's summary, else of the prompt.
fn title(task: &Task, ending: &Ending) -> String {
    let source = ending
        .summary
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or(&task.spec.prompt);
    let line = source.lines().next().unwrap_or("").trim();
    let title: String = line.chars().take(100).collect();
    match title.is_empty() {
        true => format!("nightshift task {}", task.id.short()),
        false => title,
    }
}

/// The evidence: summary, prompt, checks, cost.
fn pull_request_body(task: &Task, ending: &Ending, events: &[EventRecord]) -> String {
    let mut body = String::new();
    if let Some(summary) = ending.summary.as_deref().filter(|s| !s.trim().is_empty()) {
        let _ = writeln!(body, "{}\n", summary.trim());
    }
    let _ = writeln!(
        body,
        "**Task** `{}` ({}), on `{}`; see it with `nightshift show {}`.\n",
        task.id,
        ending.state,
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
        match ending.cost_usd {
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
fn follow_up_comment(task: &Task, ending: &Ending, events: &[EventRecord]) -> String {
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
        task.id, ending.state
    );
    if let Some(committed) = committed {
        let _ = write!(comment, ": {committed}");
    }
    comment.push_str(".\n");
    if let Some(summary) = ending.summary.as_deref().filter(|s| !s.trim().is_empty()) {
        let _ = write!(comment, "\n{}\n", summary.trim());
    }
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
