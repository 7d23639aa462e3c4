//! `nightshift run`: queue a task, see that something runs it, and optionally wait.
//!
//! Without `--wait` the command returns as soon as the task is queued. In local mode a detached
//! `nightshift __run-task ID` worker runs it (in its own session, so closing the terminal does
//! not stop it; it exits when the task ends); in remote mode the server's workers do.

use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nightshift_protocol::{Event, Task, TaskState, Usage};

use crate::args::RunArgs;
use crate::backend::{Backend, Submission};
use crate::output::{Cost, Failure, TaskView, exit_for, print_json};
use crate::render;

pub async fn run(args: RunArgs) -> Result<ExitCode, Failure> {
    let backend = Backend::from_env().await?;
    // One model and no --attempts: an ordinary task. Otherwise best-of-N.
    let best_of = args.attempts.is_some() || args.model.len() > 1;
    let submission = Submission {
        repo: args.repo.clone(),
        base: args.base.clone(),
        prompt: args.prompt.join(" "),
        model: args.model.first().cloned(),
        attempts: args.attempts,
        models: match best_of {
            true => args.model.clone(),
            false => Vec::new(),
        },
        plan: false,
        max_turns: args.budget.max_turns,
        max_tokens: args.budget.max_tokens,
        max_cost_usd: args.budget.max_cost,
        max_duration_secs: args.budget.max_duration_secs(),
        image: args.image.clone(),
        review: None,
    };
    let task = backend.submit(submission).await?;
    if !args.wait {
        if args.json {
            print_json(&TaskView::new(&task))?;
        } else {
            println!("{}", task.id);
            eprintln!(
                "follow it with: nightshift logs --follow {}",
                task.id.short()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let task = wait(&backend, &task, args.json).await?;
    Ok(exit_for(task.state))
}

/// Follows the task to its end with a live progress line on a terminal, then prints the
/// outcome. Ctrl-C stops waiting; the task goes on.
pub(crate) async fn wait(backend: &Backend, task: &Task, json: bool) -> Result<Task, Failure> {
    let short = task.id.short();
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    if !bar.is_hidden() {
        eprintln!(
            "waiting for {short}; Ctrl-C stops waiting, the task goes on (`nightshift cancel {short}` stops it)"
        );
    }
    let started = std::time::Instant::now();
    let mut state = TaskState::Queued;
    let mut step = String::from("waiting for a worker");
    let mut usage = Usage::default();
    let mut turn = 0;
    let mut error: Option<(String, Option<String>)> = None;
    let mut committed = None;
    let mut review = None;
    let mut chosen = None;
    super::follow::events(backend, task.id, true, |record| {
        match &record.event {
            Event::StateChanged { state: new, detail } => {
                state = *new;
                step = detail.clone().unwrap_or_default();
            }
            Event::ModelRequest { turn: n, .. } => {
                turn = *n;
                step = format!("turn {n}: waiting for the model");
            }
            Event::ModelResponse { usage: used, .. } => usage += *used,
            Event::ToolStarted {
                tool, arguments, ..
            } => {
                step = format!("turn {turn}: {}", render::call_brief(tool, arguments));
            }
            Event::Error { message, hint, .. } => error = Some((message.clone(), hint.clone())),
            Event::Committed {
                branch,
                files_changed,
                insertions,
                deletions,
                incomplete,
                ..
            } => {
                committed = Some((
                    branch.clone(),
                    *files_changed,
                    *insertions,
                    *deletions,
                    *incomplete,
                ));
            }
            Event::ReviewQueued { task_id } => review = Some(*task_id),
            Event::QuestionAsked { question } => bar.suspend(|| {
                eprintln!(
                    "\nquestion from the agent:\n{}\nanswer with: nightshift say {short} ANSWER\n",
                    question.trim()
                )
            }),
            Event::AttemptsRanked {
                chosen: attempt,
                reason,
                ..
            } => chosen = Some((*attempt, reason.clone())),
            Event::Ended { state: end, .. } => state = *end,
            _ => {}
        }
        bar.set_message(format!(
            "{short} {state} · {step} · {} · {} tokens",
            render::duration(started.elapsed()),
            usage.total()
        ));
        Ok(())
    })
    .await?;
    bar.finish_and_clear();
    let task = backend.find(&task.id.to_string()).await?;
    let cost = Cost::of(backend, &task).await?;
    if json {
        print_json(&TaskView {
            cost: Some(cost),
            ..TaskView::new(&task)
        })?;
        return Ok(task);
    }
    println!(
        "{short} {} after {} · {} turns · {} tokens",
        task.state,
        render::duration(render::elapsed(&task)),
        task.turns,
        render::tokens(&task.usage)
    );
    println!("cost      {}", render::cost(&cost));
    if let Some((branch, files, plus, minus, incomplete)) = committed {
        let note = if incomplete { " (incomplete work)" } else { "" };
        println!("branch    {branch}{note} · {files} files, +{plus} -{minus}");
        println!("review    nightshift diff {short}   ·   git log -p {branch}");
    }
    if let Some((attempt, reason)) = chosen {
        let attempt = attempt.map_or("none".to_string(), |id| id.short());
        println!(
            "attempts  {} · chose {attempt}: {reason}",
            task.spec.attempts.len()
        );
        if let Some(branch) = &task.branch {
            println!("branch    {branch}");
        }
        println!("compare   nightshift compare {short}   ·   nightshift diff {short}");
    }
    if task.no_changes() {
        println!("changes   {}", render::no_changes(&task));
    }
    if let Some(summary) = &task.summary {
        let summary = summary.trim().replace('\n', "\n          ");
        println!("summary   {}", nightshift_protocol::printable(&summary));
    }
    if let Some(review) = review {
        println!(
            "review    {} queued by [review] auto: nightshift show {}",
            review.short(),
            review.short()
        );
    }
    if let Some((message, hint)) = error {
        eprintln!("error: {message}");
        if let Some(hint) = hint {
            eprintln!("hint: {hint}");
        }
        eprintln!("details: nightshift logs {short}");
    }
    Ok(task)
}
