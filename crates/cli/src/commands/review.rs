//! `nightshift review`: a read-only agent reviews an ended task's branch (or any branch against
//! a base) and reports findings; `--send` hands them to the reviewed task as a follow-up.

use std::process::ExitCode;

use nightshift_protocol::{Event, Finding, REVIEW_PROMPT, Task, TaskState, findings_as_request};
use nightshift_runner::ReviewOf;
use serde_json::json;

use crate::args::ReviewArgs;
use crate::backend::{Backend, Submission};
use crate::output::{Failure, TaskView, exit_for, print_json};

pub async fn run(args: ReviewArgs) -> Result<ExitCode, Failure> {
    if args.send && args.id.is_none() {
        return Err(Failure::usage(
            "--send sends the findings to the reviewed task: give the task's ID rather than --branch",
        ));
    }
    let backend = Backend::from_env().await?;
    let reviewed = match &args.id {
        Some(id) => Some(backend.find(id).await?),
        None => None,
    };
    let (repo, base, review) = match &reviewed {
        Some(task) => (task.spec.repo.clone().into(), None, ReviewOf::Task(task.id)),
        None => (
            args.repo.clone(),
            args.branch.clone(),
            ReviewOf::Base(args.base.clone()),
        ),
    };
    let prompt = match args.focus.as_deref().map(str::trim) {
        Some(focus) if !focus.is_empty() => {
            format!("{REVIEW_PROMPT}\n\nLook in particular at: {focus}")
        }
        _ => REVIEW_PROMPT.to_string(),
    };
    let submission = Submission {
        repo,
        base,
        prompt,
        model: args.model.clone(),
        max_turns: args.budget.max_turns,
        max_tokens: args.budget.max_tokens,
        max_cost_usd: args.budget.max_cost,
        max_duration_secs: args.budget.max_duration_secs(),
        image: None,
        review: Some(review),
        attempts: None,
        models: Vec::new(),
        plan: false,
    };
    let task = backend.submit(submission).await?;
    if !args.wait && !args.send {
        if args.json {
            print_json(&TaskView::new(&task))?;
        } else {
            println!("{}", task.id);
            eprintln!(
                "follow it with: nightshift logs --follow {}; its findings: nightshift show {}",
                task.id.short(),
                task.id.short()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let task = match args.json {
        true => {
            super::follow::events(&backend, task.id, true, |_| Ok(())).await?;
            backend.find(&task.id.to_string()).await?
        }
        false => super::run::wait(&backend, &task, false).await?,
    };
    let findings = findings_of(&backend, &task).await?;
    let mut sent = None;
    if args.send
        && task.state == TaskState::Succeeded
        && !findings.is_empty()
        && let Some(reviewed) = &reviewed
    {
        backend
            .say(reviewed, &findings_as_request(&findings))
            .await?;
        sent = Some(reviewed.id);
    }
    if args.json {
        print_json(&json!({
            "review": TaskView::new(&task),
            "findings": findings,
            "sent_to": sent.map(|id| id.to_string()),
        }))?;
        return Ok(exit_for(task.state));
    }
    if task.state == TaskState::Succeeded {
        print_findings(&findings);
    }
    match (sent, &reviewed) {
        (Some(id), _) => println!(
            "sent      the {} finding(s) to {} as a follow-up: nightshift logs --follow {}",
            findings.len(),
            id.short(),
            id.short()
        ),
        (None, Some(_)) if args.send && task.state == TaskState::Succeeded => {
            println!("sent      nothing: the review found nothing to fix")
        }
        _ => {}
    }
    Ok(exit_for(task.state))
}

/// The findings the review task submitted (none if it submitted none).
pub(crate) async fn findings_of(backend: &Backend, task: &Task) -> Result<Vec<Finding>, Failure> {
    let mut findings = Vec::new();
    super::follow::events(backend, task.id, false, |record| {
        if let Event::ReviewSubmitted {
            findings: found, ..
        } = &record.event
        {
            findings = found.clone();
        }
        Ok(())
    })
    .await?;
    Ok(findings)
}

pub(crate) fn print_findings(findings: &[Finding]) {
    if findings.is_empty() {
        println!("findings  none");
        return;
    }
    println!("findings  {}", findings.len());
    // Findings are the reviewing agent's words, about the repository's code.
    let shown = |text: &str| nightshift_protocol::printable(text).into_owned();
    for finding in findings {
        println!(
            "  [{}] {}  {}",
            finding.severity.as_str(),
            shown(&finding.location()),
            shown(&finding.problem.replace('\n', "\n      "))
        );
        if let Some(suggestion) = &finding.suggestion {
            println!(
                "      fix: {}",
                shown(&suggestion.replace('\n', "\n           "))
            );
        }
    }
}
