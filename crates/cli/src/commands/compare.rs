//! `nightshift compare`: a best-of-N task's attempts side by side, as it ranked them once they
//! ended, or as they stand while they run.

use std::process::ExitCode;

use nightshift_protocol::{AttemptRank, Event, Task, TaskId, rank_attempts};
use serde::Serialize;

use crate::args::ShowArgs;
use crate::backend::Backend;
use crate::output::{Failure, print_json};
use crate::render;

/// What `compare --json` prints.
#[derive(Serialize)]
struct Comparison {
    task_id: TaskId,
    state: nightshift_protocol::TaskState,
    /// Whether `attempts` is the task's own ranking (it has ended), rather than how the
    /// attempts stand now.
    ranked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    chosen: Option<TaskId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// Best first once ranked; in the order they were asked for until then.
    attempts: Vec<AttemptRank>,
}

pub async fn run(args: ShowArgs) -> Result<ExitCode, Failure> {
    let backend = Backend::from_env().await?;
    let task = backend.find(&args.id).await?;
    if task.spec.attempts.is_empty() {
        let hint = match task.spec.attempt_of {
            Some(of) => format!(
                "it is attempt {} of {}: `nightshift compare {}`",
                of.index + 1,
                of.task.short(),
                of.task.short()
            ),
            None => "`nightshift run --attempts N` runs N attempts and keeps the best".into(),
        };
        return Err(Failure::usage(format!(
            "task {} ran once: there is nothing to compare",
            task.id.short()
        ))
        .with_hint(Some(hint)));
    }
    let comparison = compare(&backend, &task).await?;
    if args.json {
        print_json(&comparison)?;
        return Ok(ExitCode::SUCCESS);
    }
    print(&task, &comparison);
    Ok(ExitCode::SUCCESS)
}

async fn compare(backend: &Backend, task: &Task) -> Result<Comparison, Failure> {
    let mut queued = Vec::new();
    let mut reviews = Vec::new();
    let mut ranked = None;
    super::follow::events(backend, task.id, false, |record| {
        match &record.event {
            Event::AttemptQueued { task_id, index, .. } => queued.push((*task_id, *index)),
            Event::AttemptReviewQueued { attempt, review } => reviews.push((*attempt, *review)),
            Event::AttemptsRanked {
                ranking,
                chosen,
                reason,
            } => ranked = Some((ranking.clone(), *chosen, reason.clone())),
            _ => {}
        }
        Ok(())
    })
    .await?;
    if let Some((attempts, chosen, reason)) = ranked {
        return Ok(Comparison {
            task_id: task.id,
            state: task.state,
            ranked: true,
            chosen,
            reason: Some(reason),
            attempts,
        });
    }
    // Still running: each attempt as it stands.
    let mut attempts = Vec::new();
    for (id, index) in queued {
        let attempt = backend.find(&id.to_string()).await?;
        let events = all_events(backend, id).await?;
        let mut rank = AttemptRank::read(&attempt, index, &events);
        if let Some((_, review)) = reviews.iter().find(|(of, _)| *of == id) {
            rank.reviewed(*review, &all_events(backend, *review).await?);
        }
        attempts.push(rank);
    }
    if attempts.iter().all(|rank| rank.state.is_terminal()) {
        rank_attempts(&mut attempts);
    } else {
        attempts.sort_by_key(|rank| rank.index);
    }
    Ok(Comparison {
        task_id: task.id,
        state: task.state,
        ranked: false,
        chosen: None,
        reason: None,
        attempts,
    })
}

async fn all_events(
    backend: &Backend,
    id: TaskId,
) -> Result<Vec<nightshift_protocol::EventRecord>, Failure> {
    let mut events = Vec::new();
    super::follow::events(backend, id, false, |record| {
        events.push(record.clone());
        Ok(())
    })
    .await?;
    Ok(events)
}

fn print(task: &Task, comparison: &Comparison) {
    println!(
        "{} best of {} · {}",
        task.id.short(),
        task.spec.attempts.len(),
        task.state
    );
    match (&comparison.chosen, &comparison.reason) {
        (Some(chosen), Some(reason)) => println!("chosen    {}: {reason}", chosen.short()),
        (None, Some(reason)) => println!("chosen    none: {reason}"),
        _ => println!("chosen    not yet: the attempts are still running"),
    }
    println!(
        "\n  {:<3} {:<9} {:<22} {:<10} {:<7} {:<20} {:<16} {:<9} branch",
        "#", "task", "model", "state", "checks", "review", "diff", "cost"
    );
    for rank in &comparison.attempts {
        let mark = if comparison.chosen == Some(rank.task_id) {
            "*"
        } else {
            " "
        };
        let checks = format!(
            "{}/{}",
            rank.checks_passed,
            rank.checks_passed + rank.checks_failed
        );
        let review = match (&rank.findings, rank.review) {
            (Some(findings), _) => findings.to_string(),
            (None, Some(_)) => "no verdict".into(),
            (None, None) => "-".into(),
        };
        let diff = match (rank.lines_changed, rank.files_changed) {
            (Some(lines), Some(files)) => format!("{lines} lines, {files} files"),
            _ => "-".into(),
        };
        let cost = rank
            .cost_usd
            .map(render::dollars)
            .unwrap_or_else(|| "-".into());
        println!(
            "{mark} {:<3} {:<9} {:<22} {:<10} {:<7} {:<20} {:<16} {:<9} {}",
            rank.index + 1,
            rank.task_id.short(),
            rank.model,
            rank.state.as_str(),
            checks,
            review,
            diff,
            cost,
            rank.branch.as_deref().unwrap_or("-")
        );
    }
    println!(
        "\nEach attempt is a task: `nightshift show ID`, `nightshift diff ID`; the chosen one's branch is this task's."
    );
}
